"""report.html: one self-contained page per run, and one per evaluation.

Everything is inside the file: figures and image panels as base64 PNG, inline CSS, no script, no
network. It can be mailed, attached to an issue, or opened on a phone. A run writes it at its end;
``segdistill report RUN_DIR`` rebuilds it from the run folder's files:

- metrics.json, or distill_report.json: the metrics table;
- history.csv: the training curves;
- sweep.csv: precision-recall, IoU against the threshold, and the threshold with the best IoU;
- per_image.csv: the per-image IoU, sorted, and the best and worst images, which the model (and for
  a distillation the teacher and the labels-only twin) predict again: a handful of images, seconds;
- model.safetensors, config.yaml, plan.json, run.json: the model card.

A file that is not there leaves its section out, with a line that says why (an older run, a run
without validation, data that has moved since); nothing else is caught, so a bug still fails loudly.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .checkpoint import ModelInfo, read_model_info
from .errors import SegdistillError
from .fileio import read_csv, read_json, write_text
from .measure import LATENCY_JSON, model_gflops, model_latency
from .metrics import Sweep, confusion, scores
from .version import __version__

if TYPE_CHECKING:
    from .engine.evaluate import EvalResult

CASES = 3
"""Images shown of each end: the best and the worst by IoU."""
PANEL_SIDE = 256
"""Longest side of an image panel, in pixels (larger images are shrunk; the page stays small)."""

# Prediction panels: correct foreground, false positives, missed foreground.
_TP, _FP, _FN = (0.10, 0.80, 0.25), (1.00, 0.20, 0.10), (0.15, 0.45, 1.00)


@dataclass
class Section:
    """One part of the page: an anchor, a heading, and its HTML."""

    id: str
    title: str
    body: str


@dataclass
class ModelRef:
    """A model whose predictions the best and worst images show."""

    label: str
    path: Path
    threshold: float | None = None
    tta: int | None = None
    backend: str = "auto"


@dataclass
class Case:
    """One image shown: its title and its panels (caption, RGB uint8 image)."""

    title: str
    panels: list[tuple[str, np.ndarray]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# The run folder's report.


def write_run_report(run_dir: str | Path, device: str = "auto") -> Path:
    """(Re)write ``RUN_DIR/report.html`` from the run folder's files; returns its path. A file of
    the folder edited into something else (a number that is not one, a missing column) is one
    SegdistillError naming the folder, not a traceback."""
    try:
        return _write_run_report(Path(run_dir), device)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise SegdistillError(f"{run_dir}: a file of the run folder is damaged or from another version "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None


def _write_run_report(run_dir: Path, device: str) -> Path:
    if not (run_dir / "config.yaml").is_file():
        raise SegdistillError(f"{run_dir}: not a run folder (no config.yaml)")
    from .config import load_config

    cfg = load_config(run_dir / "config.yaml")
    distill = _read_json(run_dir / "distill_report.json")
    model_path = run_dir / "model.safetensors"
    info = read_model_info(model_path) if model_path.is_file() else None
    per_image = _read_csv(run_dir / "per_image.csv")
    sweep_rows = _read_csv(run_dir / "sweep.csv")
    sweep = Sweep.from_rows(sweep_rows) if sweep_rows else None
    threshold = info.threshold if info is not None else cfg.train.threshold

    sections = [_run_metrics(run_dir, distill), _curves(run_dir)]
    sections.append(threshold_section(sweep, threshold, _reference(distill)) if sweep else
                    Section("thresholds", "Thresholds", _missing("sweep.csv", "no validation was scored")))
    models = _run_models(run_dir, cfg, distill) if info is not None else []
    sections += image_sections(per_image, models, device, info.preprocess.invert if info else False)
    if distill and distill.get("search"):
        sections.append(_search_section(run_dir, distill["search"]))
    if (run_dir / SPEED_JSON).is_file():
        sections.append(speed_section(run_dir / SPEED_JSON))
    sections.append(_run_card(run_dir, cfg, info, distill, sweep))
    kind = "distillation" if distill else "training run"
    page = render_page(f"{run_dir.name}: {kind} report", f"{run_dir.resolve()}", sections)
    out = run_dir / "report.html"
    write_text(out, page)
    return out


def _reference(distill: dict[str, Any] | None) -> str:
    """What validation compared with: "labels", or for a distillation without labels "teacher"."""
    return "teacher" if distill and distill.get("validation") != "labels" else "labels"


def _run_models(run_dir: Path, cfg: Any, distill: dict[str, Any] | None) -> list[ModelRef]:
    """The run's model; for a distillation the teacher first, and the labels-only twin last."""
    if not distill:
        return [ModelRef("prediction", run_dir / "model.safetensors")]
    refs = [ModelRef("teacher", Path(cfg.distill.teacher)), ModelRef("student, distilled", run_dir / "model.safetensors")]
    if (run_dir / "baseline" / "model.safetensors").is_file():
        refs.append(ModelRef("student, labels only", run_dir / "baseline" / "model.safetensors"))
    return refs


def _run_metrics(run_dir: Path, distill: dict[str, Any] | None) -> Section:
    if distill:
        return Section("metrics", "Metrics", _distill_table(distill))
    metrics = _read_json(run_dir / "metrics.json")
    if not metrics:
        return Section("metrics", "Metrics", _missing("metrics.json", "no validation was scored"))
    views = metrics.get("tta")
    rows = []
    for k in ("iou", "dice", "precision", "recall", "accuracy"):
        row = {"metric": _METRIC_NAMES[k], "all pixels": metrics.get(k), "per-image mean": metrics.get(f"{k}_per_image")}
        if views:
            row[f"all pixels, TTA x{views['views']}"] = views.get(k)
        rows.append(row)
    note = f"<p>Validation of the best epoch ({metrics.get('epoch')}), at the model's threshold.</p>"
    return Section("metrics", "Metrics", note + table(rows))


_METRIC_NAMES = {"iou": "IoU (Jaccard)", "dice": "Dice (F1)", "precision": "precision", "recall": "recall",
                 "accuracy": "pixel accuracy"}


def _distill_table(r: dict[str, Any]) -> str:
    rows = [{"model": "teacher", **_distill_row(r["teacher"])}, {"model": "student, distilled", **_distill_row(r["student"])}]
    twin = r.get("baseline_labels_only")
    if twin:
        rows.append({"model": "student, labels only", "params": rows[1]["params"], "GFLOPs": rows[1]["GFLOPs"],
                     "CPU ms": rows[1]["CPU ms"], "val IoU": twin.get("val_iou"), "val Dice": twin.get("val_dice"),
                     "agreement": None})
    facts = [f"compression {r['compression']:.1f}x", f"CPU speed-up {r['speedup_cpu']:.1f}x"]
    if r.get("iou_retained"):
        facts.append(f"the student keeps {r['iou_retained']:.1%} of the teacher's IoU")
    return (f"<p>Validation: {html.escape(str(r.get('validation')))}; latency: {html.escape(str(r.get('latency')))}.</p>"
            + table(rows) + f"<p>{html.escape('; '.join(facts))}.</p>")


def _distill_row(m: dict[str, Any]) -> dict[str, Any]:
    return {"params": f"{m['params'] / 1e6:.3f}M", "GFLOPs": m.get("gflops"), "CPU ms": m.get("cpu_ms"),
            "val IoU": m.get("val_iou"), "val Dice": m.get("val_dice"), "agreement": m.get("agreement")}


def _curves(run_dir: Path) -> Section:
    from .report import curve_panels

    rows = _read_csv(run_dir / "history.csv")
    if not rows:
        return Section("curves", "Training curves", _missing("history.csv", "no epoch has finished"))
    history = [{k: _number(v) for k, v in r.items()} for r in rows]
    figs = curve_panels(history)
    return Section("curves", "Training curves", figures(figs, ["loss per epoch", "validation IoU and Dice per epoch"]))


def _search_section(run_dir: Path, search: dict[str, Any]) -> Section:
    """The student search (engine/search/): its Pareto plot and every candidate."""
    from .engine.search_report import pareto_figure

    d = _read_json(run_dir / "search.json")
    rows = search.get("candidates", [])
    note = (f"<p>Objective {html.escape(str(search.get('objective')))}: winner <b>{html.escape(str(search.get('winner')))}</b>, "
            f"{'meets' if search.get('meets') else 'does not meet'} it; latency {html.escape(str(search['latency']['how']))} "
            f"at {search['latency']['size'][0]}x{search['latency']['size'][1]}. Search stopped: "
            f"{html.escape(str(search.get('stopped') or 'done'))}.</p>")
    fig = figures([pareto_figure(d, rows)], ["IoU against latency of every candidate; the Pareto front"]) if d else \
        _missing("search.json", "the search's record is gone")
    shown = [{**r, "params": f"{r['params'] / 1e6:.3f}M"} for r in rows]
    return Section("search", "Student search", note + fig + table(shown))


SPEED_JSON = "speed.json"
"""What ``segdistill benchmark RUN_DIR`` leaves in a run folder (the report's Speed section)."""


def speed_section(path: Path) -> Section:
    """``segdistill benchmark`` results (speed.json): IoU against latency, one point per model and
    backend/precision, and the table."""
    from .report import tradeoff_figure

    doc = _read_json(path) or {}
    rows, machine = doc.get("entries", []), doc.get("machine", {})
    names = doc.get("labels") or {r["model"]: Path(r["model"]).name for r in rows}
    parts = [f"<p>Measured by <code>segdistill benchmark</code> on {html.escape(str(machine.get('cpu', 'this machine')))}, "
             f"{machine.get('threads', '?')} thread(s). Each backend's IoU is on the validation images.</p>"]
    if any(r.get("iou") is not None for r in rows):
        parts.append(figures([tradeoff_figure(rows, names, "validation IoU (on that backend and precision)")],
                             ["IoU against latency, one point per model, backend and precision"]))
    shown = [{"model": names.get(r["model"], r["model"]),
              "backend": r["backend"] + (", channels-last" if r.get("channels_last") else ""), "precision": r["precision"],
              "p50 ms": r.get("p50_ms"), "p95 ms": r.get("p95_ms"), "GFLOP/s": r.get("gflops_per_s"),
              "IoU": r.get("iou"), "auto picks": "yes" if r.get("chosen") else "", "note": r.get("error") or ""}
             for r in rows]
    return Section("speed", "Speed on this machine", "".join(parts) + table(shown))


def _run_card(run_dir: Path, cfg: Any, info: ModelInfo | None, distill: dict[str, Any] | None,
              sweep: Sweep | None) -> Section:
    if info is None:
        return Section("model", "Model card", _missing("model.safetensors", "the run saved no model"))
    from .engine.clock import format_duration

    size = cfg.train.input_size
    if distill:
        lat = distill["student"].get("latency") or {}
        size = lat.get("size", [size])[0]
        cost = {**{k: distill["student"].get(k) for k in ("params", "gflops", "cpu_ms")},
                "how": lat.get("how", distill.get("latency"))}
    else:
        cost = measure(info, size, run_dir / LATENCY_JSON)
    rows = model_rows(info, cost, size)
    s = info.summary
    if distill:
        rows.insert(1, ("distilled from", f"{cfg.distill.teacher} ({distill.get('loss')} loss, "
                                          f"T={distill.get('temperature')}, {distill.get('targets')} targets)"))
        images = cfg.distill.images if isinstance(cfg.distill.images, str) else ", ".join(cfg.distill.images or [])
        rows.append(("data", f"transfer images {images}" + (f"; labelled data {cfg.data.root}" if cfg.data.root else "")))
    else:
        counts = f"{s.get('train_images', '?')} training, {s.get('val_images', '?')} validation images"
        if s.get("unlabelled_images"):
            counts += f", {s['unlabelled_images']} unlabelled"
        rows.append(("data", f"{s.get('data', cfg.data.root)} ({counts})"))
    if sweep is not None:
        best, iou = sweep.best()
        rows.append(("best threshold on validation", f"{best:g} (IoU {iou:.4f})"))
    run = _read_json(run_dir / "run.json") or {}
    history = _read_csv(run_dir / "history.csv") or []
    rows.append(("precision, device", run.get("compute", "not recorded (run.json missing)")))
    best_epoch = s.get("best_epoch") or s.get("epoch")
    rows.append(("epochs", f"{len(history)}" + (f" (best: {best_epoch})" if best_epoch else "")))
    if "seconds" in run:
        rows.append(("time taken", f"{format_duration(run['seconds'])} (the epochs, validation and saving, "
                                   "without start-up)"))
    version = s.get("segdistill_version", __version__)
    rows.append(("segdistill", f"{version}; model saved {s['saved']}" if "saved" in s else version))
    extra = [("config.yaml (resolved)", (run_dir / "config.yaml").read_text(encoding="utf-8"))]
    plan = _read_json(run_dir / "plan.json")
    if plan and plan.get("reasons"):
        extra.append(("plan.json: what the data decided", "\n".join(f"{k}: {v}" for k, v in plan["reasons"].items())))
    return Section("model", "Model card", card(rows) + "".join(details(t, text) for t, text in extra))


# --------------------------------------------------------------------------------------------------
# The report of ``segdistill evaluate``.


def write_eval_report(out: str | Path, model_path: str | Path, data_dir: str | Path, result: EvalResult, threshold: float,
                      tta: int, scored: str, backend: str = "auto", device: str = "auto", invert: bool = False,
                      max_side: int | None = None) -> Path:
    """``out`` (an .html file): an evaluation's metrics, threshold curves, per-image IoU, the best
    and worst images, and the model card."""
    model_path, out = Path(model_path), Path(out)
    info = read_model_info(model_path)
    m = result.metrics
    rows = [{"metric": _METRIC_NAMES[k], "all pixels": m.get(k), "per-image mean": m.get(f"{k}_per_image")}
            for k in ("iou", "dice", "precision", "recall", "accuracy")]
    views = f", test-time augmentation x{tta}" if tta > 1 else ""
    sections = [Section("metrics", "Metrics", f"<p>{html.escape(scored)}; threshold {threshold:g}{views}.</p>" + table(rows))]
    if result.sweep is not None:
        sections.append(threshold_section(result.sweep, threshold, "labels", evaluate_hint=False))
    model = ModelRef("prediction", model_path, threshold, tta, backend)
    sections += image_sections(result.per_image, [model], device, invert, max_side=max_side)
    size = int(info.summary.get("input_size", 256))
    cost = measure(info, size) if model_path.suffix == ".safetensors" else {}
    rows_card = model_rows(info, cost, size)
    rows_card.append(("trained on", str(info.summary.get("data", "not recorded"))))
    sections.append(Section("model", "Model card", card(rows_card)))
    page = render_page(f"{model_path.name} on {Path(data_dir).name or data_dir}", f"{model_path} on {data_dir}", sections)
    write_text(out, page)
    return out


# --------------------------------------------------------------------------------------------------
# Sections shared by both pages.


def threshold_section(sweep: Sweep, threshold: float, reference: str = "labels", evaluate_hint: bool = True) -> Section:
    """Precision-recall and IoU-against-threshold curves, and the threshold with the best IoU."""
    from .report import threshold_panels

    s = scores(sweep.counts)
    thresholds = sweep.thresholds.tolist()
    best, best_iou = sweep.best()
    k = min(range(len(thresholds)), key=lambda i: abs(thresholds[i] - threshold))
    figs = threshold_panels(thresholds, s["iou"].tolist(), s["precision"].tolist(), s["recall"].tolist(), threshold, best)
    against = "the teacher's masks" if reference == "teacher" else "the labels"
    text = (f"<p>Over all validation pixels, against {against}. The threshold with the highest IoU is "
            f"<b>{best:g}</b> (IoU {best_iou:.4f}; at the model's threshold {threshold:g}: {float(s['iou'][k]):.4f}).")
    if evaluate_hint:
        text += (" <code>segdistill evaluate MODEL --data DIR --store-threshold</code> stores the best threshold of the "
                 "images it scores in the model file.")
    text += " A threshold chosen on these images scores them a little optimistically.</p>"
    return Section("thresholds", "Thresholds", text + figures(figs, ["precision against recall, one point per threshold",
                                                                     "IoU, precision and recall against the threshold"]))


def image_sections(per_image: list[dict[str, Any]] | None, models: list[ModelRef], device: str, invert: bool,
                   max_side: int | None = None) -> list[Section]:
    """The per-image IoU (sorted, worst first) and the best and worst images predicted again."""
    if not per_image:
        why = _missing("per_image.csv", "no validation was scored")
        return [Section("per-image", "Per-image IoU", why), Section("cases", "Best and worst images", why)]
    rows = sorted(per_image, key=lambda r: float(r["iou"]))
    sections = [Section("per-image", "Per-image IoU", bars(rows))]
    k = min(CASES, len(rows) // 2)
    chosen = [("worst", r) for r in rows[:k]] + [("best", r) for r in rows[::-1][: max(k, 1)]]
    cases = predict_cases(chosen, models, device, invert, max_side)
    sections.append(Section("cases", "Best and worst images", cases_html(cases)))
    return sections


def predict_cases(chosen: list[tuple[str, dict[str, Any]]], models: list[ModelRef], device: str, invert: bool,
                  max_side: int | None = None) -> list[Case] | str:
    """The image, its reference and each model's prediction, for each chosen per-image row; a
    sentence instead when a model or the images are no longer where the run found them."""
    from .data.imageio import read_image, read_mask
    from .inference.predictor import Predictor

    gone = [m for m in models if not m.path.is_file()]
    if gone:
        return f"{gone[0].path}: model file not found, so the images are not predicted again."
    predictors = []
    for m in models:
        p = Predictor(m.path, device=device, threshold=m.threshold, tta=m.tta, backend=m.backend)
        if max_side is not None:
            p.info.preprocess.max_side = max_side
        predictors.append((m.label, p))
    channels = predictors[0][1].info.preprocess.channels
    cases, missing = [], []
    for end, row in chosen:
        image_file, mask_file = Path(row.get("image_file") or ""), row.get("mask_file") or ""
        if not row.get("image_file") or not image_file.is_file() or (mask_file and not Path(mask_file).is_file()):
            missing.append(str(row.get("image_file") or row["image"]))
            continue
        image = read_image(image_file, channels)  # (H, W, C) in [0, 1]
        masks = [(label, p.predict_arrays([image])[0] > p.threshold) for label, p in predictors]
        if mask_file:
            ref_label, ref = "ground truth", read_mask(mask_file) ^ invert
        else:  # validated by agreement: the teacher (the first model) is the reference
            ref_label, ref = f"{masks[0][0]} (reference)", masks[0][1]
            masks = masks[1:]
        case = Case(f"{end}: {row['image']} (IoU {float(row['iou']):.3f})",
                    [("image", _rgb(image)), (ref_label, tint(image, ref, _TP))])
        for label, pred in masks:
            iou = float(scores(confusion(torch.from_numpy(pred)[None], torch.from_numpy(ref)[None]))["iou"][0])
            case.panels.append((f"{label}: IoU {iou:.3f}", error_overlay(image, pred, ref)))
        cases.append(case)
    if missing and not cases:
        return f"The images are no longer where the run found them (first: {missing[0]}), so none is shown."
    return cases


# --------------------------------------------------------------------------------------------------
# HTML pieces (pure functions of their inputs).

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#1d232a;background:#f4f5f7;-webkit-text-size-adjust:100%}
main{max-width:1100px;margin:0 auto;padding:16px}
header h1{font-size:1.5em;margin:.2em 0;overflow-wrap:anywhere}
header p{margin:0;color:#59636e;font-size:.9em;overflow-wrap:anywhere}
nav{display:flex;flex-wrap:wrap;gap:4px 14px;margin:10px 0;font-size:.95em}
nav a{color:#0b5cad;text-decoration:none}
section{background:#fff;border:1px solid #d9dde3;border-radius:8px;padding:12px 16px;margin:14px 0}
h2{font-size:1.2em;margin:.1em 0 .5em}
h3{font-size:1em;margin:1em 0 .3em;overflow-wrap:anywhere}
p{margin:.4em 0}
code{font-size:.9em;background:#eef0f3;padding:0 3px;border-radius:3px;overflow-wrap:anywhere}
img{width:100%;height:auto;display:block}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:.95em}
th,td{padding:4px 10px;border-bottom:1px solid #e4e7eb;text-align:left;white-space:nowrap;vertical-align:top}
th{background:#f0f2f5}
td.num{text-align:right}
table.card{width:100%}
table.card td{white-space:normal;overflow-wrap:anywhere}
table.card td:first-child{white-space:nowrap;color:#59636e}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:12px}
figure{margin:0}
figcaption{font-size:.85em;color:#59636e;margin-top:2px}
.bars{max-height:26em;overflow-y:auto;border:1px solid #e4e7eb;border-radius:6px;padding:6px}
.bar{display:grid;grid-template-columns:minmax(4em,11em) 1fr 3.6em;gap:8px;align-items:center;font-size:.9em}
.bar .name{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar .track{background:#eef0f3;border-radius:3px;height:.9em}
.bar .fill{display:block;height:100%;border-radius:3px}
.bar .val{text-align:right;font-variant-numeric:tabular-nums}
.panels{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:8px}
.panels img{image-rendering:pixelated;border-radius:4px}
.legend span{display:inline-block;width:.9em;height:.9em;border-radius:2px;vertical-align:-.1em;margin:0 4px 0 10px}
details{margin:.6em 0}
summary{cursor:pointer;color:#0b5cad}
pre{overflow-x:auto;font-size:.8em;background:#f6f7f9;padding:8px;border-radius:6px;margin:.4em 0}
.missing{color:#8a5a00}
@media (max-width:600px){main{padding:6px}section{padding:8px 10px;margin:10px 0}header h1{font-size:1.25em}
 th,td{padding:3px 6px}table{font-size:.9em}
 .panels{grid-template-columns:repeat(2,minmax(0,1fr))}.bar{grid-template-columns:minmax(3em,7em) 1fr 3.2em}}
"""


_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render_page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole document: inline CSS, a navigation line, the sections."""
    written = datetime.now().astimezone().isoformat(timespec="seconds")
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>{s.body}</section>' for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            # Self-contained by rule, not only by intent: the browser refuses anything from outside.
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n"
            f"<body><main><header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>"
            f"<p>written {written} by segdistill {__version__}</p></header>"
            f"<nav>{nav}</nav>\n{body}\n</main></body></html>\n")


def table(rows: list[dict[str, Any]]) -> str:
    """An HTML table of ``rows`` (columns of the first row), numbers right-aligned; it scrolls
    sideways on a narrow screen."""
    if not rows:
        return ""
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(_cell(r.get(c)) for c in cols) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _cell(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return f"<td>{'' if v is None else v}</td>"
    if isinstance(v, float):
        text = "-" if not math.isfinite(v) else (f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}")
        return f'<td class="num">{text}</td>'
    if isinstance(v, int):
        return f'<td class="num">{v:,}</td>'
    return f"<td>{html.escape(str(v))}</td>"


def card(rows: list[tuple[str, str]]) -> str:
    """Key-value rows (the model card)."""
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<div class="scroll"><table class="card"><tbody>{body}</tbody></table></div>'


def details(summary: str, text: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>"


def figures(figs: list[Any], captions: list[str]) -> str:
    """Matplotlib figures as embedded PNGs (closed afterwards), side by side where there is room."""
    import matplotlib.pyplot as plt

    out = []
    for fig, caption in zip(figs, captions):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=150)
        plt.close(fig)
        out.append(f'<figure>{_img(buf.getvalue(), caption)}<figcaption>{html.escape(caption)}</figcaption></figure>')
    return f'<div class="figs">{"".join(out)}</div>'


def bars(rows: list[dict[str, Any]]) -> str:
    """Per-image IoU as horizontal bars, in the order given, with a one-line summary above."""
    values = [float(r["iou"]) for r in rows]
    summary = (f"<p>{len(values)} images, worst first: mean {np.mean(values):.3f}, median {np.median(values):.3f}, "
               f"min {min(values):.3f}, max {max(values):.3f}.</p>")
    lines = []
    for r, v in zip(rows, values):
        colour = f"hsl({round(120 * max(0.0, min(v, 1.0)))},55%,45%)"
        name = html.escape(str(r["image"]))
        lines.append(f'<div class="bar"><span class="name" title="{name}">{name}</span><span class="track">'
                     f'<span class="fill" style="width:{100 * max(0.0, min(v, 1.0)):.1f}%;background:{colour}"></span>'
                     f'</span><span class="val">{v:.3f}</span></div>')
    return summary + f'<div class="bars">{"".join(lines)}</div>'


def cases_html(cases: list[Case] | str) -> str:
    if isinstance(cases, str):
        return f'<p class="missing">{html.escape(cases)}</p>'
    legend = ('<p class="legend">Predictions:'
              + "".join(f'<span style="background:{_css(c)}"></span>{name}' for c, name in
                        ((_TP, "correct foreground"), (_FP, "false positive"), (_FN, "missed"))) + "</p>")
    out = [legend]
    for case in cases:
        panels = "".join(f"<figure>{_img(_png(a), cap)}<figcaption>{html.escape(cap)}</figcaption></figure>"
                         for cap, a in case.panels)
        out.append(f'<h3>{html.escape(case.title)}</h3><div class="panels">{panels}</div>')
    return "".join(out)


def _missing(name: str, why: str) -> str:
    return f'<p class="missing">Not shown: this run folder has no {html.escape(name)} ({html.escape(why)}).</p>'


# --------------------------------------------------------------------------------------------------
# Images and the model's cost.


def tint(image: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float], alpha: float = 0.5) -> np.ndarray:
    """RGB uint8: ``image`` (H, W, C) float in [0, 1] with ``mask`` (H, W) tinted ``colour``."""
    rgb = _rgb_float(image)
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour, dtype=np.float32)
    return _shrink((rgb * 255).round().astype(np.uint8))


def error_overlay(image: np.ndarray, pred: np.ndarray, ref: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """RGB uint8: correct foreground, false positives and missed foreground in three colours."""
    rgb = _rgb_float(image)
    for where, colour in ((pred & ref, _TP), (pred & ~ref, _FP), (~pred & ref, _FN)):
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(colour, dtype=np.float32)
    return _shrink((rgb * 255).round().astype(np.uint8))


def _rgb_float(image: np.ndarray) -> np.ndarray:
    return (np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]).astype(np.float32, copy=True)


def _rgb(image: np.ndarray) -> np.ndarray:
    return _shrink((_rgb_float(image) * 255).round().astype(np.uint8))


def _shrink(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    if max(h, w) <= PANEL_SIDE:
        return rgb
    scale = PANEL_SIDE / max(h, w)
    im = Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    return np.asarray(im)


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _css(colour: tuple[float, float, float]) -> str:
    return "rgb({},{},{})".format(*(round(255 * c) for c in colour))


def measure(info: ModelInfo, size: int, record: Path | None = None) -> dict[str, Any]:
    """Parameters, GFLOPs and latency (measure.model_latency: the run folder's ``record`` where it
    holds one) of a model at ``size`` x ``size``."""
    params, gflops = model_gflops(info, (size, size))
    lat = model_latency(info, (size, size), record)
    return {"params": params, "gflops": gflops, "cpu_ms": lat.ms, "how": lat.describe()}


def model_rows(info: ModelInfo, cost: dict[str, Any], size: int) -> list[tuple[str, str]]:
    """The model card's rows that the model file and its measured cost give."""
    args = ", ".join(f"{k}={v}" for k, v in info.args.items())
    pre = info.preprocess
    rows = [("architecture", f"{info.arch} ({args})")]
    if cost.get("params"):
        rows.append(("parameters", f"{cost['params']:,} ({cost['params'] / 1e6:.3f}M)"))
    if cost.get("gflops") is not None:
        rows.append(("GFLOPs", f"{cost['gflops']:.3g} per {size}x{size} image"))
    if cost.get("cpu_ms") is not None:
        rows.append(("latency", f"{cost['cpu_ms']:.4g} ms ({cost.get('how', '')})"))
    rows.append(("preprocessing", f"{pre.channels}, max side {pre.max_side or 'native'}"
                                  + (", inverted masks" if pre.invert else "")))
    weights = info.summary.get("pretrained")
    if isinstance(weights, dict):
        rows.append(("encoder weights", f"{weights.get('encoder')}: ImageNet, from {weights.get('source')} "
                                        f"({weights.get('licence')}; sha256 {weights.get('sha256')})"))
    elif info.arch == "encoder_unet":
        rows.append(("encoder weights", "none (trained from scratch)"))
    rows.append(("threshold", f"{info.threshold:g}"))
    rows.append(("test-time augmentation", "off" if info.tta == 1 else f"{info.tta} views"))
    return rows


# --------------------------------------------------------------------------------------------------
# Reading the run folder: a missing file is None (its section says so), anything else raises.


_read_csv = read_csv
_read_json = read_json


def _number(v: str) -> float | int | None:
    if v in ("", None):
        return None
    f = float(v)
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f

"""report.html: one self-contained page per run, and one per evaluation.

Everything is inside the file: figures and image panels as base64 PNG, inline CSS, no script, no
network. It can be mailed, attached to an issue, or opened on a phone. The page is made of results
only; it never runs a model. The job that writes it (``jobs/report.py``, ``jobs/evaluate.py``)
hands over what needs one: the best and worst images predicted again (``inference/cases.py``) and
the model's cost (``measure.model_cost``). From the run folder's files:

- metrics.json, or distill_report.json: the metrics table;
- history.csv: the training curves;
- sweep.csv: precision-recall, IoU against the threshold, and the threshold with the best IoU;
- per_image.csv: the per-image IoU, sorted (and which images the job shows at each end);
- model.safetensors, config.yaml, plan.json, run.json: the model card;
- search.json, speed.json: the student search and ``segdistill benchmark``'s results.

A file that is not there leaves its section out, with a line that says why (an older run, a run
without validation, data that has moved since); nothing else is caught, so a bug still fails loudly.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import ModelInfo, read_model_info
from ..config import Config, load_config
from ..errors import SegdistillError
from ..fileio import read_csv, read_json, write_text
from ..metrics import Sweep, scores
from ..version import __version__
from .html import Case, Section, bars, card, cases_html, details, figures, missing, render_page, table

CASES = 3
"""Images shown of each end: the best and the worst by IoU."""
SPEED_JSON = "speed.json"
"""What ``segdistill benchmark RUN_DIR`` leaves in a run folder (the report's Speed section)."""

_METRIC_NAMES = {"iou": "IoU (Jaccard)", "dice": "Dice (F1)", "precision": "precision", "recall": "recall",
                 "accuracy": "pixel accuracy"}


@dataclass
class RunFiles:
    """What a run folder holds for its report (a missing file is None)."""

    run_dir: Path
    cfg: Config
    distill: dict[str, Any] | None
    info: ModelInfo | None
    per_image: list[dict[str, str]] | None
    sweep: Sweep | None

    @property
    def threshold(self) -> float:
        return self.info.threshold if self.info is not None else self.cfg.train.threshold


def damaged(run_dir: str | Path, e: Exception) -> SegdistillError:
    """A file of the run folder edited into something else (a number that is not one, a missing
    column): one error naming the folder, not a traceback."""
    return SegdistillError(f"{run_dir}: a file of the run folder is damaged or from another version "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")


REPORT_ERRORS = (KeyError, ValueError, TypeError, AttributeError, IndexError)
"""What a damaged run folder raises while its report is made (``damaged`` turns it into one line)."""


def read_run(run_dir: str | Path) -> RunFiles:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise SegdistillError(f"{run_dir}: not a run folder (no config.yaml)")
    try:
        model_path = run_dir / "model.safetensors"
        sweep_rows = read_csv(run_dir / "sweep.csv")
        return RunFiles(run_dir, load_config(run_dir / "config.yaml"), read_json(run_dir / "distill_report.json"),
                        read_model_info(model_path) if model_path.is_file() else None, read_csv(run_dir / "per_image.csv"),
                        Sweep.from_rows(sweep_rows) if sweep_rows else None)
    except REPORT_ERRORS as e:
        raise damaged(run_dir, e) from None


def choose_cases(per_image: list[dict[str, Any]] | None) -> list[tuple[str, dict[str, Any]]]:
    """The per-image rows shown as images: the worst and the best ``CASES`` by IoU ("worst"/"best", row)."""
    rows = sorted(per_image or [], key=lambda r: float(r["iou"]))
    if not rows:
        return []
    k = min(CASES, len(rows) // 2)
    return [("worst", r) for r in rows[:k]] + [("best", r) for r in rows[::-1][: max(k, 1)]]


def write_run_report(run: RunFiles, cases: list[Case] | str, cost: dict[str, Any] | None) -> Path:
    """(Re)write ``RUN_DIR/report.html``; returns its path. ``cases``: the chosen images with each
    model's prediction (or a sentence why there are none); ``cost``: the model's parameters, GFLOPs
    and latency (a distillation's are in its distill_report.json)."""
    try:
        return _write_run_report(run, cases, cost)
    except REPORT_ERRORS as e:
        raise damaged(run.run_dir, e) from None


def _write_run_report(run: RunFiles, cases: list[Case] | str, cost: dict[str, Any] | None) -> Path:
    run_dir, distill = run.run_dir, run.distill
    sections = [_run_metrics(run_dir, distill), _curves(run_dir)]
    sections.append(threshold_section(run.sweep, run.threshold, _reference(distill)) if run.sweep else
                    Section("thresholds", "Thresholds", missing("sweep.csv", "no validation was scored")))
    sections += image_sections(run.per_image, cases)
    if distill and distill.get("search"):
        sections.append(_search_section(run_dir, distill["search"]))
    if (run_dir / SPEED_JSON).is_file():
        sections.append(speed_section(run_dir / SPEED_JSON))
    sections.append(_run_card(run, cost))
    kind = "distillation" if distill else "training run"
    page = render_page(f"{run_dir.name}: {kind} report", f"{run_dir.resolve()}", sections)
    out = run_dir / "report.html"
    write_text(out, page)
    return out


def _reference(distill: dict[str, Any] | None) -> str:
    """What validation compared with: "labels", or for a distillation without labels "teacher"."""
    return "teacher" if distill and distill.get("validation") != "labels" else "labels"


def _run_metrics(run_dir: Path, distill: dict[str, Any] | None) -> Section:
    if distill:
        return Section("metrics", "Metrics", _distill_table(distill))
    metrics = read_json(run_dir / "metrics.json")
    if not metrics:
        return Section("metrics", "Metrics", missing("metrics.json", "no validation was scored"))
    views = metrics.get("tta")
    rows = []
    for k in ("iou", "dice", "precision", "recall", "accuracy"):
        row = {"metric": _METRIC_NAMES[k], "all pixels": metrics.get(k), "per-image mean": metrics.get(f"{k}_per_image")}
        if views:
            row[f"all pixels, TTA x{views['views']}"] = views.get(k)
        rows.append(row)
    note = f"<p>Validation of the best epoch ({metrics.get('epoch')}), at the model's threshold.</p>"
    return Section("metrics", "Metrics", note + table(rows))


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
    from .plots import curve_panels

    rows = read_csv(run_dir / "history.csv")
    if not rows:
        return Section("curves", "Training curves", missing("history.csv", "no epoch has finished"))
    history = [{k: _number(v) for k, v in r.items()} for r in rows]
    figs = curve_panels(history)
    return Section("curves", "Training curves", figures(figs, ["loss per epoch", "validation IoU and Dice per epoch"]))


def _search_section(run_dir: Path, search: dict[str, Any]) -> Section:
    """The student search (engine/search/): its Pareto plot and every candidate."""
    from .search import pareto_figure

    d = read_json(run_dir / "search.json")
    rows = search.get("candidates", [])
    note = (f"<p>Objective {html.escape(str(search.get('objective')))}: winner <b>{html.escape(str(search.get('winner')))}</b>, "
            f"{'meets' if search.get('meets') else 'does not meet'} it; latency {html.escape(str(search['latency']['how']))} "
            f"at {search['latency']['size'][0]}x{search['latency']['size'][1]}. Search stopped: "
            f"{html.escape(str(search.get('stopped') or 'done'))}.</p>")
    fig = figures([pareto_figure(d, rows)], ["IoU against latency of every candidate; the Pareto front"]) if d else \
        missing("search.json", "the search's record is gone")
    shown = [{**r, "params": f"{r['params'] / 1e6:.3f}M"} for r in rows]
    return Section("search", "Student search", note + fig + table(shown))


def speed_section(path: Path) -> Section:
    """``segdistill benchmark`` results (speed.json): IoU against latency, one point per model and
    backend/precision, and the table."""
    from .plots import tradeoff_figure

    doc = read_json(path) or {}
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


def card_size(run: RunFiles) -> int:
    """The side the model card's cost is stated at: a distillation's latency size, else the training size."""
    if run.distill:
        return (run.distill["student"].get("latency") or {}).get("size", [run.cfg.train.input_size])[0]
    return run.cfg.train.input_size


def _run_card(run: RunFiles, cost: dict[str, Any] | None) -> Section:
    info, cfg, distill, run_dir = run.info, run.cfg, run.distill, run.run_dir
    if info is None:
        return Section("model", "Model card", missing("model.safetensors", "the run saved no model"))
    if distill:
        cost = {**{k: distill["student"].get(k) for k in ("params", "gflops", "cpu_ms")},
                "how": (distill["student"].get("latency") or {}).get("how", distill.get("latency"))}
    rows = model_rows(info, cost or {}, card_size(run))
    if distill:
        rows.insert(1, ("distilled from", f"{cfg.distill.teacher} ({distill.get('loss')} loss, "
                                          f"T={distill.get('temperature')}, {distill.get('targets')} targets)"))
        images = cfg.distill.images if isinstance(cfg.distill.images, str) else ", ".join(cfg.distill.images or [])
        rows.append(("data", f"transfer images {images}" + (f"; labelled data {cfg.data.root}" if cfg.data.root else "")))
    else:
        s = info.summary
        counts = f"{s.get('train_images', '?')} training, {s.get('val_images', '?')} validation images"
        if s.get("unlabelled_images"):
            counts += f", {s['unlabelled_images']} unlabelled"
        rows.append(("data", f"{s.get('data', cfg.data.root)} ({counts})"))
    if run.sweep is not None:
        best, iou = run.sweep.best()
        rows.append(("best threshold on validation", f"{best:g} (IoU {iou:.4f})"))
    rows += _run_rows(run_dir, info)
    extra = [("config.yaml (resolved)", (run_dir / "config.yaml").read_text(encoding="utf-8"))]
    plan = read_json(run_dir / "plan.json")
    if plan and plan.get("reasons"):
        extra.append(("plan.json: what the data decided", "\n".join(f"{k}: {v}" for k, v in plan["reasons"].items())))
    return Section("model", "Model card", card(rows) + "".join(details(t, text) for t, text in extra))


def _run_rows(run_dir: Path, info: ModelInfo) -> list[tuple[str, str]]:
    """The model card's rows on how the run ran: precision and device, epochs, time, version."""
    from ..engine.clock import format_duration

    s = info.summary
    run = read_json(run_dir / "run.json") or {}
    history = read_csv(run_dir / "history.csv") or []
    rows = [("precision, device", run.get("compute", "not recorded (run.json missing)"))]
    best_epoch = s.get("best_epoch") or s.get("epoch")
    rows.append(("epochs", f"{len(history)}" + (f" (best: {best_epoch})" if best_epoch else "")))
    if "seconds" in run:
        rows.append(("time taken", f"{format_duration(run['seconds'])} (the epochs, validation and saving, "
                                   "without start-up)"))
    version = s.get("segdistill_version", __version__)
    rows.append(("segdistill", f"{version}; model saved {s['saved']}" if "saved" in s else version))
    return rows


def write_eval_report(out: str | Path, model_path: str | Path, data_dir: str | Path, metrics: dict[str, float],
                      sweep: Sweep | None, per_image: list[dict[str, Any]] | None, threshold: float, tta: int,
                      scored: str, cases: list[Case] | str, cost: dict[str, Any]) -> Path:
    """``out`` (an .html file): an evaluation's metrics, threshold curves, per-image IoU, the best
    and worst images (``cases``, predicted by the job), and the model card (``cost``: measured)."""
    model_path, out = Path(model_path), Path(out)
    info = read_model_info(model_path)
    rows = [{"metric": _METRIC_NAMES[k], "all pixels": metrics.get(k), "per-image mean": metrics.get(f"{k}_per_image")}
            for k in ("iou", "dice", "precision", "recall", "accuracy")]
    views = f", test-time augmentation x{tta}" if tta > 1 else ""
    sections = [Section("metrics", "Metrics", f"<p>{html.escape(scored)}; threshold {threshold:g}{views}.</p>" + table(rows))]
    if sweep is not None:
        sections.append(threshold_section(sweep, threshold, "labels", evaluate_hint=False))
    sections += image_sections(per_image, cases)
    rows_card = model_rows(info, cost, int(info.summary.get("input_size", 256)))
    rows_card.append(("trained on", str(info.summary.get("data", "not recorded"))))
    sections.append(Section("model", "Model card", card(rows_card)))
    page = render_page(f"{model_path.name} on {Path(data_dir).name or data_dir}", f"{model_path} on {data_dir}", sections)
    write_text(out, page)
    return out


def threshold_section(sweep: Sweep, threshold: float, reference: str = "labels", evaluate_hint: bool = True) -> Section:
    """Precision-recall and IoU-against-threshold curves, and the threshold with the best IoU."""
    from .plots import threshold_panels

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


def image_sections(per_image: list[dict[str, Any]] | None, cases: list[Case] | str) -> list[Section]:
    """The per-image IoU (sorted, worst first) and the best and worst images (``cases``)."""
    if not per_image:
        why = missing("per_image.csv", "no validation was scored")
        return [Section("per-image", "Per-image IoU", why), Section("cases", "Best and worst images", why)]
    rows = sorted(per_image, key=lambda r: float(r["iou"]))
    return [Section("per-image", "Per-image IoU", bars(rows)), Section("cases", "Best and worst images", cases_html(cases))]


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


def _number(v: str) -> float | int | None:
    if v in ("", None):
        return None
    f = float(v)
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f

"""``segdistill evaluate``: a model's metrics on labelled data, written beside the model (CSV, JSON,
the threshold sweep and an HTML page); optionally the best threshold stored in the model file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from ..checkpoint import read_model_info
from ..checkpoint import store_threshold as store
from ..config import load_config
from ..data.dataset import Item, SegDataset
from ..engine.evaluate import EvalResult, evaluate, evaluation_pairs, training_split
from ..errors import SegdistillError
from ..fileio import check_writable, write_json
from ..inference.backends import is_onnx
from ..inference.cases import ModelRef, predict_cases
from ..inference.choose import MEASURE_IMAGES, open_backend
from ..measure import model_cost
from ..metrics import SWEEP_THRESHOLDS
from ..reports.pages import choose_cases, write_eval_report
from ..reports.tables import format_table, write_csv
from ..runtime import set_threads

log = logging.getLogger("segdistill")


def score_model(model_path: str | Path, data_dir: str | Path, threshold: float | None, device: str,
                invert: bool | None, max_side: int | None, tta: int | None, all_images: bool, backend: str,
                precision: str) -> tuple[EvalResult, list, str, Any, Any, float, int]:
    """The evaluation ``evaluate_model`` writes: (result, scored pairs, why those, backend,
    preprocessing, threshold, TTA views)."""
    pairs, why = evaluation_pairs(data_dir, split=training_split(model_path, read_model_info(model_path).summary),
                                  all_images=all_images)
    measure_on = pairs[0].image if len(pairs) >= MEASURE_IMAGES else None
    model, info = open_backend(model_path, backend, device, precision=precision, measure_on=measure_on)
    dev = model.device
    pre = info.preprocess
    if invert is not None:
        pre.invert = invert
    if max_side is not None:
        pre.max_side = max_side
    log.info("%s", why)
    ds = SegDataset([Item(p.image, p.mask) for p in pairs], pre, train=False, cache=False, resize_masks=False)
    loader = DataLoader(ds, batch_size=1, shuffle=False, num_workers=0)
    thr = info.threshold if threshold is None else threshold
    views = info.tta if tta is None else tta
    result = evaluate(model, loader, dev, thr, names=[str(p.stem) for p in pairs], tta=views,  # type: ignore[arg-type]
                      label_offset=info.label_offset, thresholds=SWEEP_THRESHOLDS)
    return result, pairs, why, model, pre, thr, views


def evaluate_model(
    model_path: str | Path,
    data_dir: str | Path,
    out: str | Path | None = None,
    threshold: float | None = None,
    device: str = "auto",
    invert: bool | None = None,
    max_side: int | None = None,
    tta: int | None = None,
    all_images: bool = False,
    backend: str = "auto",
    precision: str = "auto",
    store_threshold: bool = False,
) -> EvalResult:
    """``segdistill evaluate``: metrics table, per-image CSV, a JSON summary, the threshold sweep
    (CSV) and an HTML report beside the CSV. ``tta`` views default to the model's own (stored at
    training). Of a folder that training splits itself, only the validation images the model's
    training held out are scored, unless ``all_images``. The model file may be an exported
    ``.onnx``; ``backend`` and ``precision`` as in inference/backends.py (``auto`` measures the
    backends once the data has ``MEASURE_IMAGES`` images or more). ``store_threshold`` rewrites the
    model file's threshold to the one with the best IoU on the scored images."""
    if store_threshold and is_onnx(model_path):
        raise SegdistillError(f"{model_path}: --store-threshold rewrites a .safetensors model file; store it there, "
                              "then export again")
    scored = score_model(model_path, data_dir, threshold, device, invert, max_side, tta, all_images, backend, precision)
    result, pairs, why, model, pre, thr, views = scored
    assert result.sweep is not None
    best, best_iou = result.sweep.best()
    out = Path(out) if out else Path(model_path).parent / f"eval_{Path(data_dir).name or 'data'}.csv"
    write_csv(out, result.per_image)
    sweep_csv = out.with_name(f"{out.stem}_thresholds.csv")
    write_csv(sweep_csv, result.sweep.rows())
    write_json(out.with_suffix(".json"), {"model": str(model_path), "backend": model.describe(), "data": str(data_dir),
                                          "images": len(pairs),
                                          "scored": why,
                                          "threshold": thr, "tta": views, **result.metrics,
                                          "best_threshold": best, "best_threshold_iou": best_iou})
    rows = [{"metric": k, "all pixels": result.metrics[k], "per-image mean": result.metrics[f"{k}_per_image"]}
            for k in ("iou", "dice", "precision", "recall", "accuracy")]
    views_note = f", TTA x{views}" if views > 1 else ""
    log.info("%s\nper-image results: %s", format_table(rows, title=f"{model_path} on {data_dir} ({len(pairs)} images, "
             f"threshold {thr}{views_note}; {model.describe()})"), out)
    log.info("threshold with the best IoU on these images: %g (IoU %.4f; %.4f at %g), curves in %s", best, best_iou,
             result.metrics["iou"], thr, sweep_csv)
    page = _eval_report(out.with_suffix(".html"), Path(model_path), data_dir, result, thr, views, why, backend, device,
                        pre.invert, pre.max_side if max_side is not None else None)
    log.info("report: %s", page)
    if store_threshold:
        old = store(model_path, best)
        log.info("threshold stored in %s: %g -> %g", model_path, old, best)
    return result


def run_evaluate(model: str, data: str, config: str | None = None, overrides: list[str] = (),  # type: ignore[assignment]
                 threads: int | str | None = None, threshold: float | None = None, device: str | None = None,
                 **options: Any) -> EvalResult:
    """The evaluate command: settings from ``config`` (device, threads, predict.threshold) unless
    given; ``options`` as in :func:`evaluate_model`."""
    cfg = load_config(config, list(overrides))
    out = options.get("out")
    check_writable(Path(out).parent if out else Path(model).parent, "evaluation")
    set_threads(threads or cfg.threads)
    return evaluate_model(model, data, threshold=threshold if threshold is not None else cfg.predict.threshold,
                          device=device or cfg.device, **options)


def _eval_report(out: Path, model_path: Path, data_dir: str | Path, result: EvalResult, threshold: float, views: int,
                 scored: str, backend: str, device: str | None, invert: bool, max_side: int | None) -> Path:
    """The evaluation's report.html: its best and worst images predicted again and the model's cost
    measured here, the page made of them (reports/pages.py)."""
    cases = predict_cases(choose_cases(result.per_image), [ModelRef("prediction", model_path, threshold, views, backend)],
                          device or "auto", invert, max_side)
    info = read_model_info(model_path)
    cost = model_cost(info, int(info.summary.get("input_size", 256))) if model_path.suffix == ".safetensors" else {}
    return write_eval_report(out, model_path, data_dir, result.metrics, result.sweep, result.per_image, threshold, views,
                             scored, cases, cost)

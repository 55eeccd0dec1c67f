"""The distillation report: teacher, distilled student and the labels-only twin side by side."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import ModelInfo, load_model
from ..config import Config
from ..fileio import write_json
from ..measure import LATENCY_JSON, count_params, model_gflops, model_latency
from ..report import format_table
from .data import latency_size
from .run import Recorder

log = logging.getLogger("segdistill")


def distill_report(cfg: Config, run_dir: Path, teacher: nn.Module, tinfo: ModelInfo, rec: Recorder,
                   teacher_metrics: dict[str, float], val_key: str, teacher_passes: int, cache_folder: Path,
                   minutes: float, twin: dict[str, Any] | None) -> dict[str, Any]:
    """Teacher, distilled student and (``twin``) the labels-only student side by side: parameters,
    GFLOPs, latency, validation scores; logged as a table and written to distill_report.json. The
    latencies are the run folder's record (measure.model_latency: a search's figures are reused)."""
    best_student, sinfo = load_model(run_dir / "model.safetensors", "cpu")
    (h, w), _ = latency_size(cfg, tinfo)
    best_row = rec.best_row()
    t_lat, s_lat = (model_latency(i, (h, w), run_dir / LATENCY_JSON) for i in (tinfo, sinfo))
    rows = [
        {"model": f"teacher ({tinfo.arch})", "params": count_params(teacher), "GFLOPs": model_gflops(tinfo, (h, w))[1],
         "CPU ms": t_lat.ms, "val IoU": teacher_metrics.get("iou"), "val Dice": teacher_metrics.get("dice"), "agreement": 1.0},
        {"model": f"student ({cfg.distill.student.name}, distilled)", "params": count_params(best_student),
         "GFLOPs": model_gflops(sinfo, (h, w))[1], "CPU ms": s_lat.ms,
         "val IoU": best_row["val_iou"] if val_key == "mask" else None,
         "val Dice": best_row["val_dice"] if val_key == "mask" else None, "agreement": best_row["agreement_iou"]},
    ]
    if twin is not None:
        rows.append({"model": f"student ({cfg.distill.student.name}, labels only)", "params": rows[1]["params"],
                     "GFLOPs": rows[1]["GFLOPs"], "CPU ms": s_lat.ms, "val IoU": twin["val_iou"],
                     "val Dice": twin["val_dice"], "agreement": None})
    report = {
        "teacher": {"file": cfg.distill.teacher, **_json_keys(rows[0]), "latency": t_lat.to_dict()},
        "student": {"file": str(run_dir / "model.safetensors"), **_json_keys(rows[1]), "latency": s_lat.to_dict()},
        "baseline_labels_only": twin,
        "compression": rows[0]["params"] / rows[1]["params"],
        "speedup_cpu": t_lat.ms / s_lat.ms,
        "iou_retained": (rows[1]["val IoU"] / rows[0]["val IoU"]) if rows[1]["val IoU"] and rows[0]["val IoU"] else None,
        "validation": "labels" if val_key == "mask" else "agreement with the teacher on held-out transfer images (no labels given)",
        "epochs": len(rec.history), "best_epoch": rec.best_epoch,
        "epochs_to_90pct_of_final_iou": _epochs_to_fraction(rec.history, "val_iou" if val_key == "mask" else "agreement_iou"),
        "teacher_forward_passes": teacher_passes, "target_cache": str(cache_folder), "targets": cfg.distill.targets,
        "loss": cfg.distill.loss, "temperature": cfg.distill.temperature, "input_size": [h, w],
        "latency": f"batch 1, {h}x{w}, fp32 on the fastest installed backend that agrees with torch, "
                   f"{s_lat.threads} thread{'s' if s_lat.threads != 1 else ''} ({LATENCY_JSON})",
        "minutes": round(minutes, 2),
    }
    write_json(run_dir / "distill_report.json", report)
    table_rows = [dict(r, params=f"{r['params'] / 1e6:.3f}M") for r in rows]
    ret = f", keeps {report['iou_retained']:.1%} of the teacher's IoU" if report["iou_retained"] else ""
    log.info("%s\ncompression %sx, CPU speed-up %sx%s\nreport: %s",
             format_table(table_rows, title=f"\nDistillation report ({report['validation']})"),
             two_digits(report["compression"]), two_digits(report["speedup_cpu"]), ret, run_dir / "distill_report.json")
    if rows[1]["params"] >= rows[0]["params"]:
        log.warning("the student (%s parameters) is not smaller than its teacher (%s): nothing is compressed; "
                    "choose a smaller distill.student (segdistill models)", f"{rows[1]['params']:,}", f"{rows[0]['params']:,}")
    return report


# Table column -> distill_report.json key (the same val_iou style as baseline_labels_only and metrics.json).
_KEYS = {"params": "params", "GFLOPs": "gflops", "CPU ms": "cpu_ms", "val IoU": "val_iou", "val Dice": "val_dice",
         "agreement": "agreement"}


def _json_keys(row: dict[str, Any]) -> dict[str, Any]:
    return {_KEYS[k]: v for k, v in row.items() if k in _KEYS}


def two_digits(x: float) -> str:
    """``x`` to two significant digits in plain notation: 0.053, 0.70, 1.4, 16, 253 (never 0.0)."""
    if not math.isfinite(x) or x <= 0:
        return f"{x:g}"
    decimals = max(0, 1 - math.floor(math.log10(x)))
    return f"{round(x, decimals):.{decimals}f}"


def _epochs_to_fraction(history: list[dict[str, Any]], key: str, fraction: float = 0.9) -> int | None:
    values = [h[key] for h in history if h.get(key) is not None]
    if not values:
        return None
    final = values[-1]
    return next(h["epoch"] for h in history if h.get(key) is not None and h[key] >= fraction * final)

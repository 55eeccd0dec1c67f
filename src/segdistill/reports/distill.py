"""The distillation report: teacher, distilled student and the labels-only twin side by side
(distill_report.json and the logged table), from figures the distillation measured."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..fileio import write_json
from ..measure import LATENCY_JSON, Latency
from .tables import format_table

log = logging.getLogger("segdistill")


@dataclass
class ModelFigures:
    """A model's cost as the report states it (measure.model_gflops, measure.model_latency)."""

    arch: str
    params: int
    gflops: float
    latency: Latency


@dataclass
class DistillOutcome:
    """What the distillation ended with, for its report."""

    history: list[dict[str, Any]]
    best_epoch: int
    best_row: dict[str, Any]
    teacher_metrics: dict[str, float]
    val_key: str
    teacher_passes: int
    cache_folder: Path
    minutes: float
    twin: dict[str, Any] | None


def distill_report(cfg: Config, run_dir: Path, teacher: ModelFigures, student: ModelFigures, size: tuple[int, int],
                   out: DistillOutcome) -> dict[str, Any]:
    """Teacher, distilled student and (``out.twin``) the labels-only student side by side: parameters,
    GFLOPs, latency, validation scores; logged as a table and written to distill_report.json."""
    (h, w), labelled, best_row = size, out.val_key == "mask", out.best_row
    rows = [
        {"model": f"teacher ({teacher.arch})", "params": teacher.params, "GFLOPs": teacher.gflops,
         "CPU ms": teacher.latency.ms, "val IoU": out.teacher_metrics.get("iou"), "val Dice": out.teacher_metrics.get("dice"),
         "agreement": 1.0},
        {"model": f"student ({cfg.distill.student.name}, distilled)", "params": student.params,
         "GFLOPs": student.gflops, "CPU ms": student.latency.ms,
         "val IoU": best_row["val_iou"] if labelled else None,
         "val Dice": best_row["val_dice"] if labelled else None, "agreement": best_row["agreement_iou"]},
    ]
    if out.twin is not None:
        rows.append({"model": f"student ({cfg.distill.student.name}, labels only)", "params": rows[1]["params"],
                     "GFLOPs": rows[1]["GFLOPs"], "CPU ms": student.latency.ms, "val IoU": out.twin["val_iou"],
                     "val Dice": out.twin["val_dice"], "agreement": None})
    s_lat = student.latency
    report = {
        "teacher": {"file": cfg.distill.teacher, **_json_keys(rows[0]), "latency": teacher.latency.to_dict()},
        "student": {"file": str(run_dir / "model.safetensors"), **_json_keys(rows[1]), "latency": s_lat.to_dict()},
        "baseline_labels_only": out.twin,
        "compression": rows[0]["params"] / rows[1]["params"],
        "speedup_cpu": teacher.latency.ms / s_lat.ms,
        "iou_retained": (rows[1]["val IoU"] / rows[0]["val IoU"]) if rows[1]["val IoU"] and rows[0]["val IoU"] else None,
        "validation": "labels" if labelled else "agreement with the teacher on held-out transfer images (no labels given)",
        "epochs": len(out.history), "best_epoch": out.best_epoch,
        "epochs_to_90pct_of_final_iou": _epochs_to_fraction(out.history, "val_iou" if labelled else "agreement_iou"),
        "teacher_forward_passes": out.teacher_passes, "target_cache": str(out.cache_folder), "targets": cfg.distill.targets,
        "loss": cfg.distill.loss, "temperature": cfg.distill.temperature, "input_size": [h, w],
        "latency": f"batch 1, {h}x{w}, fp32 on the fastest installed backend that agrees with torch, "
                   f"{s_lat.threads} thread{'s' if s_lat.threads != 1 else ''} ({LATENCY_JSON})",
        "minutes": round(out.minutes, 2),
    }
    write_json(run_dir / "distill_report.json", report)
    _log(report, rows, run_dir)
    return report


def _log(report: dict[str, Any], rows: list[dict[str, Any]], run_dir: Path) -> None:
    table_rows = [dict(r, params=f"{r['params'] / 1e6:.3f}M") for r in rows]
    ret = f", keeps {report['iou_retained']:.1%} of the teacher's IoU" if report["iou_retained"] else ""
    log.info("%s\ncompression %sx, CPU speed-up %sx%s\nreport: %s",
             format_table(table_rows, title=f"\nDistillation report ({report['validation']})"),
             two_digits(report["compression"]), two_digits(report["speedup_cpu"]), ret, run_dir / "distill_report.json")
    if rows[1]["params"] >= rows[0]["params"]:
        log.warning("the student (%s parameters) is not smaller than its teacher (%s): nothing is compressed; "
                    "choose a smaller distill.student (segdistill models)", f"{rows[1]['params']:,}", f"{rows[0]['params']:,}")


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

"""``segdistill demo``: the whole pipeline on built-in synthetic data, no downloads.

Synthetic data -> train a U-Net teacher -> evaluate -> predict new images -> distil it into a
student 16x smaller, with the same student trained from labels alone beside it, so the first thing
a new user sees is what distillation buys. About a minute on two CPU cores (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..config import load_config
from ..data.synth import make_synthetic_dataset
from ..engine.train import fit
from ..inference.predictor import Predictor
from ..reports.tables import format_table
from .distill import distill
from .evaluate import evaluate_model
from .predict import predict_to_folder
from .report import run_report
from .threads import start_threads

log = logging.getLogger("segdistill")

TEACHER = "model.args={base: 16, depth: 3}"  # 0.48M parameters
STUDENT = "distill.student.args={base: 4, depth: 3, act: leaky_relu}"  # 0.03M: 16x smaller; leaky: no dead units
UNLABELLED = 192


def run_demo(out: Path, teacher_epochs: int = 8, student_epochs: int = 24, overrides: list[str] | None = None,
             started: float | None = None) -> dict[str, Any]:
    """Run the demo into ``out``; ``overrides`` (``key=value``) apply to every stage. Returns the
    distillation report."""
    data = out / "data"
    if not (data / "images").is_dir():
        log.info("writing synthetic data to %s", data)
        make_synthetic_dataset(data, count=64, size=128, seed=0)
        make_synthetic_dataset(out / "new_images", count=16, size=160, seed=1)
        make_synthetic_dataset(out / "unlabelled", count=UNLABELLED, size=128, seed=2)
    common = [f"output_dir={out}", f"data.root={data}", "train.batch_size=8", "train.input_size=96",
              "train.samples_per_epoch=128", "train.lr=0.003", "augment.elastic=0.3", *(overrides or [])]
    teacher_cfg = load_config(None, [*common, "name=teacher", TEACHER, f"train.epochs={teacher_epochs}"])
    teacher = fit(teacher_cfg, overwrite=True, started=started, on_stall=start_threads(teacher_cfg.threads))
    log.info("report: %s", run_report(teacher.run_dir, teacher_cfg.device))
    model = teacher.run_dir / "model.safetensors"
    held_out = evaluate_model(model, data, out=out / "teacher_eval.csv")  # the validation images training held out
    pred = predict_to_folder(Predictor(model), out / "new_images" / "images", out / "predictions",
                             save_probs=True, save_overlay=True)
    # The student learns from the teacher's soft masks of the labelled training images and of
    # unlabelled ones (labels are dear, images cheap; the validation images stay out); its
    # labels-only twin (baseline) trains the same student as long on the labelled images alone.
    images = [str(data / "images"), str(out / "unlabelled" / "images")]
    student_cfg = load_config(None, [*common, "name=student", STUDENT, f"train.epochs={student_epochs}",
                                     f"distill.teacher={model}", f"distill.images={json.dumps(images)}",
                                     "distill.baseline=true", f"distill.cache_dir={out / 'cache'}"])
    student = distill(student_cfg, overwrite=True)
    r = student.report
    twin = r.get("baseline_labels_only") or {}
    rows = [
        {"what": "synthetic data (images/, masks/)", "where": str(data), "result": "64 pairs, 128x128"},
        {"what": "unlabelled images for distillation", "where": str(out / "unlabelled" / "images"),
         "result": f"{UNLABELLED} images"},
        {"what": "teacher (model, curves.png, report.html)", "where": str(teacher.run_dir),
         "result": f"val IoU {_num(r['teacher'].get('val_iou'))}, {r['teacher']['params'] / 1e6:.2f}M params"},
        {"what": "teacher evaluated on its held-out images (CSV, teacher_eval.html)", "where": str(out / "teacher_eval.csv"),
         "result": f"{len(held_out.per_image)} images, IoU {_num(held_out.metrics.get('iou'))}"},
        {"what": "predictions on 16 new images (masks, probs/, overlays/)", "where": str(pred.out_dir),
         "result": f"{pred.written} masks"},
        {"what": "student, distilled (report.html)", "where": str(student.run_dir),
         "result": f"val IoU {_num(r['student'].get('val_iou'))} = {_pct(r.get('iou_retained'))} of the teacher's, "
                   f"{r['compression']:.1f}x smaller, {r['speedup_cpu']:.1f}x faster"},
        {"what": "same student, labels only", "where": str(twin.get("run", "")),
         "result": f"val IoU {_num(twin.get('val_iou'))}"},
    ]
    print(format_table(rows, title="\nDemo finished. Results:"))
    return r


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"

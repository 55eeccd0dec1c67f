"""``segdistill demo``: the whole pipeline on built-in synthetic data, no downloads.

Synthetic data -> train a U-Net -> evaluate -> predict -> distill into a small student. Takes a
few minutes on two CPU cores; everything lands under one folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .config import load_config
from .data.synth import make_synthetic_dataset
from .engine.distill import distill
from .engine.evaluate import evaluate_model
from .engine.train import fit
from .inference.predictor import Predictor, predict_to_folder

log = logging.getLogger("segdistill")


def run_demo(out: Path, epochs: int = 8) -> dict[str, Path]:
    data = out / "data"
    if not (data / "images").is_dir():
        log.info("writing synthetic data to %s", data)
        make_synthetic_dataset(data, count=64, size=128, seed=0)
        make_synthetic_dataset(out / "new_images", count=16, size=160, seed=1)
    common = [f"output_dir={out}", f"data.root={data}", f"train.epochs={epochs}", "train.batch_size=8",
              "train.input_size=96", "train.samples_per_epoch=128", "train.lr=0.003", "augment.elastic=0.3"]
    teacher_cfg = load_config(None, [*common, "name=teacher", "model.args={base: 16, depth: 3}"])
    teacher = fit(teacher_cfg, overwrite=True)
    model = teacher.run_dir / "model.safetensors"
    evaluate_model(model, data, out=out / "teacher_eval.csv")
    predictor = Predictor(model)
    pred = predict_to_folder(predictor, out / "new_images" / "images", out / "predictions", save_probs=True, save_overlay=True)
    student_cfg = load_config(None, [*common, "name=student", f"distill.teacher={model}",
                                     f"distill.images={data / 'images'}", "distill.student.args={base: 4, depth: 3}",
                                     f"distill.cache_dir={out / 'cache'}"])
    student = distill(student_cfg, overwrite=True)
    paths = {
        "data": data,
        "teacher run (model, history.csv, curves.png)": teacher.run_dir,
        "predictions on new images (masks, probs/, overlays/)": pred.out_dir,
        "student run (distill_report.json)": student.run_dir,
    }
    print("\nDemo finished. Results:")
    for what, path in paths.items():
        print(f"  {what}: {path}")
    return paths

"""Several processes under torchrun (CPU, Gloo): the same results as one process."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from segdistill.cli import main

from .conftest import TINY_TRAIN
from .helpers import torchrun


@pytest.mark.slow
def test_two_process_train_validates_like_one_process_evaluate(synth_dir: Path, tmp_path: Path) -> None:
    # fp32: evaluate runs in fp32, and validation under bf16 autocast (auto on this CPU) flips pixels
    # whose probability is within bf16 rounding of the threshold, in one process as in two.
    proc = torchrun(["train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "ddp", *TINY_TRAIN,
                     "--set", "train.precision=fp32"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    run = tmp_path / "ddp"
    history = list(csv.DictReader(open(run / "history.csv", encoding="utf-8")))
    assert len(history) == 2
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    best = next(r for r in history if int(r["epoch"]) == metrics["epoch"])
    # One process scores the validation images the run held out, with the saved best model.
    assert main(["-q", "evaluate", str(run / "model.safetensors"), "--data", str(synth_dir),
                 "--out", str(tmp_path / "eval.csv")]) == 0
    one = json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))
    for key in ("iou", "dice", "precision", "recall", "accuracy", "iou_per_image", "dice_per_image"):
        assert one[key] == pytest.approx(metrics[key], abs=1e-6), key
    assert one["iou"] == pytest.approx(float(best["val_iou"]), abs=1e-6)

"""The run lifecycle shared by training and distillation (engine/run.py): one state, one way to end
an epoch, the same options honoured by both loops."""

import csv
import json

import pytest

import segdistill.engine.distill as distill_mod
from segdistill.checkpoint import load_state, read_model_info
from segdistill.cli import main

from .conftest import TINY_TRAIN
from .helpers import assert_resumed_run_matches, history_rows, run_killed_at

DISTILL_TINY = ["--batch-size", "4", "--input-size", "32", "--set", "train.samples_per_epoch=16",
                "--set", "distill.student.args.base=2", "--set", "distill.student.args.depth=2"]


def _distill_args(teacher, synth_dir, out, name, epochs, *extra):
    return ["distill", "--teacher", str(teacher), "--images", str(synth_dir / "images"), "--output-dir", str(out),
            "--name", name, "--epochs", str(epochs), *DISTILL_TINY, "--set", f"distill.cache_dir={out / 'cache'}",
            "--overwrite", *extra]


def _rows(run):
    return list(csv.DictReader(open(run / "history.csv")))


def test_distill_validates_every_val_every_epochs(tiny_model, synth_dir, tmp_path):
    assert main(["-q", *_distill_args(tiny_model, synth_dir, tmp_path, "v", 5, "--set", "train.val_every=2")]) == 0
    validated = [r["epoch"] for r in _rows(tmp_path / "v") if r["val_iou"]]
    assert validated == ["2", "4", "5"]  # and always the last epoch


def test_distill_stops_early_like_training(tiny_model, synth_dir, tmp_path, monkeypatch):
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1, 0.05])  # never better after the first validation

    def fake_validate(model, data, cp, threshold):
        iou = next(scores)
        return {"iou": iou, "dice": iou, "agreement": iou, "precision": 0.5, "recall": 0.5}, None  # no evaluation to save

    monkeypatch.setattr(distill_mod, "_validate", fake_validate)
    args = _distill_args(tiny_model, synth_dir, tmp_path, "e", 6, "--set", "train.early_stopping=2")
    assert main(["-q", *args]) == 0
    assert len(_rows(tmp_path / "e")) == 3  # best at 1, then 2 validations without a better IoU
    assert json.loads((tmp_path / "e" / "distill_report.json").read_text())["best_epoch"] == 1


@pytest.mark.slow
def test_train_and_distill_save_the_same_state_and_resume_after_a_kill(tiny_model, synth_dir, tmp_path):
    # 16 crops in batches of 4: 4 steps an epoch, so step 10 is mid-epoch 3.
    full, cut = (_distill_args(tiny_model, synth_dir, tmp_path, name, 4) for name in ("full", "cut"))
    assert main(["-q", *full]) == 0
    run_killed_at(cut, "train_step:10")
    assert history_rows(tmp_path / "cut") == 2
    assert main(["-q", "distill", "--resume", str(tmp_path / "cut")]) == 0
    assert_resumed_run_matches(tmp_path / "full", tmp_path / "cut", 4)
    # One list of names for both loops: what each saves beyond it is its own task's.
    assert main(["-q", "train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "t", *TINY_TRAIN]) == 0
    train_state, distill_state = load_state(tmp_path / "t" / "state.safetensors"), load_state(tmp_path / "cut" / "state.safetensors")
    assert set(train_state) - {"preprocess", "pos_weight"} == set(distill_state) - {"kd"}
    assert {"best_iou", "best_epoch", "stale", "history", "planned_epochs"} <= set(distill_state)


def test_student_carries_the_teachers_views_and_label_offset(synth_dir, tmp_path, capsys):
    assert main(["-q", "train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "t", *TINY_TRAIN,
                 "--set", "train.tta=4", "--set", "data.label_offset=[-0.5,0.25]"]) == 0
    teacher = tmp_path / "t" / "model.safetensors"
    assert main(["-q", *_distill_args(teacher, synth_dir, tmp_path, "s", 1)]) == 0
    student = tmp_path / "s" / "model.safetensors"
    s, t = read_model_info(student), read_model_info(teacher)
    assert (s.tta, s.label_offset, s.threshold) == (t.tta, t.label_offset, t.threshold) == (4, [-0.5, 0.25], t.threshold)
    capsys.readouterr()
    assert main(["evaluate", str(student), "--data", str(synth_dir), "--out", str(tmp_path / "e.csv")]) == 0
    assert "TTA x4" in capsys.readouterr().err  # predicts with the teacher's re-aligned views

"""The demo end to end, one epoch per stage (its quality is measured in docs/benchmarks.md)."""

import json

import pytest

from segdistill.cli import main


@pytest.mark.slow
def test_demo_runs_every_stage_and_says_where_everything_is(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--dir", str(out), "--epochs", "1", "--student-epochs", "1",
                 "--set", "train.samples_per_epoch=16"]) == 0
    printed = capsys.readouterr().out
    assert "Demo finished" in printed
    report = json.loads((out / "student" / "distill_report.json").read_text())
    assert report["compression"] >= 15  # the student the demo promises
    assert report["baseline_labels_only"]["val_iou"] is not None  # the labels-only twin beside it
    for path in (out / "teacher" / "model.safetensors", out / "student" / "model.safetensors",
                 out / "student" / "baseline" / "model.safetensors", out / "teacher_eval.csv"):
        assert path.is_file() and str(path.parent) in printed
    assert len(list((out / "predictions").glob("*.png"))) == 16

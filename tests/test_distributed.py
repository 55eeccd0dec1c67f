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


DISTILL_TINY = ["--epochs", "2", "--batch-size", "4", "--input-size", "32", "--set", "train.samples_per_epoch=8",
                "--set", "distill.student.args.base=2", "--set", "distill.student.args.depth=2",
                "--set", "train.precision=fp32"]


@pytest.mark.slow
def test_two_process_distill_writes_a_complete_run(tiny_model: Path, synth_dir: Path, tmp_path: Path) -> None:
    proc = torchrun(["distill", "--teacher", str(tiny_model), "--images", str(synth_dir / "images"), "--data", str(synth_dir),
                     "--output-dir", str(tmp_path), "--name", "ddp", "--baseline", *DISTILL_TINY,
                     "--set", f"distill.cache_dir={tmp_path / 'cache2'}"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    run = tmp_path / "ddp"
    for name in ("model.safetensors", "last.safetensors", "state.safetensors", "history.csv", "distill_report.json",
                 "baseline/model.safetensors"):
        assert (run / name).is_file(), name
    assert len(list(csv.DictReader(open(run / "history.csv", encoding="utf-8")))) == 2
    report = json.loads((run / "distill_report.json").read_text(encoding="utf-8"))
    assert report["validation"] == "labels" and report["student"]["val_iou"] is not None
    assert report["baseline_labels_only"]["val_iou"] is not None
    # The ranks labelled their shares of the images: the cache one process writes, byte for byte.
    assert report["teacher_forward_passes"] == 12
    assert main(["-q", "distill", "--teacher", str(tiny_model), "--images", str(synth_dir / "images"), "--data", str(synth_dir),
                 "--output-dir", str(tmp_path), "--name", "one", *DISTILL_TINY, "--set", f"distill.cache_dir={tmp_path / 'cache1'}"]) == 0
    two = {p.relative_to(tmp_path / "cache2"): p.read_bytes() for p in (tmp_path / "cache2").rglob("*.png")}
    one = {p.relative_to(tmp_path / "cache1"): p.read_bytes() for p in (tmp_path / "cache1").rglob("*.png")}
    assert len(one) == 12 and two == one


@pytest.mark.slow
def test_one_rank_killed_mid_epoch_then_resume_completes(synth_dir: Path, tmp_path: Path) -> None:
    # 8 crops an epoch over 2 ranks in batches of 4: one step per rank per epoch, so rank 1 dies in
    # epoch 3, after its optimiser step and before the epoch ends; torchrun then stops rank 0.
    args = ["train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "k", *TINY_TRAIN, "--epochs", "4"]
    killed = torchrun(args, failpoint="train_step:3@1")
    assert killed.returncode != 0 and "SIGKILL" in killed.stdout, killed.stdout[-3000:]
    run = tmp_path / "k"
    before = len(list(csv.DictReader(open(run / "history.csv", encoding="utf-8"))))
    assert 2 <= before < 4
    resumed = torchrun(["train", "--resume", str(run)])
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    rows = list(csv.DictReader(open(run / "history.csv", encoding="utf-8")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert all(r["val_iou"] != "" for r in rows)


@pytest.mark.slow
def test_two_process_self_training_labels_in_shards(synth_dir: Path, tmp_path: Path) -> None:
    from segdistill.data.synth import make_synthetic_dataset
    from segdistill.engine.semi import labels_match

    unlabelled = make_synthetic_dataset(tmp_path / "u", count=5, size=48, seed=5) / "images"
    proc = torchrun(["train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "semi", *TINY_TRAIN,
                     "--unlabelled", str(unlabelled), "--set", "semi.start_epoch=2", "--set", "semi.refresh_every=0"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    images = sorted(unlabelled.glob("*.png"))
    assert labels_match(tmp_path / "semi" / "pseudo", images)  # every share written, then the index
    assert len(list(csv.DictReader(open(tmp_path / "semi" / "history.csv", encoding="utf-8")))) == 2


def _files(folder: Path) -> dict[Path, bytes]:
    """Every file under ``folder``: relative path -> bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_two_process_predict_writes_the_masks_of_one_process(tiny_model: Path, synth_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "two" / "masks").mkdir(parents=True)
    (tmp_path / "two" / "masks" / "old.png").write_bytes(b"")  # a used folder: rank 0 alone picks masks-2
    # Batches of 1 in both runs: a batch's make-up could change the last bits on some CPUs.
    proc = torchrun(["predict", str(tiny_model), str(synth_dir / "images"), "--out", str(tmp_path / "two"),
                     "--name", "masks", "--probs", "--batch-size", "1"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    # Only rank 0 prints, the totals of both ranks.
    assert proc.stdout.count("masks written to") == 1 and f"12 masks written to {tmp_path / 'two' / 'masks-2'}" in proc.stdout
    assert main(["-q", "predict", str(tiny_model), str(synth_dir / "images"), "--out", str(tmp_path / "one"),
                 "--name", "masks", "--probs", "--batch-size", "1"]) == 0
    one, two = _files(tmp_path / "one" / "masks"), _files(tmp_path / "two" / "masks-2")
    assert len(one) == 24 and two == one
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["masks", "masks-2"]


@pytest.mark.slow
def test_two_process_teacher_labelling_of_200_images_writes_the_cache_of_one_process(tiny_model: Path, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(200):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(images / f"im{i:03d}.png")
    args = ["distill", "--teacher", str(tiny_model), "--images", str(images), "--output-dir", str(tmp_path),
            "--epochs", "1", "--batch-size", "4", "--input-size", "16", "--set", "train.samples_per_epoch=8",
            "--set", "distill.student.args.base=2", "--set", "distill.student.args.depth=2"]
    proc = torchrun([*args, "--name", "two", "--set", f"distill.cache_dir={tmp_path / 'cache2'}"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert main(["-q", *args, "--name", "one", "--set", f"distill.cache_dir={tmp_path / 'cache1'}"]) == 0
    for run in ("one", "two"):
        report = json.loads((tmp_path / run / "distill_report.json").read_text(encoding="utf-8"))
        assert report["teacher_forward_passes"] == 200, run
    one, two = _files(tmp_path / "cache1"), _files(tmp_path / "cache2")
    assert len(one) == 200 and two == one


def test_every_job_writes_its_report_before_leaving_the_process_group(
        tiny_model: Path, synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Under torchrun a rank that left the group and exited while rank 0 still wrote report.html
    # aborted in Gloo's teardown (SIGABRT, CI). Which moment a crash hits depends on the CPU's
    # speed; the order does not: each job joins, writes its pages, and only then leaves.
    from contextlib import contextmanager

    from segdistill.jobs import distill as distill_job
    from segdistill.jobs import train as train_job

    events: list[str] = []

    @contextmanager
    def group(device):  # noqa: ANN001, ANN202
        events.append("join")
        yield False
        events.append("leave")

    for job in (train_job, distill_job):
        real = job.run_report
        monkeypatch.setattr(job, "process_group", group)
        monkeypatch.setattr(job, "run_report", lambda run, device, real=real: events.append("report") or real(run, device))
    assert main(["-q", "train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "t", *TINY_TRAIN]) == 0
    assert events == ["join", "report", "leave"]
    events.clear()
    assert main(["-q", "train", "--resume", str(tmp_path / "t")]) == 0
    assert events == ["join", "report", "leave"]
    events.clear()
    assert main(["-q", "distill", "--teacher", str(tiny_model), "--images", str(synth_dir / "images"), "--data", str(synth_dir),
                 "--output-dir", str(tmp_path), "--name", "d", "--baseline", *DISTILL_TINY,
                 "--set", f"distill.cache_dir={tmp_path / 'cache'}"]) == 0
    assert events == ["join", "report", "report", "leave"]  # the labels-only twin's page, then the student's

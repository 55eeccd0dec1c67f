"""SIGKILL at random moments (named by events, not delays): every file left is complete, and --resume always continues from the
last complete checkpoint until the run ends as an uninterrupted one would."""

import csv
import random

import pytest
import yaml

from segdistill.checkpoint import load_model, load_state
from segdistill.cli import main
from segdistill.fileio import is_temporary

from .helpers import run_killed_at

EPOCHS = 14


def _args(data, out):
    return ["train", "--data", str(data), "--output-dir", str(out), "--name", "k", "--epochs", str(EPOCHS),
            "--batch-size", "4", "--input-size", "32", "--set", "model.args.base=4", "--set", "model.args.depth=2",
            "--set", "train.samples_per_epoch=16", "--overwrite"]


def _mtime(path):
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _check_complete(run):
    """Every non-temporary file parses; the state, history and models agree. Returns the state epoch."""
    files = [p for p in run.rglob("*") if p.is_file() and not is_temporary(p)]
    names = {p.name for p in files}
    if "state.safetensors" not in names:
        return 0
    state = load_state(run / "state.safetensors")
    yaml.safe_load((run / "config.yaml").read_text())
    load_model(run / "model.safetensors")
    load_model(run / "last.safetensors")
    rows = list(csv.DictReader(open(run / "history.csv")))
    # history is written before the state, so it can be one epoch ahead of it, never behind
    assert state["epoch"] <= len(rows) <= state["epoch"] + 1
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    return state["epoch"]


# Fail points and how many hits of each make at most ~1.5 epochs (4 steps, 2 validation images and
# at least 4 file writes an epoch), so 7 kills cannot reach the end of the 14 epochs on any machine.
KILL_POINTS = {"train_step": 6, "val_step": 3, "write": 6, "write_begin": 6}
KILLS = 7


@pytest.mark.slow
def test_random_sigkills_then_resume(synth_dir, tmp_path):
    # Each child SIGKILLs itself at a randomly drawn moment named by an event (the Nth step,
    # validation image or file write), never after a delay: the same moments on any CPU.
    rng = random.Random(1234)
    run = tmp_path / "k"
    last_epoch, snapshot, moments = 0, [], []
    points = sorted(KILL_POINTS) * 2
    rng.shuffle(points)  # every kind of moment at least once
    for point in points[:KILLS]:
        fresh = not (run / "config.yaml").is_file()
        moment = f"{point}:{rng.randint(1, KILL_POINTS[point])}"
        moments.append(moment)
        run_killed_at(_args(synth_dir, tmp_path) if fresh else ["train", "--resume", str(run)], moment)
        epoch = _check_complete(run)
        assert epoch >= last_epoch  # never goes back
        rows = list(csv.DictReader(open(run / "history.csv"))) if epoch else []
        assert rows[: len(snapshot)] == snapshot[: len(rows)]  # completed epochs are never rewritten
        snapshot = rows[:epoch]
        last_epoch = epoch
    assert {m.split(":")[0] for m in moments} == set(KILL_POINTS), moments
    assert last_epoch < EPOCHS
    assert main(["-q", "train", "--resume", str(run)]) == 0
    assert _check_complete(run) == EPOCHS
    assert not [p for p in run.rglob("*") if is_temporary(p)]
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == EPOCHS and rows[: len(snapshot)] == snapshot


def test_failpoint_specs_are_checked():
    from segdistill.failpoints import parse

    assert parse("train_step:3, write:1") == {"train_step": 3, "write": 1}
    assert parse("") == {}
    for bad in ("train_step", "train_step:0", "nowhere:2", "write:x", "train_step:2@", "train_step:2@x"):
        with pytest.raises(ValueError, match="SEGDISTILL_FAILPOINT"):
            parse(bad)
    # NAME:N@R: only the process of rank R (torchrun gives all ranks one environment)
    assert parse("train_step:5@1", rank=1) == {"train_step": 5}
    assert parse("train_step:5@1", rank=0) == {}
    assert parse("train_step:5@1,write:2", rank=0) == {"write": 2}

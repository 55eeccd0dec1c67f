"""SIGKILL at random moments: every file left is complete, and --resume always continues from the
last complete checkpoint until the run ends as an uninterrupted one would."""

import csv
import random
import time

import pytest
import yaml

from segdistill.checkpoint import load_model, load_state
from segdistill.cli import main
from segdistill.fileio import is_temporary

from .helpers import kill_when, spawn

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


@pytest.mark.slow
def test_random_sigkills_then_resume(synth_dir, tmp_path):
    rng = random.Random(1234)
    run = tmp_path / "k"
    kills, last_epoch, snapshot = 0, 0, []
    for _ in range(10):
        fresh = not (run / "config.yaml").is_file()
        proc = spawn(_args(synth_dir, tmp_path) if fresh else ["train", "--resume", str(run)])
        # Start-up (importing torch) takes seconds: wait until this process has finished an epoch of
        # its own, then kill at a random moment (mid-epoch, mid-validation or mid-write).
        started = time.time()
        killed = kill_when(proc, lambda t=started: _mtime(run / "state.safetensors") > t, delay=rng.uniform(0.0, 1.0))
        if not killed:
            break  # the run finished before the kill
        kills += 1
        epoch = _check_complete(run)
        assert epoch >= last_epoch  # never goes back
        rows = list(csv.DictReader(open(run / "history.csv"))) if epoch else []
        assert rows[: len(snapshot)] == snapshot[: len(rows)]  # completed epochs are never rewritten
        snapshot = rows[:epoch]
        last_epoch = epoch
    assert kills >= 5
    assert main(["-q", "train", "--resume", str(run)]) == 0
    assert _check_complete(run) == EPOCHS
    assert not [p for p in run.rglob("*") if is_temporary(p)]
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == EPOCHS and rows[: len(snapshot)] == snapshot

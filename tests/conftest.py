"""Shared fixtures: tiny synthetic data and a tiny trained model, made once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Tests are tiny; one thread keeps them fast and deterministic on a shared 2-core machine.
torch.set_num_threads(1)
# Assigned, not defaulted: a CI that sets more would let in-process runs differ from the torchrun
# children (always 1) that tests compare them with byte for byte.
os.environ["OMP_NUM_THREADS"] = "1"

pytest_plugins = ["tests.http_server"]  # the local HTTP server fixture (server) of the download tests

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def real_data(name: str) -> Path:
    """Path of a real data set under ../shared/data, or skip the test with the reason."""
    path = REAL_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data set '{name}' not found at {path} (only present on the project's machines)")
    return path


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Caches (teacher targets, measured latencies and backend choices) go to a per-session temp
    # folder, never the user's ~/.cache; session-scoped, so the session fixtures (a tiny model, a
    # distilled run) are made under it too, and no run of the suite reads another's measurements.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGDISTILL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from segdistill.data.synth import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), count=12, size=64, seed=1)


TINY_TRAIN = [
    "--epochs", "2", "--batch-size", "4", "--input-size", "32",
    "--set", "model.args.base=4", "--set", "model.args.depth=2", "--set", "train.samples_per_epoch=8",
    # one view, as the history's validation: tests compare evaluate with training's own figures
    "--set", "train.tta=1",
]


@pytest.fixture(scope="session")
def tiny_model(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model file trained for two epochs on the synthetic data (seconds)."""
    from segdistill.cli import main

    out = tmp_path_factory.mktemp("runs")
    assert main(["-q", "train", "--data", str(synth_dir), "--output-dir", str(out), "--name", "tiny", *TINY_TRAIN]) == 0
    return out / "tiny" / "model.safetensors"

"""Helpers for end-to-end tests that run segdistill in a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

# Not a time limit on the work (outcomes never depend on speed): a guard so that a hung child
# fails the test instead of CI. It is far beyond what any of these tiny runs take on a slow CPU.
HANG_GUARD_S = 900


def spawn(args: list[str], failpoint: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("SEGDISTILL_FAILPOINT", None)
    if failpoint:
        env["SEGDISTILL_FAILPOINT"] = failpoint
    # A session of its own: a hung child is killed with everything it started (see finish).
    return subprocess.Popen([sys.executable, "-m", "segdistill", "-q", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen) -> str:
    """``proc``'s output once it exits; past HANG_GUARD_S its whole process group is killed (the
    ranks torchrun started, a DataLoader's workers) and the test fails, leaving nothing running."""
    try:
        out, _ = proc.communicate(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"hung for {HANG_GUARD_S} s, killed: {proc.args}\n"
                             f"{out.decode(errors='replace')[-2000:]}") from None
    return out.decode(errors="replace")


def run_killed_at(args: list[str], failpoint: str) -> None:
    """Run ``segdistill ARGS`` in a child that SIGKILLs itself at ``failpoint`` (``"train_step:7"``,
    see segdistill/failpoints.py); fail unless that kill is how it ended."""
    proc = spawn(args, failpoint)
    out = finish(proc)
    assert proc.returncode == -signal.SIGKILL, (
        f"expected a kill at {failpoint}, exit code {proc.returncode}:\n{out[-2000:]}")


def history_rows(run_dir: Path) -> int:
    f = run_dir / "history.csv"
    try:
        return max(0, len(f.read_text().strip().splitlines()) - 1)
    except OSError:
        return 0


def assert_resumed_run_matches(full: Path, cut: Path, epochs: int, image_size: int = 32) -> None:
    """A run killed and resumed (``cut``) ends as the uninterrupted one (``full``): the same number
    of epochs, the same losses, the same last model."""
    import csv

    import pytest
    import torch

    from segdistill.checkpoint import load_model

    a, b = (list(csv.DictReader(open(run / "history.csv"))) for run in (full, cut))
    assert len(a) == len(b) == epochs
    assert [r["train_loss"] for r in a] == pytest.approx([r["train_loss"] for r in b], abs=1e-3)
    ma, _ = load_model(full / "last.safetensors")
    mb, _ = load_model(cut / "last.safetensors")
    x = torch.randn(1, 1, image_size, image_size)
    assert torch.allclose(ma(x), mb(x), atol=1e-3)


SRC = Path(__file__).resolve().parents[1] / "src"


def torchrun(args: list[str], nproc: int = 2, failpoint: str | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=NPROC -m segdistill -q ARGS`` on this checkout's
    code (CPU, Gloo); waits for torchrun itself to exit (it tears down the other ranks when one
    dies). ``failpoint`` as in spawn, given to every rank (``"train_step:5@1"`` fires on rank 1 only)."""
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("SEGDISTILL_FAILPOINT", None)
    if failpoint:
        env["SEGDISTILL_FAILPOINT"] = failpoint
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "segdistill", "-q", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    out = finish(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


def trained_statistics(model, spread: float = 0.5):
    """``model`` with batch-norm statistics far from the identity, as after training (an export
    check on fresh statistics would pass trivially); returns it."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-spread, spread)
            m.running_var.uniform_(0.5, 2.0)
    return model

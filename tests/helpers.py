"""Helpers for end-to-end tests that run segdistill in a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def spawn(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "segdistill", "-q", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def history_rows(run_dir: Path) -> int:
    f = run_dir / "history.csv"
    try:
        return max(0, len(f.read_text().strip().splitlines()) - 1)
    except OSError:
        return 0


def kill_when(proc: subprocess.Popen, condition, timeout: float = 120.0, delay: float = 0.0) -> bool:
    """SIGKILL ``proc`` once ``condition()`` holds (then after ``delay`` s); False if it ended first."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            return False
        if condition():
            time.sleep(delay)
            if proc.poll() is not None:
                return False
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    proc.kill()
    raise TimeoutError("condition never held")

"""Shared bits of the benchmark scripts: machine description, tables, JSON output."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from segdistill.reports.tables import format_table  # noqa: E402
from segdistill.runtime import cpu_description  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"

# Long benchmarks show segdistill's per-epoch lines.
logging.basicConfig(level=logging.INFO, format="%(message)s")


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": cpu_description(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def _one_thread(fn: Callable[..., Any], *args: Any) -> Any:
    import torch

    torch.set_num_threads(1)
    return fn(*args)


def run_jobs(fn: Callable[..., Any], arglists: list[tuple[Any, ...]], jobs: int = 1) -> list[Any]:
    """``[fn(*a) for a in arglists]``; with ``jobs`` > 1, that many at once in fresh processes of one
    thread each. Small models are bound by per-operation overhead, not arithmetic, so two one-thread
    processes get about twice the work done of one two-thread process. ``fn`` must be importable
    (defined at the top level of a module)."""
    if jobs <= 1:
        return [fn(*a) for a in arglists]
    ctx = __import__("multiprocessing").get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        futures = [pool.submit(_one_thread, fn, *a) for a in arglists]
        try:
            return [f.result() for f in futures]
        except BaseException:
            pool.shutdown(cancel_futures=True)  # one failure ends the benchmark, not hours later
            raise


def rss_mb() -> float:
    """Resident memory of this process in MB (Linux)."""
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def finish(name: str, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None, title: str = "") -> Path:
    """Print the table and write results/NAME.json beside this file."""
    info = machine()
    print(format_table(rows, title=title or name))
    print(f"machine: {info['cpu']}; {info['date']}")
    out = Path(__file__).resolve().parent / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": info, "rows": rows, **(extra or {})}, indent=2, default=str) + "\n")
    print(f"results: {out}")
    return out

"""``segdistill report``: (re)write a run folder's report.html."""

from __future__ import annotations

from pathlib import Path

from ..html_report import write_run_report
from ..runtime import set_threads


def report(run_dir: str | Path, device: str | None = None, threads: int | str | None = None) -> Path:
    """Write ``run_dir``/report.html and print where it is."""
    set_threads(threads or "auto")
    page = write_run_report(run_dir, device=device or "auto")
    print(f"report: {page}")
    return page

"""``segdistill train``: check the data, train (or resume) a run, print its folder."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import Config
from ..data.check import check_data
from ..distributed import is_main_process, process_group
from ..engine.run import run_config
from ..engine.train import fit
from ..errors import SegdistillError
from ..fileio import check_writable
from ..runtime import select_device
from .report import run_report
from .threads import start_threads

log = logging.getLogger("segdistill")


def train(cfg: Config, overwrite: bool = False, skip_check: bool = False, started: float | None = None) -> Path:
    """Train ``cfg`` into a new run folder (``overwrite``: reuse runs/NAME), after the data check
    unless ``skip_check``; prints and returns the folder."""
    check_writable(cfg.output_dir, "run folder")  # before the data check reads every image
    if not skip_check:
        report = check_data(cfg.data, cfg.seed)
        if not report.ok:
            more = f" (and {len(report.errors) - 1} more; run 'segdistill data check')" if len(report.errors) > 1 else ""
            raise SegdistillError(report.errors[0] + more)
    on_stall = start_threads(cfg.threads)
    # The job holds torchrun's process group until rank 0 has written the report, so every rank
    # leaves together after the last write (distributed.process_group; how a rank ends: cli._leave).
    with process_group(select_device(cfg.device)):
        result = fit(cfg, overwrite=overwrite, started=started, on_stall=on_stall)
        if is_main_process():
            log.info("report: %s", run_report(result.run_dir, cfg.device))
            print(f"results: {result.run_dir}")
    return result.run_dir


def resume(run_dir: str | Path, started: float | None = None) -> None:
    """Continue the interrupted run in ``run_dir`` exactly as configured there."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)  # its threads are set before the run starts
    on_stall = start_threads(cfg.threads)
    with process_group(select_device(cfg.device)):  # held until the report is written, as in train
        fit(None, resume=run_dir, started=started, on_stall=on_stall)  # type: ignore[arg-type]
        if is_main_process():
            log.info("report: %s", run_report(run_dir, cfg.device))

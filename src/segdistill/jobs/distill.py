"""``segdistill distill``: a configured distillation, or with ``distill.search`` the search for the
student first (engine/search/) and then the winner's distillation; resumes either."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..config import Config, as_config, validate_distill
from ..distributed import is_main_process, process_group
from ..engine.autoplan import plan_student
from ..engine.distill import DistillResult, distill_student, student_config
from ..engine.loaders import transfer_images
from ..engine.run import complete_message, open_run, read_plan
from ..engine.search.orchestrate import search_student
from ..fileio import check_writable, read_json
from ..remote import is_url, local_model
from ..runtime import select_device
from .report import run_report
from .threads import start_threads

log = logging.getLogger("segdistill")


def distill(cfg: Config | dict[str, Any], resume: str | Path | None = None, overwrite: bool = False,
            started: float | None = None) -> DistillResult:
    """Run a configured distillation (``cfg``: a Config or a dict of config keys, as in ``fit``);
    see the module docstring. ``started``: as in ``fit``. With ``distill.search`` the student is
    searched for first, and the winner distilled (engine/search/)."""
    started = time.monotonic() if started is None else started
    if not resume:
        cfg = as_config(cfg, "distill")
        check_writable(cfg.output_dir, "run folder")  # before the teacher or any image is read
    cfg, run_dir, state = open_run(None if resume else cfg, resume, overwrite)
    done = complete_message(cfg, run_dir, state)
    report = (read_json(run_dir / "distill_report.json") if done else None) or {}
    # Without the report of these epochs (killed after the last one), the resume writes it.
    if (done is not None and state is not None and report.get("epochs") == len(state.get("history", []))
            and (not cfg.distill.search or "search" in report)):  # a search's report ends with the search
        log.info(done)
        return DistillResult(run_dir, list(state["history"]), report)
    validate_distill(cfg)
    if is_url(cfg.distill.teacher):  # type: ignore[arg-type]
        cfg.distill.teacher = str(local_model(cfg.distill.teacher))  # type: ignore[arg-type]  # downloaded once, verified
    if resume is None:  # a resumed run goes on with the plan in its config.yaml
        cfg, plan = plan_student(cfg, len(transfer_images(cfg)))  # videos: decodes their frames, once
    else:
        plan = read_plan(run_dir)
    cfg = student_config(cfg)
    on_stall = start_threads(cfg.threads)
    device = select_device(cfg.device)
    with process_group(device):  # held until rank 0 has written the pages (see jobs/train.py)
        torch.manual_seed(cfg.seed)
        if cfg.distill.search:
            result = search_student(cfg, run_dir, state, device, plan, fresh=resume is None, on_stall=on_stall)
        else:
            result = distill_student(cfg, run_dir, state, device, started, plan, on_stall=on_stall)
        if result.report and is_main_process():
            twin = result.report.get("baseline_labels_only")
            if twin:  # the labels-only twin is a run of its own, with its own page
                run_report(twin["run"], cfg.device)
            log.info("report: %s", run_report(run_dir, cfg.device))
    return result

"""``segdistill report``: (re)write a run folder's report.html; also how train, distill and
benchmark end. The page (reports/pages.py) is made of results; this job runs what it needs a model
for: the best and worst images predicted again, and the model's cost where the run did not state it."""

from __future__ import annotations

from pathlib import Path

from ..inference.cases import predict_cases, run_models
from ..measure import LATENCY_JSON, model_cost
from ..reports.pages import REPORT_ERRORS, card_size, choose_cases, damaged, read_run, write_run_report
from ..runtime import set_threads


def run_report(run_dir: str | Path, device: str = "auto") -> Path:
    """Write ``run_dir``/report.html; returns its path."""
    run = read_run(run_dir)
    try:
        cases = (predict_cases(choose_cases(run.per_image), run_models(run.run_dir, run.cfg, run.distill), device,
                               run.info.preprocess.invert) if run.info is not None and run.per_image
                 else "The run saved no model, so no image is predicted.")
        # A distillation states its models' cost in distill_report.json; a training run's is measured
        # (or read from the run's latency.json, which holds the run's one figure).
        cost = (model_cost(run.info, card_size(run), run.run_dir / LATENCY_JSON)
                if run.info is not None and not run.distill else None)
    except REPORT_ERRORS as e:
        raise damaged(run_dir, e) from None
    return write_run_report(run, cases, cost)


def report(run_dir: str | Path, device: str | None = None, threads: int | str | None = None) -> Path:
    """Write ``run_dir``/report.html and print where it is."""
    set_threads(threads or "auto")
    page = run_report(run_dir, device=device or "auto")
    print(f"report: {page}")
    return page

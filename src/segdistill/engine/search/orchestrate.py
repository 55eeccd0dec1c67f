"""Finding the student: ``distill --search keep=0.97`` or ``--search latency=8ms``.

The search tries students of the ``unet`` family (width, depth and, where the model has them, the
``stem``/``block`` designs) and, for a teacher on a pretrained encoder (photos), pretrained
``encoder_unet`` students (the encoder cut at each depth, at half and three-quarter resolution),
by successive halving on the teacher's cached targets, which makes every
further short distillation free of teacher work:

1. The grid: every width x depth x design with 2x to 1000x fewer parameters than the teacher (and
   the encoder students, whatever their parameters), each
   timed once (torch) at the working size. The configured student (``distill.student``) is always a
   candidate: its first short distillation times an epoch, which sets the default budget (about
   twice one full distillation) and how many candidates the budget affords.
2. The candidates: that many, spread over the grid (latency, parameters, design), timed again on
   every fp32 backend installed (inference/choose.py ``measure``); the fastest that agrees counts.
3. The rungs: all candidates for a few epochs, then the better half for twice as long, and so on down
   to two. "Better" is the accuracy/latency plane: whole Pareto fronts go on first, and a front that
   does not fit is cut by the objective.
4. The winner, from the last full rung, is distilled for the full length in the run folder itself,
   as a plain distillation would be; the report then says whether it met the objective.

Every decision and result is recorded in RUN/search.json (atomically, after each step), so
``distill --resume RUN`` goes on from the last recorded step; candidate runs live in RUN/search/.
The pure parts (objective, grid, schedule, Pareto front, promotion, choice of the winner) come first
and are tested on their own; the I/O follows.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ...checkpoint import ModelInfo, read_model_info
from ...config import Config, ModelConfig
from ...data.plan import PHOTO_ENCODER
from ...distributed import is_distributed
from ...errors import ConfigError
from ...inference.backends import Choice
from ...measure import LATENCY_JSON, count_params, latency_choices, model_gflops, model_latency
from ...models import create_model, resolved_args
from ...models.registry import model_signature
from ...reports.search import format_params, log_outcome, write_search_report
from .. import clock
from ..clock import StallHandler, format_duration
from ..distill import DistillResult, TeacherFigures, distill_student
from ..loaders import latency_size
from ..run import complete_message, open_run, start_run
from .book import Book
from .rules import (
    BUDGET_FACTOR,
    MAX_CANDIDATES,
    MAX_LATENCY_SHARE,
    SHRINK,
    Objective,
    candidate_arch,
    candidate_grid,
    candidate_name,
    cost_ratio,
    default_budget_s,
    design_name,
    encoder_grid,
    fast_enough,
    favour,
    first_epochs,
    halving_schedule,
    pick_winner,
    promote,
    spread,
    weighted_cost,
)
from .teacher import score_teacher

log = logging.getLogger("segdistill")

# --------------------------------------------------------------------------------------------------
# The search.


def search_student(cfg: Config, run_dir: Path, state: dict | None, device: torch.device, plan: dict[str, Any] | None,
                   fresh: bool, on_stall: StallHandler | None = None) -> DistillResult:
    """``distill --search``: the search of the module docstring in ``run_dir``, then the winner's
    full distillation there (``state``: the winner's saved training state, when it had begun;
    ``on_stall``: what its stalled epochs do, as in ``fit``)."""
    if is_distributed():
        raise ConfigError("--search runs in one process (not under torchrun)")
    if fresh:
        _check(cfg)
        start_run(run_dir, cfg, plan)  # config.yaml: what --resume continues
    book = Book.open(run_dir, fresh)
    objective = Objective.parse(cfg.distill.search)  # type: ignore[arg-type]
    book.data.setdefault("objective", str(objective))
    if "teacher" not in book.data:
        score_teacher(cfg, book, device)
    if "grid" not in book.data:
        _grid(cfg, book)
    reference = book.data["reference"]
    if reference not in book.runs(0):
        book.data["setup_s"] = round(book.spent, 3)
        log.info("timing an epoch: the configured student %s for %d epoch(s)", reference, first_epochs(cfg.train.epochs))
        run = _run(cfg, book, run_dir, reference, 0, first_epochs(cfg.train.epochs), device)
        log.info("the configured student %s: IoU %.4f after %d epoch(s); an epoch takes about %.1fs here", reference,
                 run["iou"], run["epochs"], run["epoch_s"])
    if "rungs" not in book.data:
        _plan(cfg, book, objective)
    if "stopped" not in book.data:
        _rungs(cfg, book, run_dir, objective, device)
    if "winner" not in book.data:
        _pick(book, objective)
    return _final(cfg, book, run_dir, state, device, plan, objective, on_stall)


def _check(cfg: Config) -> None:
    if cfg.train.time_budget is not None:
        raise ConfigError("--search has its own budget (--search-budget MINUTES); --time (train.time_budget) is for "
                          "one distillation")
    if cfg.data.root is None and cfg.data.train_images is None and cfg.distill.val_fraction <= 0:
        raise ConfigError("--search compares students on validation images: give labelled data (--data) or keep "
                          "distill.val_fraction above 0")
    _reference_args(cfg)


def _reference_args(cfg: Config) -> dict[str, Any]:
    """The configured student as ``unet`` arguments (a named size such as unet_nano is a unet)."""
    s = cfg.distill.student
    signature = model_signature("unet")
    if set(model_signature(s.name)) != set(signature):  # unet and its named sizes (unet_nano, ...) only
        raise ConfigError(f"--search searches the unet family; distill.student is {s.name!r}: set it to unet (its "
                          "arguments give the first candidate)")
    args = resolved_args(s.name, **s.args)
    return {k: v for k, v in args.items() if k in signature and k != "in_channels"}


def _grid(cfg: Config, book: Book) -> None:
    """The grid: parameters, GFLOPs and a quick torch latency of every candidate and the teacher."""
    tinfo = read_model_info(Path(cfg.distill.teacher))  # type: ignore[arg-type]
    size, size_from = latency_size(cfg, tinfo)
    ch = tinfo.preprocess.in_channels
    reference = _reference_args(cfg)
    teacher_params = count_params(create_model(tinfo.arch, **tinfo.args))
    grid = []
    for i, args in enumerate(candidate_grid(reference, model_signature("unet"))):
        params = count_params(create_model("unet", in_channels=ch, **args))
        if i == 0 or teacher_params / SHRINK[1] <= params <= teacher_params / SHRINK[0]:
            grid.append({"name": candidate_name(args), "args": args, "params": params})
    if "encoder" in tinfo.args:  # a teacher on a pretrained encoder (photos): pretrained students join the grid
        for args in encoder_grid(PHOTO_ENCODER):  # latency, not parameters, sets them apart: no parameter band
            grid.append({"name": candidate_name(args), "args": args,
                         "params": count_params(create_model("encoder_unet", in_channels=ch, **args))})
    log.info("search %s: %d students considered (%s-%s parameters, the teacher has %s); timing "
             "each at %dx%d (%s) ...", cfg.distill.search, len(grid), format_params(min(g["params"] for g in grid)),
             format_params(max(g["params"] for g in grid)), format_params(teacher_params), *size, size_from)
    quick = _latencies([(g["name"], candidate_arch(g["args"]), {"in_channels": ch, **g["args"]}) for g in grid]
                       + [("teacher", tinfo.arch, tinfo.args)], tinfo, size, [Choice("torch", "fp32", True)], runs=3)
    for g in grid:
        g.update(quick[g["name"]])
    kept, slow = fast_enough(grid[1:], quick["teacher"]["latency_ms"])
    grid = [grid[0]] + kept
    if slow:
        log.info("search: %d of them left out, slower than %.0f%% of the teacher (%.1f ms here): %s", len(slow),
                 100 * MAX_LATENCY_SHARE, quick["teacher"]["latency_ms"],
                 ", ".join(g["name"] for g in slow[:8]) + (" ..." if len(slow) > 8 else ""))
    book.data["left_out"] = [{"name": g["name"], "latency_ms": g["latency_ms"]} for g in slow]
    book.data["teacher"].update(params=teacher_params, gflops=quick["teacher"]["gflops"],
                                quick_latency_ms=quick["teacher"]["latency_ms"])
    book.data.update(grid=grid, reference=grid[0]["name"], size=list(size), size_from=size_from,
                     full_epochs=cfg.train.epochs)
    book.save()


def _latency_choices() -> list[Choice]:
    """The ways to run a candidate whose latency counts (measure.latency_choices; replaceable in tests)."""
    return latency_choices()


def _latencies(models: list[tuple[str, str, dict[str, Any]]], tinfo: ModelInfo, size: tuple[int, int],
               choices: list[Choice], runs: int = 5, record: Path | None = None) -> dict[str, dict[str, Any]]:
    """{name: latency_ms, backend, how, gflops} of each (name, arch, args) at ``size``
    (measure.model_latency: on the architecture, so the teacher never runs here; ``record``: the run
    folder's latency.json, where the distillation report and report.html find the same figures)."""
    out = {}
    for name, arch, args in models:
        info = ModelInfo(arch, resolved_args(arch, **args), tinfo.preprocess, tinfo.threshold, {})
        lat = model_latency(info, size, record, choices, runs)
        out[name] = {"latency_ms": lat.ms, "backend": f"{lat.backend} {lat.precision}", "how": lat.describe(),
                     "gflops": round(model_gflops(info, size)[1], 4)}
    return out


def _plan(cfg: Config, book: Book, objective: Objective) -> None:
    """The budget, how many candidates it affords, which ones, their rungs; each candidate timed on
    every backend."""
    d, full = book.data, cfg.train.epochs
    t_ref = book.epoch_s(d["reference"])
    budget = cfg.distill.search_budget
    t_full = book.epoch_only_s(d["reference"])
    d["budget_s"] = budget * 60 if budget else default_budget_s(full, t_full, d.get("setup_s", 0.0))
    d["budget_from"] = ("--search-budget" if budget else
                        f"about twice one full distillation ({BUDGET_FACTOR:g}x {full} epochs at {t_full:.1f}s, the "
                        "configured student's), "
                        f"its {format_duration(d.get('setup_s', 0.0))} of setup included")
    grid = {g["name"]: g for g in d["grid"]}
    eligible, first = [g for g in d["grid"] if objective.feasible(g["latency_ms"])], [d["reference"]]
    if not eligible:
        fastest = min(d["grid"], key=lambda g: g["latency_ms"])
        log.warning("search %s: no student of the grid runs that fast here (the fastest, %s, takes %.2f ms): the "
                    "search goes on with the fastest", objective, fastest["name"], fastest["latency_ms"])
        eligible, first = [fastest], [d["reference"], fastest["name"]]
    available = (d["budget_s"] - book.spent - full * t_full) / t_ref + first_epochs(full)  # in epochs of the reference
    most = min(MAX_CANDIDATES, len(set(g["name"] for g in eligible) | {d["reference"]}))
    design = sorted({design_name(g["args"]) for g in d["grid"]})
    points = {g["name"]: (math.log(g["latency_ms"]), math.log(g["params"]), *(float(design_name(g["args"]) == x) for x in design))
              for g in eligible + [grid[d["reference"]]]}
    if objective.kind == "keep":  # the hope is a faster student than the configured one: most slots go there
        ref_ms = grid[d["reference"]]["latency_ms"]
        faster = {k: v for k, v in points.items() if k in first or grid[k]["latency_ms"] < ref_ms}
        slower = {k: v for k, v in points.items() if k not in faster}
        order = favour(spread(faster, most, first), spread(slower, most, []), len(set(first)))[:most]
    else:
        order = spread(points, most, first)  # farthest-point order: every prefix covers the grid
    ratios = [cost_ratio(grid[c]["latency_ms"], grid[d["reference"]]["latency_ms"]) for c in order]
    n = max([len(set(first))] + [k for k in range(1, len(order) + 1) if weighted_cost(ratios[:k], full) <= available])
    chosen = order[:n]
    tinfo = read_model_info(Path(cfg.distill.teacher))  # type: ignore[arg-type]
    ch, size = tinfo.preprocess.in_channels, tuple(d["size"])
    log.info("timing the %d candidates and the teacher on %s ...", len(chosen), ", ".join(c.label() for c in _latency_choices()))
    d["latency"] = _latencies([(c, candidate_arch(grid[c]["args"]), {"in_channels": ch, **grid[c]["args"]}) for c in chosen]
                              + [("teacher", tinfo.arch, tinfo.args)], tinfo, size, _latency_choices(),  # type: ignore[arg-type]
                              record=book.path.parent / LATENCY_JSON)
    d["teacher"].update(latency_ms=d["latency"]["teacher"]["latency_ms"], backend=d["latency"]["teacher"]["backend"])
    d["candidates"] = chosen
    d["rungs"] = [{"candidates": r.candidates, "epochs": r.epochs} for r in halving_schedule(len(chosen), full)]
    book.save()
    _log_plan(book, objective)


def _log_plan(book: Book, objective: Objective) -> None:
    from ...reports.tables import format_table

    d = book.data
    rungs = "; ".join(f"rung {k + 1}: {r['candidates']} x {r['epochs']} epoch(s)" for k, r in enumerate(d["rungs"]))
    rows = [{"candidate": c, "params": format_params(g["params"]), "GFLOPs": g["gflops"],
             "latency ms": d["latency"][c]["latency_ms"], "backend": d["latency"][c]["backend"]}
            for c in d["candidates"] for g in d["grid"] if g["name"] == c]
    log.info("%s\nsearch %s, budget %s (%s): %s; then the winner x %d epochs (its full distillation)",
             format_table(rows, title=f"\nSearch candidates (latency batch 1 at {d['size'][0]}x{d['size'][1]})"),
             objective, format_duration(d["budget_s"]), d["budget_from"], rungs, d["full_epochs"])


def _rungs(cfg: Config, book: Book, run_dir: Path, objective: Objective, device: torch.device) -> None:
    """Successive halving; stops before a run that would leave too little of the budget for the
    winner's full distillation."""
    d, full = book.data, cfg.train.epochs
    members = list(d["candidates"])
    for k, rung in enumerate(d["rungs"]):
        if k > 0:
            members = promote([book.score(r) for r in book.runs(k - 1).values()], rung["candidates"], objective)
        # Kept back for the winner: one full distillation of the configured student, as the default
        # budget counts it (a slower winner's distillation is fitted to what is left, _final), and
        # at least a quarter of one of the slowest member's.
        reserve = max(full * book.epoch_only_s(d["reference"]), max(1, full // 4) * max(book.epoch_s(m) for m in members))
        for i, name in enumerate(members):
            if name in book.runs(k):
                continue
            if book.spent + rung["epochs"] * book.epoch_s(name) + reserve > d["budget_s"]:
                d["stopped"] = {"reason": "budget", "rung": k + 1, "runs_left": len(members) - i}
                book.save()
                log.info("search: the budget (%s, %s spent) leaves no room for rung %d beside the winner's full "
                         "distillation: stopping with the best so far", format_duration(d["budget_s"]),
                         format_duration(book.spent), k + 1)
                return
            run = _run(cfg, book, run_dir, name, k, rung["epochs"], device, rung["epochs"] * book.epoch_s(name))
            log.info("search rung %d/%d, %d/%d: %s (%s parameters, %.2f ms): IoU %.4f after %d epoch(s) (%.0fs); %s of %s",
                     k + 1, len(d["rungs"]), i + 1, len(members), name, format_params(_entry(d, name)["params"]),
                     d["latency"][name]["latency_ms"], run["iou"], run["epochs"], run["seconds"],
                     format_duration(book.spent), format_duration(d["budget_s"]))
    d["stopped"] = {"reason": "done"}
    book.save()


def _run(cfg: Config, book: Book, run_dir: Path, name: str, rung: int, epochs: int, device: torch.device,
         expected_s: float | None = None) -> dict[str, Any]:
    """The short distillation of candidate ``name`` in RUN/search/NAME-rK (resumed when its own
    training state is there), recorded in search.json (with ``expected_s``, the seconds the budget
    counted on for it: how far off the estimate was stays on record)."""
    sub = run_dir / "search" / f"{name}-r{rung + 1}"
    t0, done = clock._now(), 0
    with _quiet():
        if (sub / "state.safetensors").is_file() and (sub / "config.yaml").is_file():
            ccfg, _, state = open_run(None, sub, False)
            done = int(state["epoch"])  # type: ignore[index]
            history = list(state["history"]) if complete_message(ccfg, sub, state) else \
                distill_student(ccfg, sub, state, device, clock._now(), None, short=True).history
        else:
            shutil.rmtree(sub, ignore_errors=True)  # a start killed before its first epoch was saved
            torch.manual_seed(cfg.seed)  # each candidate as if it ran alone: a resumed search gets the same results
            history = distill_student(_candidate_config(cfg, _entry(book.data, name)["args"], epochs, sub), sub, None, device,
                               clock._now(), None, short=True).history
    seconds = clock._now() - t0
    best = max((h for h in history if h.get("val_iou") is not None), key=lambda h: h["val_iou"])
    run = {"name": name, "rung": rung, "epochs": len(history), "iou": best["val_iou"], "dice": best["val_dice"],
           "agreement": best["agreement_iou"], "best_epoch": best["epoch"], "seconds": round(seconds, 2),
           "epoch_s": round(seconds / max(1, len(history) - done), 3),
           # an epoch alone (the median of its epochs' own seconds), without the run's fixed cost:
           # what a full distillation's length is estimated from
           "epoch_only_s": round(statistics.median([h["seconds"] for h in history[done:]] or [seconds]), 3),
           "folder": str(sub.relative_to(run_dir)),
           "expected_s": round(expected_s, 3) if expected_s is not None else round(seconds, 3)}
    book.data["runs"].append(run)
    book.save()
    for f in ("state.safetensors", "last.safetensors"):  # recorded: only its best model is worth keeping
        (sub / f).unlink(missing_ok=True)
    return run


def _candidate_config(cfg: Config, args: dict[str, Any], epochs: int, sub: Path) -> Config:
    c = copy.deepcopy(cfg)
    c.distill.student = ModelConfig(candidate_arch(args), dict(args), cfg.distill.student.pretrained)
    c.distill.search = c.distill.search_budget = None  # a candidate's folder holds a plain distillation
    c.distill.baseline = False
    c.train.epochs, c.train.time_budget = epochs, None
    c.output_dir, c.name = str(sub.parent), sub.name
    return c


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Warnings only from a candidate's run: the search logs one line per run."""
    level = log.level
    log.setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    try:
        yield
    finally:
        log.setLevel(level)


def _entry(d: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in d["grid"] if g["name"] == name)


def last_full_rung(book: Book, objective: Objective) -> int:
    """The deepest rung every member of which was distilled (rung 1 when even it was cut short)."""
    d, deepest = book.data, 0
    for k in range(1, len(d.get("rungs", []))):
        before = book.runs(k - 1)
        want = promote([book.score(r) for r in before.values()], d["rungs"][k]["candidates"], objective)
        if not want or any(w not in book.runs(k) for w in want):
            break
        deepest = k
    return deepest


def _pick(book: Book, objective: Objective) -> None:
    """The winner, from the last full rung: for ``keep``, the fastest keeping the share of the
    teacher's IoU; when none does yet after so few epochs, the share of the best IoU of the rung
    (that student standing in for the teacher after a full distillation). Only candidates an epoch
    of which fits in what is left of the budget can win (the quickest to distil when none does)."""
    d = book.data
    k, left = last_full_rung(book, objective), d["budget_s"] - book.spent
    scores = [book.score(r) for r in book.runs(k).values()]
    fits = [s for s in scores if book.epoch_s(s.name) <= left] or \
        [min(scores, key=lambda s: book.epoch_s(s.name))]  # none: the quickest to distil
    scores, note = (fits, f"; among those an epoch of which fits in the {format_duration(left)} left") \
        if len(fits) < len(scores) else (scores, "")
    pick, rule = pick_winner(scores, objective, d["teacher"]["val_iou"]), "the objective on the teacher's IoU"
    if objective.kind == "keep" and not pick.meets:
        best = max(s.iou for s in scores)
        pick = pick_winner(scores, objective, best)
        rule = (f"none kept {objective.value:g} of the teacher's IoU after {d['rungs'][k]['epochs']} epoch(s): the "
                f"fastest keeping {objective.value:g} of the rung's best ({best:.4f})")
    rule += note
    run = book.runs(k)[pick.name]
    d["winner"] = {"name": pick.name, "args": _entry(d, pick.name)["args"], "rung": k, "iou": run["iou"],
                   "epochs": run["epochs"], "meets": pick.meets, "rule": rule}
    book.save()
    log.info("search: the winner is %s (rung %d: IoU %.4f after %d epochs, %.2f ms; %s); distilling it fully",
             pick.name, k + 1, run["iou"], run["epochs"], d["latency"][pick.name]["latency_ms"], rule)


def _final(cfg: Config, book: Book, run_dir: Path, state: dict | None, device: torch.device, plan: dict[str, Any] | None,
           objective: Objective, on_stall: StallHandler | None) -> DistillResult:
    """The winner's full distillation in the run folder (its time fitted to what is left of the
    budget when that is short), then the search's report."""
    d, full = book.data, cfg.train.epochs
    w = d["winner"]
    if "final" not in d:
        left = d["budget_s"] - book.spent
        short = full * book.epoch_s(w["name"]) > left
        d["final"] = {"time_budget_min": round(max(left, 1.0) / 60, 4) if short else None}
        book.save()
        if short:
            log.info("search: %s is left of the budget, less than %d epochs of %s take: its distillation is fitted to it",
                     format_duration(left), full, w["name"])
    wcfg = copy.deepcopy(cfg)
    wcfg.distill.student = ModelConfig(candidate_arch(w["args"]), dict(w["args"]), cfg.distill.student.pretrained)
    wcfg.train.time_budget = d["final"]["time_budget_min"]
    metrics = {"iou": d["teacher"]["val_iou"], "dice": d["teacher"]["val_dice"]} if d["validation"] == "labels" else {}
    if not d["final"].get("done"):
        torch.manual_seed(cfg.seed)
        result = distill_student(wcfg, run_dir, state, device, clock._now(), plan, teacher_figures=TeacherFigures(metrics),
                                 on_stall=on_stall)
        d["final"].update(done=True, epochs=len(result.history))
        book.save()
    else:  # killed between the end of the distillation and the report of the search
        result = DistillResult(run_dir, list(state["history"]) if state else [],
                               json.loads((run_dir / "distill_report.json").read_text(encoding="utf-8")))
    student = result.report.get("student", {})
    iou = student.get("val_iou") if d["validation"] == "labels" else student.get("agreement")
    meets = (iou is not None and iou >= objective.value * d["teacher"]["val_iou"]) if objective.kind == "keep" \
        else objective.feasible(d["latency"][w["name"]]["latency_ms"])
    d["final"].update(iou=iou, meets=bool(meets), keeps=round(iou / d["teacher"]["val_iou"], 4) if iou is not None and d["teacher"]["val_iou"] else None)
    book.save()
    report = write_search_report(run_dir, d, result.report)
    log_outcome(d, objective)
    return DistillResult(run_dir, result.history, report)

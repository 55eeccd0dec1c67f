"""The lifecycle every run shares (training, distillation, and any loop to come).

- A run folder: :func:`open_run` makes a new one (``NAME``, ``NAME-2``...) or reopens one to resume.
- The training state: :func:`capture` writes what :func:`resume` reads, both from one list of named
  parts, so what is saved is what is restored.
- :class:`Recorder` ends an epoch: history row, best/stale, the collapse warning, saves (best model,
  last model, metrics, CSV, plot, state) and the log line. A plain object the loops call, not a
  trainer with hooks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import ModelInfo, load_state, save_model, save_state
from ..config import Config, dump_config, load_config
from ..distributed import broadcast_floats, decided_by_main_process, is_main_process
from ..errors import SegdistillError
from ..fileio import read_json, remove_temporaries, write_json, write_text
from ..metrics import predicts_nothing
from ..reports.plots import plot_curves
from ..reports.tables import write_csv
from . import clock as clock_module
from .clock import RunClock, StallHandler
from .evaluate import EvalResult, save_evaluation
from .loop import Optimization

log = logging.getLogger("segdistill")


# What a run writes; ``overwrite`` removes these first, so nothing of the old run (a state to
# resume from, a better-scoring model) can be mistaken for the new one's.
RUN_FILES = ("config.yaml", "model.safetensors", "last.safetensors", "state.safetensors", "history.csv",
             "curves.png", "metrics.json", "distill_report.json", "plan.json", "per_image.csv", "sweep.csv", "run.json",
             "report.html")


def new_run_dir(cfg: Config, overwrite: bool) -> Path:
    """``runs/NAME``, or ``runs/NAME-2``, ``-3``... when it is taken (unless ``overwrite``, which
    reuses ``runs/NAME`` after removing the previous run's files, its ``baseline/`` run included)."""
    base = cfg.run_dir
    if overwrite and base.is_dir() and is_main_process():
        for folder in (base, base / "baseline"):
            for name in RUN_FILES:
                (folder / name).unlink(missing_ok=True)
            for label in (folder / "pseudo").glob("*.png"):  # the old run's pseudo-labels
                label.unlink()
            if folder.is_dir():
                remove_temporaries(folder)
    if overwrite or not base.exists() or not any(base.iterdir()):
        return base
    k = 2
    while (base.parent / f"{base.name}-{k}").exists():
        k += 1
    return base.parent / f"{base.name}-{k}"



def run_config(run_dir: Path) -> Config:
    """The config a run folder was started with (what a resume continues)."""
    if not (run_dir / "config.yaml").is_file():
        raise SegdistillError(f"{run_dir}: not a run folder (no config.yaml) - nothing to resume")
    return load_config(run_dir / "config.yaml")


def open_run(cfg: Config | None, resume: str | Path | None, overwrite: bool) -> tuple[Config, Path, dict | None]:
    """(config, run folder, saved state or None) for a new run, or for ``resume`` (a run folder,
    whose saved config then replaces ``cfg``)."""
    if resume is None:
        assert cfg is not None
        # Rank 0 alone looks and (with ``overwrite``) clears, before any rank goes on: a rank that
        # looked after rank 0 had written config.yaml would take NAME-2 for its own files.
        return cfg, decided_by_main_process(lambda: new_run_dir(cfg, overwrite)), None
    run_dir = Path(resume)
    cfg = run_config(run_dir)
    if is_main_process():
        remove_temporaries(run_dir)  # half-written files from a killed run are never trusted
    state_path = run_dir / "state.safetensors"
    return cfg, run_dir, load_state(state_path) if state_path.is_file() else None


def restore(run_dir: Path, state: dict[str, Any], **parts: Any) -> None:
    """Load each part (model, optimizer, ...) from the saved ``state``; parts that are None are not
    in use. A state that does not fit (config.yaml edited to another model, optimiser or scheduler
    before resuming) is a one-line error, not a traceback from load_state_dict."""
    optional = {"scaler", "ema"}  # may be switched on for a resumed run: they start fresh
    for name, part in parts.items():
        saved = state.get(name)
        if part is None or (saved is None and name in optional):
            continue
        try:
            if saved is None:
                raise ValueError("nothing saved")
            part.load_state_dict(saved)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise SegdistillError(
                f"{run_dir}: the saved training state does not fit config.yaml ({name}: {first}); "
                "undo the change to the config, or start a new run") from None


COLLAPSE_PATIENCE = 3


def collapse_message(epoch: int, lr: float) -> str:
    return (f"the model has predicted no foreground in {COLLAPSE_PATIENCE} validations in a row (epoch {epoch}): "
            f"it may have collapsed to background (seen with 2-3 channels at the top level; lr now {lr:g}): "
            "a wider model or another seed avoids it")


def rng_state() -> dict[str, Any]:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def start_run(run_dir: Path, cfg: Config, plan: dict[str, Any] | None = None) -> int:
    """Make a new run's folder and write its resolved config and its plan (plan.json, when the
    data planned it) (main process); returns epoch 1."""
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", dump_config(cfg))
        if plan is not None:
            write_json(run_dir / "plan.json", plan)
    return 1


def read_plan(run_dir: Path) -> dict[str, Any] | None:
    """The plan a run was started with (plan.json), for a resumed run's model file."""
    path = run_dir / "plan.json"
    return read_json(path)


def capture(epoch: int, parts: dict[str, Any], recorder: Recorder, clock: RunClock, **extra: Any) -> dict[str, Any]:
    """The training state after ``epoch``: each part's ``state_dict`` under its name (None when not
    in use), the RNG, the epoch plan and the recorder's bookkeeping, plus ``extra`` values."""
    state = {"epoch": epoch, **{name: None if part is None else part.state_dict() for name, part in parts.items()}}
    return {**state, "rng": rng_state(), "planned_epochs": clock.epochs, **recorder.state(), **extra}


def resume_from(run_dir: Path, state: dict[str, Any], parts: dict[str, Any], recorder: Recorder) -> int:
    """Restore what :func:`capture` saved; returns the epoch to continue with."""
    restore(run_dir, state, **parts)
    set_rng_state(state["rng"])
    recorder.load(state)
    if recorder.main:
        log.info("resuming %s from epoch %d", run_dir, state["epoch"] + 1)
    return state["epoch"] + 1


def begin(run_dir: Path, cfg: Config, state: dict[str, Any] | None, parts: dict[str, Any], recorder: Recorder,
          plan: dict[str, Any] | None = None) -> int:
    """The first epoch to run: a resumed run's parts restored from ``state``, or a new run started."""
    return resume_from(run_dir, state, parts, recorder) if state is not None else start_run(run_dir, cfg, plan)


def complete_message(cfg: Config, run_dir: Path, state: dict[str, Any] | None) -> str | None:
    """Why a run to resume has nothing left to do (all its epochs, or an early stop), else None."""
    if state is None:
        return None
    done = int(state["epoch"])
    planned = int(state.get("planned_epochs", cfg.train.epochs)) if cfg.train.time_budget else cfg.train.epochs
    patience = cfg.train.early_stopping
    if done >= planned:
        how = f"{done} of {planned} epochs"
    elif patience and int(state.get("stale", 0)) >= patience:
        how = f"stopped early at epoch {done} of {planned}: no better validation IoU for {patience} validations"
    else:
        return None
    return (f"run {run_dir} is complete ({how}); nothing to do - edit train.epochs in its config.yaml "
            "to extend it")


def make_clock(cfg: Config, state: dict | None, started: float, final_views: int = 1,
               on_stall: StallHandler | None = None) -> RunClock:
    """The run's epoch plan: ``train.epochs``, or with a time budget the epochs that fit (a resumed
    budgeted run finishes the epochs planned before it stopped)."""
    budget = cfg.train.time_budget
    epochs = state.get("planned_epochs", cfg.train.epochs) if state is not None and budget else cfg.train.epochs
    return RunClock(epochs, budget * 60 if budget and state is None else None, started, final_views=final_views,
                    on_stall=on_stall)


def end_epoch(rec: Recorder, clock: RunClock, opt: Optimization, row: dict[str, Any], metrics: dict[str, float],
              t0: float, val_seconds: float | None, device: torch.device, patience: int,
              save: Callable[[bool], None]) -> bool:
    """How every epoch of every loop ends (training with or without self-training, distillation):
    the row's ``seconds`` since ``t0`` on the run's clock, the history row, the clock's plan (every
    rank takes rank 0's), the learning-rate schedule stretched to it, the plateau schedule, ``save``
    (main process; it gets whether the epoch improved) and early stopping. True: stop here."""
    now = clock_module._now()  # one reading ends the epoch for the row and for the plan
    row["seconds"] = round(now - t0, 2)
    improved = rec.update(row, metrics)
    before = clock.epochs
    clock.end_epoch(row["epoch"], val_seconds, now)
    (planned,) = broadcast_floats([float(clock.epochs)], device)
    clock.epochs = int(planned)
    if clock.epochs != before:
        opt.set_epochs(clock.epochs)
    if opt.plateau is not None and row.get("val_iou") is not None:
        opt.plateau.step(row["val_iou"])
    if rec.main:
        save(improved)
    return rec.should_stop(patience)


def validates(epoch: int, cfg: Config, clock: RunClock) -> bool:
    """Whether ``epoch`` validates: every ``train.val_every`` epochs, and always the last."""
    return epoch % cfg.train.val_every == 0 or epoch >= clock.epochs


PLOT_EVERY_S = 10.0
"""curves.png is redrawn at most this often during a run (a plot costs ~0.25 s, which short epochs
of small models would otherwise spend again every epoch), always at the last epoch and at the end."""

# The log line: row key -> label, in this order (keys a loop does not record are left out).
_LOGGED = (("train_loss", "loss"), ("val_loss", "val loss"), ("val_iou", "IoU"), ("val_dice", "Dice"),
           ("agreement_iou", "agreement"))
# Without labels the validation scores are the agreement with the teacher (agreement_iou repeats it).
_LOGGED_UNLABELLED = (("train_loss", "loss"), ("val_loss", "val loss"), ("val_iou", "agreement"),
                      ("val_dice", "agreement Dice"))


@dataclass
class Recorder:
    """Ends an epoch the same way in every loop; ``update`` decides, ``save`` writes (main process).

    Args:
        run_dir: the run folder.
        title: title of curves.png.
        label: first word of the log line ("epoch", "distill").
        lr: the configured learning rate, named in the collapse warning.
        validated: False when the run has no validation at all: then the latest model is kept.
        labelled: False when validation compares with a teacher, not labels: the log line then calls
            ``val_iou`` agreement.
    """

    run_dir: Path
    title: str
    label: str = "epoch"
    lr: float = 0.0
    validated: bool = True
    labelled: bool = True
    main: bool = field(default_factory=is_main_process)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_iou: float = -1.0
    best_epoch: int = 0
    stale: int = 0
    """Validations since the best one (early stopping)."""
    empty_streak: int = 0
    """Validations in a row that predicted no foreground (the collapse warning)."""
    improved: bool = False
    _plotted: tuple[int, float] = (0, float("-inf"))
    """(history rows in curves.png, when it was drawn)."""

    STATE = ("history", "best_iou", "best_epoch", "stale", "empty_streak")

    def state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.STATE}

    def load(self, state: dict[str, Any]) -> None:
        # Distillation states written before this lifecycle called the best score "best".
        older = {"best_iou": state.get("best", -1.0), "stale": 0, "empty_streak": 0}
        for k in self.STATE:
            setattr(self, k, state[k] if k in state else older[k])

    def update(self, row: dict[str, Any], metrics: dict[str, float]) -> bool:
        """Add the epoch's ``row`` (``val_iou`` None when it did not validate) and its validation
        ``metrics``; True when it is the best so far."""
        epoch, iou = row["epoch"], row.get("val_iou")
        self.history.append(row)
        self.improved = iou is not None and iou > self.best_iou
        if self.improved:
            self.best_iou, self.best_epoch, self.stale = iou, epoch, 0
        elif iou is not None:
            self.stale += 1
        if not self.validated:
            self.best_epoch = epoch
        if metrics:
            self.empty_streak = self.empty_streak + 1 if predicts_nothing(metrics) else 0
            if self.empty_streak == COLLAPSE_PATIENCE and self.main:
                log.warning(collapse_message(epoch, self.lr))
        return self.improved

    def save(self, model: nn.Module, info: ModelInfo, state: dict[str, Any], clock: RunClock,
             evaluation: EvalResult | None = None) -> None:
        """Write the epoch: the best model (and its validation: metrics.json, per_image.csv,
        sweep.csv) when it improved or nothing validates, the last model, history.csv, curves.png,
        the state, then the log line."""
        row = self.history[-1]
        if self.improved or not self.validated:
            save_model(self.run_dir / "model.safetensors", model, info)
            if evaluation is not None and evaluation.metrics:
                write_json(self.run_dir / "metrics.json", {"epoch": row["epoch"], **evaluation.metrics})
                save_evaluation(self.run_dir, evaluation)
        save_model(self.run_dir / "last.safetensors", model, info)
        write_csv(self.run_dir / "history.csv", self.history)
        if row["epoch"] >= clock.epochs or time.monotonic() - self._plotted[1] >= PLOT_EVERY_S:
            self.plot()
        save_state(self.run_dir / "state.safetensors", state)
        fields = [f"{self.label} {row['epoch']}/{clock.epochs}"]
        logged = _LOGGED if self.labelled else _LOGGED_UNLABELLED
        fields += [f"{name} {format_score(row[key])}" for key, name in logged if key in row]
        fields += [f"lr {row['lr']:.2e}", f"{row['seconds']:.1f}s", f"ETA {clock.eta(row['epoch'])}"]
        log.info("  ".join(fields) + ("  *best*" if self.improved else ""))

    def plot(self) -> None:
        """Draw curves.png from the history (when it has rows it does not show yet)."""
        if self.main and self.history and self._plotted[0] != len(self.history):
            plot_curves(self.run_dir / "curves.png", self.history, self.title)
            self._plotted = (len(self.history), time.monotonic())

    def finish(self, compute: str, seconds: float) -> None:
        """End the run (main process): run.json, how and how long it ran. (Its report.html is the
        job's: jobs/report.py, after the run.)"""
        if self.main:
            write_json(self.run_dir / "run.json", {"compute": compute, "seconds": round(seconds, 1),
                                                   "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})

    def should_stop(self, patience: int) -> bool:
        """Early stopping: ``patience`` validations without a better IoU (0 = never)."""
        stop = bool(patience) and self.stale >= patience
        if stop and self.main:
            log.info("early stopping: no better validation IoU for %d validations", self.stale)
        return stop

    def best_row(self) -> dict[str, Any]:
        return next((h for h in self.history if h["epoch"] == self.best_epoch), self.history[-1] if self.history else {})


def format_score(v: Any) -> str:
    """A score as the log lines show it: 4 decimals, or - when there is none."""
    return "-" if v is None else f"{v:.4f}"

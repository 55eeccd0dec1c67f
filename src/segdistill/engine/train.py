"""Supervised training: ``train_one_epoch``, and ``fit`` which runs a whole configured run.

A run folder holds ``config.yaml`` (resolved), ``model.safetensors`` (best by validation IoU),
``last.safetensors``, ``state.safetensors`` (everything ``--resume`` needs), ``history.csv``,
``curves.png`` and ``metrics.json``. Each is written atomically, so a kill at any moment leaves the
previous complete version in place.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .. import __version__
from ..checkpoint import ModelInfo, load_model, load_state, save_model, save_state, unwrap
from ..config import Config, dump_config, load_config
from ..data.dataset import Item, SegDataset
from ..data.discovery import Split, discover
from ..data.imageio import read_mask
from ..data.preprocess import Preprocess, compute_stats, infer_channels
from ..distributed import all_ranks, broadcast_floats, cleanup, init_distributed, is_main_process, world_size
from ..errors import ConfigError, SegdistillError, TrainingError
from ..failpoints import failpoint
from ..fileio import remove_temporaries, write_json, write_text
from ..losses import LossFn, make_task_loss
from ..metrics import predicts_nothing
from ..models import create_model, resolved_args
from ..report import format_table, plot_curves, write_csv
from ..runtime import (
    autocast,
    autocast_dtype,
    precision_name,
    resolve_workers,
    select_device,
    set_threads,
    use_channels_last,
)
from .clock import RunClock
from .evaluate import EvalResult, evaluate
from .semi import MixedDataset, labels_match, make_pseudo_labels, pseudo_paths, refresh_due, unlabelled_images

log = logging.getLogger("segdistill")

def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: Any,
    scaler: torch.amp.GradScaler | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float | None = None,
) -> None:
    """Backward, optional unscale + gradient clipping, step, and a per-step scheduler step."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()


def run_epoch(
    model: nn.Module,
    loader: DataLoader,
    batch_loss: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    *,
    scaler: torch.amp.GradScaler | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float | None = None,
    desc: str = "train",
    ema: AveragedModel | None = None,
) -> float:
    """The loop shared by training and distillation: ``batch_loss(batch)`` gives a batch's loss,
    then one optimiser step (and a per-step scheduler and EMA update). Returns the mean loss per
    image; raises TrainingError on a non-finite loss, naming the step."""
    model.train()
    total, n = 0.0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=None if is_main_process() else True, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        loss = batch_loss(batch)
        finite = bool(torch.isfinite(loss))
        if not all_ranks(finite, loss.device):
            where = f"({loss.detach().item()})" if not finite else "on another rank"
            raise TrainingError(f"non-finite loss {where} at {desc}, step {step + 1}")
        optimizer_step(loss, optimizer, params, scaler, scheduler, grad_clip)
        failpoint("train_step")
        if ema is not None:
            ema.update_parameters(unwrap(model))
        batch_size = batch["image"].shape[0]
        total += loss.detach().item() * batch_size
        n += batch_size
        bar.set_postfix(loss=f"{total / n:.4f}")
    bar.close()
    return total / max(n, 1)


def model_input(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool) -> torch.Tensor:
    """The batch's images on ``device`` (B, C, h, w), channels_last when asked."""
    x = batch["image"].to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_one_epoch(
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    *,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float | None = None,
    channels_last: bool = False,
    target_key: str = "mask",
    desc: str = "train",
    ema: AveragedModel | None = None,
) -> float:
    """One supervised pass over ``loader``; returns the mean loss. Raises TrainingError on a
    non-finite loss.

    ``scheduler`` (if given) is stepped after every optimiser step (warm-up and cosine are per step);
    ``ema`` (if given) is updated after every step.
    """

    def batch_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = model_input(batch, device, channels_last)
        with autocast(device, amp_dtype):
            logits = model(x)
        return loss_fn(logits.float(), batch[target_key].to(device, non_blocking=True))

    return run_epoch(model, loader, batch_loss, optimizer, list(model.parameters()), scaler=scaler,
                     scheduler=scheduler, grad_clip=grad_clip, desc=desc, ema=ema)


# --------------------------------------------------------------------------------------------------
# Building the pieces of a run from the config.


@dataclass
class RunData:
    split: Split
    pre: Preprocess
    train_set: SegDataset | MixedDataset
    val_set: SegDataset | None
    train_loader: DataLoader
    val_loader: DataLoader | None
    unlabelled: list[Path] = field(default_factory=list)
    """Images for self-training (semi.images); their pseudo-labels live in RUN/pseudo/."""


def build_preprocess(cfg: Config, train_images: list[Path]) -> Preprocess:
    channels = cfg.data.channels if cfg.data.channels != "auto" else infer_channels(train_images)
    mean, std = compute_stats(train_images, channels, cfg.data.max_side)
    return Preprocess(channels=channels, mean=mean, std=std, max_side=cfg.data.max_side, invert=cfg.data.invert)


def make_loaders(
    cfg: Config, train_set: SegDataset, val_set: SegDataset | None, device: torch.device
) -> tuple[DataLoader, DataLoader | None]:
    workers = resolve_workers(cfg.train.num_workers)
    # The dataset shuffles itself per epoch (seeded), so the sampler only shards across ranks.
    sampler = DistributedSampler(train_set, shuffle=False) if world_size() > 1 else None
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.train.batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        # Each rank's share decides: a share no bigger than one batch must not be dropped whole.
        drop_last=(len(sampler) if sampler is not None else len(train_set)) > cfg.train.batch_size,
    )
    val_loader = None
    if val_set is not None and len(val_set):
        # Whole images of varied sizes: one per batch.
        val_loader = DataLoader(val_set, batch_size=1, shuffle=False, num_workers=workers)
    return train_loader, val_loader


def build_run_data(cfg: Config, device: torch.device, run_dir: Path | None = None) -> RunData:
    """Datasets and loaders; with ``semi.images`` set, the training set mixes in pseudo-labelled
    crops (their labels under ``run_dir/pseudo/``) once they exist."""
    split = discover(cfg.data, cfg.seed)
    pre = build_preprocess(cfg, [p.image for p in split.train])
    length = cfg.train.samples_per_epoch or len(split.train)

    def crops(items: list[Item], seed: int) -> SegDataset:
        return SegDataset(items, pre, train=True, input_size=cfg.train.input_size, augment=cfg.augment,
                          length=length, seed=seed, cache=cfg.data.cache)

    train_set: SegDataset | MixedDataset = crops([Item(p.image, p.mask) for p in split.train], cfg.seed)
    labelled = {p.image.resolve() for p in split.train + split.val}
    unlabelled = unlabelled_images(cfg, labelled) if cfg.semi.images else []
    if unlabelled:
        if length < 2:
            raise ConfigError("semi.images needs train.samples_per_epoch of at least 2 (labelled and pseudo-labelled crops)")
        folder = (run_dir if run_dir is not None else cfg.run_dir) / "pseudo"
        pseudo = crops([Item(p, soft=t) for p, t in zip(unlabelled, pseudo_paths(folder, len(unlabelled)))],
                       cfg.seed + 1)  # other augmentations than the labelled crops at the same index
        train_set = MixedDataset(train_set, pseudo, length, cfg.semi.fraction, cfg.seed)
    val_set = (
        SegDataset([Item(p.image, p.mask) for p in split.val], pre, train=False, cache=cfg.data.cache, resize_masks=False)
        if split.val
        else None
    )
    train_loader, val_loader = make_loaders(cfg, train_set, val_set, device)
    return RunData(split, pre, train_set, val_set, train_loader, val_loader, unlabelled)


def foreground_fraction(masks: list[Path], invert: bool, limit: int = 200) -> float:
    step = max(1, len(masks) // limit)
    fractions = []
    for m in masks[::step]:
        arr = read_mask(m)
        fractions.append(float((~arr if invert else arr).mean()))
    return float(np.mean(fractions)) if fractions else 0.5


def resolve_pos_weight(cfg: Config, split: Split) -> float | None:
    pw = cfg.train.pos_weight
    if pw != "auto":
        return pw
    f = foreground_fraction([p.mask for p in split.train if p.mask is not None], cfg.data.invert)
    # Capped: huge weights on rare classes make BCE unstable.
    return float(min(max((1 - f) / max(f, 1e-6), 1.0), 10.0))


def build_optimizer(cfg: Config, params: Any) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, nesterov=True)


class WarmupCosine:
    """Per-step learning-rate factor: linear warm-up, then cosine down to ``floor``. A callable
    object rather than a closure so that LambdaLR saves its fields with the training state, and so
    that a time budget can stretch it to the epochs it fits (:func:`set_schedule_length`)."""

    def __init__(self, total: int, warmup: int, floor: float) -> None:
        self.total, self.warmup, self.floor = total, warmup, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def build_schedulers(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int | None = None):
    """(per-step scheduler or None, per-epoch plateau scheduler or None); ``epochs`` defaults to
    train.epochs."""
    t = cfg.train
    if t.scheduler == "cosine":
        total = max(1, (epochs or t.epochs) * steps_per_epoch)
        warmup = min(t.warmup_epochs * steps_per_epoch, total // 2)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total, warmup, min(t.min_lr / t.lr, 1.0))), None
    if t.scheduler == "plateau":
        return None, torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=t.plateau_factor, patience=t.plateau_patience, min_lr=t.min_lr
        )
    return None, None


def set_schedule_length(scheduler: torch.optim.lr_scheduler.LRScheduler | None, epochs: int, steps_per_epoch: int) -> None:
    """Stretch or shrink a warm-up + cosine schedule to ``epochs`` (after a time budget refits them)."""
    if scheduler is not None:
        for fn in getattr(scheduler, "lr_lambdas", []):
            if isinstance(fn, WarmupCosine):
                fn.total = max(1, epochs * steps_per_epoch)
                fn.warmup = min(fn.warmup, fn.total // 2)


def make_ema(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of the weights (and BN statistics), or None when off."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


# What a run writes; ``overwrite`` removes these first, so nothing of the old run (a state to
# resume from, a better-scoring model) can be mistaken for the new one's.
RUN_FILES = ("config.yaml", "model.safetensors", "last.safetensors", "state.safetensors", "history.csv",
             "curves.png", "metrics.json", "distill_report.json")


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


# --------------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    run_dir: Path
    history: list[dict[str, Any]]
    best: dict[str, Any]


def open_run(cfg: Config | None, resume: str | Path | None, overwrite: bool) -> tuple[Config, Path, dict | None]:
    """(config, run folder, saved state or None) for a new run, or for ``resume`` (a run folder,
    whose saved config then replaces ``cfg``)."""
    if resume is None:
        assert cfg is not None
        return cfg, new_run_dir(cfg, overwrite), None
    run_dir = Path(resume)
    if not (run_dir / "config.yaml").is_file():
        raise SegdistillError(f"{run_dir}: not a run folder (no config.yaml) - nothing to resume")
    cfg = load_config(run_dir / "config.yaml")
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


def make_clock(cfg: Config, state: dict | None, started: float) -> RunClock:
    """The run's epoch plan: ``train.epochs``, or with a time budget the epochs that fit (a resumed
    budgeted run finishes the epochs planned before it stopped)."""
    budget = cfg.train.time_budget
    epochs = state.get("planned_epochs", cfg.train.epochs) if state is not None and budget else cfg.train.epochs
    return RunClock(epochs, budget * 60 if budget and state is None else None, started, final_views=cfg.train.tta,
                    auto_threads=cfg.threads == "auto")


def end_epoch_plan(clock: RunClock, epoch: int, val_seconds: float | None, device: torch.device) -> bool:
    """``clock.end_epoch``, then every rank takes rank 0's plan (a no-op in one process). True when
    the planned epochs changed."""
    before = clock.epochs
    clock.end_epoch(epoch, val_seconds)
    (planned,) = broadcast_floats([float(clock.epochs)], device)
    clock.epochs = int(planned)
    return clock.epochs != before


def fit(cfg: Config, resume: str | Path | None = None, overwrite: bool = False, started: float | None = None) -> FitResult:
    """Train the configured model; returns the run folder, history and best metrics.

    With ``resume`` (a run folder), the saved config and state are restored and training goes on
    from the last complete epoch as if it had never stopped. ``started`` (``time.monotonic()``) is
    when a time budget's clock started; default: now.
    """
    started = time.monotonic() if started is None else started
    cfg, run_dir, state = open_run(cfg, resume, overwrite)
    set_threads(cfg.threads)
    device = select_device(cfg.device)
    distributed = init_distributed(device)
    torch.manual_seed(cfg.seed)
    main = is_main_process()
    try:
        return _fit(cfg, run_dir, device, state, main, distributed, started)
    finally:
        cleanup()


def _fit(cfg: Config, run_dir: Path, device: torch.device, state: dict | None, main: bool, distributed: bool,
         started: float) -> FitResult:
    data = build_run_data(cfg, device, run_dir)
    pre = data.pre
    if state is not None:
        pre = Preprocess.from_dict(state["preprocess"])  # the stats the model was trained with
        data.pre = data.train_set.pre = pre
        if data.val_set is not None:
            data.val_set.pre = pre
    model = create_model(cfg.model.name, in_channels=pre.in_channels, **cfg.model.args).to(device)
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    channels_last = use_channels_last(cfg.train.channels_last, device, training=True)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model.parameters())
    ema = make_ema(model, cfg.train.ema)
    clock = make_clock(cfg, state, started)
    step_sched, plateau = build_schedulers(cfg, optimizer, len(data.train_loader), clock.epochs)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    pos_weight = resolve_pos_weight(cfg, data.split) if state is None else state["pos_weight"]
    loss_fn = make_task_loss(cfg.train.loss, pos_weight)

    history: list[dict[str, Any]] = []
    start_epoch, best_iou, best_epoch, stale = 1, -1.0, 0, 0
    empty_streak = 0
    if state is not None:
        restore(run_dir, state, model=model, optimizer=optimizer, scheduler=step_sched, plateau=plateau,
                scaler=scaler, ema=ema)
        set_rng_state(state["rng"])
        history = state["history"]
        start_epoch = state["epoch"] + 1
        best_iou, best_epoch, stale = state["best_iou"], state["best_epoch"], state["stale"]
        if main:
            log.info("resuming %s from epoch %d", run_dir, start_epoch)
    elif main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", dump_config(cfg))

    train_model: nn.Module = model
    if distributed:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]

    if main:
        n_params = sum(p.numel() for p in model.parameters())
        log.info(
            "run %s: %s (%.2fM params), %d train / %d val images (%s layout)%s, %s, %s%s, %d threads",
            run_dir, cfg.model.name, n_params / 1e6, len(data.split.train), len(data.split.val),
            data.split.layout,
            f", {len(data.unlabelled)} unlabelled (pseudo-labels from epoch {cfg.semi.start_epoch})" if data.unlabelled else "",
            device, precision_name(amp_dtype), ", channels_last" if channels_last else "", torch.get_num_threads(),
        )

    def info(summary: dict[str, Any]) -> ModelInfo:
        args = resolved_args(cfg.model.name, in_channels=pre.in_channels, **cfg.model.args)
        return ModelInfo(cfg.model.name, args, pre, cfg.train.threshold, summary, tta=cfg.train.tta,
                         label_offset=[float(v) for v in cfg.data.label_offset])

    t_run = time.perf_counter()
    epoch = start_epoch
    while epoch <= clock.epochs:
        t0 = time.perf_counter()
        if isinstance(data.train_set, MixedDataset) and epoch >= cfg.semi.start_epoch:
            _update_pseudo_labels(cfg, data, data.train_set, ema.module if ema is not None else model, run_dir,
                                  epoch, device, amp_dtype, main)
        data.train_set.set_epoch(epoch)
        desc = f"epoch {epoch}/{clock.epochs}"
        try:
            train_loss = train_one_epoch(
                train_model, loss_fn, optimizer, data.train_loader, device,
                amp_dtype=amp_dtype, scaler=scaler, scheduler=step_sched,
                grad_clip=cfg.train.grad_clip, channels_last=channels_last, desc=desc, ema=ema,
            )
        except TrainingError as e:
            raise TrainingError(
                f"{e}; training stopped. The last good checkpoint is kept in {run_dir} "
                "(lower train.lr, or check the data for broken images)"
            ) from None
        final = ema.module if ema is not None else model  # what is validated and saved
        result, val_seconds = EvalResult(metrics={}), None
        if data.val_loader is not None and main and (epoch % cfg.train.val_every == 0 or epoch == clock.epochs):
            t_val = time.perf_counter()
            result = evaluate(final, data.val_loader, device, cfg.train.threshold, loss_fn, amp_dtype, channels_last)
            val_seconds = time.perf_counter() - t_val
        iou = result.metrics.get("iou")
        if result.metrics:
            empty_streak = empty_streak + 1 if predicts_nothing(result.metrics) else 0
        if empty_streak == COLLAPSE_PATIENCE and result.metrics:
            log.warning(collapse_message(epoch, cfg.train.lr))
        if distributed:  # every rank must take the same LR, best-model and stopping decisions
            (shared,) = broadcast_floats([-1.0 if iou is None else iou], device)
            iou = None if shared < 0 else shared
        row = {
            "epoch": epoch,
            "train_loss": round(train_loss, 6),
            "val_loss": None if result.loss is None else round(result.loss, 6),
            "val_iou": None if iou is None else round(iou, 6),
            "val_dice": round(result.metrics["dice"], 6) if "dice" in result.metrics else None,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 2),
        }
        history.append(row)
        if end_epoch_plan(clock, epoch, val_seconds, device):
            set_schedule_length(step_sched, clock.epochs, len(data.train_loader))
        if plateau is not None and iou is not None:
            plateau.step(iou)
        improved = iou is not None and iou > best_iou
        if improved:
            best_iou, best_epoch, stale = iou, epoch, 0
        elif iou is not None:
            stale += 1
        if main:
            summary = _summary(cfg, data, history, best_epoch, result if improved else None)
            if improved or data.val_loader is None:
                save_model(run_dir / "model.safetensors", final, info(summary))
                if result.metrics:
                    write_json(run_dir / "metrics.json", {"epoch": epoch, **result.metrics})
            save_model(run_dir / "last.safetensors", final, info(summary))
            write_csv(run_dir / "history.csv", history)
            plot_curves(run_dir / "curves.png", history, f"{cfg.name}: {cfg.model.name}")
            save_state(run_dir / "state.safetensors", {
                "epoch": epoch, "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": step_sched.state_dict() if step_sched is not None else None,
                "plateau": plateau.state_dict() if plateau is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng_state(), "ema": ema.state_dict() if ema is not None else None, "history": history, "best_iou": best_iou,
                "best_epoch": best_epoch, "stale": stale, "preprocess": pre.to_dict(), "pos_weight": pos_weight,
                "planned_epochs": clock.epochs,
            })
            log.info(
                "%s  loss %.4f  val loss %s  IoU %s  Dice %s  lr %.2e  %.1fs  ETA %s%s", f"epoch {epoch}/{clock.epochs}", train_loss,
                _fmt(row["val_loss"]), _fmt(row["val_iou"]), _fmt(row["val_dice"]), row["lr"], row["seconds"],
                clock.eta(epoch), "  *best*" if improved else "",
            )
        if cfg.train.early_stopping and stale >= cfg.train.early_stopping:
            if main:
                log.info("early stopping: no better validation IoU for %d validations", stale)
            break
        epoch += 1
    best_row = next((h for h in history if h["epoch"] == best_epoch), history[-1] if history else {})
    if main:
        row: dict[str, Any] = {"run": str(run_dir), "epochs": len(history), "best epoch": best_epoch or len(history),
                               "val IoU": best_row.get("val_iou"), "val Dice": best_row.get("val_dice")}
        if cfg.train.tta > 1 and data.val_loader is not None and (run_dir / "model.safetensors").exists():
            row.update(_evaluate_with_tta(cfg, data, run_dir, device, amp_dtype, channels_last))
        row["minutes"] = round((time.perf_counter() - t_run) / 60, 2)
        log.info("\n%s\n", format_table([row], title="Training summary"))
        log.info("model: %s", run_dir / "model.safetensors")
    return FitResult(run_dir, history, best_row)


def _evaluate_with_tta(cfg: Config, data: RunData, run_dir: Path, device: torch.device,
                       amp_dtype: torch.dtype | None, channels_last: bool) -> dict[str, Any]:
    """The best checkpoint on the validation images with ``train.tta`` views, as predict and evaluate
    will use it; added to metrics.json under ``tta``. (Epochs are validated with one pass: the views
    would multiply that cost, and the ranking of checkpoints hardly changes.)"""
    best, info = load_model(run_dir / "model.safetensors", device)
    result = evaluate(best, data.val_loader, device, info.threshold, amp_dtype=amp_dtype, channels_last=channels_last,
                      tta=info.tta, label_offset=info.label_offset)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics["tta"] = {"views": info.tta, "label_offset": info.label_offset, **result.metrics}
    write_json(metrics_path, metrics)
    return {f"val IoU (TTA x{info.tta})": result.metrics.get("iou"), f"val Dice (TTA x{info.tta})": result.metrics.get("dice")}


def _update_pseudo_labels(cfg: Config, data: RunData, train_set: MixedDataset, model: nn.Module, run_dir: Path,
                          epoch: int, device: torch.device, amp_dtype: torch.dtype | None, main: bool) -> None:
    """(Re)make the pseudo-labels when due, or when a resumed run does not find a complete set for
    these images (then they come from the resumed model, and the run is no longer bit-identical to an
    uninterrupted one); then let the training set draw on them. The main process writes them; the
    other ranks wait for it, and stop with it if it fails."""
    folder = run_dir / "pseudo"
    complete = labels_match(folder, data.unlabelled)
    if refresh_due(epoch, cfg.semi) or not all_ranks(complete, device):
        if main and not complete and not refresh_due(epoch, cfg.semi):
            log.warning("%s: no complete set of pseudo-labels for these images; remaking them", folder)
        if main:
            t0 = time.perf_counter()
            try:
                make_pseudo_labels(model, data.pre, data.unlabelled, folder, device, tta=cfg.semi.tta, amp_dtype=amp_dtype,
                                   label_offset=cfg.data.label_offset,
                                   channels_last=use_channels_last(cfg.train.channels_last, device, training=False))
            except BaseException:
                all_ranks(False, device)  # release the waiting ranks (nothing to do in one process)
                raise
            log.info("pseudo-labels for %d unlabelled images made by the epoch-%d model in %.1fs (%s)",
                     len(data.unlabelled), epoch - 1, time.perf_counter() - t0, folder)
        if not all_ranks(True, device):  # also a barrier: no rank reads half-written labels
            raise TrainingError("making the pseudo-labels failed on the main process")
        train_set.reload_pseudo()
    train_set.active = True


def _summary(cfg: Config, data: RunData, history: list[dict[str, Any]], best_epoch: int, result: EvalResult | None) -> dict[str, Any]:
    s: dict[str, Any] = {
        "run": cfg.name,
        "data": cfg.data.root,
        "train_images": len(data.split.train),
        "unlabelled_images": len(data.unlabelled),
        "val_images": len(data.split.val),
        "epochs_trained": len(history),
        "best_epoch": best_epoch,
        "input_size": cfg.train.input_size,
        "loss": cfg.train.loss,
        "segdistill_version": __version__,
        "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if result is not None:
        s.update({f"val_{k}": round(v, 6) for k, v in result.metrics.items() if not k.endswith("per_image")})
    return s


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"

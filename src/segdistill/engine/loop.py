"""The step machinery every loop shares, apart from any task: the optimiser step, one epoch over a
loader for a given batch loss, the model's input, and the optimisation parts a run builds
(optimiser, schedulers, gradient scaler, weight average).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import unwrap
from ..config import Config
from ..distributed import all_ranks, is_main_process
from ..errors import TrainingError
from ..failpoints import failpoint
from ..runtime import autocast_dtype, precision_name, use_channels_last


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


def build_optimizer(cfg: Config, params: Any) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, nesterov=True)


def param_groups(cfg: Config, model: nn.Module, params: list[nn.Parameter]) -> list[dict[str, Any]]:
    """One group, or two for a model with an ``encoder``: its parameters apart, at
    ``train.encoder_lr`` times the rate where the encoder started from pretrained weights (always
    two groups for such a model, so a resumed run's optimiser state fits whatever it started from)."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        return [{"params": params}]
    own = {id(p) for p in encoder.parameters()}
    scale = cfg.train.encoder_lr if getattr(model, "pretrained_from", None) else 1.0
    return [{"params": [p for p in params if id(p) not in own]},
            {"params": [p for p in params if id(p) in own], "lr": cfg.train.lr * scale}]


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


@dataclass
class Compute:
    """Where and how the steps run: device, autocast dtype (None = fp32), channels_last."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    def __str__(self) -> str:
        layout = ", channels_last" if self.channels_last else ""
        n = torch.get_num_threads()
        return f"{self.device}, {precision_name(self.amp_dtype)}{layout}, {n} thread{'s' if n != 1 else ''}"


def build_compute(cfg: Config, device: torch.device) -> Compute:
    """Precision and memory format for training on ``device``, by checking the machine (runtime.py)."""
    return Compute(device, autocast_dtype(cfg.train.precision, device),
                   use_channels_last(cfg.train.channels_last, device, training=True))


@dataclass
class Optimization:
    """What a run optimises with; ``parts()`` names them as the training state saves them."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    """Per-step (warm-up + cosine), or None."""
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None
    """Per-validation, or None."""
    scaler: torch.amp.GradScaler | None
    """fp16 on CUDA only."""
    ema: AveragedModel | None
    steps_per_epoch: int

    def parts(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "plateau": self.plateau,
                "scaler": self.scaler, "ema": self.ema}

    def set_epochs(self, epochs: int) -> None:
        """Stretch or shrink the per-step schedule to ``epochs`` (a time budget refitted them)."""
        set_schedule_length(self.scheduler, epochs, self.steps_per_epoch)


def build_optimization(cfg: Config, model: nn.Module, params: list[nn.Parameter], steps_per_epoch: int, epochs: int,
                       amp_dtype: torch.dtype | None) -> Optimization:
    """Optimiser over ``params``, schedulers for ``epochs`` of ``steps_per_epoch``, the fp16 scaler
    and the EMA of ``model`` (when configured)."""
    optimizer = build_optimizer(cfg, param_groups(cfg, model, params))
    scheduler, plateau = build_schedulers(cfg, optimizer, steps_per_epoch, epochs)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    return Optimization(optimizer, scheduler, plateau, scaler, make_ema(model, cfg.train.ema), steps_per_epoch)

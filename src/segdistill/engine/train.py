"""Supervised training: ``train_one_epoch``, and ``fit`` which runs a whole configured run.

A run folder holds ``config.yaml`` (resolved), ``model.safetensors`` (best by validation IoU),
``last.safetensors``, ``state.safetensors`` (everything ``--resume`` needs), ``history.csv``,
``curves.png`` and ``metrics.json``. Each is written atomically, so a kill at any moment leaves the
previous complete version in place.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from ..checkpoint import ModelInfo, load_model, read_model_info
from ..config import Config, ModelConfig, as_config
from ..data.preprocess import Preprocess
from ..distributed import (
    all_ranks,
    is_main_process,
    process_group,
    rank,
    sync_buffers,
    world_size,
)
from ..errors import TrainingError
from ..fileio import write_json
from ..losses import LossFn, make_task_loss
from ..metrics import SWEEP_THRESHOLDS
from ..models import create_model, resolved_args
from ..models.pretrained import load_pretrained
from ..reports.tables import format_table
from ..runtime import autocast, select_device, use_channels_last
from ..version import __version__
from . import clock as clock_module
from .autoplan import log_plan, plan_run
from .clock import StallHandler, format_duration
from .evaluate import EvalResult, evaluate, save_evaluation
from .loaders import RunData, build_run_data, resolve_pos_weight
from .loop import Compute, Optimization, build_compute, build_optimization, model_input, run_epoch
from .run import Recorder, begin, capture, complete_message, end_epoch, make_clock, open_run, read_plan, validates
from .semi import (
    MixedDataset,
    labels_match,
    make_pseudo_labels,
    refresh_due,
    write_label_index,
)

log = logging.getLogger("segdistill")

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


@dataclass
class FitResult:
    """What ``fit`` returns: the run folder, its history and the best epoch's row."""

    run_dir: Path
    history: list[dict[str, Any]]
    best: dict[str, Any]


def fit(cfg: Config | dict[str, Any], resume: str | Path | None = None, overwrite: bool = False,
        started: float | None = None, on_stall: StallHandler | None = None) -> FitResult:
    """Train the configured model (``cfg``: a Config, or a dict of config keys such as
    ``{"data": {"root": "DIR"}}``); returns the run folder, history and best metrics. Progress goes
    to the ``segdistill`` logger (``logging.basicConfig(level=logging.INFO)`` shows it).

    With ``resume`` (a run folder), the saved config and state are restored and training goes on
    from the last complete epoch as if it had never stopped. ``started`` (``time.monotonic()``) is
    when a time budget's clock started; default: now. ``on_stall``: what a stalled epoch does
    (the job's choice: jobs/threads.py); threads are the caller's (set once where a job starts).
    """
    started = time.monotonic() if started is None else started
    cfg, run_dir, state = open_run(None if resume else as_config(cfg, "fit"), resume, overwrite)
    done = complete_message(cfg, run_dir, state)
    if done is not None and not _tta_pending(cfg, run_dir):
        assert state is not None
        log.info(done)
        rec = Recorder(run_dir, "")
        rec.load(state)
        return FitResult(run_dir, rec.history, rec.best_row())
    device = select_device(cfg.device)
    # A new run is planned from its data; a resumed one goes on with the plan in its config.yaml.
    cfg, plan = plan_run(cfg) if resume is None else (cfg, read_plan(run_dir))
    with process_group(device) as distributed:  # a distillation's labels-only twin runs inside its group
        torch.manual_seed(cfg.seed)
        return _fit(cfg, run_dir, state, build_compute(cfg, device), distributed, started, plan, on_stall)


def _fit(cfg: Config, run_dir: Path, state: dict | None, cp: Compute, distributed: bool, started: float,
         plan: dict[str, Any] | None, on_stall: StallHandler | None) -> FitResult:
    data = build_run_data(cfg, cp.device, run_dir, state)
    model = create_model(cfg.model.name, in_channels=data.pre.in_channels, **cfg.model.args).to(cp.device)
    weights = start_weights(model, cfg.model, run_dir if state is not None else None)
    model = model.to(memory_format=torch.channels_last) if cp.channels_last else model
    clock = make_clock(cfg, state, started, final_views=cfg.train.tta, on_stall=on_stall)
    opt = build_optimization(cfg, model, list(model.parameters()), len(data.train_loader), clock.epochs, cp.amp_dtype)
    pos_weight = resolve_pos_weight(cfg, data.split) if state is None else state["pos_weight"]
    loss_fn = make_task_loss(cfg.train.loss, pos_weight)
    rec = Recorder(run_dir, f"{run_dir.name}: {cfg.model.name}", "epoch", cfg.train.lr, data.val_loader is not None)
    parts = {"model": model, **opt.parts()}
    epoch = begin(run_dir, cfg, state, parts, rec, plan)
    train_model = _wrap(model, cfg, cp.device, distributed)
    if state is None:
        log_plan(plan)
    _log_start(cfg, run_dir, data, model, cp)
    t_run = time.perf_counter()
    while epoch <= clock.epochs:
        t0 = clock_module._now()
        final = opt.ema.module if opt.ema is not None else model  # what is validated and saved
        if isinstance(data.train_set, MixedDataset) and epoch >= cfg.semi.start_epoch:
            _update_pseudo_labels(cfg, data, data.train_set, final, run_dir, epoch, cp, rec.main)
        data.train_set.set_epoch(epoch)
        train_loss = _train_epoch(train_model, loss_fn, opt, data.train_loader, cp, cfg, f"epoch {epoch}/{clock.epochs}", run_dir)
        result, val_seconds = EvalResult(metrics={}), None
        if data.val_loader is not None and validates(epoch, cfg, clock):
            # Every rank scores its share and gets the same metrics, so every rank decides alike.
            t_val = time.perf_counter()  # a share of the epoch, for the final evaluation's reserve
            sync_buffers(final)
            result = evaluate(final, data.val_loader, cp.device, cfg.train.threshold, loss_fn, cp.amp_dtype, cp.channels_last,
                              thresholds=SWEEP_THRESHOLDS)
            val_seconds = time.perf_counter() - t_val
        row = {"epoch": epoch, "train_loss": round(train_loss, 6), "val_loss": _round(result.loss),
               "val_iou": _round(result.metrics.get("iou")), "val_dice": _round(result.metrics.get("dice")),
               "lr": _sig6(opt.optimizer.param_groups[0]["lr"])}

        def save(improved: bool, epoch: int = epoch, result: EvalResult = result, final: nn.Module = final) -> None:
            info = _model_info(cfg, data.pre, _summary(cfg, data, rec.history, rec.best_epoch, result if improved else None, plan,
                                                       weights))
            rec.save(final, info, capture(epoch, parts, rec, clock, preprocess=data.pre.to_dict(), pos_weight=pos_weight),
                     clock, result)

        if end_epoch(rec, clock, opt, row, result.metrics, t0, val_seconds, cp.device, cfg.train.early_stopping, save):
            break
        epoch += 1
    rec.plot()  # an early stop ends before the last planned epoch
    _log_summary(cfg, run_dir, data, rec, cp, t_run)
    rec.finish(str(cp), time.perf_counter() - t_run)
    return FitResult(run_dir, rec.history, rec.best_row())


def _tta_pending(cfg: Config, run_dir: Path) -> bool:
    """A run killed after its last epoch but before its TTA evaluation (which the resume then does)."""
    path = run_dir / "metrics.json"
    return cfg.train.tta > 1 and path.is_file() and "tta" not in json.loads(path.read_text(encoding="utf-8"))


def _train_epoch(model: nn.Module, loss_fn: LossFn, opt: Optimization, loader: DataLoader, cp: Compute, cfg: Config,
                 desc: str, run_dir: Path) -> float:
    try:
        return train_one_epoch(model, loss_fn, opt.optimizer, loader, cp.device, amp_dtype=cp.amp_dtype, scaler=opt.scaler,
                               scheduler=opt.scheduler, grad_clip=cfg.train.grad_clip, channels_last=cp.channels_last,
                               desc=desc, ema=opt.ema)
    except TrainingError as e:
        raise TrainingError(f"{e}; training stopped. The last good checkpoint is kept in {run_dir} "
                            "(lower train.lr, or check the data for broken images)") from None


def _wrap(model: nn.Module, cfg: Config, device: torch.device, distributed: bool) -> nn.Module:
    """The module the steps run: DDP across ranks and torch.compile when configured."""
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if cfg.train.compile else model  # type: ignore[return-value]


def start_weights(model: nn.Module, spec: ModelConfig, resumed: Path | None = None) -> dict[str, str] | None:
    """A new model's encoder gets the ImageNet weights ``spec.pretrained`` names (None: no
    encoder, or none to be had); a resumed run's weights come from its state, and its record
    from the model file it saved."""
    if not hasattr(model, "encoder"):
        return None
    if resumed is not None:
        file = resumed / "model.safetensors"
        return read_model_info(file).summary.get("pretrained") if file.is_file() else None
    return load_pretrained(model, str(spec.args.get("encoder", "efficientnet_lite0")), spec.pretrained)


def _model_info(cfg: Config, pre: Preprocess, summary: dict[str, Any]) -> ModelInfo:
    args = resolved_args(cfg.model.name, in_channels=pre.in_channels, **cfg.model.args)
    return ModelInfo(cfg.model.name, args, pre, cfg.train.threshold, summary, tta=cfg.train.tta,
                     label_offset=[float(v) for v in cfg.data.label_offset])


def _log_start(cfg: Config, run_dir: Path, data: RunData, model: nn.Module, cp: Compute) -> None:
    if is_main_process():
        unlabelled = f", {len(data.unlabelled)} unlabelled (pseudo-labels from epoch {cfg.semi.start_epoch})" if data.unlabelled else ""
        log.info("run %s: %s (%.2fM params), %d train / %d val images (%s layout)%s, %s", run_dir, cfg.model.name,
                 sum(p.numel() for p in model.parameters()) / 1e6, len(data.split.train), len(data.split.val),
                 data.split.layout, unlabelled, cp)


def _log_summary(cfg: Config, run_dir: Path, data: RunData, rec: Recorder, cp: Compute, t_run: float) -> None:
    """The summary table (main process); every rank calls it, since the TTA evaluation is sharded."""
    all_ranks(True, cp.device)  # a barrier: the main process has written the best model the ranks load
    best = rec.best_row()
    row: dict[str, Any] = {"run": str(run_dir), "epochs": len(rec.history), "best epoch": rec.best_epoch or len(rec.history),
                           "val IoU": best.get("val_iou"), "val Dice": best.get("val_dice")}
    if cfg.train.tta > 1 and data.val_loader is not None and (run_dir / "model.safetensors").exists():
        row.update(_evaluate_with_tta(cfg, data, run_dir, cp))
    row["time"] = format_duration(time.perf_counter() - t_run)
    if rec.main:
        log.info("\n%s\n", format_table([row], title="Training summary"))
        log.info("model: %s", run_dir / "model.safetensors")


def _sig6(lr: float) -> float:
    """A learning rate to 6 significant digits: 0.00075025, not 0.0007502499999999999."""
    return float(f"{lr:.6g}")


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 6)


def _evaluate_with_tta(cfg: Config, data: RunData, run_dir: Path, cp: Compute) -> dict[str, Any]:
    """The best checkpoint on the validation images with ``train.tta`` views, as predict and evaluate
    will use it; added to metrics.json under ``tta``. (Epochs are validated with one pass: the views
    would multiply that cost, and the ranking of checkpoints hardly changes.)"""
    best, info = load_model(run_dir / "model.safetensors", cp.device)
    result = evaluate(best, data.val_loader, cp.device, info.threshold, amp_dtype=cp.amp_dtype, channels_last=cp.channels_last,
                      tta=info.tta, label_offset=info.label_offset, thresholds=SWEEP_THRESHOLDS)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics["tta"] = {"views": info.tta, "label_offset": info.label_offset, **result.metrics}
    if is_main_process():
        write_json(metrics_path, metrics)
        save_evaluation(run_dir, result)  # per-image scores and the sweep with the views predict uses
    return {f"val IoU (TTA x{info.tta})": result.metrics.get("iou"), f"val Dice (TTA x{info.tta})": result.metrics.get("dice")}


def _update_pseudo_labels(cfg: Config, data: RunData, train_set: MixedDataset, model: nn.Module, run_dir: Path,
                          epoch: int, cp: Compute, main: bool) -> None:
    """(Re)make the pseudo-labels when due, or when a resumed run does not find a complete set for
    these images (then they come from the resumed model, and the run is no longer bit-identical to an
    uninterrupted one); then let the training set draw on them. Under torchrun each rank labels
    its share of the images (rank::world_size); the main process writes the index once all are
    written; a rank that fails stops all of them."""
    device, amp_dtype = cp.device, cp.amp_dtype
    folder = run_dir / "pseudo"
    complete = labels_match(folder, data.unlabelled)
    if refresh_due(epoch, cfg.semi) or not all_ranks(complete, device):
        if main and not complete and not refresh_due(epoch, cfg.semi):
            log.warning("%s: no complete set of pseudo-labels for these images; remaking them", folder)
        t0 = time.perf_counter()
        try:
            make_pseudo_labels(model, data.pre, data.unlabelled, folder, device, tta=cfg.semi.tta, amp_dtype=amp_dtype,
                               label_offset=cfg.data.label_offset, shard=(rank(), world_size()),
                               channels_last=use_channels_last(cfg.train.channels_last, device, training=False))
        except BaseException:
            all_ranks(False, device)  # release the waiting ranks (nothing to do in one process)
            raise
        if not all_ranks(True, device):  # also a barrier: every share is written before the index
            raise TrainingError("making the pseudo-labels failed on another rank")
        if main:
            if world_size() > 1:
                write_label_index(folder, data.unlabelled)
            log.info("pseudo-labels for %d unlabelled images made by the epoch-%d model in %.1fs (%s)",
                     len(data.unlabelled), epoch - 1, time.perf_counter() - t0, folder)
        if not all_ranks(True, device):  # no rank reads the labels before the index marks them complete
            raise TrainingError("writing the pseudo-label index failed on the main process")
        train_set.reload_pseudo()
    train_set.active = True


def _summary(cfg: Config, data: RunData, history: list[dict[str, Any]], best_epoch: int, result: EvalResult | None,
             plan: dict[str, Any] | None = None, weights: dict[str, str] | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {
        "run": cfg.name,
        "data": cfg.data.root,
        "train_images": len(data.split.train),
        "unlabelled_images": len(data.unlabelled),
        "val_images": len(data.split.val),
        # How a flat folder was split, so that evaluate can score the same validation images.
        "seed": cfg.seed,
        "val_fraction": cfg.data.val_fraction,
        "val_stems": cfg.data.val_stems,
        "epochs_trained": len(history),
        "best_epoch": best_epoch,
        "input_size": cfg.train.input_size,
        "loss": cfg.train.loss,
        "segdistill_version": __version__,
        "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if plan is not None:
        s["plan"] = plan  # what the data decided, and why (plan.json)
    if weights is not None:
        s["pretrained"] = weights  # where the encoder's starting weights came from (model card)
    if result is not None:
        s.update({f"val_{k}": round(v, 6) for k, v in result.metrics.items() if not k.endswith("per_image")})
    return s

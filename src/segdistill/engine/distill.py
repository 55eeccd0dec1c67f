"""Knowledge distillation: a small student learns a trained teacher's soft probabilities.

Any folder of images can serve as transfer data, since the teacher's predictions are the targets.
Targets are either *cached* (the teacher predicts each image once; see ``targets.py``) or *online*
(the teacher runs on every augmented batch). Validation uses labels where given (``data.*``), and
otherwise agreement with the teacher on a held-out fraction of the transfer images.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from ..benchmark import count_gflops, count_params, cpu_latency_ms
from ..checkpoint import ModelInfo, file_sha256, load_model, save_model, save_state
from ..config import Config, dump_config
from ..data.dataset import Item, SegDataset
from ..data.discovery import collect_images, discover
from ..distributed import is_main_process, world_size
from ..errors import ConfigError, SegdistillError, TrainingError
from ..fileio import write_json, write_text
from ..losses import cwd_loss, dice_loss, feature_loss, make_task_loss, prob_to_logit, soft_bce_loss
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
from .evaluate import evaluate
from .targets import build_target_cache, mean_foreground
from .train import (
    COLLAPSE_PATIENCE,
    build_optimizer,
    build_schedulers,
    collapse_message,
    end_epoch_plan,
    fit,
    make_clock,
    make_ema,
    model_input,
    open_run,
    restore,
    rng_state,
    run_epoch,
    set_rng_state,
    set_schedule_length,
)

log = logging.getLogger("segdistill")


class KDLoss(nn.Module):
    """Distillation loss for one sigmoid channel, with optional feature adapters.

    total = (1 - alpha) * [soft-target BCE and/or CWD + feature_weight * feature loss]
            + alpha * task loss on labels
    """

    def __init__(self, cfg: Config, pos_weight: float | None, student_ch: list[int], teacher_ch: list[int]) -> None:
        super().__init__()
        d = cfg.distill
        self.kind, self.t, self.cwd_t, self.cwd_weight = d.loss, d.temperature, d.cwd_temperature, d.cwd_weight
        self.alpha, self.feature_weight, self.pos_weight = d.alpha, d.feature_weight, pos_weight
        self.task = make_task_loss(cfg.train.loss)
        # Match the shallowest levels when the decoders differ in depth; 1x1 convs map widths.
        k = min(len(student_ch), len(teacher_ch)) if d.feature_weight > 0 else 0
        self.adapters = nn.ModuleList(nn.Conv2d(s, t, 1) for s, t in zip(student_ch[-k:] if k else [], teacher_ch[-k:] if k else []))

    def forward(
        self,
        s_logits: torch.Tensor,
        t_logits: torch.Tensor,
        s_feats: list[torch.Tensor] | None = None,
        t_feats: list[torch.Tensor] | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kd = s_logits.new_zeros(())
        if "soft_bce" in self.kind:
            kd = kd + soft_bce_loss(s_logits, t_logits, self.t, self.pos_weight)
        if "dice" in self.kind:
            kd = kd + dice_loss(s_logits, torch.sigmoid(t_logits))
        if "cwd" in self.kind:
            kd = kd + self.cwd_weight * cwd_loss(s_logits, t_logits, self.cwd_t)
        if self.adapters and s_feats is not None and t_feats is not None:
            k = len(self.adapters)
            adapted = [a(f.float()) for a, f in zip(self.adapters, s_feats[-k:])]
            kd = kd + self.feature_weight * feature_loss(adapted, [f.float() for f in t_feats[-k:]])
        if self.alpha > 0 and labels is not None:
            return (1 - self.alpha) * kd + self.alpha * self.task(s_logits, labels)
        return kd


def distill_one_epoch(
    student: nn.Module,
    teacher: nn.Module | None,
    kd: KDLoss,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    *,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip: float | None = None,
    channels_last: bool = False,
    desc: str = "distill",
    ema: AveragedModel | None = None,
    mixup: float = 0.0,
    teacher_channels_last: bool = False,
) -> tuple[float, int]:
    """One pass; the teacher runs on each batch when given (online), else batches carry cached
    ``soft`` targets. ``mixup`` > 0 (online only) blends each batch with a shuffled copy of itself,
    weight ~ Beta(mixup, mixup), before teacher and student see it. Returns (mean loss, teacher
    forward passes)."""
    kd.train()
    features = bool(kd.adapters)
    teacher_passes = 0
    beta = torch.distributions.Beta(mixup, mixup) if mixup > 0 else None

    def batch_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        nonlocal teacher_passes
        if beta is not None:
            batch = mix_batch(batch, float(beta.sample()), torch.randperm(len(batch["image"])))
        x = model_input(batch, device, channels_last)
        t_feats = None
        if teacher is not None:
            x_t = x.contiguous(memory_format=torch.channels_last) if teacher_channels_last else x
            with torch.no_grad(), autocast(device, amp_dtype):
                t_out = teacher(x_t, return_features=True) if features else teacher(x_t)
            t_logits, t_feats = t_out if features else (t_out, None)
            t_logits = t_logits.float()
            teacher_passes += 1
        else:
            t_logits = prob_to_logit(batch["soft"].to(device))  # (B, 1, h, w)
        with autocast(device, amp_dtype):
            s_out = student(x, return_features=True) if features else student(x)
        s_logits, s_feats = s_out if features else (s_out, None)
        labels = batch["mask"].to(device) if "mask" in batch else None
        return kd(s_logits.float(), t_logits, s_feats, t_feats, labels)

    params = list(student.parameters()) + list(kd.parameters())
    mean_loss = run_epoch(student, loader, batch_loss, optimizer, params, scaler=scaler, scheduler=scheduler,
                          grad_clip=grad_clip, desc=desc, ema=ema)
    return mean_loss, teacher_passes


def mix_batch(batch: dict[str, torch.Tensor], lam: float, perm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mixup of a batch with its permutation ``perm``: images and any labels are blended by
    ``lam``. With online targets the teacher then labels the blend itself, which is what makes mixup
    useful for distillation ("function matching", Beyer et al., CVPR 2022): the student learns the
    teacher's function between images, where labels say nothing."""
    return {k: lam * v + (1 - lam) * v[perm] if k in ("image", "mask") else v for k, v in batch.items()}


@dataclass
class DistillResult:
    run_dir: Path
    history: list[dict[str, Any]]
    report: dict[str, Any]


def _transfer_images(cfg: Config) -> list[Path]:
    folders = cfg.distill.images
    if not folders:
        raise ConfigError("distill.images is not set: give a folder of images (--images DIR)")
    return collect_images(folders, cfg.data.recursive)


def distill(cfg: Config, resume: str | Path | None = None, overwrite: bool = False,
            started: float | None = None) -> DistillResult:
    """Run a configured distillation; see the module docstring. ``started``: as in ``fit``."""
    started = time.monotonic() if started is None else started
    if world_size() > 1:
        raise ConfigError("distill runs in a single process; launch it without torchrun")
    cfg, run_dir, state = open_run(cfg, resume, overwrite)
    set_threads(cfg.threads)
    if cfg.distill.lr is not None:
        cfg = copy.deepcopy(cfg)
        cfg.train.lr = cfg.distill.lr  # the one place the student's rate is taken from
    d = cfg.distill
    if d.teacher is None:
        raise ConfigError("distill.teacher is not set: give the teacher model file (--teacher MODEL)")
    if d.feature_weight > 0 and d.targets == "cached":
        raise ConfigError("feature distillation (distill.feature_weight > 0) needs distill.targets: online")
    if d.mixup > 0 and d.targets == "cached":
        raise ConfigError("distill.mixup needs distill.targets: online (the teacher must label the blended images)")
    device = select_device(cfg.device)
    torch.manual_seed(cfg.seed)
    teacher_path = Path(d.teacher)
    teacher, tinfo = load_model(teacher_path, device)
    pre = copy.deepcopy(tinfo.preprocess)  # the student sees exactly what the teacher saw

    # ---- data: transfer images, validation (labels or teacher agreement)
    transfer = _transfer_images(cfg)
    labelled = cfg.data.root is not None or cfg.data.train_images is not None
    label_of: dict[Path, Path] = {}
    if labelled:
        split = discover(cfg.data, cfg.seed)
        val_pairs = split.val
        label_of = {p.image.resolve(): p.mask for p in split.train if p.mask is not None}
        val_set_paths = {p.image.resolve() for p in val_pairs}
        before = len(transfer)
        transfer = [p for p in transfer if p.resolve() not in val_set_paths]
        if before != len(transfer):
            log.info("left %d validation images out of the transfer set", before - len(transfer))
        val_items_src = [(p.image, p.mask) for p in val_pairs]
    else:
        ordered = sorted(transfer)
        random.Random(cfg.seed).shuffle(ordered)
        n_val = max(1, round(len(ordered) * d.val_fraction)) if len(ordered) > 1 and d.val_fraction > 0 else 0
        val_items_src = [(p, None) for p in ordered[:n_val]]
        transfer = ordered[n_val:]
        log.info("no labelled data: validating by agreement with the teacher on %d held-out images", n_val)
    if not transfer:
        raise SegdistillError("no transfer images left for training")
    if d.alpha > 0:
        missing = [p for p in transfer if p.resolve() not in label_of]
        if missing:
            raise ConfigError(f"distill.alpha > 0 needs a label for every transfer image; {missing[0]} has none")

    # ---- teacher targets
    cache_root = Path(d.cache_dir) if d.cache_dir else None
    need = [p for p, _ in val_items_src] + (transfer if d.targets == "cached" else [])
    targets, stats = build_target_cache(teacher, tinfo, teacher_path, need, cache_root, cfg.device)
    teacher_passes = stats.forward_passes

    train_items = [
        Item(p, label_of.get(p.resolve()) if d.alpha > 0 else None, targets[p] if d.targets == "cached" else None)
        for p in transfer
    ]
    train_set = SegDataset(train_items, pre, train=True, input_size=cfg.train.input_size, augment=cfg.augment,
                           length=cfg.train.samples_per_epoch or len(train_items), seed=cfg.seed, cache=cfg.data.cache)
    val_set = SegDataset([Item(p, m, targets[p]) for p, m in val_items_src], pre, train=False, cache=True, resize_masks=False)
    workers = resolve_workers(cfg.train.num_workers)
    train_loader = DataLoader(train_set, batch_size=cfg.train.batch_size, num_workers=workers,
                              drop_last=len(train_set) > cfg.train.batch_size)
    val_loader = DataLoader(val_set, batch_size=1, num_workers=0) if len(val_set) else None
    val_key = "mask" if labelled and val_loader is not None else "soft"

    # ---- models and optimisation
    s = d.student
    student = create_model(s.name, in_channels=pre.in_channels, **s.args).to(device)
    pos_weight = None
    if d.balance:
        f = mean_foreground([targets[p] for p in (transfer if d.targets == "cached" else [q for q, _ in val_items_src])])
        pos_weight = float(min(max(math.sqrt((1 - f) / max(f, 1e-6)), 1.0), 5.0))
    if d.feature_weight > 0 and not (hasattr(student, "feature_channels") and hasattr(teacher, "feature_channels")):
        raise ConfigError("feature distillation needs U-Net teacher and student (models with feature_channels)")
    kd = KDLoss(cfg, pos_weight, getattr(student, "feature_channels", []), getattr(teacher, "feature_channels", [])).to(device)
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    channels_last = use_channels_last(cfg.train.channels_last, device, training=True)
    # The online teacher only infers, where channels_last pays on the CPU too (1.43x, benchmarks.md).
    teacher_cl = d.targets == "online" and use_channels_last(cfg.train.channels_last, device, training=False)
    if teacher_cl:
        teacher = teacher.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, list(student.parameters()) + list(kd.parameters()))
    ema = make_ema(student, cfg.train.ema)
    clock = make_clock(cfg, state, started)
    clock.final_views = 2  # the report runs teacher and student once more
    step_sched, plateau = build_schedulers(cfg, optimizer, len(train_loader), clock.epochs)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    main = is_main_process()

    history: list[dict[str, Any]] = []
    start, best, best_epoch = 1, -1.0, 0
    empty_streak = 0
    if state is not None:
        restore(run_dir, state, model=student, kd=kd, optimizer=optimizer, scheduler=step_sched, plateau=plateau,
                scaler=scaler, ema=ema)
        set_rng_state(state["rng"])
        history, start, best, best_epoch = state["history"], state["epoch"] + 1, state["best"], state["best_epoch"]
    elif main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", dump_config(cfg))

    teacher_metrics = evaluate(teacher, val_loader, device, tinfo.threshold).metrics if val_key == "mask" and val_loader else {}
    teacher_sha = file_sha256(teacher_path)
    if main:
        log.info("distill %s: teacher %s (%.2fM) -> student %s (%.3fM), %d transfer images, %s targets, loss %s%s, %s, %s, "
                 "%d threads", run_dir, tinfo.arch, count_params(teacher) / 1e6, s.name, count_params(student) / 1e6,
                 len(transfer), d.targets, d.loss, f", pos_weight {pos_weight:.2f}" if pos_weight else "", device,
                 precision_name(amp_dtype), torch.get_num_threads())

    def info(summary: dict[str, Any]) -> ModelInfo:
        return ModelInfo(s.name, resolved_args(s.name, in_channels=pre.in_channels, **s.args), pre, tinfo.threshold, summary)

    t_run = time.perf_counter()
    epoch = start
    while epoch <= clock.epochs:
        t0 = time.perf_counter()
        train_set.set_epoch(epoch)
        desc = f"distill {epoch}/{clock.epochs}"
        try:
            loss, passes = distill_one_epoch(
                student, teacher if d.targets == "online" else None, kd, optimizer, train_loader, device,
                amp_dtype=amp_dtype, scaler=scaler, scheduler=step_sched, grad_clip=cfg.train.grad_clip,
                channels_last=channels_last, desc=desc, ema=ema, mixup=d.mixup, teacher_channels_last=teacher_cl)
        except TrainingError as e:
            raise TrainingError(f"{e}; distillation stopped. The last good checkpoint is kept in {run_dir}") from None
        teacher_passes += passes
        row: dict[str, Any] = {"epoch": epoch, "train_loss": round(loss, 6), "val_iou": None, "val_dice": None,
                               "agreement_iou": None, "lr": optimizer.param_groups[0]["lr"]}
        final = ema.module if ema is not None else student  # what is validated and saved
        t_val = time.perf_counter()
        if val_loader is not None:
            m = evaluate(final, val_loader, device, tinfo.threshold, target_key=val_key).metrics
            agree = m if val_key == "soft" else evaluate(final, val_loader, device, tinfo.threshold, target_key="soft").metrics
            row.update(val_iou=round(m["iou"], 6), val_dice=round(m["dice"], 6), agreement_iou=round(agree["iou"], 6))
            empty_streak = empty_streak + 1 if predicts_nothing(m) else 0
            if empty_streak == COLLAPSE_PATIENCE and main:
                log.warning(collapse_message(epoch, cfg.train.lr))
        row["seconds"] = round(time.perf_counter() - t0, 2)
        history.append(row)
        if end_epoch_plan(clock, epoch, time.perf_counter() - t_val if val_loader else None, device):
            set_schedule_length(step_sched, clock.epochs, len(train_loader))
        if plateau is not None and row["val_iou"] is not None:
            plateau.step(row["val_iou"])
        # Without validation the latest student is the one kept (as in fit): a loss is no score,
        # since its scale depends on the KD loss and the temperature.
        improved = row["val_iou"] is None or row["val_iou"] > best
        if improved:
            best_epoch = epoch
            best = best if row["val_iou"] is None else row["val_iou"]
        if main:
            summary = {"distilled_from": teacher_path.name, "teacher_sha256": teacher_sha, "epoch": epoch,
                       "val_iou": row["val_iou"], "validation": "labels" if val_key == "mask" else "teacher agreement"}
            if improved:
                save_model(run_dir / "model.safetensors", final, info(summary))
            save_model(run_dir / "last.safetensors", final, info(summary))
            write_csv(run_dir / "history.csv", history)
            plot_curves(run_dir / "curves.png", history, f"{cfg.name}: student {s.name}")
            save_state(run_dir / "state.safetensors", {
                "epoch": epoch, "model": student.state_dict(), "kd": kd.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": step_sched.state_dict() if step_sched is not None else None,
                "plateau": plateau.state_dict() if plateau is not None else None, "rng": rng_state(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "ema": ema.state_dict() if ema is not None else None, "history": history, "best": best, "best_epoch": best_epoch,
                "planned_epochs": clock.epochs})
            log.info("%s  loss %.4f  IoU %s  agreement %s  %.1fs  ETA %s%s", f"distill {epoch}/{clock.epochs}", loss, row["val_iou"], row["agreement_iou"],
                     row["seconds"], clock.eta(epoch), "  *best*" if improved else "")
        epoch += 1
    minutes = (time.perf_counter() - t_run) / 60
    log.info("teacher forward passes in this run: %d", teacher_passes)
    report = _report(cfg, run_dir, teacher, tinfo, student, history, best_epoch, teacher_metrics, val_key,
                     teacher_passes, stats.folder, minutes, device) if main else {}
    return DistillResult(run_dir, history, report)


def _epochs_to_fraction(history: list[dict[str, Any]], key: str, fraction: float = 0.9) -> int | None:
    values = [h[key] for h in history if h.get(key) is not None]
    if not values:
        return None
    final = values[-1]
    return next(h["epoch"] for h in history if h.get(key) is not None and h[key] >= fraction * final)


def _report(cfg: Config, run_dir: Path, teacher: nn.Module, tinfo: ModelInfo, student: nn.Module,
            history: list[dict[str, Any]], best_epoch: int, teacher_metrics: dict[str, float], val_key: str,
            teacher_passes: int, cache_folder: Path, minutes: float, device: torch.device) -> dict[str, Any]:
    best_student, _ = load_model(run_dir / "model.safetensors", "cpu")
    size, ch = cfg.train.input_size, tinfo.preprocess.in_channels
    best_row = next(h for h in history if h["epoch"] == best_epoch)
    t_lat = cpu_latency_ms(copy.deepcopy(teacher).cpu(), ch, size)
    s_lat = cpu_latency_ms(best_student, ch, size)
    rows = [
        {"model": f"teacher ({tinfo.arch})", "params": count_params(teacher), "GFLOPs": count_gflops(copy.deepcopy(teacher).cpu(), ch, size),
         "CPU ms": t_lat, "val IoU": teacher_metrics.get("iou"), "val Dice": teacher_metrics.get("dice"), "agreement": 1.0},
        {"model": f"student ({cfg.distill.student.name}, distilled)", "params": count_params(best_student),
         "GFLOPs": count_gflops(best_student, ch, size), "CPU ms": s_lat,
         "val IoU": best_row["val_iou"] if val_key == "mask" else None,
         "val Dice": best_row["val_dice"] if val_key == "mask" else None, "agreement": best_row["agreement_iou"]},
    ]
    baseline = None
    if cfg.distill.baseline:
        if val_key != "mask":
            log.warning("--baseline needs labelled data (--data); skipped")
        else:
            bcfg = copy.deepcopy(cfg)
            bcfg.model = copy.deepcopy(cfg.distill.student)
            bcfg.data.invert = tinfo.preprocess.invert
            bcfg.data.max_side = tinfo.preprocess.max_side
            bcfg.output_dir, bcfg.name = str(run_dir), "baseline"
            res = fit(bcfg, overwrite=True)
            baseline = {"val_iou": res.best.get("val_iou"), "val_dice": res.best.get("val_dice"), "run": str(res.run_dir)}
            rows.append({"model": f"student ({cfg.distill.student.name}, labels only)", "params": rows[1]["params"],
                         "GFLOPs": rows[1]["GFLOPs"], "CPU ms": s_lat, "val IoU": baseline["val_iou"],
                         "val Dice": baseline["val_dice"], "agreement": None})
    report = {
        "teacher": {"file": cfg.distill.teacher, **{k: v for k, v in rows[0].items() if k != "model"}},
        "student": {"file": str(run_dir / "model.safetensors"), **{k: v for k, v in rows[1].items() if k != "model"}},
        "baseline_labels_only": baseline,
        "compression": rows[0]["params"] / rows[1]["params"],
        "speedup_cpu": t_lat / s_lat,
        "iou_retained": (rows[1]["val IoU"] / rows[0]["val IoU"]) if rows[1]["val IoU"] and rows[0]["val IoU"] else None,
        "validation": "labels" if val_key == "mask" else "agreement with the teacher on held-out transfer images (no labels given)",
        "epochs": len(history), "best_epoch": best_epoch,
        "epochs_to_90pct_of_final_iou": _epochs_to_fraction(history, "val_iou" if val_key == "mask" else "agreement_iou"),
        "teacher_forward_passes": teacher_passes, "target_cache": str(cache_folder), "targets": cfg.distill.targets,
        "loss": cfg.distill.loss, "temperature": cfg.distill.temperature, "input_size": size,
        "latency": f"batch 1, {size}x{size}, fp32, channels_last, {torch.get_num_threads()} threads", "minutes": round(minutes, 2),
    }
    write_json(run_dir / "distill_report.json", report)
    table_rows = [dict(r, params=f"{r['params'] / 1e6:.3f}M") for r in rows]
    print(format_table(table_rows, title=f"\nDistillation report ({report['validation']})"))
    ret = f", keeps {report['iou_retained']:.1%} of the teacher's IoU" if report["iou_retained"] else ""
    print(f"compression {report['compression']:.1f}x, CPU speed-up {report['speedup_cpu']:.1f}x{ret}")
    print(f"report: {run_dir / 'distill_report.json'}")
    return report

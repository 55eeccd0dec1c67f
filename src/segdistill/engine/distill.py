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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import ModelInfo, file_sha256, load_model, read_model_info
from ..config import Config
from ..distributed import is_distributed, sync_buffers
from ..errors import ConfigError, TrainingError
from ..losses import cwd_loss, dice_loss, feature_loss, make_task_loss, prob_to_logit, soft_bce_loss
from ..measure import LATENCY_JSON, count_params, model_gflops, model_latency
from ..metrics import SWEEP_THRESHOLDS
from ..models import create_model, resolved_args
from ..reports.distill import DistillOutcome, ModelFigures, distill_report
from ..runtime import autocast, use_channels_last
from . import clock as clock_module
from .autoplan import log_plan
from .clock import RunClock, StallHandler
from .evaluate import EvalResult, evaluate
from .loaders import DistillData, build_distill_data, latency_size
from .loop import Compute, Optimization, build_compute, build_optimization, model_input, run_epoch
from .run import Recorder, begin, capture, end_epoch, format_score, make_clock, validates
from .targets import mean_foreground
from .train import fit, start_weights

log = logging.getLogger("segdistill")


@dataclass
class DistillResult:
    """What ``distill`` returns: the run folder, the student's history and the report."""

    run_dir: Path
    history: list[dict[str, Any]]
    report: dict[str, Any]


@dataclass
class TeacherFigures:
    """The teacher's validation metrics when they were measured beforehand (a student search scores
    them from its cached predictions): with them the run makes no teacher forward pass at all (the
    report counts and times the teacher on its architecture, which the weights do not change)."""

    metrics: dict[str, float]


class KDLoss(nn.Module):
    """Distillation loss for one sigmoid channel, with optional feature adapters.

    total = (1 - alpha) * [soft-target BCE and/or CWD + feature_weight * feature loss]
            + alpha * task loss on labels
    """

    def __init__(self, cfg: Config, pos_weight: float | None, student_ch: list[int], teacher_ch: list[int],
                 student_strides: list[int] | None = None, teacher_strides: list[int] | None = None) -> None:
        super().__init__()
        d = cfg.distill
        self.kind, self.t, self.cwd_t, self.cwd_weight = d.loss, d.temperature, d.cwd_temperature, d.cwd_weight
        self.alpha, self.feature_weight, self.pos_weight = d.alpha, d.feature_weight, pos_weight
        self.task = make_task_loss(cfg.train.loss)
        # Pair decoder levels of the same stride (a space-to-depth student has none at full
        # resolution); without strides, the shallowest levels. 1x1 convs map widths.
        k = min(len(student_ch), len(teacher_ch))
        self.pairs: list[tuple[int, int]] = [] if d.feature_weight <= 0 else (
            [(i, j) for i, s in enumerate(student_strides) for j, t in enumerate(teacher_strides) if s == t]
            if student_strides is not None and teacher_strides is not None
            else [(len(student_ch) - k + n, len(teacher_ch) - k + n) for n in range(k)])
        self.adapters = nn.ModuleList(nn.Conv2d(student_ch[i], teacher_ch[j], 1) for i, j in self.pairs)

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
            adapted = [a(s_feats[i].float()) for a, (i, _) in zip(self.adapters, self.pairs)]
            kd = kd + self.feature_weight * feature_loss(adapted, [t_feats[j].float() for _, j in self.pairs])
        if self.alpha > 0 and labels is not None:
            return (1 - self.alpha) * kd + self.alpha * self.task(s_logits, labels)
        return kd


class StudentLoss(nn.Module):
    """The student and its distillation loss as one module: the loss's feature adapters learn too,
    so under torchrun DDP must average the gradients of both (it wraps this module)."""

    def __init__(self, student: nn.Module, kd: KDLoss, amp_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.student, self.kd, self.amp_dtype = student, kd, amp_dtype

    def forward(self, x: torch.Tensor, t_logits: torch.Tensor, t_feats: list[torch.Tensor] | None,
                labels: torch.Tensor | None) -> torch.Tensor:
        features = bool(self.kd.adapters)
        with autocast(x.device, self.amp_dtype):
            s_out = self.student(x, return_features=True) if features else self.student(x)
        s_logits, s_feats = s_out if features else (s_out, None)
        return self.kd(s_logits.float(), t_logits, s_feats, t_feats, labels)


def distill_one_epoch(
    student: nn.Module,
    teacher: nn.Module | None,
    kd: KDLoss,
    opt: Optimization,
    loader: DataLoader,
    cp: Compute,
    *,
    grad_clip: float | None = None,
    desc: str = "distill",
    mixup: float = 0.0,
    teacher_channels_last: bool = False,
    step_module: nn.Module | None = None,
) -> tuple[float, int]:
    """One pass; the teacher runs on each batch when given (online), else batches carry cached
    ``soft`` targets. ``mixup`` > 0 (online only) blends each batch with a shuffled copy of itself,
    weight ~ Beta(mixup, mixup), before teacher and student see it. ``step_module`` computes the
    loss (default: a StudentLoss of ``student`` and ``kd``; under torchrun, one wrapped in DDP).
    Returns (mean loss, teacher forward passes)."""
    kd.train()
    device, amp_dtype, features = cp.device, cp.amp_dtype, bool(kd.adapters)
    step = step_module if step_module is not None else StudentLoss(student, kd, amp_dtype)
    teacher_passes = 0
    beta = torch.distributions.Beta(mixup, mixup) if mixup > 0 else None

    def batch_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        nonlocal teacher_passes
        if beta is not None:
            batch = mix_batch(batch, float(beta.sample()), torch.randperm(len(batch["image"])))
        x = model_input(batch, device, cp.channels_last)
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
        labels = batch["mask"].to(device) if "mask" in batch else None
        return step(x, t_logits, t_feats, labels)

    params = list(student.parameters()) + list(kd.parameters())
    mean_loss = run_epoch(student, loader, batch_loss, opt.optimizer, params, scaler=opt.scaler, scheduler=opt.scheduler,
                          grad_clip=grad_clip, desc=desc, ema=opt.ema)
    return mean_loss, teacher_passes


def mix_batch(batch: dict[str, torch.Tensor], lam: float, perm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mixup of a batch with its permutation ``perm``: images and any labels are blended by
    ``lam``. With online targets the teacher then labels the blend itself, which is what makes mixup
    useful for distillation ("function matching", Beyer et al., CVPR 2022): the student learns the
    teacher's function between images, where labels say nothing."""
    return {k: lam * v + (1 - lam) * v[perm] if k in ("image", "mask") else v for k, v in batch.items()}


@dataclass
class _Run:
    """One distillation's parts, as its epochs and its end use them."""

    cfg: Config
    run_dir: Path
    tinfo: ModelInfo
    data: DistillData
    cp: Compute
    student: nn.Module
    teacher: nn.Module
    kd: KDLoss
    opt: Optimization
    rec: Recorder
    clock: RunClock
    parts: dict[str, Any]
    teacher_cl: bool
    weights: dict[str, str] | None
    plan: dict[str, Any] | None


def distill_student(cfg: Config, run_dir: Path, state: dict | None, device: torch.device, started: float,
                    plan: dict[str, Any] | None, short: bool = False, teacher_figures: TeacherFigures | None = None,
                    on_stall: StallHandler | None = None) -> DistillResult:
    """The distillation of ``cfg.distill.student`` in ``run_dir``. ``short``: a run whose result
    is its history (a search's candidate): no teacher evaluation, twin or report.
    ``teacher_figures``: the teacher's report figures, measured beforehand (the search's winner).
    ``on_stall``: what a stalled epoch does (the job's choice, as in ``fit``)."""
    d = cfg.distill
    teacher, tinfo = load_model(Path(d.teacher), device)  # type: ignore[arg-type]
    data = build_distill_data(cfg, teacher, tinfo, Path(d.teacher), device)  # type: ignore[arg-type]
    student = create_model(d.student.name, in_channels=tinfo.preprocess.in_channels, **d.student.args).to(device)
    weights = start_weights(student, d.student, run_dir if state is not None else None)
    kd = _kd_loss(cfg, data, student, teacher).to(device)
    # The online teacher only infers, where channels_last pays on the CPU too (1.43x, benchmarks.md).
    teacher_cl = d.targets == "online" and use_channels_last(cfg.train.channels_last, device, training=False)
    teacher = teacher.to(memory_format=torch.channels_last) if teacher_cl else teacher
    clock = make_clock(cfg, state, started, final_views=2, on_stall=on_stall)  # the report runs teacher and student once more
    cp = build_compute(cfg, device)
    opt = build_optimization(cfg, student, list(student.parameters()) + list(kd.parameters()), len(data.train_loader),
                             clock.epochs, cp.amp_dtype)
    rec = Recorder(run_dir, f"{run_dir.name}: student {d.student.name}", "distill", cfg.train.lr, data.val_loader is not None,
                   labelled=data.val_key == "mask")
    r = _Run(cfg, run_dir, tinfo, data, cp, student, teacher, kd, opt, rec, clock,
             {"model": student, "kd": kd, **opt.parts()}, teacher_cl, weights, plan)
    epoch = begin(run_dir, cfg, state, r.parts, rec, plan)
    teacher_metrics = (teacher_figures.metrics if teacher_figures is not None else
                       evaluate(teacher, data.val_loader, device, tinfo.threshold).metrics if not short and data.val_key == "mask" else {})
    if rec.main:
        if state is None:
            log_plan(plan)
        _log_start(cfg, run_dir, data, teacher, student, kd, r.cp, tinfo)
    t_run = time.perf_counter()
    passes = data.teacher_passes + _epochs(r, epoch)
    if rec.main:
        log.info("teacher forward passes in this run: %d", passes)
    if short:  # a search candidate: its result is its history
        return DistillResult(run_dir, rec.history, {})
    # The twin trains on every rank (its loop is distributed too); the report is the main process's.
    twin = train_twin(cfg, run_dir, tinfo, len(rec.history)) if d.baseline and data.val_key == "mask" else None
    if d.baseline and twin is None and rec.main:
        log.warning("--baseline needs labelled data (--data); skipped")
    if not rec.main:
        return DistillResult(run_dir, rec.history, {})
    report = _report(r, teacher_metrics, passes, (time.perf_counter() - t_run) / 60, twin)
    rec.finish(str(r.cp), time.perf_counter() - t_run)
    return DistillResult(run_dir, rec.history, report)


def _epochs(r: _Run, epoch: int) -> int:
    """The epochs from ``epoch`` on; returns the teacher forward passes they made."""
    cfg, d, data, clock, opt = r.cfg, r.cfg.distill, r.data, r.clock, r.opt
    teacher_sha, passes = file_sha256(Path(d.teacher)), 0  # type: ignore[arg-type]
    step = _wrap(StudentLoss(r.student, r.kd, r.cp.amp_dtype), r.cp.device)  # after a resume has restored both
    while epoch <= clock.epochs:
        t0 = clock_module._now()  # the replaceable clock: a search's budget reads these seconds
        data.train_set.set_epoch(epoch)
        loss, n = _distill_epoch(r.student, r.teacher if d.targets == "online" else None, r.kd, opt, data, r.cp, cfg,
                                 f"distill {epoch}/{clock.epochs}", r.run_dir, r.teacher_cl, step)
        passes += n
        final = opt.ema.module if opt.ema is not None else r.student  # what is validated and saved
        t_val = time.perf_counter()  # a share of the epoch, for the final evaluation's reserve
        m, result = _validate(final, data, r.cp, r.tinfo.threshold) if data.val_loader and validates(epoch, cfg, clock) else ({}, None)
        val_seconds = time.perf_counter() - t_val if m else None
        row = {"epoch": epoch, "train_loss": round(loss, 6), "val_iou": m.get("iou"), "val_dice": m.get("dice"),
               "agreement_iou": m.get("agreement"), "lr": float(f"{opt.optimizer.param_groups[0]['lr']:.6g}")}
        summary = {"distilled_from": Path(d.teacher).name, "teacher_sha256": teacher_sha, "epoch": epoch,  # type: ignore[arg-type]
                   "val_iou": row["val_iou"], "validation": "labels" if data.val_key == "mask" else "teacher agreement",
                   **({"plan": r.plan} if r.plan is not None else {}), **({"pretrained": r.weights} if r.weights else {})}

        def save(improved: bool, epoch: int = epoch, final: nn.Module = final, summary: dict[str, Any] = summary,
                 result: EvalResult | None = result) -> None:
            r.rec.save(final, student_info(cfg, r.tinfo, summary), capture(epoch, r.parts, r.rec, clock), clock, result)

        if end_epoch(r.rec, clock, opt, row, m, t0, val_seconds, r.cp.device, cfg.train.early_stopping, save):
            break
        epoch += 1
    r.rec.plot()  # an early stop ends before the last planned epoch
    return passes


def _report(r: _Run, teacher_metrics: dict[str, float], passes: int, minutes: float,
            twin: dict[str, Any] | None) -> dict[str, Any]:
    """The report: figures from the run folder's one latency record (measure.model_latency; a
    search's are reused), beside the labels-only ``twin``'s scores."""
    cfg = r.cfg
    (h, w), _ = latency_size(cfg, r.tinfo)
    sinfo = read_model_info(r.run_dir / "model.safetensors")
    figures = [ModelFigures(i.arch, *model_gflops(i, (h, w)), model_latency(i, (h, w), r.run_dir / LATENCY_JSON))
               for i in (r.tinfo, sinfo)]
    out = DistillOutcome(r.rec.history, r.rec.best_epoch, r.rec.best_row(), teacher_metrics, r.data.val_key, passes,
                         r.data.cache_folder, minutes, twin)
    return distill_report(cfg, r.run_dir, figures[0], figures[1], (h, w), out)


def student_config(cfg: Config) -> Config:
    """The config the student trains by: ``distill.lr`` as its learning rate (when set)."""
    if cfg.distill.lr is None:
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.train.lr = cfg.distill.lr  # the one place the student's rate is taken from
    return cfg


def student_info(cfg: Config, tinfo: ModelInfo, summary: dict[str, Any]) -> ModelInfo:
    """The student's model file: its architecture with the teacher's preprocessing, threshold,
    test-time views and label offset, since it learnt the teacher's outputs (offset included)."""
    s = cfg.distill.student
    return ModelInfo(s.name, resolved_args(s.name, in_channels=tinfo.preprocess.in_channels, **s.args), tinfo.preprocess,
                     tinfo.threshold, summary, tta=tinfo.tta, label_offset=list(tinfo.label_offset))


def train_twin(cfg: Config, run_dir: Path, tinfo: ModelInfo, epochs: int) -> dict[str, Any]:
    """The labels-only twin (``distill.baseline``): the same student, rate and ``epochs`` (those the
    student trained) on the labels alone, in RUN/baseline; the report sets it beside the distilled
    student. ``epochs`` comes from the caller's history in memory, the same on every rank: only
    rank 0 writes history.csv, and another rank reading it could see one row less and train the
    twin on another learning-rate schedule (seen under torchrun, 2 runs in 2)."""
    bcfg = copy.deepcopy(cfg)
    bcfg.model = copy.deepcopy(cfg.distill.student)
    bcfg.data.invert, bcfg.data.max_side = tinfo.preprocess.invert, tinfo.preprocess.max_side
    bcfg.output_dir, bcfg.name = str(run_dir), "baseline"
    bcfg.train.time_budget = None  # as many epochs as the student got (a budget was spent on it)
    bcfg.train.plan = "off"  # the student's settings, planned or not, as they are
    bcfg.train.epochs = epochs or cfg.train.epochs
    log.info("training the labels-only twin of the student (%d epochs, in %s)", bcfg.train.epochs, run_dir / "baseline")
    quiet = log.level
    log.setLevel(max(logging.WARNING, log.getEffectiveLevel()))  # its epoch lines would interleave with the report
    try:
        res = fit(bcfg, overwrite=True)
    finally:
        log.setLevel(quiet)
    log.info("labels-only twin: best val IoU %s at epoch %d of %d", format_score(res.best.get("val_iou")),
             res.best.get("epoch", 0), len(res.history))
    return {"val_iou": res.best.get("val_iou"), "val_dice": res.best.get("val_dice"), "run": str(res.run_dir)}


def _kd_loss(cfg: Config, data: DistillData, student: nn.Module, teacher: nn.Module) -> KDLoss:
    """The distillation loss; with ``distill.balance``, the teacher's foreground re-weighted by
    sqrt(background / foreground) of its targets."""
    d, pos_weight = cfg.distill, None
    if d.balance:
        f = mean_foreground([data.targets[p] for p in (data.transfer if d.targets == "cached" else data.targets)])
        pos_weight = float(min(max(math.sqrt((1 - f) / max(f, 1e-6)), 1.0), 5.0))
    if d.feature_weight > 0 and not (hasattr(student, "feature_channels") and hasattr(teacher, "feature_channels")):
        raise ConfigError("feature distillation needs U-Net teacher and student (models with feature_channels)")
    kd = KDLoss(cfg, pos_weight, getattr(student, "feature_channels", []), getattr(teacher, "feature_channels", []),
                getattr(student, "feature_strides", None), getattr(teacher, "feature_strides", None))
    if d.feature_weight > 0 and not kd.pairs:
        raise ConfigError("distill.feature_weight: the student and teacher have no decoder level of the same "
                          f"resolution (strides {getattr(student, 'feature_strides', '?')} and "
                          f"{getattr(teacher, 'feature_strides', '?')}); set it to 0")
    return kd


def _distill_epoch(student: nn.Module, teacher: nn.Module | None, kd: KDLoss, opt: Optimization, data: DistillData,
                   cp: Compute, cfg: Config, desc: str, run_dir: Path, teacher_cl: bool, step: nn.Module) -> tuple[float, int]:
    try:
        return distill_one_epoch(student, teacher, kd, opt, data.train_loader, cp, grad_clip=cfg.train.grad_clip,
                                 desc=desc, mixup=cfg.distill.mixup, teacher_channels_last=teacher_cl, step_module=step)
    except TrainingError as e:
        raise TrainingError(f"{e}; distillation stopped. The last good checkpoint is kept in {run_dir}") from None


def _wrap(step: StudentLoss, device: torch.device) -> nn.Module:
    """DDP across ranks (the student's and the adapters' gradients averaged), else ``step`` itself."""
    if not is_distributed():
        return step
    return nn.parallel.DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)


def _validate(model: nn.Module, data: DistillData, cp: Compute, threshold: float) -> tuple[dict[str, float], EvalResult]:
    """Validation metrics against labels or the teacher (``val_key``), plus ``agreement``: the IoU
    of the student's masks with the teacher's; and the evaluation against ``val_key`` itself (its
    per-image rows and threshold sweep)."""
    assert data.val_loader is not None
    sync_buffers(model)  # every rank scores the model rank 0 saves
    result = evaluate(model, data.val_loader, cp.device, threshold, target_key=data.val_key, thresholds=SWEEP_THRESHOLDS)
    m = result.metrics
    agree = m if data.val_key == "soft" else evaluate(model, data.val_loader, cp.device, threshold, target_key="soft").metrics
    return {**{k: round(v, 6) for k, v in m.items() if k in ("iou", "dice")}, "agreement": round(agree["iou"], 6),
            **{k: v for k, v in m.items() if k not in ("iou", "dice")}}, result


def _log_start(cfg: Config, run_dir: Path, data: DistillData, teacher: nn.Module, student: nn.Module, kd: KDLoss,
               cp: Compute, tinfo: ModelInfo) -> None:
    d = cfg.distill
    log.info("distill %s: teacher %s (%.2fM) -> student %s (%.3fM), %d transfer images, %s targets, loss %s%s, %s",
             run_dir, tinfo.arch, count_params(teacher) / 1e6, d.student.name, count_params(student) / 1e6,
             len(data.transfer), d.targets, d.loss, f", pos_weight {kd.pos_weight:.2f}" if kd.pos_weight else "", cp)

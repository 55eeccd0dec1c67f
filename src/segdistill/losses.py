"""Task losses (on labels) and distillation losses (on a teacher's outputs) for one logit channel.

All take logits of shape (B, 1, H, W) and targets of the same shape in [0, 1]; soft targets are fine
everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from .errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bce_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    pw = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device, dtype=logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image, averaged; ``smooth`` keeps empty images finite."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return (1 - (2 * inter + smooth) / (p.sum(1) + t.sum(1) + smooth)).mean()


def jaccard_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft IoU per image, averaged."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return (1 - (inter + smooth) / (p.sum(1) + t.sum(1) - inter + smooth)).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float | None = 0.25) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al., 2017), mean over pixels."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.mean()


def lovasz_hinge_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovasz hinge (Berman et al., CVPR 2018), per image, averaged: a convex surrogate whose
    minimum is the best IoU of the thresholded mask, so it optimises the metric we report rather than
    per-pixel error (which matters for thin structures, where a one-pixel shift costs much IoU).

    Targets are binarised at 0.5. On an image with no foreground, any false positive makes the IoU 0,
    so the loss is the hinge error of its worst pixel.
    """
    losses = []
    for x, t in zip(logits.flatten(1), (target > 0.5).flatten(1).to(logits.dtype)):
        errors = 1 - x * (2 * t - 1)  # hinge margin violation per pixel
        errors_sorted, order = torch.sort(errors, descending=True)
        gt = t[order]
        total = gt.sum()
        # Jaccard loss after taking the k largest errors, for every k; its increments weight the
        # sorted errors (the Lovasz extension of the set function "1 - IoU").
        inter = total - gt.cumsum(0)
        union = total + (1 - gt).cumsum(0)
        jac = 1 - inter / union.clamp_min(1)
        grad = torch.cat([jac[:1], jac[1:] - jac[:-1]])
        losses.append(torch.dot(F.relu(errors_sorted), grad))
    return torch.stack(losses).mean()


def make_task_loss(name: str, pos_weight: float | None = None) -> LossFn:
    """The supervised loss named in ``train.loss``."""
    if name == "bce":
        return lambda x, t: bce_loss(x, t, pos_weight)
    if name == "dice":
        return dice_loss
    if name == "jaccard":
        return jaccard_loss
    if name == "focal":
        return focal_loss
    if name == "bce_dice":
        return lambda x, t: bce_loss(x, t, pos_weight) + dice_loss(x, t)
    if name == "lovasz":
        return lovasz_hinge_loss
    if name == "bce_lovasz":
        return lambda x, t: bce_loss(x, t, pos_weight) + lovasz_hinge_loss(x, t)
    raise ConfigError(f"unknown loss '{name}' (bce, dice, jaccard, focal, bce_dice, lovasz, bce_lovasz)")


# --------------------------------------------------------------------------------------------------
# Distillation. A single sigmoid channel has no class axis, so channel-softmax KD (softmax over
# classes, as in some toolkits) is constant and gives no gradient; these losses use the sigmoid
# per pixel, or a softmax over the pixels of the map.

_EPS = 1.0 / 512  # cached targets are 8-bit: keep their logits finite


def prob_to_logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(_EPS, 1 - _EPS)
    return torch.log(p) - torch.log1p(-p)


def soft_bce_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    pos_weight: float | None = None,
) -> torch.Tensor:
    """BCE between sigmoid(student/T) and sigmoid(teacher/T), scaled by T^2 (Hinton et al., 2015).

    ``pos_weight`` re-weights the teacher's foreground (soft: a pixel's weight is
    ``pos_weight * q + (1 - q)`` for teacher probability ``q``), for class balance.
    """
    t = temperature
    q = torch.sigmoid(teacher_logits / t)
    s = student_logits / t
    loss = F.binary_cross_entropy_with_logits(s, q, reduction="none")
    if pos_weight is not None and pos_weight != 1.0:
        loss = loss * (pos_weight * q + (1 - q))
    return loss.mean() * t * t


def cwd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021): KL between spatial softmaxes of each
    channel's map at temperature T, times T^2, averaged over images and channels."""
    t = temperature
    s = student_logits.flatten(2) / t  # (B, C, H*W)
    q = teacher_logits.flatten(2) / t
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(q, -1), log_target=True, reduction="none").sum(-1)
    return kl.mean() * t * t


def feature_loss(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared error between adapted student features and teacher features, each normalised
    per channel over space so levels of different scale weigh alike."""
    total = student_feats[0].new_zeros(())
    for s, t in zip(student_feats, teacher_feats):
        total = total + F.mse_loss(_standardise(s), _standardise(t.detach()))
    return total / max(len(student_feats), 1)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True) + 1e-5
    return (x - mean) / std

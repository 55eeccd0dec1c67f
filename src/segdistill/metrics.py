"""Binary segmentation metrics from one confusion count.

Edge cases, defined once here: when a ratio is 0/0 (for example an image whose ground truth and
prediction are both empty) it counts as 1.0 - the prediction is perfect. IoU and Dice of an empty
ground truth with a non-empty prediction are 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

METRICS = ("iou", "dice", "precision", "recall", "accuracy")


@dataclass
class Counts:
    """Per-image confusion counts, each a (B,) float64 tensor."""

    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor
    tn: torch.Tensor

    def sum(self) -> Counts:
        return Counts(*(t.sum().reshape(1) for t in (self.tp, self.fp, self.fn, self.tn)))

    @staticmethod
    def cat(parts: list[Counts]) -> Counts:
        return Counts(*(torch.cat([getattr(p, k) for p in parts]) for k in ("tp", "fp", "fn", "tn")))


def confusion(pred: torch.Tensor, target: torch.Tensor) -> Counts:
    """Counts for boolean (or {0,1}) ``pred`` and ``target`` of shape (B, ...)."""
    p = pred.bool().flatten(1)
    t = target.bool().flatten(1)
    tp = (p & t).sum(1).double()
    fp = (p & ~t).sum(1).double()
    fn = (~p & t).sum(1).double()
    tn = (~p & ~t).sum(1).double()
    return Counts(tp, fp, fn, tn)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(1), torch.ones_like(num))


def scores(c: Counts) -> dict[str, torch.Tensor]:
    """IoU (Jaccard), Dice (F1), precision, recall and accuracy, elementwise over the counts."""
    return {
        "iou": _ratio(c.tp, c.tp + c.fp + c.fn),
        "dice": _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn),
        "precision": _ratio(c.tp, c.tp + c.fp),
        "recall": _ratio(c.tp, c.tp + c.fn),
        "accuracy": _ratio(c.tp + c.tn, c.tp + c.fp + c.fn + c.tn),
    }


def summarise(c: Counts) -> dict[str, float]:
    """Over all pixels (``iou``, ...) and as a per-image mean (``iou_per_image``, ...)."""
    pooled = {k: float(v[0]) for k, v in scores(c.sum()).items()}
    per_image = {f"{k}_per_image": float(v.mean()) for k, v in scores(c).items()}
    return {**pooled, **per_image}


def predicts_nothing(metrics: dict[str, float]) -> bool:
    """True when a model predicted no foreground pixel although the reference has some (pooled
    recall 0 with precision 1 by the empty-prediction convention): the sign of a collapsed model."""
    return metrics.get("recall") == 0.0 and metrics.get("precision") == 1.0

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
    """Confusion counts, each a (B,) float64 tensor: one entry per image, or per threshold
    (:func:`threshold_sweep`)."""

    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor
    tn: torch.Tensor

    def sum(self) -> Counts:
        return Counts(*(t.sum().reshape(1) for t in (self.tp, self.fp, self.fn, self.tn)))

    @staticmethod
    def cat(parts: list[Counts]) -> Counts:
        return Counts(*(torch.cat([getattr(p, k) for p in parts]) for k in ("tp", "fp", "fn", "tn")))

    def add(self, other: Counts) -> Counts:
        """Elementwise sum (the counts of more pixels at the same thresholds)."""
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)


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


SWEEP_THRESHOLDS = torch.arange(1, 100, dtype=torch.float64) / 100
"""0.01, 0.02, ..., 0.99: the thresholds evaluation sweeps (0.5 exactly among them)."""


def threshold_sweep(probs: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor) -> Counts:
    """Counts over all pixels of the masks ``probs > t`` against ``targets``, for each ``t``.

    One pass, not one per threshold: each pixel's probability is placed among the thresholds
    (a binary search), and a pixel is foreground at threshold ``t_k`` exactly when more than ``k``
    thresholds lie below it. Counts of more images add up (:meth:`Counts.add`).

    Args:
        probs: foreground probabilities, any shape.
        targets: the reference, boolean or {0, 1}, the shape of ``probs``.
        thresholds: ascending, compared with ``>`` as evaluation does.

    Returns:
        Counts with one entry per threshold, shape (T,), on the CPU.
    """
    p = probs.detach().flatten()
    p = p if p.dtype in (torch.float32, torch.float64) else p.float()
    bounds = thresholds.to(device=p.device, dtype=p.dtype)
    if bounds.ndim != 1 or not bool((bounds[1:] > bounds[:-1]).all()):
        raise ValueError("thresholds must be a 1-D ascending tensor")
    below = torch.bucketize(p, bounds)  # (N,) how many thresholds lie below each probability
    t = targets.detach().flatten().bool()
    n = len(bounds) + 1
    fg = torch.bincount(below[t], minlength=n).double()  # (T + 1,)
    bg = torch.bincount(below[~t], minlength=n).double()
    tp = fg.flip(0).cumsum(0).flip(0)[1:]  # tp[k]: foreground pixels with more than k thresholds below
    fp = bg.flip(0).cumsum(0).flip(0)[1:]
    return Counts(*(c.cpu() for c in (tp, fp, fg.sum() - tp, bg.sum() - fp)))


def best_threshold(thresholds: torch.Tensor, counts: Counts) -> tuple[float, float]:
    """(threshold, IoU) of the threshold with the highest pooled IoU in a sweep; of equal ones,
    the nearest to 0.5."""
    iou = scores(counts)["iou"]
    top = torch.nonzero(iou == iou.max()).flatten()
    k = int(top[(thresholds[top].double() - 0.5).abs().argmin()])
    return float(thresholds[k]), float(iou[k])


@dataclass
class Sweep:
    """A threshold sweep over a set of images: the thresholds and the pooled counts at each."""

    thresholds: torch.Tensor
    counts: Counts

    def best(self) -> tuple[float, float]:
        return best_threshold(self.thresholds, self.counts)

    def rows(self) -> list[dict[str, float]]:
        """One row per threshold: the counts and IoU, precision, recall (sweep.csv)."""
        s = scores(self.counts)
        return [{"threshold": round(float(t), 6), **{k: int(getattr(self.counts, k)[i]) for k in ("tp", "fp", "fn", "tn")},
                 **{k: round(float(s[k][i]), 6) for k in ("iou", "precision", "recall")}}
                for i, t in enumerate(self.thresholds.tolist())]

    @staticmethod
    def from_rows(rows: list[dict[str, str]]) -> Sweep:
        """The sweep :meth:`rows` wrote (read back from CSV)."""
        col = {k: torch.tensor([float(r[k]) for r in rows], dtype=torch.float64) for k in ("threshold", "tp", "fp", "fn", "tn")}
        return Sweep(col["threshold"], Counts(col["tp"], col["fp"], col["fn"], col["tn"]))

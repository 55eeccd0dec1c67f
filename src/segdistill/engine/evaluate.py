"""Evaluation: metrics of a model on whole images, at the masks' own resolution."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from ..failpoints import failpoint
from ..inference.tta import tta_logits
from ..losses import LossFn
from ..metrics import Counts, confusion, scores, summarise
from ..runtime import autocast

log = logging.getLogger("segdistill")


@dataclass
class EvalResult:
    metrics: dict[str, float]
    """Pooled over all pixels (``iou``, ``dice``, ...) and per-image means (``iou_per_image``, ...)."""
    per_image: list[dict[str, Any]] = field(default_factory=list)
    loss: float | None = None


def logits_at(model: nn.Module, image: torch.Tensor, size: tuple[int, int], amp_dtype: torch.dtype | None, channels_last: bool,
              tta: int = 1, label_offset: Sequence[float] = (0.0, 0.0)) -> torch.Tensor:
    """Model logits resized (bilinear) to ``size``; (B, 1, h, w) -> (B, 1, *size), in fp32; with
    ``tta`` > 1 averaged over that many flips/turns (inference/tta.py)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        with autocast(image.device, amp_dtype):
            return model(x)

    out = tta_logits(forward, image, tta, label_offset)
    if out.shape[-2:] != size:
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    threshold: float = 0.5,
    loss_fn: LossFn | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    names: list[str] | None = None,
    target_key: str = "mask",
    tta: int = 1,
    label_offset: Sequence[float] = (0.0, 0.0),
) -> EvalResult:
    """IoU, Dice, precision, recall and accuracy of ``model`` on ``loader``'s whole images.

    ``target_key`` picks the reference: ``"mask"`` (labels) or ``"soft"`` (a teacher's
    probabilities, binarised at ``threshold``: agreement with the teacher).
    """
    model.eval()
    parts: list[Counts] = []
    per_image: list[dict[str, Any]] = []
    loss_sum, loss_n = 0.0, 0
    for batch in loader:
        image = batch["image"].to(device)
        target = batch[target_key].to(device)  # (B, 1, H, W)
        logits = logits_at(model, image, tuple(target.shape[-2:]), amp_dtype, channels_last, tta, label_offset)
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, target)) * image.shape[0]
            loss_n += image.shape[0]
        pred = torch.sigmoid(logits) > threshold
        # A teacher's soft map is cut at the same threshold as the model: its own masks.
        ref = target > (threshold if target_key == "soft" else 0.5)
        c = confusion(pred, ref)
        parts.append(c)
        s = scores(c)
        for j, idx in enumerate(batch["index"].tolist()):
            row: dict[str, Any] = {"image": names[idx] if names else idx}
            row.update({k: float(v[j]) for k, v in s.items()})
            row["gt_fraction"] = float((c.tp[j] + c.fn[j]) / (c.tp[j] + c.fp[j] + c.fn[j] + c.tn[j]))
            row["pred_fraction"] = float((c.tp[j] + c.fp[j]) / (c.tp[j] + c.fp[j] + c.fn[j] + c.tn[j]))
            per_image.append(row)
        failpoint("val_step")
    if not parts:
        return EvalResult(metrics={}, per_image=[])
    return EvalResult(summarise(Counts.cat(parts)), per_image, loss_sum / loss_n if loss_n else None)


def evaluation_pairs(data_dir: str | Path, recursive: bool = False) -> list:
    """Labelled pairs to evaluate on: every pair of an images/+masks/ folder, or the validation
    part of a train/+val/ or Keras layout."""
    from ..config import DataConfig
    from ..data.discovery import discover

    split = discover(DataConfig(root=str(data_dir), val_fraction=0.0, recursive=recursive))
    pairs = split.val if split.val and split.layout in ("split", "keras") else split.train + split.val
    return pairs


def evaluate_model(
    model_path: str | Path,
    data_dir: str | Path,
    out: str | Path | None = None,
    threshold: float | None = None,
    device: str = "auto",
    invert: bool | None = None,
    max_side: int | None = None,
    tta: int | None = None,
) -> EvalResult:
    """``segdistill evaluate``: metrics table, per-image CSV and a JSON summary. ``tta`` views
    default to the model's own (stored at training)."""
    from ..checkpoint import load_model
    from ..data.dataset import Item, SegDataset
    from ..fileio import write_json
    from ..report import format_table, write_csv
    from ..runtime import select_device, use_channels_last

    dev = select_device(device)
    model, info = load_model(model_path, dev)
    pre = info.preprocess
    if invert is not None:
        pre.invert = invert
    if max_side is not None:
        pre.max_side = max_side
    pairs = evaluation_pairs(data_dir)
    ds = SegDataset([Item(p.image, p.mask) for p in pairs], pre, train=False, cache=False, resize_masks=False)
    loader = DataLoader(ds, batch_size=1, shuffle=False, num_workers=0)
    thr = info.threshold if threshold is None else threshold
    views = info.tta if tta is None else tta
    result = evaluate(model, loader, dev, thr, channels_last=use_channels_last("auto", dev, training=False),
                      names=[str(p.stem) for p in pairs], tta=views, label_offset=info.label_offset)
    out = Path(out) if out else Path(model_path).parent / f"eval_{Path(data_dir).name or 'data'}.csv"
    write_csv(out, result.per_image)
    write_json(out.with_suffix(".json"), {"model": str(model_path), "data": str(data_dir), "images": len(pairs),
                                          "threshold": thr, "tta": views, **result.metrics})
    rows = [{"metric": k, "all pixels": result.metrics[k], "per-image mean": result.metrics[f"{k}_per_image"]}
            for k in ("iou", "dice", "precision", "recall", "accuracy")]
    views_note = f", TTA x{views}" if views > 1 else ""
    log.info("%s\nper-image results: %s", format_table(rows, title=f"{model_path} on {data_dir} ({len(pairs)} images, "
             f"threshold {thr}{views_note})"), out)
    return result

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

from ..data.dataset import Item, SegDataset
from ..distributed import gather_objects, is_distributed, shard
from ..errors import DataError
from ..failpoints import failpoint
from ..inference.tta import tta_logits
from ..losses import LossFn
from ..metrics import Counts, Sweep, confusion, scores, summarise, threshold_sweep
from ..runtime import autocast

log = logging.getLogger("segdistill")

_Scored = tuple[int, Counts, dict[str, Any]]
"""One image's index in the data set, its counts (on the CPU) and its per-image row."""


@dataclass
class EvalResult:
    metrics: dict[str, float]
    """Pooled over all pixels (``iou``, ``dice``, ...) and per-image means (``iou_per_image``, ...)."""
    per_image: list[dict[str, Any]] = field(default_factory=list)
    """One row per image: its name, scores, and ``image_file``/``mask_file`` where known."""
    loss: float | None = None
    sweep: Sweep | None = None
    """Pooled counts at each of the ``thresholds`` asked for (precision-recall, IoU against threshold)."""


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
    thresholds: torch.Tensor | None = None,
) -> EvalResult:
    """IoU, Dice, precision, recall and accuracy of ``model`` on ``loader``'s whole images.

    ``target_key`` picks the reference: ``"mask"`` (labels) or ``"soft"`` (a teacher's
    probabilities, binarised at ``threshold``: agreement with the teacher). With ``thresholds``
    (ascending, e.g. metrics.SWEEP_THRESHOLDS) the result also holds the pooled counts at each.
    """
    model.eval()
    # The files behind each image, for the per-image rows (report.html shows the best and worst).
    items = loader.dataset.items if isinstance(loader.dataset, SegDataset) else None
    # Each image's (index, counts, row) and each batch's summed loss, from this rank's share.
    mine: list[_Scored] = []
    loss_sum, loss_n = 0.0, 0
    swept: Counts | None = None
    for batch in _my_share(loader):
        image = batch["image"].to(device)
        target = batch[target_key].to(device)  # (B, 1, H, W)
        logits = logits_at(model, image, tuple(target.shape[-2:]), amp_dtype, channels_last, tta, label_offset)
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, target)) * image.shape[0]
            loss_n += image.shape[0]
        prob = torch.sigmoid(logits)  # (B, 1, H, W)
        # A teacher's soft map is cut at the same threshold as the model: its own masks.
        ref = target > (threshold if target_key == "soft" else 0.5)
        if thresholds is not None:
            part = threshold_sweep(prob, ref, thresholds)
            swept = part if swept is None else swept.add(part)
        mine += _image_rows(batch["index"].tolist(), confusion(prob > threshold, ref), names, items)
        failpoint("val_step")
    return _pooled(gather_objects((mine, loss_sum, loss_n, swept)), thresholds)


def _image_rows(indices: list[int], c: Counts, names: list[str] | None, items: list[Item] | None) -> list[_Scored]:
    """Each image of a batch scored on its own (``c``: the batch's counts, one per image), its
    counts moved to the CPU to be gathered and pooled."""
    s = scores(c)
    out = []
    for j, idx in enumerate(indices):
        row: dict[str, Any] = {"image": names[idx] if names else items[idx].image.stem if items else idx}
        row.update({k: float(v[j]) for k, v in s.items()})
        row["gt_fraction"] = float((c.tp[j] + c.fn[j]) / (c.tp[j] + c.fp[j] + c.fn[j] + c.tn[j]))
        row["pred_fraction"] = float((c.tp[j] + c.fp[j]) / (c.tp[j] + c.fp[j] + c.fn[j] + c.tn[j]))
        if items:
            row["image_file"] = str(items[idx].image.absolute())  # the report may be rebuilt from elsewhere
            row["mask_file"] = "" if items[idx].mask is None else str(items[idx].mask.absolute())
        out.append((idx, Counts(*(t[j:j + 1].cpu() for t in (c.tp, c.fp, c.fn, c.tn))), row))
    return out


def _pooled(shares: list[tuple[list[_Scored], float, int, Counts | None]], thresholds: torch.Tensor | None) -> EvalResult:
    """The result from every rank's (images, loss sum, loss count, swept counts). Under torchrun
    each rank scored its share; every rank gets all images' counts, in image order, so the metrics
    are those of one process: pooled from summed counts, per-image means over all."""
    images = sorted((item for share in shares for item in share[0]), key=lambda item: item[0])
    loss_sum, loss_n = sum(share[1] for share in shares), sum(share[2] for share in shares)
    if not images:
        return EvalResult(metrics={}, per_image=[])
    counts = Counts.cat([c for _, c, _ in images])
    sweep = None
    if thresholds is not None:
        parts = [share[3] for share in shares if share[3] is not None]
        total = parts[0]
        for part in parts[1:]:
            total = total.add(part)
        sweep = Sweep(thresholds.double().cpu(), total)
    return EvalResult(summarise(counts), [row for _, _, row in images], loss_sum / loss_n if loss_n else None, sweep)


def save_evaluation(folder: Path, result: EvalResult) -> None:
    """The per-image rows (per_image.csv) and the threshold sweep (sweep.csv) of an evaluation, for
    report.html (main process)."""
    from ..reports.tables import write_csv

    if result.per_image:
        write_csv(folder / "per_image.csv", result.per_image)
    if result.sweep is not None:
        write_csv(folder / "sweep.csv", result.sweep.rows())


def _my_share(loader: DataLoader) -> DataLoader:
    """``loader``, or under torchrun a loader of this rank's share of its images (disjoint, no
    padding; see distributed.shard)."""
    if not is_distributed():
        return loader
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=shard(len(loader.dataset)),  # type: ignore[arg-type]
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn)


@dataclass
class SplitSpec:
    """How training split a flat folder: the seed, fraction and explicit stems it used."""

    seed: int = 0
    val_fraction: float = 0.2
    val_stems: list[str] | None = None
    source: str = "the default config"


def training_split(model_path: str | Path, summary: dict[str, Any]) -> SplitSpec:
    """The split training made: from the model file's summary, else the run folder's config.yaml
    beside it (older model files, distilled students), else the default config's."""
    if "val_fraction" in summary:
        return SplitSpec(int(summary.get("seed", 0)), float(summary["val_fraction"]), summary.get("val_stems"),
                         "the model file")
    cfg_path = Path(model_path).parent / "config.yaml"
    if cfg_path.is_file():
        from ..config import load_config

        try:
            cfg = load_config(cfg_path)
        except Exception:  # an unreadable config only costs the guess; the defaults follow
            pass
        else:
            return SplitSpec(cfg.seed, cfg.data.val_fraction, cfg.data.val_stems, str(cfg_path))
    return SplitSpec()


def evaluation_pairs(data_dir: str | Path, recursive: bool = False, split: SplitSpec | None = None,
                     all_images: bool = False) -> tuple[list, str]:
    """(labelled pairs to evaluate on, why those): the validation part of a train/+val/ or Keras
    layout; of a folder training splits itself (images/+masks/), the validation images that
    ``split`` (the model's own training split) held out, so that no training image is scored.
    ``all_images`` scores every pair."""
    from ..config import DataConfig
    from ..data.discovery import discover

    found = discover(DataConfig(root=str(data_dir), val_fraction=0.0, recursive=recursive))
    everything = found.train + found.val
    if all_images:
        return everything, f"scoring all {len(everything)} images (--all)"
    if found.val and found.layout in ("split", "keras"):
        return found.val, (f"scoring the {len(found.val)} validation images of the {found.layout} layout; "
                           f"--all scores all {len(everything)}")
    spec = split or SplitSpec()
    cfg = DataConfig(root=str(data_dir), val_fraction=spec.val_fraction, val_stems=spec.val_stems, recursive=recursive)
    try:
        val = discover(cfg, spec.seed).val
    except DataError:  # the model's val_stems are not in this folder: other data than it trained on
        return everything, f"scoring all {len(everything)} images (the model's data.val_stems are not in this folder)"
    if not val:
        return everything, f"scoring all {len(everything)} images (training would hold none out)"
    how = (f"data.val_stems from {spec.source}" if spec.val_stems is not None
           else f"seed {spec.seed}, val_fraction {spec.val_fraction:g}, from {spec.source}")
    return val, (f"scoring the {len(val)} validation images training held out ({how}); "
                 f"--all scores all {len(everything)}")

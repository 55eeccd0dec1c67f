"""Datasets: random augmented crops for training, whole images for validation.

A sample's randomness comes from a generator seeded by (seed, epoch, index), so batches are the
same whatever the number of workers and whether or not the run was resumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import AugmentConfig
from ..errors import DataError
from .imageio import open_image, read_image, read_mask, resize_for_model
from .preprocess import Preprocess
from .transforms import augment_pair, random_crop


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    # Hashes of int tuples are stable across processes (no hash randomisation for ints).
    return torch.Generator().manual_seed(hash((seed, epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF)


@dataclass
class Item:
    image: Path
    mask: Path | None = None
    """Binary label mask."""
    soft: Path | None = None
    """Soft target: an 8-bit probability PNG (a cached teacher prediction)."""


class SegDataset(Dataset):
    """Images with optional hard masks and soft targets.

    In training mode each of ``length`` samples is a random ``input_size`` crop of image
    ``index % len(items)`` (visited in a per-epoch shuffled order), augmented; in evaluation mode
    each sample is one whole image. A sample is a dict with ``image`` (C, H, W), and where present
    ``mask`` (1, H, W) in {0, 1} and ``soft`` (1, H, W) in [0, 1], plus ``index``. With
    ``resize_masks=False`` (evaluation) masks keep their original size while images follow
    ``pre.max_side``; the evaluator resizes the model output to the mask.
    """

    def __init__(
        self,
        items: list[Item],
        pre: Preprocess,
        train: bool,
        input_size: int = 256,
        augment: AugmentConfig | None = None,
        length: int | None = None,
        seed: int = 0,
        cache: bool = True,
        resize_masks: bool = True,
    ) -> None:
        self.items = items
        self.pre = pre
        self.train = train
        self.input_size = input_size
        self.augment = augment if augment is not None and augment.enabled else None
        self.length = length if (train and length) else len(items)
        self.seed = seed
        self.epoch = 0
        self.cache = cache
        # Evaluation compares at the masks' own resolution; training resizes masks with images.
        self.resize_masks = resize_masks or train
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = {}
        self._order = np.arange(len(items))
        if train and items:
            self.set_epoch(0)  # a valid order even when the caller never calls set_epoch

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (a new crop order and new augmentations); call before each epoch."""
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch])
        reps = -(-self.length // len(self.items))
        self._order = np.concatenate([rng.permutation(len(self.items)) for _ in range(reps)])

    def __len__(self) -> int:
        return self.length

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        if i in self._cache:
            return self._cache[i]
        item = self.items[i]
        raw = read_image(item.image, self.pre.channels)
        img = resize_for_model(raw, self.pre.max_side)
        mask = soft = None
        if item.mask is not None:
            mask = read_mask(item.mask)
            if mask.shape != raw.shape[:2]:
                raise DataError(
                    f"{item.mask}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image "
                    f"{item.image.name} {raw.shape[1]}x{raw.shape[0]}"
                )
            if self.pre.invert:
                mask = ~mask
            if self.resize_masks:
                mask = resize_for_model(mask, self.pre.max_side, is_mask=True)
        if item.soft is not None:
            soft = np.asarray(open_image(item.soft).convert("L"), dtype=np.uint8)
            if soft.shape != img.shape[:2]:
                raise DataError(f"{item.soft}: cached target size differs from image {item.image.name}")
        out = (img, mask, soft)
        if self.cache:
            self._cache[i] = out
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = int(self._order[index]) if self.train else index
        img_np, mask_np, soft_np = self._load(i)
        img = torch.from_numpy(img_np).permute(2, 0, 1)  # (C, H, W)
        targets = []
        if mask_np is not None:
            targets.append(torch.from_numpy(mask_np.astype(np.float32))[None])
        if soft_np is not None:
            targets.append(torch.from_numpy(soft_np.astype(np.float32) / 255.0)[None])
        if self.train:
            g = sample_generator(self.seed, self.epoch, index)
            stacked = torch.cat([img, *targets], 0)
            stacked = random_crop(stacked, self.input_size, g)
            img, rest = stacked[: img.shape[0]], stacked[img.shape[0] :]
            if self.augment is not None:
                img, rest = augment_pair(img, rest, self.augment, g)
            targets = list(rest.split(1, 0)) if len(targets) else []
        out = {"image": self.pre.normalise(img), "index": torch.tensor(i)}
        k = 0
        if mask_np is not None:
            # Geometric warps blur a hard mask's edge; re-binarise so labels stay labels.
            out["mask"] = (targets[k] > 0.5).float()
            k += 1
        if soft_np is not None:
            out["soft"] = targets[k].clamp(0, 1)
        return out


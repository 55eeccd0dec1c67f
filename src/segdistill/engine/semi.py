"""Self-training on unlabelled images: the model in training labels them, and trains on its labels.

From ``semi.start_epoch`` on, the model (its EMA when ``train.ema`` is on) predicts every image of
``semi.images`` at full resolution, averaged over flips; the 8-bit probabilities go to
``RUN/pseudo/`` and a ``semi.fraction`` share of each epoch's crops comes from them, with the same
augmentation as labelled crops, so the model learns to give augmented views the answer it gives the
clean image. Every ``semi.refresh_every`` epochs the labels are remade from the better model.

Why: on the membrane data, halving the labelled images cost 0.014 validation IoU (docs/benchmarks.md),
and the data set ships 30 unlabelled slices beside its 30 labelled ones.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..config import Config, SemiConfig
from ..data.dataset import SegDataset
from ..data.discovery import collect_images
from ..data.imageio import open_image
from ..data.preprocess import Preprocess
from ..distributed import is_main_process
from ..errors import ConfigError, DataError
from ..fileio import atomic_path, write_text
from ..inference.tta import tta_probabilities
from ..runtime import autocast

log = logging.getLogger("segdistill")


def unlabelled_images(cfg: Config, exclude: set[Path]) -> list[Path]:
    """The images of ``semi.images`` (folders, files or globs), without duplicates and without any
    image that is already a labelled training or validation image (``exclude``, resolved paths)."""
    folders = cfg.semi.images
    if not folders:
        return []
    try:
        found = collect_images(folders, cfg.data.recursive, frozenset(exclude))
    except DataError as e:
        raise DataError(f"semi.images (--unlabelled): {e}") from None
    if not found:
        names = [folders] if isinstance(folders, str) else folders
        raise ConfigError(f"semi.images: no unlabelled images left in {', '.join(names)} "
                          "(each is already a labelled image, or the folders hold none)")
    for p in found:
        open_image(p)  # a broken file fails now, not at semi.start_epoch hours into the run
    return found


def refresh_due(epoch: int, semi: SemiConfig) -> bool:
    """Whether the pseudo-labels are (re)made at the start of ``epoch``."""
    if epoch < semi.start_epoch:
        return False
    if epoch == semi.start_epoch:
        return True
    return semi.refresh_every > 0 and (epoch - semi.start_epoch) % semi.refresh_every == 0


def pseudo_paths(folder: Path, n: int) -> list[Path]:
    return [folder / f"{i:05d}.png" for i in range(n)]


INDEX = "images.txt"
"""In RUN/pseudo/: which image each label belongs to, line i for ``{i:05d}.png``."""


def labels_match(folder: Path, images: list[Path]) -> bool:
    """Whether ``folder`` holds a complete set of labels for exactly these images, in this order."""
    index = folder / INDEX
    try:
        listed = index.read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    return listed == [str(p.resolve()) for p in images] and all(p.is_file() for p in pseudo_paths(folder, len(images)))


@torch.inference_mode()
def flip_probabilities(model: nn.Module, x: torch.Tensor, tta: bool, amp_dtype: torch.dtype | None = None,
                       label_offset: Sequence[float] = (0.0, 0.0)) -> torch.Tensor:
    """Sigmoid probabilities (B, 1, H, W) of ``x`` (B, C, H, W); with ``tta`` the mean over four
    views (identity, mirror, both turned 90 degrees), each turned back and re-aligned for the
    labels' ``label_offset`` (inference/tta.py)."""

    def forward(v: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, amp_dtype):
            return model(v)

    return tta_probabilities(forward, x, 4 if tta else 1, label_offset)


def make_pseudo_labels(
    model: nn.Module,
    pre: Preprocess,
    images: list[Path],
    folder: Path,
    device: torch.device,
    *,
    tta: bool = True,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    label_offset: Sequence[float] = (0.0, 0.0),
    shard: tuple[int, int] = (0, 1),
) -> list[Path]:
    """Write the model's probabilities for each image as an 8-bit PNG (``folder/00000.png``, ...,
    atomically), then ``folder/images.txt`` naming the image of each, and return the label paths.
    The model's train/eval mode is restored.

    ``shard`` = (k, n): label only images k, k + n, k + 2n, ... (one rank's share under torchrun) and
    leave images.txt to :func:`write_label_index`, once every share is written."""
    k, n = shard
    folder.mkdir(parents=True, exist_ok=True)
    if k == 0:
        (folder / INDEX).unlink(missing_ok=True)  # labels being remade are not a complete set
    out = pseudo_paths(folder, len(images))
    was_training = model.training
    if channels_last and not _is_channels_last(model):
        # Inference in channels_last is 1.6x faster on AVX2 CPUs where training in it is slower, so a
        # model trained in the default format predicts through a channels_last copy.
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    model.eval()
    try:
        for img, target in tqdm(list(zip(images, out))[k::n], desc="pseudo-labels", leave=False, disable=None if is_main_process() else True):
            x = pre.normalise(pre.load(img))[None].to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            prob = flip_probabilities(model, x, tta, amp_dtype, label_offset)[0, 0].cpu().numpy()
            with atomic_path(target) as tmp:
                Image.fromarray((prob * 255).round().astype(np.uint8)).save(tmp, format="PNG")
    finally:
        model.train(was_training)
    if n == 1:
        write_label_index(folder, images)
    return out


def write_label_index(folder: Path, images: list[Path]) -> None:
    """``folder/images.txt``: the image of each label, written last, so that it marks a complete set."""
    write_text(folder / INDEX, "".join(f"{p.resolve()}\n" for p in images))


def _is_channels_last(model: nn.Module) -> bool:
    weights = [p for p in model.parameters() if p.dim() == 4]
    return bool(weights) and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)


class MixedDataset(Dataset):
    """``labelled`` crops and, once switched on, ``pseudo`` crops in one seeded per-epoch order.

    The length stays ``total`` (train.samples_per_epoch): with pseudo-labels on, a ``fraction`` of
    the crops come from ``pseudo`` (whose soft target is handed on as ``mask``), the rest from
    ``labelled``, so self-training changes what an epoch sees, not how long it takes.
    """

    def __init__(self, labelled: SegDataset, pseudo: SegDataset, total: int, fraction: float, seed: int) -> None:
        self.labelled = labelled
        self.pseudo = pseudo
        self.total = total
        self.fraction = fraction
        self.seed = seed
        self.active = False
        self._order = np.arange(total)
        self.n_labelled = total
        self.set_epoch(0)

    @property
    def pre(self) -> Preprocess:
        return self.labelled.pre

    @pre.setter
    def pre(self, value: Preprocess) -> None:
        self.labelled.pre = value
        self.pseudo.pre = value

    def set_epoch(self, epoch: int) -> None:
        # At least one crop of each kind once on (total >= 2 is checked when the run is built).
        n_pseudo = min(max(round(self.total * self.fraction), 1), self.total - 1) if self.active else 0
        self.n_labelled = self.total - n_pseudo
        self.labelled.length = self.n_labelled
        self.pseudo.length = max(n_pseudo, 1)
        self.labelled.set_epoch(epoch)
        self.pseudo.set_epoch(epoch)
        # Until pseudo-labels start, exactly the batches of a run without unlabelled images.
        self._order = np.random.default_rng([self.seed, epoch, 1]).permutation(self.total) if n_pseudo else np.arange(self.total)

    def reload_pseudo(self) -> None:
        """Forget decoded pseudo-labels (they were just remade)."""
        self.pseudo._cache.clear()

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        j = int(self._order[index])
        if j < self.n_labelled:
            return self.labelled[j]
        sample = self.pseudo[j - self.n_labelled]
        sample["mask"] = sample.pop("soft")
        return sample

"""``segdistill data check``: what training would see, and what would make it fail.

Problems (errors) stop training: no pairs, unreadable or truncated files, an image and mask of
different sizes. Oddities (warnings) are reported but allowed: images without masks, masks without
images, non-image files, all-background or all-foreground masks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .discovery import Pair, Split, discover
from .fingerprint import Fingerprint, MaskStats, fingerprint, has_colour, mask_stats
from .imageio import image_channels, mask_to_array, open_image


@dataclass
class CheckReport:
    layout: str = ""
    train_pairs: int = 0
    val_pairs: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    image_modes: Counter = field(default_factory=Counter)
    mask_values: Counter = field(default_factory=Counter)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    fg_fractions: list[float] = field(default_factory=list)
    mask_stats: list[MaskStats] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    colourful: list[bool] = field(default_factory=list)
    train_read: tuple[int, int] = (0, 0)
    """How many mask statistics and image sizes the training pairs gave (they are read first)."""

    def fingerprint(self) -> Fingerprint:
        """The data's fingerprint (data/fingerprint.py) from what the check read."""
        return fingerprint(self.mask_stats, self.sizes, self.channels, self.colourful)

    def train_fingerprint(self) -> Fingerprint:
        """The fingerprint of the training pairs alone: what a training run plans from."""
        masks, images = self.train_read
        return fingerprint(self.mask_stats[:masks], self.sizes[:images], self.channels[:images], self.colourful[:images])

    def warn_crops(self, input_size: int) -> None:
        """Warn, first, when crops of ``input_size`` are larger than the images."""
        crops = crop_warning(input_size, self.sizes)
        if crops:
            self.warnings.insert(0, crops)  # first: a long list of per-file warnings must not hide it

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> dict[str, Any]:
        fg = np.array(self.fg_fractions) if self.fg_fractions else np.zeros(1)
        ws = [s[0] for s in self.sizes] or [0]
        hs = [s[1] for s in self.sizes] or [0]
        return {
            "layout": self.layout,
            "train pairs": self.train_pairs,
            "val pairs": self.val_pairs,
            "image modes": ", ".join(f"{k} x{v}" for k, v in self.image_modes.most_common()),
            "mask values": ", ".join(f"{k} x{v}" for k, v in self.mask_values.most_common(6)),
            "width min/median/max": f"{min(ws)}/{int(np.median(ws))}/{max(ws)}",
            "height min/median/max": f"{min(hs)}/{int(np.median(hs))}/{max(hs)}",
            "foreground fraction mean (min-max)": f"{fg.mean():.3f} ({fg.min():.3f}-{fg.max():.3f})",
            **(self.fingerprint().rows() if self.mask_stats else {}),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
        }


def _describe_values(arr: np.ndarray) -> str:
    if arr.ndim == 3:
        return f"RGB ({len(np.unique(arr.reshape(-1, arr.shape[-1]), axis=0))} colours)"
    values = np.unique(arr)
    if len(values) <= 4:
        return "{" + ",".join(str(int(v)) for v in values) + "}"
    return f"{len(values)} values {int(values.min())}..{int(values.max())}"


def check_pair(pair: Pair, invert: bool, report: CheckReport) -> None:
    try:
        im = open_image(pair.image)
    except DataError as e:
        report.errors.append(str(e))
        return
    bits = 16 if im.mode.startswith("I;16") or im.mode == "I" else 8
    report.image_modes[f"{im.mode}/{image_channels(im)}ch/{bits}-bit"] += 1
    report.sizes.append(im.size)
    report.channels.append("gray" if image_channels(im) == 1 else "rgb")
    try:
        report.colourful.append(has_colour(im))
    except (OSError, ValueError) as e:  # a truncated or undecodable image: the error is the pair's
        report.errors.append(f"{pair.image}: cannot decode the image ({e})")
        return
    if pair.mask is None:
        return
    try:
        m = open_image(pair.mask)
    except DataError as e:
        report.errors.append(str(e))
        return
    if m.size != im.size:
        report.errors.append(
            f"{pair.mask}: mask size {m.size[0]}x{m.size[1]} differs from image {pair.image.name} {im.size[0]}x{im.size[1]}"
        )
        return
    raw = np.asarray(m.convert("RGB") if m.mode in ("P", "PA") else m)
    report.mask_values[f"{m.mode} {_describe_values(raw)}"] += 1
    fg = mask_to_array(m, pair.mask)
    if invert:
        fg = ~fg
    frac = float(fg.mean())
    report.fg_fractions.append(frac)
    report.mask_stats.append(mask_stats(fg))
    if frac == 0.0:
        report.warnings.append(f"{pair.mask}: no foreground pixels (all background)")
    elif frac == 1.0:
        report.warnings.append(f"{pair.mask}: every pixel is foreground")


def crop_warning(input_size: int, sizes: list[tuple[int, int]]) -> str | None:
    """A warning when training crops (``input_size``) are larger than the images (their median
    width x height): the crops are then mostly reflect padding."""
    if not sizes:
        return None
    w, h = int(np.median([s[0] for s in sizes])), int(np.median([s[1] for s in sizes]))
    if input_size <= max(w, h):
        return None
    factor = input_size * input_size / max(w * h, 1)
    return (f"train.input_size {input_size} is larger than the images (median {w}x{h}): crops are reflect-padded "
            f"to {factor:.3g}x their pixels; use --input-size {max(w, h)}")


def image_sizes(paths: list[Path], limit: int = 200) -> list[tuple[int, int]]:
    """(width, height) of up to ``limit`` evenly spread images (headers only); unreadable ones skipped."""
    step = max(1, len(paths) // limit)
    sizes = []
    for p in paths[::step]:
        try:
            sizes.append(open_image(p).size)
        except DataError:
            continue  # the data check reports it
    return sizes


def check_data(cfg: DataConfig, seed: int = 0) -> CheckReport:
    """Run every check; problems go into the report, nothing is raised for them (``warn_crops``
    adds the warning about crops larger than the images, for the crop training would use)."""
    report = CheckReport()
    try:
        split: Split = discover(cfg, seed)
    except DataError as e:
        report.errors.append(str(e))
        return report
    report.layout = split.layout
    report.train_pairs, report.val_pairs = len(split.train), len(split.val)
    for rep in split.reports:
        report.warnings += [f"{p}: image has no mask (not used)" for p in rep.images_without_masks]
        report.warnings += [f"{p}: mask has no image (not used)" for p in rep.masks_without_images]
        report.warnings += [f"{p}: not an image file (ignored)" for p in rep.ignored_files]
    for pair in split.train:
        check_pair(pair, cfg.invert, report)
    report.train_read = (len(report.mask_stats), len(report.sizes))
    for pair in split.val:
        check_pair(pair, cfg.invert, report)
    if report.fg_fractions and max(report.fg_fractions) == 0.0:
        report.errors.append("no mask has any foreground pixel: nothing to learn (wrong invert setting?)")
    return report

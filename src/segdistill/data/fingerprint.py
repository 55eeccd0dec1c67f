"""The data's fingerprint: the properties of a data set that decide how to train on it.

Read off the masks (and the images' sizes and channels), like nnU-Net's dataset fingerprint: how
large the objects are against the image (does a crop show them whole?), how many there are, how much
of the image is foreground, and whether the masks have an up and a down (photos of upright objects
do; cells under a microscope do not), which decides whether vertical flips and 90-degree turns are
safe augmentations. Pure functions of arrays, apart from I/O, so they are tested on drawn masks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from PIL import Image

GRID = 64
"""Masks are measured on a grid of at most this many rows/columns (objects smaller than a cell of
it count as part of their neighbourhood: enough for sizes relative to the image)."""

COLOUR_CHROMA = 0.04
"""An image has colour when its pixels' mean chroma (max - min of R, G, B, on a 0-1 scale, on a
thumbnail) exceeds this: gray content saved as RGB (and JPEG's faint colour noise) stays below it,
photos and stained tissue lie far above (0.1-0.3)."""

ORIENTATION_Z = 4.0
"""How many standard errors the objects' mean top-bottom imbalance must lie from 0 for the masks to
count as having an up and a down (random orientations average out; upright objects do not)."""


@dataclass
class MaskStats:
    """What one mask contributes to the fingerprint."""

    fg_fraction: float
    object_sizes: list[float] = field(default_factory=list)
    """Each object's sqrt(area) relative to the image's shorter side."""
    vertical_offsets: list[float] = field(default_factory=list)
    """Each object's centre of mass below (+) or above (-) its bounding box's centre, in box heights."""
    horizontal_offsets: list[float] = field(default_factory=list)
    """The same, right (+) or left (-) of the centre, in box widths: the control for the vertical one."""
    object_extents: list[float] = field(default_factory=list)
    """Each object's bounding box, its longer side relative to the image's shorter side (what a
    crop must span to show the object whole), largest object first."""
    width_px: float | None = None
    """How thick the thinner class is, in pixels at the mask's own resolution: 2 x the smaller of
    the foreground and background areas / the boundary's length (a line's width, a disc's radius);
    None without a boundary. The finest detail a downscaled working resolution must keep: thick
    cells with thin gaps between them are as fine as the gaps."""


def has_colour(im: Image.Image) -> bool:
    """Whether a decoded image's pixels have colour (mean chroma of a thumbnail > COLOUR_CHROMA)."""
    if im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return False
    small = im.convert("RGB")
    small.thumbnail((64, 64))
    rgb = np.asarray(small, dtype=np.float32) / 255.0  # (h, w, 3)
    return float((rgb.max(-1) - rgb.min(-1)).mean()) > COLOUR_CHROMA


def mask_stats(fg: np.ndarray, grid: int = GRID) -> MaskStats:
    """Statistics of one boolean mask (H, W), measured on a grid of at most ``grid`` cells a side."""
    h, w = fg.shape
    scale = min(1.0, grid / max(h, w))
    gh, gw = max(1, round(h * scale)), max(1, round(w * scale))
    small = fg if scale == 1.0 else np.asarray(Image.fromarray(fg.astype(np.uint8) * 255).resize((gw, gh), Image.BOX)) >= 128
    stats = MaskStats(float(fg.mean()), width_px=detail_width(fg))
    short = min(gh, gw)
    for ys, xs in components(small):
        area = len(ys)
        stats.object_sizes.append(math.sqrt(area) / short)
        top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
        stats.object_extents.append(max(bottom - top + 1, right - left + 1) / short)
        if bottom > top:
            stats.vertical_offsets.append(float((ys.mean() - (top + bottom) / 2) / (bottom - top + 1)))
        if right > left:
            stats.horizontal_offsets.append(float((xs.mean() - (left + right) / 2) / (right - left + 1)))
    return stats


def foreground_width(fg: np.ndarray) -> float | None:
    """2 x foreground area / boundary length, in pixels (None without foreground): a line ``w``
    pixels wide gives ``w``, a disc of radius ``r`` gives ``r``. The boundary counts foreground
    pixels with a background 4-neighbour inside the image (the image's edge is not a boundary)."""
    return _width(fg, int(fg.sum()))


def detail_width(fg: np.ndarray) -> float | None:
    """How thick the thinner of the two classes is (:func:`foreground_width` of the class with the
    smaller area), in pixels; None where the mask has no boundary (all one class)."""
    area = int(fg.sum())
    if area == 0 or area == fg.size:
        return None
    return _width(fg, min(area, fg.size - area))


def _width(fg: np.ndarray, area: int) -> float | None:
    """2 x ``area`` / the foreground's boundary (the same line bounds the background)."""
    if area == 0:
        return None
    inner = fg.copy()
    inner[1:, :] &= fg[:-1, :]
    inner[:-1, :] &= fg[1:, :]
    inner[:, 1:] &= fg[:, :-1]
    inner[:, :-1] &= fg[:, 1:]
    boundary = int(fg.sum()) - int(inner.sum())
    return 2.0 * area / boundary if boundary else float(min(fg.shape))


def components(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """4-connected components of a small boolean mask: (rows, cols) of each, largest first."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    found = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        label = len(found) + 1
        labels[y0, x0] = label
        stack, ys, xs = [(y0, x0)], [], []
        while stack:
            y, x = stack.pop()
            ys.append(y)
            xs.append(x)
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    stack.append((ny, nx))
        found.append((np.array(ys), np.array(xs)))
    return sorted(found, key=lambda c: -len(c[0]))


@dataclass
class Fingerprint:
    images: int
    channels: str
    """gray, rgb, or mixed."""
    median_size: tuple[int, int]
    """(width, height)."""
    longer_side: tuple[int, int]
    """Smallest and largest longer side."""
    fg_fraction: float
    """Mean share of foreground pixels."""
    objects_per_image: float
    """Median number of connected foreground regions."""
    object_size: float
    """Median over objects of sqrt(area) / the image's shorter side (1 = as large as the image)."""
    largest_object: float
    """Median over images of the largest object's size (as object_size)."""
    object_extent: float
    """Median over objects of the bounding box's longer side / the image's shorter side."""
    large_extent: float
    """90th percentile over images of the largest object's extent (as object_extent): how much of
    the image a crop must span to show the large objects whole."""
    feature_width: float
    """Median over images of how thick the thinner class is, in native pixels (MaskStats.width_px)."""
    vertical_bias: float
    """Mean of the objects' vertical offsets (see MaskStats); 0 for no preferred up and down."""
    vertical_z: float
    """vertical_bias in standard errors: how sure it is not 0."""
    horizontal_z: float
    """The same for left-right (photos are mostly mirror-symmetric: a control)."""
    colour_fraction: float | None = None
    """Share of the images whose pixels have colour (not gray content in an RGB file: fluorescence
    microscopy is often saved so); None in fingerprints recorded before it was measured."""

    @property
    def photos(self) -> bool:
        """Mostly colour images: what an ImageNet-pretrained encoder is planned for."""
        if self.colour_fraction is not None:
            return self.colour_fraction >= 0.5
        return self.channels in ("rgb", "mixed")

    @property
    def upright(self) -> bool:
        """The masks have an up and a down: vertical flips and 90-degree turns would teach the model
        images that do not occur."""
        return abs(self.vertical_z) >= ORIENTATION_Z

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "upright": self.upright}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        """Back from ``to_dict`` (a teacher's model file carries its data's fingerprint)."""
        names = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        return cls(**values)

    def rows(self) -> dict[str, str]:
        """The fingerprint as ``data check`` shows it."""
        side = "no preferred up/down" if not self.upright else ("objects heavier at the bottom" if self.vertical_bias > 0
                                                                  else "objects heavier at the top")
        return {
            "objects per image (median)": f"{self.objects_per_image:g}",
            "object size / shorter side (median; largest)": f"{self.object_size:.3f}; {self.largest_object:.3f}",
            "object extent / shorter side (median; large, p90)": f"{self.object_extent:.3f}; {self.large_extent:.3f}",
            "finest detail: thinner class's width (median, px)": f"{self.feature_width:.1f}",
            "orientation": f"{side} (vertical z {self.vertical_z:+.1f}, left-right z {self.horizontal_z:+.1f})",
            **({"colour images": f"{self.colour_fraction:.0%}"} if self.colour_fraction is not None else {}),
        }


def fingerprint(stats: list[MaskStats], sizes: list[tuple[int, int]], channels: list[str],
                colourful: list[bool] | None = None) -> Fingerprint:
    """Combine per-mask statistics, image sizes (width, height), channels ("gray"/"rgb") and
    whether each image's pixels have colour."""
    objects = [s for m in stats for s in m.object_sizes]
    largest = [m.object_sizes[0] for m in stats if m.object_sizes]
    vertical = [v for m in stats for v in m.vertical_offsets]
    horizontal = [v for m in stats for v in m.horizontal_offsets]
    extents = [e for m in stats for e in m.object_extents]
    widths = [m.width_px for m in stats if m.width_px is not None]
    kinds = sorted(set(channels))
    return Fingerprint(
        images=len(sizes),
        channels=kinds[0] if len(kinds) == 1 else ("mixed" if kinds else "unknown"),
        median_size=(int(np.median([s[0] for s in sizes])), int(np.median([s[1] for s in sizes]))) if sizes else (0, 0),
        longer_side=(min(max(s) for s in sizes), max(max(s) for s in sizes)) if sizes else (0, 0),
        fg_fraction=float(np.mean([m.fg_fraction for m in stats])) if stats else 0.0,
        objects_per_image=float(np.median([len(m.object_sizes) for m in stats])) if stats else 0.0,
        object_size=float(np.median(objects)) if objects else 0.0,
        largest_object=float(np.median(largest)) if largest else 0.0,
        object_extent=float(np.median(extents)) if extents else 0.0,
        large_extent=float(np.percentile([m.object_extents[0] for m in stats if m.object_extents], 90)) if extents else 0.0,
        feature_width=float(np.median(widths)) if widths else 0.0,
        vertical_bias=float(np.mean(vertical)) if vertical else 0.0,
        vertical_z=_z(vertical),
        horizontal_z=_z(horizontal),
        colour_fraction=round(float(np.mean(colourful)), 4) if colourful else None,
    )


def _z(values: list[float]) -> float:
    """Mean / standard error (0 with fewer than 3 values or no spread)."""
    if len(values) < 3:
        return 0.0
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    if sd == 0:  # identical objects: certain, either way
        return 0.0 if mean == 0 else math.copysign(1e9, mean)
    return mean / (sd / math.sqrt(len(values)))

"""A procedural binary-segmentation data set: built-in data for the demo and the tests.

Each image has a textured background, 2-8 objects of varied shape (ellipses, rotated rectangles,
irregular blobs) and size, uneven illumination, blur and noise. Objects are slightly brighter and
smoother than the background but overlap it in intensity, so a pixel threshold is not enough and a
model has to use shape and texture.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from ..fileio import atomic_path


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Value noise: random values on a coarse grid, bilinearly upsampled to (h, w), in [0, 1]."""
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    grid = rng.random((gh, gw)).astype(np.float32)
    im = Image.fromarray(grid).resize((w + cell, h + cell), Image.BILINEAR)
    arr = np.asarray(im)[:h, :w]
    return (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-6)


def _shape_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    r = rng.uniform(0.04, 0.18) * min(h, w)
    angle = rng.uniform(0, np.pi)
    ca, sa = np.cos(angle), np.sin(angle)
    u = (xx - cx) * ca + (yy - cy) * sa
    v = -(xx - cx) * sa + (yy - cy) * ca
    kind = rng.integers(0, 3)
    aspect = rng.uniform(0.4, 1.0)
    if kind == 0:  # ellipse
        return (u / r) ** 2 + (v / (r * aspect)) ** 2 <= 1.0
    if kind == 1:  # rotated rectangle
        return (np.abs(u) <= r) & (np.abs(v) <= r * aspect)
    # irregular blob: a radius that wobbles with the angle
    theta = np.arctan2(v, u)
    wobble = sum(rng.uniform(0.05, 0.25) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    return np.hypot(u, v / aspect) <= r * (1.0 + wobble)


def synth_pair(rng: np.random.Generator, h: int, w: int, rgb: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8, (H, W) or (H, W, 3)) and its mask (uint8 0/255, (H, W))."""
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(2, 9))):
        mask |= _shape_mask(rng, h, w)
    texture = 0.6 * _smooth_noise(rng, h, w, 4) + 0.4 * _smooth_noise(rng, h, w, 16)
    background = 0.25 + 0.35 * texture
    fg_level = rng.uniform(0.55, 0.75)
    inner = fg_level + 0.1 * _smooth_noise(rng, h, w, 8)
    img = np.where(mask, inner, background)
    # A darker rim makes boundaries visible but thin, as in cells and nuclei.
    edge = mask ^ _erode(mask)
    img = np.where(edge, img - 0.15, img)
    illumination = 0.7 + 0.6 * _smooth_noise(rng, h, w, max(h, w) // 2)
    img = img * illumination
    im = Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8))
    from PIL import ImageFilter

    im = im.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.2))))
    img = np.asarray(im).astype(np.float32) / 255 + rng.normal(0, rng.uniform(0.01, 0.05), (h, w))
    img = np.clip(img, 0, 1)
    if rgb:
        tint = rng.uniform(0.7, 1.0, size=3)
        img = img[..., None] * tint[None, None, :]
    return (img * 255).round().astype(np.uint8), mask.astype(np.uint8) * 255


def _erode(mask: np.ndarray) -> np.ndarray:
    m = mask.copy()
    m[1:, :] &= mask[:-1, :]
    m[:-1, :] &= mask[1:, :]
    m[:, 1:] &= mask[:, :-1]
    m[:, :-1] &= mask[:, 1:]
    return m


def make_synthetic_dataset(
    out: str | Path,
    count: int = 64,
    size: int = 128,
    seed: int = 0,
    rgb: bool = False,
    vary_size: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``count`` pairs into ``out/images`` and ``out/masks`` (PNG); returns ``out``.

    With ``vary_size`` the sides vary between 0.75x and 1.25x ``size`` (non-square too). A folder
    that holds anything is refused (old and new files would mix into one data set) unless
    ``overwrite``, which first empties ``out/images`` and ``out/masks``.
    """
    out = Path(out)
    held = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
    if held and not overwrite:
        raise DataError(f"{out}: not empty (holds {', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); "
                        "choose a new folder, or --overwrite to replace its images/ and masks/")
    for sub in ("images", "masks"):
        if overwrite and (out / sub).is_dir():
            shutil.rmtree(out / sub)
    rng = np.random.default_rng(seed)
    for i in range(count):
        h = w = size
        if vary_size:
            h, w = (int(size * rng.uniform(0.75, 1.25)) for _ in range(2))
        img, mask = synth_pair(rng, h, w, rgb)
        for sub, arr in (("images", img), ("masks", mask)):
            with atomic_path(out / sub / f"{i:04d}.png") as tmp:
                Image.fromarray(arr).save(tmp, format="PNG")
    return out

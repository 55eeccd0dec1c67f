"""Sliding-window prediction as small pure functions (nnU-Net style Gaussian blending)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of windows of size ``tile`` covering ``[0, length)``, evenly spread, with at
    least ``overlap`` (a fraction of ``tile``) between neighbours. The last window ends at
    ``length``; a dimension shorter than the tile gets the single start 0."""
    if length <= tile:
        return [0]
    if not 0 <= overlap < 1:
        raise ValueError("overlap must lie in [0, 1)")
    step = max(1, int(tile * (1 - overlap)))
    n = math.ceil((length - tile) / step) + 1
    span = length - tile
    return [round(i * span / (n - 1)) for i in range(n)]


def gaussian_weight(tile: int, sigma_scale: float = 0.125) -> torch.Tensor:
    """(tile, tile) weights peaking at the centre, so window borders count less when blending."""
    ax = torch.arange(tile, dtype=torch.float32) - (tile - 1) / 2
    g = torch.exp(-(ax**2) / (2 * (tile * sigma_scale) ** 2))
    w = g[:, None] * g[None, :]
    w = w / w.max()
    return w.clamp_min(1e-3)  # never zero: every pixel keeps some weight


def predict_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, tile: int, overlap: float = 0.25
) -> torch.Tensor:
    """Apply ``fn`` ((1, C, t, t) -> (1, 1, t, t) logits) over windows of a (1, C, H, W) image and
    blend them with Gaussian weights; returns (1, 1, H, W) logits."""
    _, _, h, w = image.shape
    th, tw = min(tile, h), min(tile, w)
    weight = gaussian_weight(tile)[:th, :tw].to(image.device) if (th, tw) == (tile, tile) else torch.ones(th, tw, device=image.device)
    acc = torch.zeros((1, 1, h, w), device=image.device)
    norm = torch.zeros((1, 1, h, w), device=image.device)
    for y in tile_starts(h, th, overlap):
        for x in tile_starts(w, tw, overlap):
            out = fn(image[:, :, y : y + th, x : x + tw]).float()  # (1, 1, th, tw)
            acc[:, :, y : y + th, x : x + tw] += out * weight
            norm[:, :, y : y + th, x : x + tw] += weight
    return acc / norm

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


TILE_BATCH = 4
"""Windows per forward pass when the caller does not say (``predict.batch_size``'s default)."""


def predict_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: int,
    overlap: float = 0.25,
    batch_size: int = TILE_BATCH,
) -> torch.Tensor:
    """Apply ``fn`` ((N, C, t, t) -> (N, 1, t, t) logits) over overlapping windows of (B, C, H, W)
    images, ``batch_size`` windows per call (from any of the B images), and blend them with
    Gaussian weights.

    Memory: one float32 (B, 1, H, W) accumulator and one (1, 1, H, W) weight sum besides the input;
    windows are cut, run and added in one batch at a time, never all held.

    Returns:
        (B, 1, H, W) float32 logits.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    b, _, h, w = image.shape
    th, tw = min(tile, h), min(tile, w)
    dev = image.device
    weight = gaussian_weight(tile).to(dev) if (th, tw) == (tile, tile) else torch.ones(th, tw, device=dev)  # (th, tw)
    ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    windows = [(i, y, x) for i in range(b) for y in ys for x in xs]
    acc = torch.zeros((b, 1, h, w), device=dev)
    for k in range(0, len(windows), batch_size):
        chunk = windows[k : k + batch_size]
        out = fn(torch.stack([image[i, :, y : y + th, x : x + tw] for i, y, x in chunk])).float()  # (n, 1, th, tw)
        for o, (i, y, x) in zip(out, chunk):
            acc[i, :, y : y + th, x : x + tw] += o * weight
    norm = torch.zeros((1, 1, h, w), device=dev)  # the same for every image: once
    for y in ys:
        for x in xs:
            norm[..., y : y + th, x : x + tw] += weight
    return acc.div_(norm)

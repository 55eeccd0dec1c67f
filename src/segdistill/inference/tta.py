"""Test-time augmentation over flips and 90-degree turns, aware of a label offset.

A model trained on labels that sit ``label_offset`` pixels (dy, dx) from the structures they mark
learns to draw its masks that far off too. Run on a flipped or turned image, it draws them that far
off *in the turned frame*; turned back, the offset points another way, and a plain average blurs the
masks (measured on membranes: -0.006 IoU over 8 views). Each view is therefore moved back by the
difference between the offset and the offset turned back, so that all views agree before they are
averaged. With a zero offset this is ordinary flip/turn TTA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

TTA_VIEWS = (1, 2, 4, 8)
"""1 = none, 2 = + horizontal mirror, 4 = + the same turned 90 degrees, 8 = all flips and turns."""


def _turn_vector(d: tuple[float, float], quarter_turns: int, mirrored: bool) -> tuple[float, float]:
    """Where a displacement (dy, dx) in the view's frame points after undoing the view:
    ``torch.rot90`` by ``-quarter_turns`` on (H, W), then a horizontal mirror if ``mirrored``."""
    dy, dx = d
    for _ in range((-quarter_turns) % 4):
        dy, dx = -dx, dy  # one counter-clockwise quarter turn of torch.rot90 on dims (-2, -1)
    return (dy, -dx) if mirrored else (dy, dx)


def shift_image(x: torch.Tensor, dy: float, dx: float) -> torch.Tensor:
    """(B, C, H, W) moved by a sub-pixel (dy, dx) (content goes down / right), bilinear, edges
    repeated."""
    if dy == 0 and dx == 0:
        return x
    b, _, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, -2.0 * dx / w], [0.0, 1.0, -2.0 * dy / h]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(b, 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def tta_probabilities(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    views: int = 8,
    label_offset: Sequence[float] = (0.0, 0.0),
) -> torch.Tensor:
    """Mean sigmoid probability of ``forward`` (logits) over ``views`` flips/turns of ``x``
    (B, C, H, W), each view re-aligned for ``label_offset`` (dy, dx) pixels. Returns (B, 1, H, W)."""
    if views not in TTA_VIEWS:
        raise ValueError(f"tta views must be one of {TTA_VIEWS}, got {views}")
    d = (float(label_offset[0]), float(label_offset[1]))
    total: torch.Tensor | None = None
    for k in range(views):
        mirrored, turns = bool(k % 2), k // 2
        v = x.flip(-1) if mirrored else x
        v = torch.rot90(v, turns, (-2, -1)) if turns else v
        y = forward(v).float()
        y = torch.rot90(y, -turns, (-2, -1)) if turns else y
        y = y.flip(-1) if mirrored else y
        back = _turn_vector(d, turns, mirrored)
        y = shift_image(y, d[0] - back[0], d[1] - back[1])
        p = torch.sigmoid(y)
        total = p if total is None else total + p
    assert total is not None
    return total / views


def tta_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    views: int = 8,
    label_offset: Sequence[float] = (0.0, 0.0),
) -> torch.Tensor:
    """``tta_probabilities`` as logits (so callers that threshold logits or apply a sigmoid work
    unchanged); ``views=1`` is a plain forward pass."""
    if views == 1:
        return forward(x).float()
    return torch.logit(tta_probabilities(forward, x, views, label_offset), eps=1e-6)

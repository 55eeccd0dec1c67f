"""Are the labels offset from the images? Pure math behind ``benchmarks/label_offset.py``.

Flips and 90-degree turns are symmetries of most images but not of labels drawn with a consistent
sub-pixel offset: a vertical flip turns "labels 0.5 px above the structure" into "0.5 px below".
A model trained with such flips sees both and learns boundaries blurred by the difference. These
functions measure the offset so a recipe can leave out the flips that reverse it.

Shifts are (dy, dx) in pixels; positive means the labels would have to move down / right to line up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch


def subpixel_peak(values: dict[int, float]) -> float:
    """Position of the maximum of f sampled at integer shifts: a parabola through the best integer
    and its two neighbours (the integer itself where it lies at the edge of the samples)."""
    k = max(values, key=lambda s: values[s])
    if k - 1 not in values or k + 1 not in values:
        return float(k)
    a, b, c = values[k - 1], values[k], values[k + 1]
    den = a - 2 * b + c
    return float(k) if den >= 0 else k + 0.5 * (a - c) / den


def shifted(x: torch.Tensor, dy: int, dx: int, margin: int) -> torch.Tensor:
    """``x`` moved by (dy, dx) pixels with ``margin`` cut off each side, so nothing that wrapped
    around remains (``margin`` must be larger than the shift)."""
    return torch.roll(x, (dy, dx), (-2, -1))[..., margin:-margin, margin:-margin]


def intensity_label_offset(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    foreground: Literal["dark", "bright"] = "dark",
    reach: int = 2,
) -> tuple[float, float, dict[str, dict[int, float]]]:
    """The shift of the masks that best lines them up with the image intensity.

    ``images`` are (H, W) or (H, W, C) arrays, ``masks`` boolean (H, W) with the foreground True;
    the foreground is expected to look ``dark`` or ``bright``. For each shift of -reach..reach
    pixels along each axis, the covariance of the image (sign-adjusted) with the shifted mask,
    averaged over the images; returns (dy, dx, profiles) with sub-pixel dy, dx.
    """
    if not images or len(images) != len(masks):
        raise ValueError("need as many masks as images, at least one")
    sign = -1.0 if foreground == "dark" else 1.0
    m = reach + 1
    prof: dict[str, dict[int, float]] = {"dy": {}, "dx": {}}
    for img, mask in zip(images, masks):
        x = torch.from_numpy(np.asarray(img, dtype=np.float32))
        x = x.mean(-1) if x.ndim == 3 else x
        x = (x - x.mean()) * sign
        x = x[m:-m, m:-m]
        t = torch.from_numpy(np.asarray(mask, dtype=np.float32))
        for s in range(-reach, reach + 1):
            for axis, d in (("dy", (s, 0)), ("dx", (0, s))):
                ts = shifted(t, *d, m)
                cov = float((x * (ts - ts.mean())).mean())
                prof[axis][s] = prof[axis].get(s, 0.0) + cov / len(images)
    return subpixel_peak(prof["dy"]), subpixel_peak(prof["dx"]), prof

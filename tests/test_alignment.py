"""Label-offset estimation (segdistill.data.alignment): known shifts are found."""

from __future__ import annotations

import numpy as np
import pytest

from segdistill.data.alignment import intensity_label_offset, subpixel_peak


def test_subpixel_peak_of_a_parabola_is_exact() -> None:
    f = {s: -((s - 0.3) ** 2) for s in range(-2, 3)}
    assert subpixel_peak(f) == pytest.approx(0.3)
    g = {s: -((s + 1.25) ** 2) for s in range(-2, 3)}
    assert subpixel_peak(g) == pytest.approx(-1.25)


def test_subpixel_peak_at_the_edge_is_the_edge() -> None:
    assert subpixel_peak({-1: 0.0, 0: 1.0, 1: 2.0}) == 1.0


def _lines(shift_y: int, shift_x: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark 5-px lines on a noisy bright background, and a mask of them drawn (shift_y, shift_x) off."""
    rng = np.random.default_rng(0)
    img = 200 + rng.normal(0, 10, (96, 96))
    mask = np.zeros((96, 96), bool)
    for c in (20, 50, 75):
        img[c - 2 : c + 3, :] = 60
        img[:, c - 2 : c + 3] = 60
        mask[c - 2 + shift_y : c + 3 + shift_y, :] = True
        mask[:, c - 2 + shift_x : c + 3 + shift_x] = True
    return img.astype(np.uint8), mask


@pytest.mark.parametrize(("sy", "sx"), [(0, 0), (1, 0), (0, -1), (-1, 1)])
def test_intensity_label_offset_finds_a_drawn_offset(sy: int, sx: int) -> None:
    img, mask = _lines(sy, sx)
    dy, dx, prof = intensity_label_offset([img], [mask], "dark")
    # Labels drawn sy below the lines must move up by sy to line up.
    assert dy == pytest.approx(-sy, abs=0.05)
    assert dx == pytest.approx(-sx, abs=0.05)
    assert set(prof["dy"]) == {-2, -1, 0, 1, 2}
    # Bright foreground reverses the sign of the correlation: the aligned shift is then the worst.
    by, _, _ = intensity_label_offset([img], [mask], "bright")
    assert abs(by + sy) >= 1


def test_intensity_label_offset_needs_pairs() -> None:
    with pytest.raises(ValueError, match="as many masks"):
        intensity_label_offset([np.zeros((8, 8))], [])

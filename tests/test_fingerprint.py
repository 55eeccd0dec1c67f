"""The data's fingerprint (data/fingerprint.py) on drawn masks with known answers."""

import numpy as np
import pytest

from segdistill.cli import main
from segdistill.data.fingerprint import components, fingerprint, mask_stats


def _square(h, w, y, x, side):
    m = np.zeros((h, w), bool)
    m[y:y + side, x:x + side] = True
    return m


def test_components_and_sizes_of_drawn_squares():
    m = _square(64, 64, 4, 4, 16) | _square(64, 64, 40, 40, 8)
    found = components(m)
    assert [len(ys) for ys, _ in found] == [256, 64]  # largest first
    s = mask_stats(m)
    assert s.object_sizes == pytest.approx([16 / 64, 8 / 64])
    assert s.vertical_offsets == pytest.approx([0.0, 0.0]) and s.fg_fraction == pytest.approx(320 / 4096)
    # a large mask is measured on the grid: the same relative sizes
    assert mask_stats(np.kron(m, np.ones((4, 4), bool))).object_sizes == pytest.approx(s.object_sizes)


def _person(rng, h=96, w=96):
    """An upright figure: a small head above a wide body (heavier at the bottom)."""
    m = np.zeros((h, w), bool)
    cy, cx = rng.integers(30, h - 30), rng.integers(20, w - 20)
    yy, xx = np.mgrid[0:h, 0:w]
    m |= (yy - (cy - 14)) ** 2 + (xx - cx) ** 2 <= 5 ** 2  # head
    m |= (yy >= cy - 8) & (yy <= cy + 20) & (np.abs(xx - cx) <= 4 + (yy - cy + 8) // 3)  # body widening down
    return m


def _fingerprint_of(masks):
    stats = [mask_stats(m) for m in masks]
    return fingerprint(stats, [m.shape[::-1] for m in masks], ["rgb"] * len(masks))


def test_upright_objects_have_an_up_and_a_down_and_turned_ones_do_not():
    rng = np.random.default_rng(0)
    people = [_person(rng) for _ in range(24)]
    upright = _fingerprint_of(people)
    assert upright.upright and upright.vertical_bias > 0 and abs(upright.horizontal_z) < 4
    # Every orientation equally often, as cells under a microscope: no up and down.
    turned = _fingerprint_of([v for p in people for v in (p, p[::-1], np.rot90(p), np.rot90(p, 3))])
    assert not turned.upright and abs(turned.vertical_z) < 1
    assert upright.objects_per_image == 1 and 0.1 < upright.object_size < 0.5


def test_data_check_shows_the_fingerprint(synth_dir, capsys):
    assert main(["data", "check", str(synth_dir)]) == 0
    out = capsys.readouterr().out
    assert "objects per image (median)" in out and "no preferred up/down" in out  # random blobs


def test_train_logs_the_fingerprint(synth_dir, tmp_path, capsys):
    from .conftest import TINY_TRAIN

    assert main(["train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "f", *TINY_TRAIN]) == 0
    assert "data fingerprint: objects per image (median)" in capsys.readouterr().err

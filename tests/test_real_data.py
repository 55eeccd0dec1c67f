"""The real data sets in ../shared/data (skipped with a reason where they are absent)."""

from pathlib import Path

import numpy as np
import pytest

from segdistill.cli import main
from segdistill.config import DataConfig
from segdistill.data.check import check_data
from segdistill.data.discovery import discover
from segdistill.data.imageio import read_image, read_mask
from segdistill.data.preprocess import infer_channels

from .conftest import real_data

pytestmark = pytest.mark.realdata

MEMBRANE_VAL = [str(i) for i in range(24, 30)]


def test_membrane_recipe_split_and_check():
    root = real_data("membrane") / "train"
    cfg = DataConfig(root=str(root), val_stems=MEMBRANE_VAL, invert=True)
    split = discover(cfg)
    assert split.layout == "flat" and len(split.train) == 24 and sorted(p.stem for p in split.val) == sorted(MEMBRANE_VAL)
    report = check_data(cfg)
    assert report.ok and not report.warnings
    # membrane (the masks' zeros) is about 22% of the pixels
    assert 0.17 < np.mean(report.fg_fractions) < 0.27


def test_membrane_trains_and_predicts_briefly(tmp_path):
    root = real_data("membrane")
    recipe = Path(__file__).resolve().parents[1] / "configs" / "membrane.yaml"
    args = ["-q", "train", "-c", str(recipe), "--set", f"data.root={root / 'train'}", "--output-dir", str(tmp_path),
            "--epochs", "1", "--set", "train.samples_per_epoch=4", "--set", "model.args={base: 4, depth: 3}",
            "--input-size", "64"]
    assert main(args) == 0
    model = tmp_path / "membrane" / "model.safetensors"
    assert main(["-q", "predict", str(model), str(root / "unlabeled" / "0.png"), "--out", str(tmp_path / "p")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "p" / "0" / "0.png").size == (512, 512)


def test_kvasir_pairs_and_rgb_jpegs():
    root = real_data("kvasir_seg")
    split = discover(DataConfig(root=str(root), val_fraction=0.0))
    assert split.layout == "split" and len(split.train) == 880
    test = discover(DataConfig(root=str(root / "test"), val_fraction=0.0))
    assert len(test.train) == 120
    p = split.train[0]
    img, mask = read_image(p.image, "rgb"), read_mask(p.mask)
    assert img.shape[:2] == mask.shape and img.shape[2] == 3 and 0 < mask.mean() < 1


def test_dsb2018_mixed_gray_and_rgb():
    root = real_data("dsb2018_nuclei")
    split = discover(DataConfig(root=str(root), val_fraction=0.0))
    assert len(split.train) == 664
    assert infer_channels([p.image for p in split.train]) == "rgb"  # 107 of the 664 are RGB

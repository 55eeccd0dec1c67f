"""Test-time augmentation (inference/tta.py) and its path from training to evaluate and predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segdistill.checkpoint import read_model_info
from segdistill.cli import main
from segdistill.config import load_config
from segdistill.errors import ConfigError
from segdistill.inference.tta import shift_image, tta_logits, tta_probabilities

from .conftest import TINY_TRAIN


def _offset_model(dy: int, dx: int):
    """A 'model' whose logits are its input moved (dy, dx) pixels: a model that learned labels
    sitting (dy, dx) from the structures."""
    return lambda x: torch.roll(x[:, :1], (dy, dx), (-2, -1)) * 4.0


def test_shift_image_moves_content_by_whole_pixels_exactly() -> None:
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    y = shift_image(x, -1.0, 2.0)
    assert y[0, 0, 3, 6] == pytest.approx(1.0) and float(y.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("views", [2, 4, 8])
def test_offset_aware_views_agree_with_the_plain_pass(views: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 1, 24, 24)
    model = _offset_model(-1, 1)  # labels sat 1 px above and 1 px right
    plain = torch.sigmoid(model(x))
    aligned = tta_probabilities(model, x, views, (-1.0, 1.0))
    naive = tta_probabilities(model, x, views, (0.0, 0.0))
    inner = (..., slice(3, -3), slice(3, -3))  # the shifts repeat edge pixels
    assert torch.allclose(aligned[inner], plain[inner], atol=1e-5)
    # Without the offset the views disagree and the average is a blur of them.
    assert (naive[inner] - plain[inner]).abs().max() > 0.2


def test_symmetric_model_is_unchanged_by_views_and_one_view_is_a_plain_pass() -> None:
    x = torch.randn(1, 1, 10, 14)  # not square: turned views change the shape and back
    model = lambda t: t * 2.0  # noqa: E731  (pointwise: every view gives the same answer)
    assert torch.allclose(tta_probabilities(model, x, 8), torch.sigmoid(model(x)), atol=1e-6)
    assert torch.equal(tta_logits(model, x, 1, (0.5, 0.5)), model(x))


def test_views_other_than_1_2_4_8_are_rejected() -> None:
    with pytest.raises(ValueError, match="one of"):
        tta_probabilities(lambda t: t, torch.zeros(1, 1, 4, 4), 3)
    with pytest.raises(ConfigError, match="train.tta"):
        load_config(None, ["train.tta=3"])


def test_training_with_tta_stores_it_and_evaluate_and_predict_use_it(synth_dir, tmp_path, capsys) -> None:
    args = ["train", "--data", str(synth_dir), "--output-dir", str(tmp_path), "--name", "t", *TINY_TRAIN,
            "--set", "train.tta=4", "--set", "data.label_offset=[-0.5,0.25]"]
    assert main(args) == 0
    run = tmp_path / "t"
    assert "val IoU (TTA x4)" in capsys.readouterr().err
    info = read_model_info(run / "model.safetensors")
    assert info.tta == 4 and info.label_offset == [-0.5, 0.25]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["tta"]["views"] == 4 and 0.0 <= metrics["tta"]["iou"] <= 1.0
    # evaluate defaults to the model's views; --tta 1 is a single pass
    model = str(run / "model.safetensors")
    assert main(["evaluate", model, "--data", str(synth_dir), "--out", str(tmp_path / "e.csv")]) == 0
    assert "TTA x4" in capsys.readouterr().err
    assert main(["evaluate", model, "--data", str(synth_dir), "--out", str(tmp_path / "e1.csv"), "--tta", "1"]) == 0
    ev, ev1 = (json.loads((tmp_path / f).read_text()) for f in ("e.json", "e1.json"))
    assert ev["tta"] == 4 and ev1["tta"] == 1 and ev["iou"] != ev1["iou"]
    # predict: the model's views by default, --tta 1 for a single pass; both write every mask
    src = next((synth_dir / "images").iterdir())
    for name, views in (("own", []), ("single", ["--tta", "1"])):
        assert main(["predict", model, str(src), "--out", str(tmp_path / "p"), "--name", name, *views]) == 0
        mask = np.asarray(Image.open(tmp_path / "p" / name / f"{src.stem}.png"))
        assert mask.shape == np.asarray(Image.open(src)).shape[:2]

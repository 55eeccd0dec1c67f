import pytest
import torch

from segdistill.checkpoint import ModelInfo, load_model, save_model
from segdistill.data.preprocess import Preprocess
from segdistill.errors import ConfigError
from segdistill.models import create_model, list_models, resolved_args

SMALL = {"base": 4, "depth": 3}


def _small(name):
    return {"base": 4, "depth": 3} if name != "unet_keras" else {"base": 4, "depth": 3}


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("size", [(1, 1), (37, 53), (64, 64)])
def test_forward_any_size(name, size):
    m = create_model(name, in_channels=3, **_small(name)).eval()
    y = m(torch.randn(2, 3, *size))
    assert y.shape == (2, 1, *size)


@pytest.mark.parametrize("name", list_models())
def test_backward_and_features(name):
    m = create_model(name, **_small(name))
    logits, feats = m(torch.randn(2, 1, 24, 40), return_features=True)
    logits.mean().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    assert [f.shape[1] for f in feats] == m.feature_channels


@pytest.mark.parametrize("name", list_models())
def test_save_load_round_trip(name, tmp_path):
    args = resolved_args(name, in_channels=1, **_small(name))
    m = create_model(name, **args).eval()
    info = ModelInfo(name, args, Preprocess(), 0.4, {"note": "x"})
    path = save_model(tmp_path / "m.safetensors", m, info)
    m2, info2 = load_model(path)
    x = torch.randn(1, 1, 30, 30)
    assert torch.equal(m(x), m2(x))
    assert info2.arch == name and info2.threshold == 0.4 and info2.args == args


def test_classic_unet_size():
    n = sum(p.numel() for p in create_model("unet", base=64, depth=4).parameters())
    assert 31.0e6 < n < 31.1e6  # the classic 31M-parameter U-Net
    k = sum(p.numel() for p in create_model("unet_keras").parameters())
    assert 31.0e6 < k < 31.1e6


def test_keras_layout_details():
    m = create_model("unet_keras", base=8)
    assert isinstance(m.input_norm, torch.nn.BatchNorm2d)
    drops = [i for i, e in enumerate(m.encoders) if any(isinstance(x, torch.nn.Dropout) and x.p == 0.5 for x in e)]
    assert drops == [3, 4]  # the two deepest levels
    assert m.last[0].out_channels == 4  # half the base width before the 1x1 head
    # Keras: Conv2D(activation="relu") then BatchNormalization (epsilon 1e-3); 35 layers with weights
    assert [type(x).__name__ for x in m.encoders[0]][:3] == ["Conv2d", "ReLU", "BatchNorm2d"]
    assert m.input_norm.eps == 1e-3 and len(m.keras_layers()) == 7 * 4 + 7


def test_unknown_name_and_argument():
    with pytest.raises(ConfigError, match="did you mean 'unet'"):
        create_model("unte")
    with pytest.raises(ConfigError, match="did you mean 'base'"):
        create_model("unet", bass=8)
    with pytest.raises(ConfigError, match="unknown norm"):
        create_model("unet", norm="layer")


@pytest.mark.parametrize("norm", ["batch", "group", "instance", "none"])
@pytest.mark.parametrize("up", ["transpose", "bilinear"])
def test_unet_options(norm, up):
    m = create_model("unet", base=4, depth=2, norm=norm, up=up, dropout=0.1).eval()
    assert m(torch.randn(1, 1, 20, 20)).shape == (1, 1, 20, 20)


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_dead_units_pass_gradient_only_with_leaky_relu(act):
    m = create_model("unet", base=3, depth=2, act=act)
    for mod in m.modules():  # push every normalised unit far below zero: all ReLUs "dead"
        if isinstance(mod, torch.nn.BatchNorm2d):
            torch.nn.init.constant_(mod.bias, -100.0)
    m(torch.randn(2, 1, 16, 16)).sum().backward()
    first = m.inc[0].weight.grad
    assert (first.abs().sum() > 0) == (act == "leaky_relu")
    with pytest.raises(ConfigError, match="unknown activation"):
        create_model("unet", act="gelu")

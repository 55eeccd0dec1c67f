from pathlib import Path

import pytest
import torch

from segdistill.checkpoint import ModelInfo, load_model, save_model
from segdistill.data.preprocess import Preprocess
from segdistill.errors import ConfigError
from segdistill.inference.backends import pad_multiple
from segdistill.measure import count_gflops
from segdistill.models import create_model, list_models, resolved_args
from segdistill.models.unet import input_multiple

SMALL = {"base": 4, "depth": 3}


def _small(name):
    if name == "encoder_unet":
        return {"decoder": [8, 8, 8, 8, 8]}
    return {"base": 4, "depth": 3}


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


# --------------------------------------------------------------------------------------------------
# CPU-shaped students: the space-to-depth stem and depthwise-separable blocks (docs/deployment.md)

CPU_SHAPES = [{"stem": "unshuffle"}, {"stem": "unshuffle4"}, {"block": "dwsep"},
              {"stem": "unshuffle", "block": "dwsep", "up": "bilinear"}]
DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("shape", CPU_SHAPES)
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (37, 53), (64, 64)])
def test_cpu_shaped_unet_any_size_and_features(shape, size):
    m = create_model("unet", in_channels=3, base=4, depth=3, **shape)
    x = torch.randn(2, 3, *size)
    logits, feats = m(x, return_features=True)
    assert logits.shape == (2, 1, *size)
    logits.mean().backward()
    assert all(p.grad is not None for p in m.parameters())
    assert [f.shape[1] for f in feats] == m.feature_channels == [16, 8, 4]
    stride = {"unshuffle": 2, "unshuffle4": 4}.get(shape.get("stem", ""), 1)
    assert m.feature_strides == [4 * stride, 2 * stride, stride]
    padded = [-(-s // m.multiple) * m.multiple for s in size]  # features of the padded input, at their strides
    assert [tuple(f.shape[-2:]) for f in feats] == [(padded[0] // s, padded[1] // s) for s in m.feature_strides]


def test_the_padding_multiple_comes_from_the_model_args():
    assert input_multiple({"depth": 3}) == 8
    assert input_multiple({"depth": 3, "stem": "none"}) == 8
    assert input_multiple({"depth": 3, "stem": "unshuffle"}) == 16
    assert input_multiple({"depth": 3, "stem": "unshuffle4"}) == 32
    assert input_multiple({}) == 16  # no depth: counted as 4
    for args in ({"depth": 2}, {"depth": 3, "stem": "unshuffle"}, {"depth": 4, "stem": "unshuffle", "block": "dwsep"}):
        full = resolved_args("unet", **args)
        assert create_model("unet", **full).multiple == input_multiple(full)
        assert pad_multiple(ModelInfo("unet", full, Preprocess())) == input_multiple(full)
    assert pad_multiple(ModelInfo("unet_keras", resolved_args("unet_keras", depth=3), Preprocess())) == 8
    with pytest.raises(ConfigError, match="unknown stem"):
        create_model("unet", stem="pixel")
    with pytest.raises(ConfigError, match="unknown block"):
        create_model("unet", block="mbconv")
    with pytest.raises(ConfigError, match="unknown stem"):
        create_model("unet_nano", stem="pixel")  # the named sizes take the same arguments


def test_the_stem_runs_the_network_at_half_resolution():
    plain = create_model("unet", base=4, depth=4)
    shuffled = create_model("unet", base=4, depth=4, stem="unshuffle")
    assert isinstance(shuffled.stem, torch.nn.PixelUnshuffle) and isinstance(shuffled.unstem, torch.nn.PixelShuffle)
    assert shuffled.inc[0].in_channels == 4 and shuffled.head.out_channels == 4
    # The same weights but for the first and last layers, a quarter of the arithmetic.
    n_plain, n_shuffled = (sum(p.numel() for p in m.parameters()) for m in (plain, shuffled))
    assert n_shuffled - n_plain == 4 * 9 * 3 + 4 * 3 + 3  # inc's 3 extra input channels; the head's 3 extra outputs
    assert count_gflops(shuffled, 1, 64) < 0.3 * count_gflops(plain, 1, 64)
    dw = create_model("unet", base=8, depth=3, block="dwsep")
    assert dw.inc[0].groups == 1  # the first convolution, on the image, stays full
    assert dw.inc[3][0].groups == 8 and dw.inc[3][1].kernel_size == (1, 1)  # then depthwise 3x3 + pointwise 1x1
    assert sum(p.numel() for p in dw.parameters()) < 0.3 * sum(p.numel() for p in create_model("unet", base=8, depth=3).parameters())


def test_model_files_from_before_stem_and_block_load_bit_identically():
    """tests/data/unet_v1_*: a model file written by segdistill before these options existed (its
    args have no stem or block) and the logits that code gave; they must load and give the same."""
    from safetensors.torch import load_file

    model, info = load_model(DATA / "unet_v1_base2_depth2.safetensors")
    assert "stem" not in info.args and "block" not in info.args
    io = load_file(str(DATA / "unet_v1_base2_depth2_io.safetensors"))
    with torch.no_grad():
        assert torch.equal(model(io["x"]), io["logits"])
    # a default unet keeps the parameter names it always had (no weights in the stem or its inverse)
    names = set(create_model("unet", base=4, depth=1).state_dict())
    assert not any(n.startswith(("stem", "unstem")) for n in names) and "head.weight" in names
    assert "inc.0.weight" in names and "downs.0.1.3.weight" in names


@pytest.mark.parametrize("shape", CPU_SHAPES[:2])
def test_cpu_shaped_save_load_round_trip(shape, tmp_path):
    args = resolved_args("unet", base=4, depth=2, **shape)
    assert args["stem"] == shape.get("stem", "none") and args["block"] == shape.get("block", "conv")
    m = create_model("unet", **args).eval()
    m2, info = load_model(save_model(tmp_path / "m.safetensors", m, ModelInfo("unet", args, Preprocess())))
    x = torch.randn(1, 1, 30, 30)
    assert torch.equal(m(x), m2(x)) and info.args == args


def test_the_catalogue_is_the_registry():
    """``segdistill models`` reads segdistill/catalogue.py (no torch): it must say what the registry builds."""
    from segdistill.catalogue import CATALOGUE
    from segdistill.models import model_description

    built = []
    for name in list_models():
        args = resolved_args(name)
        built.append((name, args.get("base"), args.get("depth"),
                      sum(p.numel() for p in create_model(name).parameters()), model_description(name)))
    assert [(m.name, m.base, m.depth, m.params, m.about) for m in CATALOGUE] == built

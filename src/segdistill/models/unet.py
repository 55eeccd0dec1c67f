"""U-Net (Ronneberger et al., 2015) for binary segmentation: one logit channel.

Two families share this file: ``unet`` (configurable width, depth, normalisation, upsampling,
dropout, stem and block, with named sizes) and ``unet_keras`` (the layer layout of the original Keras
tool, so its users can reproduce their models). Any input size works: the input is padded to a
multiple of :func:`input_multiple` (``2**depth``, twice that with the space-to-depth stem) and the
output cropped back.

CPU-shaped students (docs/deployment.md): a tiny U-Net at full resolution is bound by memory traffic
and per-layer overhead, not arithmetic. ``stem="unshuffle"`` folds each 2x2 block of pixels into
channels (``nn.PixelUnshuffle(2)``), so the whole network runs at half resolution on 4x the input
channels, and the head predicts the 2x2 block's 4 logits, put back in place by ``nn.PixelShuffle(2)``.
``block="dwsep"`` makes the 3x3 convolutions depthwise-separable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from .blocks import Act, Block, ConvBlock, Norm, Up, act_layer, norm_layer, pad_to_multiple
from .encoder_unet import encoder_multiple
from .registry import register_model

KERAS_BN_EPS = 1e-3
"""Keras' BatchNormalization epsilon (PyTorch's default is 1e-5)."""

Stem = Literal["none", "unshuffle", "unshuffle4"]
STEM_SCALE = {"none": 1, "unshuffle": 2, "unshuffle4": 4}
"""How much each stem shrinks the image before the first level."""


@dataclass
class UNetSpec:
    in_channels: int = 1
    base: int = 32
    depth: int = 4
    norm: Norm = "batch"
    up: str = "transpose"
    dropout: float = 0.0
    act: Act = "relu"
    stem: Stem = "none"
    """``unshuffle``: space-to-depth by 2 first, the network at half resolution (module docstring);
    ``unshuffle4``: by 4, at a quarter."""
    block: Block = "conv"
    """``dwsep``: depthwise-separable 3x3 convolutions (the very first one stays full)."""


def input_multiple(args: Mapping[str, Any]) -> int:
    """What a U-Net pads its input's height and width to, from its model-file arguments: the total
    down-sampling, ``2**depth`` times the stem's factor. The one place this rule lives (the model's
    own padding, the inference backends and the ONNX export's dynamic dimensions all ask here);
    arguments without ``depth`` (no registered model) count as depth 4; an encoder U-Net's is its
    encoder's total stride (32, or 16 for a cut encoder) at its working scale."""
    if "encoder" in args:
        return encoder_multiple(float(args.get("input_scale", 1.0)), int(args.get("depth", 5)))
    stem = str(args.get("stem", "none"))
    if stem not in STEM_SCALE:
        raise ValueError(f"unknown stem '{stem}' ({', '.join(STEM_SCALE)})")
    return 2 ** int(args.get("depth", 4)) * STEM_SCALE[stem]


class UNet(nn.Module):
    """Encoder of ``depth`` down-steps (width doubling), symmetric decoder, 1x1 head; with
    ``stem="unshuffle"`` all of it at half resolution between a space-to-depth stem and a
    depth-to-space head.

    Shape: (B, C, H, W) -> (B, 1, H, W) logits, for any H, W >= 1.
    """

    def __init__(self, spec: UNetSpec) -> None:
        super().__init__()
        if spec.depth < 1 or spec.base < 1:
            raise ValueError("depth and base must be at least 1")
        self.spec = spec
        self.multiple = input_multiple(asdict(spec))  # raises on an unknown stem; conv3x3 on an unknown block
        s = STEM_SCALE[spec.stem]
        widths = [spec.base * 2**i for i in range(spec.depth + 1)]
        self.widths = widths
        # Neither shuffle has weights, so a model without the stem has the parameter names it always had.
        self.stem = nn.PixelUnshuffle(s) if s > 1 else nn.Identity()
        self.inc = ConvBlock(spec.in_channels * s * s, widths[0], spec.norm, act=spec.act, block=spec.block, full_first=True)
        self.downs = nn.ModuleList(
            nn.Sequential(
                nn.MaxPool2d(2),
                # Dropout at the deepest level only, where the original U-Net put it.
                ConvBlock(widths[i], widths[i + 1], spec.norm, spec.dropout if i == spec.depth - 1 else 0.0, spec.act,
                          spec.block),
            )
            for i in range(spec.depth)
        )
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], widths[i], spec.up, spec.norm, spec.act, spec.block)
            for i in reversed(range(spec.depth))
        )
        self.head = nn.Conv2d(widths[0], s * s, 1)  # one logit per pixel of each s x s block
        self.unstem = nn.PixelShuffle(s) if s > 1 else nn.Identity()

    @property
    def feature_channels(self) -> list[int]:
        """Channels of the decoder features returned with ``return_features`` (deep to shallow)."""
        return [self.widths[i] for i in reversed(range(self.spec.depth))]

    @property
    def feature_strides(self) -> list[int]:
        """How many input pixels one pixel of each returned decoder feature spans (deep to shallow):
        distillation pairs a student's and a teacher's features of the same stride."""
        s = STEM_SCALE[self.spec.stem]
        return [s * 2**i for i in reversed(range(self.spec.depth))]

    def forward(self, x: torch.Tensor, return_features: bool = False):  # type: ignore[override]
        h, w = x.shape[-2:]
        x, _, _ = pad_to_multiple(x, self.multiple)  # (B, C, H', W'), H' and W' multiples of self.multiple
        skips = [self.inc(self.stem(x))]  # (B, base, H'/s, W'/s), s the stem's factor
        for down in self.downs:
            skips.append(down(skips[-1]))  # (B, base*2^i, H'/(s*2^i), W'/(s*2^i))
        y = skips.pop()
        feats = []
        for up in self.ups:
            y = up(y, skips.pop())
            feats.append(y)
        logits = self.unstem(self.head(y))[..., :h, :w]  # (B, s*s, H'/s, W'/s) -> (B, 1, H, W)
        return (logits, feats) if return_features else logits


class KerasUNet(nn.Module):
    """The original Keras tool's U-Net (its ``unet.py``), layer for layer, so that its ``.h5`` models
    import exactly (``segdistill import-keras``, deploy/keras_h5.py).

    Batch norm on the input and after each encoder convolution's ReLU (Keras: Conv2D(activation=
    "relu") then BatchNormalization, epsilon 1e-3); dropout 0.5 at the two deepest levels; each
    up-step is 2x nearest upsampling, then a 2x2 convolution with Keras' "same" padding (one row and
    column of zeros at the bottom/right) and ReLU; the skip comes first in each concatenation; the
    decoder's convolutions have no batch norm; a 3x3 convolution of half the base width precedes the
    1x1 head (the Keras sigmoid is left to the caller: this returns logits). The running-statistics
    momentum is PyTorch's (0.1), not Keras' 0.99, for segdistill's own short training runs.
    """

    def __init__(self, in_channels: int = 1, base: int = 64, depth: int = 4, dropout: float = 0.5) -> None:
        super().__init__()
        self.depth = depth
        widths = [base * 2**i for i in range(depth + 1)]
        self.widths = widths
        self.input_norm = nn.BatchNorm2d(in_channels, eps=KERAS_BN_EPS)

        def enc(cin: int, cout: int, drop: float) -> nn.Sequential:
            layers: list[nn.Module] = [
                nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(cout, eps=KERAS_BN_EPS),
                nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(cout, eps=KERAS_BN_EPS),
            ]
            if drop > 0:
                layers.append(nn.Dropout(drop))
            return nn.Sequential(*layers)

        self.encoders = nn.ModuleList(
            enc(in_channels if i == 0 else widths[i - 1], widths[i], dropout if i >= depth - 1 else 0.0)
            for i in range(depth + 1)
        )
        self.pool = nn.MaxPool2d(2)
        self.up_convs = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            # Keras "same" padding for an even 2x2 kernel pads right/bottom by one.
            self.up_convs.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.ZeroPad2d((0, 1, 0, 1)),
                    nn.Conv2d(widths[i + 1], widths[i], 2),
                    nn.ReLU(inplace=True),
                )
            )
            self.decoders.append(
                nn.Sequential(
                    nn.Conv2d(2 * widths[i], widths[i], 3, padding=1), nn.ReLU(inplace=True),
                    nn.Conv2d(widths[i], widths[i], 3, padding=1), nn.ReLU(inplace=True),
                )
            )
        self.last = nn.Sequential(nn.Conv2d(widths[0], max(base // 2, 1), 3, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Conv2d(max(base // 2, 1), 1, 1)

    @property
    def feature_channels(self) -> list[int]:
        return [self.widths[i] for i in reversed(range(self.depth))]

    def keras_layers(self) -> list[nn.Conv2d | nn.BatchNorm2d]:
        """The layers with weights in the order the Keras model creates them (and its ``.h5`` file
        lists them): input norm, each encoder level's conv/BN pairs, then per up-step the 2x2
        convolution and the two 3x3 ones, the half-width convolution, the head."""
        layers: list[nn.Module] = [self.input_norm]
        for enc in self.encoders:
            layers += [m for m in enc if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
        for up, dec in zip(self.up_convs, self.decoders):
            layers += [m for m in (*up, *dec) if isinstance(m, nn.Conv2d)]
        return [*layers, self.last[0], self.head]  # type: ignore[list-item]

    @property
    def feature_strides(self) -> list[int]:
        return [2**i for i in reversed(range(self.depth))]

    def forward(self, x: torch.Tensor, return_features: bool = False):  # type: ignore[override]
        h, w = x.shape[-2:]
        x, _, _ = pad_to_multiple(x, input_multiple({"depth": self.depth}))
        x = self.input_norm(x)
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else self.pool(x))
            skips.append(x)
        y = skips.pop()
        feats = []
        for up, dec in zip(self.up_convs, self.decoders):
            y = dec(torch.cat([skips.pop(), up(y)], dim=1))  # (B, 2*w_i, H/2^i, W/2^i): skip first, as in Keras
            feats.append(y)
        logits = self.head(self.last(y))[..., :h, :w]  # (B, 1, H, W)
        return (logits, feats) if return_features else logits


def _check(norm: str, up: str, act: str) -> None:
    norm_layer(norm, 8)  # type: ignore[arg-type]  # raises on an unknown name
    act_layer(act)  # type: ignore[arg-type]
    if up not in ("transpose", "bilinear"):
        raise ValueError(f"unknown upsampling '{up}' (transpose, bilinear)")


@register_model("unet")
def unet(
    in_channels: int = 1,
    base: int = 32,
    depth: int = 4,
    norm: str = "batch",
    up: str = "transpose",
    dropout: float = 0.0,
    act: str = "relu",
    stem: str = "none",
    block: str = "conv",
) -> UNet:
    """Configurable U-Net; base 64, depth 4 is the classic 31M-parameter model. ``act``: relu or
    leaky_relu (for students with only a few channels per level). For CPU latency: ``stem``
    unshuffle (the network at half resolution) and ``block`` dwsep (depthwise-separable)."""
    _check(norm, up, act)
    return UNet(UNetSpec(in_channels, base, depth, norm, up, dropout, act, stem, block))  # type: ignore[arg-type]


# Named sizes: a variation is a value, so each is just `unet` with a different width.
_SIZES = {"unet_nano": 4, "unet_tiny": 8, "unet_small": 16, "unet_base": 32, "unet_large": 64}
_ABOUT = {
    "unet_nano": "U-Net base 4: the smallest student, for CPUs and small devices",
    "unet_tiny": "U-Net base 8: a small student, or a teacher for tiny data",
    "unet_small": "U-Net base 16: a teacher on a CPU, or a large student",
    "unet_base": "U-Net base 32 (the same as unet): the default teacher",
    "unet_large": "U-Net base 64: the classic 31M-parameter U-Net, for a GPU",
}


def _sized(base_width: int, about: str):
    def build(
        in_channels: int = 1,
        base: int = base_width,
        depth: int = 4,
        norm: str = "batch",
        up: str = "transpose",
        dropout: float = 0.0,
        act: str = "relu",
        stem: str = "none",
        block: str = "conv",
    ) -> UNet:
        return unet(in_channels, base, depth, norm, up, dropout, act, stem, block)

    build.__doc__ = about + "."  # what `segdistill models` shows for this size
    return build


for _name, _base in _SIZES.items():
    register_model(_name)(_sized(_base, _ABOUT[_name]))


@register_model("unet_keras")
def unet_keras(in_channels: int = 1, base: int = 64, depth: int = 4, dropout: float = 0.5) -> KerasUNet:
    """The original Keras tool's U-Net (base 64: about 31M parameters)."""
    return KerasUNet(in_channels, base, depth, dropout)

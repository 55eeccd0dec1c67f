"""Building blocks shared by the U-Net variants."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

Norm = Literal["batch", "group", "instance", "none"]
Act = Literal["relu", "leaky_relu"]
Block = Literal["conv", "dwsep"]


def act_layer(kind: Act) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leaky_relu":
        # A unit that goes negative still passes gradient: in a student with 3-4 channels per level,
        # plain ReLU units can all die and cut the network off (docs/distillation.md).
        return nn.LeakyReLU(0.01, inplace=True)
    raise ValueError(f"unknown activation '{kind}' (relu, leaky_relu)")


def norm_layer(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # 8 groups where the width allows; tiny students fall back to fewer groups.
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm '{kind}' (batch, group, instance, none)")


def conv3x3(cin: int, cout: int, bias: bool, block: Block = "conv") -> nn.Module:
    """A 3x3 convolution: a full one (``conv``), or depthwise-separable (``dwsep``: a 3x3 filter per
    input channel, then a 1x1 mixing them), about ``9 * cout / (9 + cout)`` times fewer multiply-adds.
    ``conv`` is a bare ``nn.Conv2d``, so the parameter names of existing model files stay as they were."""
    if block == "conv":
        return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
    if block == "dwsep":
        # No norm between the two (as Keras' SeparableConv2D): fewer layers, and a tiny network's CPU
        # time goes to the number of layers more than to their arithmetic.
        return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=bias))
    raise ValueError(f"unknown block '{block}' (conv, dwsep)")


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions (full or depthwise-separable), each followed by normalisation and the
    activation. ``full_first``: the first stays a full convolution whatever ``block`` says (for the
    image's own few channels, a depthwise filter per channel would be a bottleneck; MobileNet's stem
    is a full convolution too)."""

    def __init__(
        self, cin: int, cout: int, norm: Norm = "batch", dropout: float = 0.0, act: Act = "relu",
        block: Block = "conv", full_first: bool = False,
    ) -> None:
        bias = norm == "none"
        layers: list[nn.Module] = [
            conv3x3(cin, cout, bias, "conv" if full_first else block),
            norm_layer(norm, cout),
            act_layer(act),
            conv3x3(cout, cout, bias, block),
            norm_layer(norm, cout),
            act_layer(act),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class Up(nn.Module):
    """Upsample by 2, then concatenate the skip connection and fuse with a ConvBlock."""

    def __init__(
        self, cin: int, cskip: int, cout: int, mode: str = "transpose", norm: Norm = "batch", act: Act = "relu",
        block: Block = "conv",
    ) -> None:
        super().__init__()
        if mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
            cup = cin // 2
        elif mode == "bilinear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(cin, cin // 2, 1),
            )
            cup = cin // 2
        else:
            raise ValueError(f"unknown upsampling '{mode}' (transpose, bilinear)")
        self.conv = ConvBlock(cup + cskip, cout, norm, act=act, block=block)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (B, cin/2, 2h, 2w)
        return self.conv(torch.cat([x, skip], dim=1))


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pad H and W at the bottom/right (reflect where possible) up to a multiple; return the pads."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, 0, 0
    # Reflect padding needs pad < size; tiny inputs (1x1) fall back to replicate.
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), ph, pw

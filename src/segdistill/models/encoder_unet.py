"""A U-Net with an ImageNet-style encoder (``encoder_unet``): the photos' model.

The encoder (models/encoders.py) gives features at strides 2 to 32; the decoder climbs back, at each
step upsampling by 2, joining the encoder's feature of that stride and fusing with two 3x3
convolutions (full or depthwise-separable), then one last step to full resolution without a skip,
and a 1x1 head. The decoder's widths are small by default (a CPU's time goes to the full-resolution
steps), and ``input_scale`` runs the whole network on a downscaled image (its logits upsampled back):
a student at half the teacher's resolution costs about a quarter. Input normalisation is the
encoder's (stored in the model file's preprocessing by the training run), so the model file alone
describes the model: it needs no weights package to load, predict or export.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import ConvBlock, pad_to_multiple
from .encoders import build_encoder, encoder_info
from .registry import register_model

DECODER = (96, 48, 32, 24, 16)
"""Default decoder widths, deep to shallow (strides 16, 8, 4, 2, 1)."""


def encoder_multiple(input_scale: float) -> int:
    """What an encoder U-Net pads its input to: 32 strides of the encoder at the working scale."""
    return max(32, int(round(32 / input_scale)))


class EncoderUNet(nn.Module):
    """Shape: (B, C, H, W) -> (B, 1, H, W) logits, for any H, W >= 1."""

    def __init__(self, in_channels: int, encoder: str, decoder: tuple[int, ...], block: str, input_scale: float) -> None:
        super().__init__()
        info = encoder_info(encoder)
        if len(decoder) != 5 or min(decoder) < 1:
            raise ValueError("decoder: five widths, deep to shallow (strides 16, 8, 4, 2, 1)")
        if not 0.125 <= input_scale <= 1:
            raise ValueError("input_scale must lie in [0.125, 1]")
        self.encoder = build_encoder(encoder, in_channels)
        self.input_scale = input_scale
        self.multiple = encoder_multiple(input_scale)
        skips = [*reversed(info.channels[:-1]), 0]  # strides 16, 8, 4, 2, then none at full resolution
        cin, blocks = info.channels[-1], []
        for width, skip in zip(decoder, skips):
            blocks.append(ConvBlock(cin + skip, width, "batch", block=block))  # type: ignore[arg-type]
            cin = width
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(decoder[-1], 1, 1)
        self.feature_channels = list(decoder[:-1])
        """Channels of the decoder features returned with ``return_features`` (deep to shallow)."""
        self.feature_strides = [int(round(s / input_scale)) for s in (16, 8, 4, 2)]

    def forward(self, x: torch.Tensor, return_features: bool = False):  # type: ignore[override]
        h, w = x.shape[-2:]
        x, _, _ = pad_to_multiple(x, self.multiple)  # (B, C, H', W'), multiples of self.multiple
        if self.input_scale != 1:
            x = F.interpolate(x, scale_factor=self.input_scale, mode="bilinear", align_corners=False, antialias=False)
        feats = self.encoder(x)  # strides 2..32
        y = feats.pop()  # (B, c32, H/32, W/32)
        out = []
        for block in self.decoder:
            y = F.interpolate(y, scale_factor=2.0, mode="nearest")
            y = block(torch.cat([y, feats.pop()], dim=1) if feats else y)  # (B, width, 2h, 2w)
            out.append(y)
        logits = self.head(y)  # (B, 1, H'*s, W'*s)
        if self.input_scale != 1:
            logits = F.interpolate(logits, scale_factor=1 / self.input_scale, mode="bilinear", align_corners=False)
        logits = logits[..., :h, :w]
        return (logits, out[:-1]) if return_features else logits


@register_model("encoder_unet")
def encoder_unet(
    in_channels: int = 3,
    encoder: str = "efficientnet_lite0",
    decoder: list[int] | tuple[int, ...] = DECODER,
    block: str = "conv",
    input_scale: float = 1.0,
) -> EncoderUNet:
    """U-Net on an ImageNet-style encoder (efficientnet_lite0/1/2, resnet18/34), for photos; with
    model.pretrained its encoder starts from ImageNet weights. ``decoder``: five widths, deep to
    shallow; ``block``: conv or dwsep; ``input_scale``: run on a downscaled image (students)."""
    return EncoderUNet(in_channels, encoder, tuple(int(c) for c in decoder), block, float(input_scale))

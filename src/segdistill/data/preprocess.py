"""Preprocessing that travels with a model: channels, normalisation, resizing, inversion."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .imageio import Channels, image_channels, open_image, read_image, resize_for_model


@dataclass
class Preprocess:
    channels: Channels = "gray"
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[float] = field(default_factory=lambda: [0.25])
    max_side: int | None = None
    invert: bool = False
    """The model was trained with inverted masks (its foreground is the masks' zeros)."""

    @property
    def in_channels(self) -> int:
        return 1 if self.channels == "gray" else 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(**{k: d[k] for k in ("channels", "mean", "std", "max_side", "invert") if k in d})

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C, H, W) in [0, 1] -> normalised."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std

    def load(self, path: str | Path) -> torch.Tensor:
        """Read, resize and convert an image file to an un-normalised (C, H, W) float tensor."""
        arr = resize_for_model(read_image(path, self.channels), self.max_side)
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def infer_channels(paths: list[Path], limit: int = 200) -> Channels:
    """"gray" if every (sampled) image is single-channel, else "rgb"."""
    step = max(1, len(paths) // limit)
    for p in paths[::step]:
        if image_channels(open_image(p)) == 3:
            return "rgb"
    return "gray"


def compute_stats(paths: list[Path], channels: Channels, max_side: int | None, limit: int = 200) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over (a sample of) the training images."""
    step = max(1, len(paths) // limit)
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for p in paths[::step]:
        x = resize_for_model(read_image(p, channels), max_side).astype(np.float64)
        flat = x.reshape(-1, x.shape[-1])
        total[: flat.shape[1]] += flat.sum(0)
        total_sq[: flat.shape[1]] += (flat**2).sum(0)
        count += flat.shape[0]
    c = 1 if channels == "gray" else 3
    mean = total[:c] / max(count, 1)
    std = np.sqrt(np.maximum(total_sq[:c] / max(count, 1) - mean**2, 1e-8))
    return [round(float(m), 6) for m in mean], [round(max(float(s), 1e-3), 6) for s in std]

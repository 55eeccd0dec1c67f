"""Augmentation applied identically to an image and its target, in plain torch.

Geometric steps (crop, flips, 90-degree turns, scale/rotate, elastic) transform image and target
together; intensity steps (brightness, contrast, gamma, noise, blur) touch the image only. Every
random draw comes from the generator passed in, so a sample is a pure function of
(seed, epoch, index): runs are reproducible and a resumed run sees exactly the same batches.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ..config import AugmentConfig


def _u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def random_crop(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Crop (C, H, W) to (C, size, size) at a random place; reflect-pad first if it is smaller."""
    _, h, w = x.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x[None], (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode=mode)[0]
        _, h, w = x.shape
    top = int(torch.randint(0, h - size + 1, (), generator=g))
    left = int(torch.randint(0, w - size + 1, (), generator=g))
    return x[:, top : top + size, left : left + size]


def _warp(x: torch.Tensor, theta: torch.Tensor, displacement: torch.Tensor | None) -> torch.Tensor:
    """Resample (C, H, W) through an affine map plus an optional (H, W, 2) displacement field."""
    grid = F.affine_grid(theta[None], [1, *x.shape], align_corners=False)  # (1, H, W, 2)
    if displacement is not None:
        grid = grid + displacement[None]
    return F.grid_sample(x[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]


def elastic_field(h: int, w: int, alpha: float, grid: int, g: torch.Generator) -> torch.Tensor:
    """U-Net paper elastic deformation: Gaussian displacements (std ``alpha`` px) on a coarse grid,
    bicubically interpolated. Returned in normalised grid units, shape (H, W, 2)."""
    coarse = torch.randn((1, 2, grid, grid), generator=g) * alpha
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0]  # (2, H, W)
    scale = torch.tensor([2.0 / w, 2.0 / h]).view(2, 1, 1)
    return (field * scale).permute(1, 2, 0)


def geometric(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Flips, 90-degree turns, scale/rotate and elastic deformation of a stacked (C, H, W) tensor."""
    if _u(g) < cfg.hflip:
        x = x.flip(-1)
    if _u(g) < cfg.vflip:
        x = x.flip(-2)
    if _u(g) < cfg.rot90 and x.shape[-1] == x.shape[-2]:
        x = torch.rot90(x, int(torch.randint(1, 4, (), generator=g)), dims=(-2, -1))
    do_affine = _u(g) < cfg.affine
    do_elastic = _u(g) < cfg.elastic
    if do_affine or do_elastic:
        theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        if do_affine:
            # Sample the zoom log-uniformly so zooming in and out are equally likely.
            s = math.exp(_u(g, math.log(cfg.scale[0]), math.log(cfg.scale[1])))
            a = math.radians(_u(g, -cfg.rotate, cfg.rotate))
            # affine_grid maps output to input coordinates, hence the inverse scale.
            theta = torch.tensor([[math.cos(a) / s, -math.sin(a) / s, 0.0], [math.sin(a) / s, math.cos(a) / s, 0.0]])
        field = elastic_field(x.shape[-2], x.shape[-1], cfg.elastic_alpha, 3, g) if do_elastic else None
        x = _warp(x, theta, field)
    return x


def intensity(img: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, gamma, Gaussian noise and blur on an image in [0, 1]."""
    if _u(g) < cfg.color_p:
        img = img + _u(g, -cfg.brightness, cfg.brightness)
        mean = img.mean()
        img = (img - mean) * _u(g, 1 - cfg.contrast, 1 + cfg.contrast) + mean
        img = img.clamp(0, 1) ** math.exp(_u(g, -cfg.gamma, cfg.gamma))
    if _u(g) < cfg.noise_p:
        img = img + torch.randn(img.shape, generator=g) * cfg.noise
    if _u(g) < cfg.blur_p:
        sigma = _u(g, 0.3, 1.2)
        k = torch.exp(-(torch.arange(-2, 3, dtype=torch.float32) ** 2) / (2 * sigma**2))
        k = k / k.sum()
        c = img.shape[0]
        img = F.conv2d(F.pad(img[None], (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5).repeat(c, 1, 1, 1), groups=c)
        img = F.conv2d(F.pad(img, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1).repeat(c, 1, 1, 1), groups=c)[0]
    return img.clamp(0, 1)


def augment_pair(
    img: torch.Tensor, target: torch.Tensor, cfg: AugmentConfig, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment (C, H, W) image and (T, H, W) target together; returns tensors of the same shapes."""
    c = img.shape[0]
    both = geometric(torch.cat([img, target], 0), cfg, g)
    return intensity(both[:c], cfg, g), both[c:]

"""Cached teacher targets: each image's teacher probabilities, computed once, stored as 8-bit PNG.

The cache key of an image is (teacher file SHA-256, image content SHA-256, preprocessing), so a new
or retrained teacher, an edited image or a changed preprocessing can never be paired with stale
targets, and nobody has to delete a folder by hand. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..checkpoint import ModelInfo, file_sha256
from ..data.imageio import open_image
from ..distributed import all_ranks, is_main_process, shard
from ..errors import TrainingError
from ..fileio import atomic_path, cache_root
from ..runtime import select_device

log = logging.getLogger("segdistill")


def default_cache_dir() -> Path:
    return cache_root() / "targets"


def cache_folder(cache_root: Path, teacher_path: Path, info: ModelInfo) -> Path:
    pre = json.dumps(info.preprocess.to_dict(), sort_keys=True)
    key = hashlib.sha256(f"{file_sha256(teacher_path)}|{pre}".encode()).hexdigest()[:24]
    return cache_root / key


def image_key(path: Path) -> str:
    return file_sha256(path)[:32]


@dataclass
class CacheStats:
    forward_passes: int
    cached: int
    folder: Path


@torch.inference_mode()
def build_target_cache(
    teacher: torch.nn.Module, info: ModelInfo, teacher_path: Path, images: list[Path], cache_root: Path | None = None,
    device: str = "auto",
) -> tuple[dict[Path, Path], CacheStats]:
    """Teacher probabilities for every image (at the model's input resolution), from the cache
    where present; returns {image: target PNG} and how many teacher forward passes ran."""
    folder = cache_folder(cache_root or default_cache_dir(), teacher_path, info)
    folder.mkdir(parents=True, exist_ok=True)
    pre = info.preprocess
    dev = select_device(device)
    teacher = teacher.to(dev).eval()
    out: dict[Path, Path] = {}
    todo: list[tuple[Path, Path]] = []
    for img in images:
        target = folder / f"{image_key(img)}.png"
        out[img] = target
        if not target.is_file():
            todo.append((img, target))
    # Under torchrun each rank labels its share of the missing images. The ranks agree on what is
    # missing before any of them writes; the files (named by content, written atomically) are the
    # ones one process writes; a rank that fails stops all of them.
    all_ranks(True, dev)
    try:
        for i in tqdm(shard(len(todo)), desc="teacher targets", disable=None if is_main_process() else True, leave=False):
            img, target = todo[i]
            x = pre.normalise(pre.load(img))[None].to(dev)  # (1, C, h, w)
            prob = torch.sigmoid(teacher(x).float())[0, 0].cpu().numpy()  # (h, w)
            with atomic_path(target) as tmp:
                Image.fromarray((prob * 255).round().astype(np.uint8)).save(tmp, format="PNG")
    except BaseException:
        all_ranks(False, dev)  # release the other ranks (nothing to do in one process)
        raise
    if not all_ranks(True, dev):  # also a barrier: no rank reads a target before all are written
        raise TrainingError("teacher labelling failed on another rank (its message is above)")
    stats = CacheStats(forward_passes=len(todo), cached=len(images) - len(todo), folder=folder)
    if is_main_process():
        log.info("teacher targets: %d teacher forward passes, %d from cache (%s)", stats.forward_passes, stats.cached,
                 folder)
    return out, stats


def mean_foreground(paths: list[Path], limit: int = 200) -> float:
    """Mean teacher probability over (a sample of) cached targets."""
    step = max(1, len(paths) // limit)
    vals = [float(np.asarray(open_image(p).convert("L"), dtype=np.float32).mean() / 255) for p in paths[::step]]
    return float(np.mean(vals)) if vals else 0.5

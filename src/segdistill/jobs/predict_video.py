"""Prediction for video files: a mask for every frame, written as a mask video of the same frame
count, size and frame rate.

A video streams through: frames are decoded one at a time, predicted ``batch_size`` at a time by the
Predictor (any backend, tiling, test-time augmentation) and written out before the next are
decoded, so memory stays flat however long the video is. Every output is written under a temporary
name and renamed when the video is done: an error (a frame that cannot be decoded halfway) leaves
no half-written video and no partial folder of frames.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.imageio import image_to_array
from ..data.video import MASK_CODEC, OVERLAY_CODEC, Codec, VideoReader, video_writer
from ..distributed import is_main_process
from ..errors import DataError
from ..fileio import atomic_dir
from ..inference.predictor import Predictor, overlay
from ..inference.sources import inside

log = logging.getLogger("segdistill")

# (kind, video name ending, codec, folder of the per-frame PNGs): what predict writes for a video.
OUTPUTS: tuple[tuple[str, str, Codec, str], ...] = (
    ("mask", "_mask.mkv", MASK_CODEC, ""),
    ("probs", "_probs.mkv", MASK_CODEC, "probs"),
    ("overlay", "_overlay.mp4", OVERLAY_CODEC, "overlays"),
)
VIDEO_OUTPUTS = tuple(ending for _, ending, _, _ in OUTPUTS)
"""File name endings of the videos predict writes (``clip_mask.mkv``, ...)."""


def predict_video(predictor: Predictor, path: Path, out_dir: Path, name: Path, batch_size: int = 4,
                  save_probs: bool = False, save_overlay: bool = False, save_frames: bool = False) -> tuple[int, float]:
    """Masks of every frame of the video ``path`` into ``out_dir/NAME_mask.mkv`` (0/255, lossless),
    and on request ``NAME_probs.mkv`` (8-bit probabilities), ``NAME_overlay.mp4`` (masks tinted red
    on the frames) and, with ``save_frames``, one PNG per frame and kind in ``NAME/``,
    ``probs/NAME/``, ``overlays/NAME/`` (``frame_000000.png``, ...).

    Returns (frames, sum of their foreground fractions). A video that cannot be read is a
    DataError naming it; nothing of it is left in ``out_dir``."""
    from tqdm import tqdm

    wanted = {"mask": True, "probs": save_probs, "overlay": save_overlay}
    channels = predictor.info.preprocess.channels
    with VideoReader(path) as video, contextlib.ExitStack() as stack:
        outputs = {}  # kind -> (append a frame to its video, its folder of PNGs or None)
        for kind, ending, codec, sub in OUTPUTS:
            if wanted[kind]:
                target = inside(out_dir / name.with_name(name.name + ending), out_dir)
                write = stack.enter_context(video_writer(target, codec, video.width, video.height, video.rate))
                folder = stack.enter_context(atomic_dir(inside(out_dir / sub / name, out_dir))) if save_frames else None
                outputs[kind] = (write, folder)
        bar = stack.enter_context(tqdm(total=video.frames, desc=path.name, unit="frame", dynamic_ncols=True,
                                       disable=None if is_main_process() else True))
        frames, fg = 0, 0.0
        for batch in _batches(video.read(), batch_size):
            # Each frame as a PNG of it would read, so a frame and its PNG give the same mask.
            images = [image_to_array(Image.fromarray(rgb), channels, path) for _, rgb in batch]
            for (index, rgb), prob in zip(batch, predictor.predict_arrays(images)):  # prob: (H, W)
                mask = prob > predictor.threshold
                arrays = {"mask": mask.astype(np.uint8) * 255, "probs": (prob * 255).round().astype(np.uint8)}
                if save_overlay:
                    arrays["overlay"] = overlay(rgb.astype(np.float32) / 255, mask)
                for kind, (write, folder) in outputs.items():
                    write(arrays[kind])
                    if folder is not None:
                        Image.fromarray(arrays[kind]).save(folder / f"frame_{index:06d}.png", format="PNG")
                frames += 1
                fg += float(mask.mean())
            bar.update(len(batch))
        if frames == 0:
            raise DataError(f"{path}: the video holds no frames")
    return frames, fg


def predict_videos(predictor: Predictor, videos: list[Path], names: dict[Path, Path], out_dir: Path, batch_size: int,
                   save_probs: bool, save_overlay: bool, save_frames: bool) -> tuple[int, int, float, list[str]]:
    """``predict_video`` for each of ``videos``; one that cannot be read is skipped (its message
    kept), as an unreadable image is. Returns (videos written, frames, sum of their foreground
    fractions, messages of the videos skipped)."""
    written, frames, fg = 0, 0, 0.0
    failed: list[str] = []
    for path in videos:
        try:
            n, f = predict_video(predictor, path, out_dir, names[path], batch_size, save_probs, save_overlay, save_frames)
        except DataError as e:
            failed.append(str(e))
            if len(failed) > 1:  # the first is the summary's own line
                log.error("skipped %s", e)
            continue
        written, frames, fg = written + 1, frames + n, fg + f
    return written, frames, fg, failed


def _batches(items: Iterable[tuple[int, np.ndarray]], n: int) -> Iterator[list[tuple[int, np.ndarray]]]:
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch

"""Prediction from a model file: batched, with loading in the background, streaming.

Memory stays flat however many images there are: at most ``prefetch`` decoded images wait in the
queue, and each result is written out and dropped before the next batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from ..data.imageio import read_image, resize_for_model
from ..data.video import is_video_file
from ..distributed import gather_objects, is_main_process, rank, shard
from ..errors import SegdistillError
from ..fileio import atomic_path, is_temporary
from .choose import open_backend
from .sources import collect_inputs, inside, output_names
from .tiling import TILE_BATCH, predict_tiled
from .tta import tta_logits

log = logging.getLogger("segdistill")


@dataclass
class Loaded:
    path: Path
    image: np.ndarray | None
    """Float32 (H, W, C) in [0, 1] at the original size; None when reading failed."""
    error: str | None = None


class Predictor:
    """Loads a segdistill model file and turns images into foreground probabilities."""

    def __init__(
        self,
        model_path: str | Path,
        device: str = "auto",
        threshold: float | None = None,
        tile: int | None = None,
        tile_overlap: float = 0.25,
        channels_last: str = "auto",
        tta: int | None = None,
        backend: str = "auto",
        precision: str = "auto",
        measure_on: str | Path | None = None,
        tile_batch: int = TILE_BATCH,
    ) -> None:
        # A .safetensors model or an exported .onnx one, on the backend asked for (inference/backends.py);
        # ``measure_on``: an image of a job large enough to pay for measuring which backend is fastest.
        self.backend, self.info = open_backend(model_path, backend, device, channels_last, precision, measure_on)
        self.device = self.backend.device
        self.threshold = self.info.threshold if threshold is None else threshold
        # Test-time augmentation views: the model's own (train.tta) unless asked otherwise.
        self.tta = self.info.tta if tta is None else tta
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.tile_batch = tile_batch  # windows per forward pass with tiles (the CLI passes predict.batch_size)

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) normalised -> (B, 1, h, w) logits in fp32."""
        return tta_logits(self._forward, x.to(self.device), self.tta, self.info.label_offset)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._tiled(x):
            return predict_tiled(self.backend, x, self.tile, self.tile_overlap, self.tile_batch)  # type: ignore[arg-type]
        return self.backend(x)

    def _tiled(self, x: torch.Tensor) -> bool:
        return bool(self.tile) and max(x.shape[-2:]) > self.tile  # type: ignore[operator]

    def predict_arrays(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Probabilities (H, W) float32 at each image's own size, for float (H, W, C) inputs in
        [0, 1]; images of one size run as one batch."""
        pre = self.info.preprocess
        tensors = [torch.from_numpy(resize_for_model(im, pre.max_side)).permute(2, 0, 1) for im in images]
        outs: list[np.ndarray] = []
        # A tiled image is batched by its windows; one at a time, its full-size arrays exist once.
        if len({t.shape for t in tensors}) == 1 and not self._tiled(tensors[0]):
            groups = [tensors]
        else:
            groups = [[t] for t in tensors]
        for group in groups:
            x = pre.normalise(torch.stack(group))  # (B, C, h, w)
            outs.extend(torch.sigmoid(self.logits(x)).cpu().unbind(0))
        probs = []
        for im, p in zip(images, outs):
            h, w = im.shape[:2]
            if p.shape[-2:] != (h, w):
                p = F.interpolate(p[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            probs.append(p[0].numpy())
        return probs

    def predict_image(self, path: str | Path) -> np.ndarray:
        return self.predict_arrays([read_image(path, self.info.preprocess.channels)])[0]

    def stream(self, files: list[Path], batch_size: int = 4, prefetch: int = 8,
               workers: int = 2) -> Iterator[tuple[Loaded, np.ndarray | None]]:
        """Yield (loaded image, probability map) in input order; reading runs in ``workers``
        background threads (decoding releases the GIL), at most ``prefetch`` images ahead.

        Unreadable files come back with ``error`` set and no probabilities, so one bad file does
        not stop a folder.
        """
        channels = self.info.preprocess.channels

        def load(p: Path) -> Loaded:
            try:
                return Loaded(p, read_image(p, channels))
            except SegdistillError as e:
                return Loaded(p, None, str(e))

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            queue: list[Future[Loaded]] = []
            it = iter(files)
            for p in it:
                queue.append(pool.submit(load, p))
                if len(queue) >= prefetch:
                    break
            batch: list[Loaded] = []
            while queue:
                item = queue.pop(0).result()
                nxt = next(it, None)
                if nxt is not None:
                    queue.append(pool.submit(load, nxt))
                if item.image is None:
                    yield from self._flush(batch)
                    batch = []
                    yield item, None
                    continue
                # A tiled image goes alone (its windows are its batch): no more full-size arrays than one.
                limit = 1 if self.tile and max(item.image.shape[:2]) > self.tile else batch_size
                if batch and (batch[0].image.shape != item.image.shape or len(batch) >= limit):  # type: ignore[union-attr]
                    yield from self._flush(batch)
                    batch = []
                batch.append(item)
            yield from self._flush(batch)

    def _flush(self, batch: list[Loaded]) -> Iterator[tuple[Loaded, np.ndarray]]:
        if batch:
            probs = self.predict_arrays([b.image for b in batch])  # type: ignore[misc]
            yield from zip(batch, probs)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 image with the mask tinted red; image float (H, W, C) in [0, 1]."""
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    out = rgb.copy()
    out[mask] = (1 - alpha) * rgb[mask] + alpha * np.array([1.0, 0.1, 0.1], dtype=np.float32)
    return (out * 255).round().astype(np.uint8)


def _png(name: Path) -> Path:
    """``name`` + ".png"; names carry no extension, and may contain dots (``s.001``)."""
    return name.with_name(name.name + ".png")


def _save_png(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


@dataclass
class PredictSummary:
    out_dir: Path
    written: int
    failed: list[str]
    foreground_fraction: float
    """Mean over the masks of images and of video frames."""
    videos: int = 0
    """Mask videos written (inference/video.py)."""
    frames: int = 0
    """Frames of those videos."""


OUTPUT_PARTS = ("probs", "overlays")
"""Subfolders predict writes beside the masks."""


def prediction_dir(root: str | Path, name: str, overwrite: bool = False, inputs: list[Path] | None = None) -> Path:
    """``root/NAME``, or ``NAME-2``, ``-3``... when it holds files (as ``train`` does with runs), so
    two runs' outputs never mix; ``overwrite`` reuses ``root/NAME`` after removing the previous
    masks, probability maps and overlays (the PNG files in it). Refuses to clear a folder that
    holds other files, or the ``inputs``."""
    base = Path(root) / name
    if not base.is_dir() or not any(base.iterdir()):
        return base
    if not overwrite:
        k = 2
        while (base.parent / f"{base.name}-{k}").is_dir() and any((base.parent / f"{base.name}-{k}").iterdir()):
            k += 1
        return base.parent / f"{base.name}-{k}"
    entries = list(base.rglob("*"))
    files = [f for f in entries if f.is_file() and not f.is_symlink()]
    other = next((f for f in entries if f.is_symlink() or (f.is_file() and not _predict_output(f))), None)
    if other is not None:
        raise SegdistillError(f"{base}: holds {other.name}, which predict does not write; "
                              "--overwrite clears only prediction folders (choose another --name or --out)")
    if inputs and any(f.resolve().is_relative_to(base.resolve()) for f in inputs):
        raise SegdistillError(f"{base}: holds the input images; --overwrite would remove them (choose another --name or --out)")
    for f in files:
        f.unlink()
    for d in sorted((d for d in base.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
        d.rmdir()  # empty now: it held only PNG files
    log.info("--overwrite: removed the %d previous prediction files from %s", len(files), base)
    return base


def _predict_output(path: Path) -> bool:
    """A file predict writes: a PNG, a mask/probability/overlay video, or a temporary copy of one."""
    from .video import VIDEO_OUTPUTS

    return path.suffix.lower() == ".png" or path.name.endswith(VIDEO_OUTPUTS) or is_temporary(path)


def predict_to_folder(
    predictor: Predictor,
    source: str | Path | list[str] | list[Path],
    out_dir: str | Path,
    batch_size: int = 4,
    recursive: bool = False,
    save_probs: bool = False,
    save_overlay: bool = False,
    workers: int = 2,
    save_frames: bool = False,
) -> PredictSummary:
    """Predict every image of ``source`` (a file, folder or glob, or a list of them) into ``out_dir``:
    ``NAME.png`` masks (0/255, input size), ``probs/NAME.png`` (8-bit probabilities) and
    ``overlays/NAME.png`` on request. ``prediction_dir`` picks an ``out_dir`` that mixes no runs.
    Videos get mask videos (and per-frame PNGs with ``save_frames``): ``inference/video.py``.

    Under torchrun each rank predicts every N-th file into the same ``out_dir`` (the names come
    from all files, so they are those one process writes), and every rank returns the totals of
    all ranks. A rank that fails stops all of them with its message."""
    files, root = collect_inputs(source, recursive)
    by_path = dict(zip(files, output_names(files, root)))
    images = [f for f in files if not is_video_file(f)]
    videos = [f for f in files if is_video_file(f)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        written, fg, failed, n_videos, frames = 0, 0.0, [], 0, 0
        if images:
            written, fg, failed = _write_predictions(predictor, [images[i] for i in shard(len(images))], by_path,
                                                     out_dir, batch_size, save_probs, save_overlay, workers)
        if videos:
            from .video import predict_videos

            n_videos, frames, video_fg, video_failed = predict_videos(
                predictor, [videos[i] for i in shard(len(videos))], by_path, out_dir, batch_size, save_probs,
                save_overlay, save_frames)
            fg, failed = fg + video_fg, failed + video_failed
        counts = (written, fg, failed, n_videos, frames)
    except BaseException as e:
        gather_objects(f"rank {rank()}: {e}")  # releases the other ranks, with this rank's message
        raise
    parts = gather_objects(counts)  # also a barrier: no rank reports before all have written
    error = next((p for p in parts if isinstance(p, str)), None)
    if error is not None:
        raise SegdistillError(f"prediction failed on {error}")
    written, fg, n_videos, frames = (sum(p[k] for p in parts) for k in (0, 1, 3, 4))
    failed = [f for p in parts for f in p[2]]
    return PredictSummary(out_dir, written, failed, fg / max(written + frames, 1), n_videos, frames)


def _write_predictions(
    predictor: Predictor, files: list[Path], names: dict[Path, Path], out_dir: Path, batch_size: int, save_probs: bool,
    save_overlay: bool, workers: int,
) -> tuple[int, float, list[str]]:
    """Masks (and probabilities, overlays) of ``files`` into ``out_dir``; returns (files written,
    sum of their foreground fractions, messages of the files that could not be read)."""
    from tqdm import tqdm

    failed: list[str] = []
    written, fg = 0, 0.0
    bar = tqdm(total=len(files), desc="predict", disable=None if is_main_process() else True, dynamic_ncols=True)
    for item, prob in predictor.stream(files, batch_size, workers=workers):
        bar.update(1)
        if prob is None:
            failed.append(item.error or str(item.path))
            log.error("skipped %s", item.error)
            continue
        name = names[item.path]
        mask = prob > predictor.threshold
        _save_png(inside(out_dir / _png(name), out_dir), mask.astype(np.uint8) * 255)
        if save_probs:
            _save_png(inside(out_dir / "probs" / _png(name), out_dir), (prob * 255).round().astype(np.uint8))
        if save_overlay:
            _save_png(inside(out_dir / "overlays" / _png(name), out_dir), overlay(item.image, mask))  # type: ignore[arg-type]
        written += 1
        fg += float(mask.mean())
    bar.close()
    return written, fg, failed

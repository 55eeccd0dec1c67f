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
from torch.nn import functional as F

from ..data.imageio import read_image, resize_for_model
from ..errors import SegdistillError
from .choose import open_backend
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

"""Video files through PyAV (FFmpeg): reading frames one at a time, writing mask videos, and
extracting frames as PNG images, with one-line errors naming the file.

Memory stays flat however long a video is: frames are decoded one after another and handed on;
nothing here keeps more than the frame at hand. Decoded frames are RGB uint8 (H, W, 3), as a PNG
of the same frame would read, so a frame and its PNG give the same prediction.

Codecs written (docs/deployment.md, "Video"):
- masks and probabilities: FFV1 in Matroska (``.mkv``), 8-bit gray: lossless, so the decoded mask
  video equals the masks bit for bit; binary masks compress to a few kB a frame.
- overlays: H.264 in MP4 (``.mp4``), 4:2:0 at CRF 18: for looking at, plays everywhere; 4:4:4 when
  the width or height is odd (4:2:0 needs even sides), which some browsers do not play.
"""

from __future__ import annotations

import contextlib
import glob
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError, SegdistillError
from ..extras import require
from ..fileio import atomic_path, read_json, write_json
from .discovery import list_images
from .imageio import is_image_file

log = logging.getLogger("segdistill")

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


def split_videos(sources: str | Path | list[str] | list[Path], recursive: bool = False) -> tuple[list[str], list[Path]]:
    """(the sources left to read images from, the video files among or inside them, each once).

    A video named directly is taken out of the sources; a folder or glob gives its videos and stays
    a source when it holds images too, or nothing at all (so that its "no images" error still comes).
    """
    rest: list[str] = []
    videos: dict[Path, Path] = {}
    for src in [sources] if isinstance(sources, (str, Path)) else sources:
        p = Path(src)
        if p.is_file():
            found, keep = ([p], False) if is_video_file(p) else ([], True)
        elif p.is_dir():
            found = sorted(f for f in (p.rglob("*") if recursive else p.iterdir()) if f.is_file() and is_video_file(f))
            keep = not found or bool(list_images(p, recursive)[0])
        elif any(ch in str(src) for ch in "*?["):  # a glob
            matches = sorted(Path(f) for f in glob.glob(str(src), recursive=True) if Path(f).is_file())
            found = [f for f in matches if is_video_file(f)]
            keep = not found or any(is_image_file(f) for f in matches)
        else:  # missing: reading it as images reports that
            found, keep = [], True
        for v in found:
            videos.setdefault(v.resolve(), v)
        if keep:
            rest.append(str(src))
    return rest, list(videos.values())


def _reason(e: Exception) -> str:
    """FFmpeg's own words (``Invalid data found when processing input``), one line."""
    text = getattr(e, "strerror", None) or str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class VideoReader:
    """An open video's first video stream: its size, frame rate and (where the file says) frame
    count, and its frames one at a time. Use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        av = require("av")
        try:
            if self.path.stat().st_size == 0:
                raise DataError(f"{self.path}: empty file (0 bytes)")
            self._container = av.open(str(self.path))
        except FileNotFoundError:
            raise DataError(f"{self.path}: file not found") from None
        except (av.error.FFmpegError, OSError, ValueError, MemoryError) as e:
            raise DataError(f"{self.path}: not a video file PyAV can read ({_reason(e)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise DataError(f"{self.path}: holds no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # FFmpeg decodes on several threads
        s = self._stream
        if s.codec_context is None:  # a stream FFmpeg found no decoder for (fuzzed .mkv headers)
            self._container.close()
            raise DataError(f"{self.path}: no decoder for its video stream (codec {getattr(s, 'codec_tag', '?')!r})")
        self.width, self.height = s.codec_context.width, s.codec_context.height
        if not self.width or not self.height:
            self._container.close()
            raise DataError(f"{self.path}: the video stream has no frame size")
        if self.width * self.height > Image.MAX_IMAGE_PIXELS:  # checked before any frame is decoded
            self._container.close()
            raise DataError(f"{self.path}: video frames of {self.width}x{self.height} are larger than the "
                            f"decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} pixels); refusing to decode them")
        # Variable frame rates become their average: the output has one frame per input frame.
        self.rate: Fraction = Fraction(s.average_rate or s.guessed_rate or 25)
        duration = self._container.duration  # microseconds, where the container knows it
        self.frames: int | None = s.frames or (round(duration / 1e6 * self.rate) if duration else None)
        """Frames in the stream as the file declares it (for progress only; None when unknown)."""

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def read(self, stride: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, RGB uint8 (H, W, 3)) of every ``stride``-th frame from the first, in order;
        a frame that cannot be decoded is a DataError naming the file and the frame."""
        av = require("av")
        frames = self._container.decode(self._stream)
        index = 0
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except (av.error.FFmpegError, OSError, ValueError, MemoryError) as e:
                raise DataError(f"{self.path}: corrupt video, frame {index} cannot be decoded ({_reason(e)})") from None
            if (frame.width, frame.height) != (self.width, self.height):
                raise DataError(f"{self.path}: frame {index} is {frame.width}x{frame.height}, the video "
                                f"{self.width}x{self.height}; videos whose frame size changes are not supported")
            if index % stride == 0:
                yield index, frame.to_ndarray(format="rgb24")
            index += 1


@dataclass(frozen=True)
class Codec:
    name: str
    pix_fmt: str
    options: dict[str, str] = field(default_factory=dict)


MASK_CODEC = Codec("ffv1", "gray")
"""Lossless: decoded masks equal the written ones exactly."""
OVERLAY_CODEC = Codec("libx264", "yuv420p", {"crf": "18", "preset": "medium"})
"""For viewing: near-lossless H.264 that any player shows."""


@contextlib.contextmanager
def video_writer(path: Path, codec: Codec, width: int, height: int, rate: Fraction) -> Iterator[Callable[[np.ndarray], None]]:
    """A function that appends one frame (uint8 (H, W) gray or (H, W, 3) RGB) to a new video at
    ``path``; the file appears, complete, only when the block ends without an error (written to a
    temporary name and renamed, like every file segdistill writes)."""
    av = require("av")
    pix_fmt = codec.pix_fmt
    if pix_fmt == "yuv420p" and (width % 2 or height % 2):
        pix_fmt = "yuv444p"  # 4:2:0 halves both sides: H.264 refuses odd ones
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), "w")
        try:
            stream = container.add_stream(codec.name, rate=rate, options=dict(codec.options))
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt

            def write(arr: np.ndarray) -> None:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="gray" if arr.ndim == 2 else "rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)

            yield write
            for packet in stream.encode():  # flush the encoder's delayed frames
                container.mux(packet)
        finally:
            container.close()


def extract_frames(video: Path, folder: Path, stride: int, progress: bool = False) -> list[Path]:
    """Every ``stride``-th frame of ``video`` as ``folder/frame_NNNNNN.png`` (RGB, lossless; NNNNNN the
    frame's index in the video), decoded once: a later call with the same stride finds the list
    ``folder/.frames.json`` written last, and decodes nothing. Returns the PNG paths in order."""
    from tqdm import tqdm

    marker = folder / ".frames.json"
    if marker.is_file():
        try:
            done = read_json(marker)
        except SegdistillError:
            done = {}  # a damaged list: decode the frames again
        paths = [folder / name for name in done.get("frames", [])]
        if done.get("stride") == stride and paths and all(p.is_file() for p in paths):
            return paths
    paths = []
    with VideoReader(video) as v:
        total = -(-v.frames // stride) if v.frames else None
        for index, rgb in tqdm(v.read(stride), total=total, desc=f"frames of {video.name}", unit="frame",
                               disable=None if progress else True, leave=False):
            path = folder / f"frame_{index:06d}.png"
            with atomic_path(path) as tmp:
                Image.fromarray(rgb).save(tmp, format="PNG")
            paths.append(path)
    if not paths:
        raise DataError(f"{video}: the video holds no frames")
    log.info("%s: %d frames kept (every %d) as PNG in %s", video, len(paths), stride, folder)
    write_json(marker, {"video": video.name, "stride": stride, "frames": [p.name for p in paths]})
    return paths

"""``segdistill predict``: masks (and probabilities, overlays, mask videos) for files, folders and
globs, written into one prediction folder that never mixes two runs."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import ConfigError, load_config
from ..data.video import is_video_file
from ..distributed import decided_by_main_process, gather_objects, is_main_process, process_group, rank, shard
from ..errors import SegdistillError
from ..fileio import atomic_path, check_writable, is_temporary
from ..inference.choose import MEASURE_IMAGES
from ..inference.predictor import Predictor, overlay
from ..inference.sources import collect_inputs, inside, output_names, safe_relative_name
from ..runtime import set_threads
from .predict_video import VIDEO_OUTPUTS, predict_videos

log = logging.getLogger("segdistill")


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
    """Mask videos written (jobs/predict_video.py)."""
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
    Videos get mask videos (and per-frame PNGs with ``save_frames``): ``jobs/predict_video.py``.

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
            if len(failed) > 1:  # the first is the summary's own line (one line when one file fails)
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


def prediction_folder_name(name: str | None, sources: list[str]) -> str:
    """One safe folder name: ``name``, else the input folder's name or file stem ("glob" for globs);
    several files (a glob the shell expanded): their common folder's name."""
    if name is None:
        if len(sources) > 1:
            parents = {Path(s).resolve().parent for s in sources}
            name = parents.pop().name if len(parents) == 1 else "inputs"
        else:
            source = sources[0]
            src = Path(source)
            if any(ch in source for ch in "*?[") and not src.exists():
                name = "glob"
            else:
                name = (src.stem if src.is_file() else src.resolve().name) or "predictions"
    if len(Path(name).parts) != 1:
        raise ConfigError(f"--name '{name}' must be a plain folder name (no slashes)")
    return str(safe_relative_name(Path(name + ".x"), None))


def run_predict(model: str, sources: list[str], config: str | None = None, overrides: list[str] = (),  # type: ignore[assignment]
                out: str | None = None, name: str | None = None, overwrite: bool = False,
                threshold: float | None = None, probs: bool = False, save_overlay: bool = False,
                frames: bool = False, batch_size: int | None = None, recursive: bool = False,
                tile: int | None = None, tta: int | None = None, device: str | None = None,
                backend: str = "auto", precision: str = "auto", threads: int | str | None = None) -> int:
    """The predict command: masks of ``sources`` into ``out/NAME``; prints what it wrote. Returns
    the exit status (1 when a file could not be read)."""
    cfg = load_config(config, list(overrides))
    check_writable(out or cfg.predict.output_dir)  # before the model is loaded or an image read
    set_threads(threads or cfg.threads)
    p = cfg.predict
    recursive = recursive or p.recursive
    inputs = collect_inputs(sources, recursive)[0]  # a missing input fails before a folder is made
    predictor = Predictor(model, device=device or cfg.device,
                          threshold=threshold if threshold is not None else p.threshold,
                          tile=tile or p.tile, tile_overlap=p.tile_overlap, tta=tta, backend=backend,
                          precision=precision, measure_on=inputs[0] if len(inputs) >= MEASURE_IMAGES else None,
                          tile_batch=batch_size or p.batch_size)
    with process_group(predictor.device):  # under torchrun: each rank predicts its share
        # Rank 0 alone chooses (and with --overwrite clears) the folder, before any rank writes.
        out_dir = decided_by_main_process(lambda: prediction_dir(
            out or p.output_dir, prediction_folder_name(name, sources), overwrite, inputs))
        summary = predict_to_folder(
            predictor, sources, out_dir, batch_size=batch_size or p.batch_size,
            recursive=recursive, save_probs=probs or p.save_probs,
            save_overlay=save_overlay or p.overlay, workers=2 if p.num_workers == "auto" else int(p.num_workers),
            save_frames=frames or p.frames,
        )
        if is_main_process():  # inside the group, as every job's last words (see jobs/train.py)
            _print_summary(summary)
            if not summary.written and not summary.videos and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()  # nothing could be read: leave no empty folder behind
    return 1 if summary.failed else 0


def _print_summary(summary: PredictSummary) -> None:
    masks = "mask" if summary.written == 1 else "masks"
    written = [f"{summary.written} {masks}"] if summary.written or not summary.videos else []
    if summary.videos:
        written.append(f"{summary.videos} mask video{'s' * (summary.videos > 1)} ({summary.frames} frames)")
    print(f"{' and '.join(written)} written to {summary.out_dir} (mean foreground {summary.foreground_fraction:.3f})")
    if summary.failed:
        print(f"error: {len(summary.failed)} file(s) could not be read; first: {summary.failed[0]}", file=sys.stderr)

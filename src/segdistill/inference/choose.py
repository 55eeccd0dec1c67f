"""``--backend auto``: the fastest way to run a model on this machine, measured, checked, remembered.

Which runtime and precision is fastest depends on the model and the CPU (a probe: OpenVINO bf16 3.9x
faster than eager PyTorch for a teacher on AVX-512 with native bf16; ONNX Runtime int8 slower than
fp32 even with VNNI), so nothing here is assumed: every installed candidate runs the same input in
interleaved rounds, its output is compared with the reference's (torch fp32, or ONNX Runtime for an
``.onnx`` file), and the fastest one that agrees wins. The reference is always a candidate, so the
choice is never slower than it. The result is cached per (model file, machine, input size), in
``$SEGDISTILL_CACHE`` (default ``~/.cache/segdistill``), so the measurement runs once.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import ModelInfo, file_sha256, load_model, read_model_info
from ..errors import SegdistillError
from ..fileio import cache_root, read_json, write_json
from ..measure import Timing, choose, time_backends
from ..remote import local_model
from ..runtime import cpu_description, select_device, use_channels_last
from .backends import (
    BACKENDS,
    PRECISIONS,
    Backend,
    Choice,
    TorchBackend,
    build_backend,
    is_ir,
    is_onnx,
    pad_multiple,
)

log = logging.getLogger("segdistill")

MEASURE_IMAGES = 32
"""A predict or evaluate job of at least this many images measures the backends under ``auto`` (a
few seconds, once per model, machine and size); a smaller one runs the default unless a choice is
cached."""


def working_size(image: str | Path, info: ModelInfo) -> tuple[int, int] | None:
    """(h, w) of ``image`` at the model's working resolution, padded as the backends pad it (None for
    a file PIL cannot size, e.g. a video: then nothing is measured)."""
    from PIL import Image

    try:
        with Image.open(image) as im:
            w, h = im.size
    except (OSError, ValueError):
        return None
    side = info.preprocess.max_side
    if side and max(h, w) > side:
        scale = side / max(h, w)
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
    m = pad_multiple(info)
    return -(-h // m) * m, -(-w // m) * m


def machine_key() -> str:
    """What a measured choice depends on besides the model and size: the CPU, the threads and the
    runtimes' versions."""
    versions = [f"torch {torch.__version__}"]
    for name in ("onnxruntime", "openvino"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            pass
    return f"{cpu_description()}; {torch.get_num_threads()} threads; {', '.join(versions)}"


def cache_key(path: Path, size: tuple[int, int], batch: int = 1) -> str:
    return f"{file_sha256(path)[:16]}|{size[0]}x{size[1]}|b{batch}|{machine_key()}"


def _read_cache() -> dict[str, Any]:
    try:
        return read_json(cache_root() / "backends.json") or {}
    except (OSError, SegdistillError):
        return {}  # none yet, or unreadable: measure again


def remember(key: str, timings: list[Timing], chosen: Timing) -> None:
    cache = _read_cache()
    cache[key] = {"chosen": chosen.choice.to_dict(), "timings": [t.to_dict() for t in timings],
                  "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        cache_root().mkdir(parents=True, exist_ok=True)
        write_json(cache_root() / "backends.json", cache)
    except OSError as e:  # a read-only home: the choice still holds for this run
        log.debug("cannot cache the backend choice: %s", e)


def cached_choice(path: Path, size: tuple[int, int] | None) -> Choice | None:
    """The choice measured before for this model file on this machine (at ``size``; without a size,
    the one measured most recently at any size)."""
    cache = _read_cache()
    if size is not None:
        entry = cache.get(cache_key(path, size))
        return Choice.from_dict(entry["chosen"]) if entry else None
    prefix, machine = file_sha256(path)[:16] + "|", machine_key()
    entries = [v for k, v in cache.items() if k.startswith(prefix) and k.endswith("|" + machine)]
    return Choice.from_dict(max(entries, key=lambda v: v["date"])["chosen"]) if entries else None


def measure_and_choose(path: Path, info: ModelInfo, size: tuple[int, int], batch: int = 1) -> tuple[Timing, list[Timing]]:
    timings = time_backends(path, info, size, batch=batch)
    chosen = choose(timings)
    remember(cache_key(path, size, batch), timings, chosen)
    return chosen, timings


def cached_or_measured(path: Path, info: ModelInfo, size: tuple[int, int] | None) -> Choice | None:
    """For ``open_backend``'s auto: the cached choice, else (given a size) a fresh measurement; None
    leaves the plain default (a small job does not pay for measuring)."""
    choice = cached_choice(path, size)
    if choice is not None or size is None:
        if choice is not None:
            log.info("backend: %s (measured before on this machine)", choice.label())
        return choice
    log.info("measuring the backends for %s at %dx%d (once per model, machine and size) ...", path.name, *size)
    chosen, timings = measure_and_choose(path, info, size)
    log.info("backend: %s, %.1f ms (%s)", chosen.choice.label(), chosen.p50_ms,
             "; ".join(f"{t.choice.label()} {t.p50_ms:.1f} ms" if t.p50_ms else f"{t.choice.label()} failed"
                       for t in timings))
    return chosen.choice


def open_backend(path: str | Path, backend: str = "auto", device: str | torch.device = "auto",
                 channels_last: str = "auto", precision: str = "auto",
                 measure_on: str | Path | None = None) -> tuple[Backend, ModelInfo]:
    """The model file at ``path`` (``.safetensors`` or an exported ``.onnx``) on ``backend``.

    ``auto``: the choice measured before for this model, machine and input size (a cache); else,
    given ``measure_on`` (an image of the job: its size at the model's resolution), the fastest of
    :func:`candidates` measured now (and cached), never one whose outputs disagree with the
    reference; else torch for a ``.safetensors`` file and ONNX
    Runtime for a ``.onnx`` one. A named backend runs in ``precision`` (auto: fp32; an int8 export
    in int8)."""
    if backend not in BACKENDS:
        raise SegdistillError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise SegdistillError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    path = local_model(path)  # a URL: its verified download in the cache
    info = read_model_info(path)
    onnx_file = is_onnx(path)
    dev = torch.device("cpu") if onnx_file else select_device(device)
    if backend == "auto" and precision == "auto" and dev.type == "cpu":
        choice = cached_or_measured(path, info, working_size(measure_on, info) if measure_on else None)
        if choice is not None:
            return build_backend(choice, path, info, device=dev), info
    if backend == "auto":
        backend = "openvino" if is_ir(path) else "onnxruntime" if onnx_file else "torch"
    prec = "fp32" if precision == "auto" else precision
    if backend == "torch":
        if onnx_file:
            build_backend(Choice("torch"), path, info)  # the error for an ONNX file on torch
        model, info = load_model(path, dev)
        return TorchBackend(model, dev, use_channels_last(channels_last, dev, training=False), prec), info
    return build_backend(Choice(backend, prec), path, info, device=dev), info

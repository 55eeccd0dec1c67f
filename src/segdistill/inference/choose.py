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

import copy
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..checkpoint import ModelInfo, file_sha256, load_model, read_model_info
from ..errors import SegdistillError
from ..fileio import cache_root, read_json, write_json
from ..remote import local_model
from ..runtime import cpu_description, select_device, use_channels_last
from .backends import (
    BACKENDS,
    PRECISIONS,
    Backend,
    Choice,
    TorchBackend,
    build_backend,
    candidates,
    is_ir,
    is_onnx,
    onnx_precision,
    pad_multiple,
)
from .graph import check_inputs, onnx_bytes

log = logging.getLogger("segdistill")

FP32_TOLERANCE = 1e-3
"""Largest probability difference from the reference for an fp32 candidate (reordered float32
arithmetic differs by ~1e-6; more means a broken conversion)."""
MIN_AGREEMENT = 0.99
"""Share of pixels whose mask must match the reference's for a reduced-precision candidate (bf16,
int8); their IoU change is measured by ``segdistill benchmark --data``."""
RUNS, WARMUP = 7, 2
MEASURE_IMAGES = 32
"""A predict or evaluate job of at least this many images measures the backends under ``auto`` (a
few seconds, once per model, machine and size); a smaller one runs the default unless a choice is
cached."""


@dataclass
class Timing:
    choice: Choice
    times_ms: list[float] = field(default_factory=list)
    max_diff: float | None = None
    """Largest probability difference from the reference."""
    agreement: float | None = None
    """Share of pixels whose thresholded mask matches the reference's."""
    error: str | None = None
    """Why the candidate failed to build or run (it is then never chosen)."""
    backend: Backend | None = field(default=None, repr=False)
    """The built backend (``measure(keep=True)``), for further timing."""
    probe: torch.Tensor | None = field(default=None, repr=False)

    @property
    def p50_ms(self) -> float | None:
        return statistics.median(self.times_ms) if self.times_ms else None

    @property
    def p95_ms(self) -> float | None:
        if not self.times_ms:
            return None
        ordered = sorted(self.times_ms)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]

    @property
    def accurate(self) -> bool:
        """Its outputs agree with the reference: fp32 to the float rounding, lower precisions on the masks."""
        if self.error is not None or self.max_diff is None:
            return False
        if self.choice.precision == "fp32":
            return self.max_diff <= FP32_TOLERANCE
        return self.agreement is not None and self.agreement >= MIN_AGREEMENT

    def to_dict(self) -> dict[str, Any]:
        return {**self.choice.to_dict(), "p50_ms": self.p50_ms, "p95_ms": self.p95_ms, "max_diff": self.max_diff,
                "agreement": self.agreement, "accurate": self.accurate, "error": self.error}


def choose(timings: list[Timing]) -> Timing:
    """The fastest accurate candidate; ``timings[0]`` is the reference (accurate by definition),
    so the result is never slower than it. Pure: tested with made-up timing tables."""
    if not timings or timings[0].p50_ms is None:
        raise SegdistillError("the reference backend could not run the model")
    usable = [t for t in timings[1:] if t.accurate and t.p50_ms is not None]
    return min([timings[0], *usable], key=lambda t: t.p50_ms)  # type: ignore[arg-type, return-value]


def probe_input(info: ModelInfo, size: tuple[int, int]) -> torch.Tensor:
    """A normalised (1, C, h, w) input: a training image of the model (resized) where the data is
    still there (outputs on real images are what the agreement check must compare), else noise."""
    data = info.summary.get("data")
    xs, _ = check_inputs(info, None, Path(data) if data else None)
    x = xs[0]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x


def measure(path: Path, info: ModelInfo, size: tuple[int, int], choices: list[Choice] | None = None,
            runs: int = RUNS, warmup: int = WARMUP, batch: int = 1, keep: bool = False,
            device: torch.device | None = None) -> list[Timing]:
    """Time every candidate (``choices``: default :func:`candidates`) on one input of ``size`` in
    interleaved rounds (noise from other work hits all alike), after checking each against the
    first. The model is built and exported once and shared. ``keep``: the built backends stay in
    the timings (otherwise they are let go). ``device``: a GPU for torch candidates (timed with a
    synchronisation, as GPU work is asynchronous)."""
    onnx_file = is_onnx(path)
    graph_precision = onnx_precision(path) if onnx_file else "fp32"
    device = device or torch.device("cpu")
    choices = choices or candidates(onnx_file, graph_precision, device, ir=is_ir(path))
    model = None if onnx_file else load_model(path, device)[0]
    blob = None
    if not onnx_file and any(c.backend != "torch" for c in choices):
        blob = onnx_bytes(copy.deepcopy(model).cpu(), info)  # type: ignore[union-attr]
    x = probe_input(info, size).repeat(batch, 1, 1, 1)
    timings, backends = [], []
    ref: torch.Tensor | None = None
    for choice in choices:
        t = Timing(choice)
        backend: Backend | None = None
        try:
            backend = build_backend(choice, path, info, model=_copy(model, choice), blob=blob, device=device)
            for _ in range(warmup):
                out = torch.sigmoid(backend(x))
        except SegdistillError as e:
            t.error = str(e)
        except Exception as e:  # a runtime that cannot run this graph: recorded, never chosen
            t.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}" if str(e).strip() else type(e).__name__
        if t.error is None:
            ref = out if ref is None else ref
            t.max_diff = float((out - ref).abs().max())
            t.agreement = float(((out > info.threshold) == (ref > info.threshold)).float().mean())
        timings.append(t)
        backends.append(backend)
    for _ in range(runs):
        for t, backend in zip(timings, backends):
            if backend is None:
                continue
            t0 = time.perf_counter()
            backend(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t.times_ms.append((time.perf_counter() - t0) * 1000)
    if keep:
        for t, backend in zip(timings, backends):
            t.backend, t.probe = backend, x
    return timings


def _copy(model: torch.nn.Module | None, choice: Choice) -> torch.nn.Module | None:
    """Torch candidates each get their own copy (channels-last converts the weights in place)."""
    if model is None or choice.backend != "torch":
        return model
    return copy.deepcopy(model)


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
    timings = measure(path, info, size, batch=batch)
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

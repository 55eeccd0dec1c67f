"""The one place that measures: parameters, FLOPs, latency on any backend, throughput, memory and
the machine's matmul peak. The backend choice (inference/choose.py), the benchmark, the search and
every report ask it.

A model's latency (:func:`model_latency`) is one figure with its conditions: batch 1, the input
size, the fastest installed fp32 backend whose outputs agree with torch's, the threads. It depends
on the architecture, not the weights, so it is measured on the architecture and kept in the run
folder's ``latency.json`` (keyed by architecture, size and threads): the search, the distillation
report, the benchmark and report.html all read the one record, and nothing is timed twice.
"""

from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .checkpoint import ModelInfo, load_model, save_model
from .errors import SegdistillError
from .fileio import cache_root, write_json
from .inference.backends import Backend, Choice, build_backend, candidates, is_ir, is_onnx, onnx_precision
from .inference.graph import check_inputs, onnx_bytes
from .models.registry import create_model, resolved_args
from .runtime import cpu_description, cpu_flags, cpu_has_native_bf16


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gflops(model: nn.Module, in_channels: int, size: int | tuple[int, int]) -> float:
    """Forward GFLOPs (multiply-adds count as 2 FLOPs) for one (in_channels, size) image; an int
    ``size`` is a square. The one FLOP counter: reports, the benchmark and the search use it."""
    model = model.eval()
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.zeros(1, in_channels, h, w, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    """The median wall time of ``runs`` calls of ``fn`` (the one timing loop every measurement uses)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_features() -> dict[str, bool]:
    """The instruction-set features that decide which precision pays on a CPU."""
    flags = cpu_flags()
    return {"avx2": "avx2" in flags, "avx512": "avx512f" in flags, "native_bf16": cpu_has_native_bf16(),
            "vnni": bool({"avx512_vnni", "avx_vnni"} & flags), "amx": "amx_tile" in flags}


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 1024, runs: int = 10) -> float:
    """This machine's measured matrix-multiply rate (GFLOP/s, median of ``runs``): the ceiling a
    convolution network's achieved rate is read against."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    times.sort()
    return 2 * n**3 / times[len(times) // 2] / 1e9


def model_gflops(info: ModelInfo, size: tuple[int, int]) -> tuple[int, float]:
    """(parameters, forward GFLOPs for one image of ``size``): counted on the architecture rebuilt
    from the file's metadata (weights do not change the count; an .onnx file has the same)."""
    model = create_model(info.arch, **info.args)
    return count_params(model), count_gflops(model, info.preprocess.in_channels, size)


def rss_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the process's peak resident memory (Linux: clear_refs 5), so each backend's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return True
    except OSError:
        return False


def throughput(timing: Timing, x: torch.Tensor, batch_sizes: list[int], runs: int = 3) -> tuple[int, float, float | None]:
    """(best batch size, images per second at it, peak memory in MB over these runs): median of
    ``runs`` per batch size."""
    backend = timing.backend
    can_reset = reset_peak_rss()
    best = (1, 0.0)
    for b in batch_sizes:
        xb = x.repeat(b, 1, 1, 1)
        backend(xb)
        rate = b / median_seconds(lambda: backend(xb), runs)  # noqa: B023 (called at once, in this iteration)
        if rate > best[1]:
            best = (b, rate)
    return best[0], best[1], rss_mb("VmHWM") if can_reset else None


FP32_TOLERANCE = 1e-3
"""Largest probability difference from the reference for an fp32 candidate (reordered float32
arithmetic differs by ~1e-6; more means a broken conversion)."""
MIN_AGREEMENT = 0.99
"""Share of pixels whose mask must match the reference's for a reduced-precision candidate (bf16,
int8); their IoU change is measured by ``segdistill benchmark --data``."""
RUNS, WARMUP = 7, 2


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
    """The built backend (``time_backends(keep=True)``), for further timing."""
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


def time_backends(path: Path, info: ModelInfo, size: tuple[int, int], choices: list[Choice] | None = None,
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


# --------------------------------------------------------------------------------------------------
# A model's latency: one figure, with its conditions, measured once per run folder.

LATENCY_JSON = "latency.json"


@dataclass
class Latency:
    """A model's latency and how it was measured."""

    ms: float
    """Median wall time of one forward pass."""
    backend: str
    """The backend that ran it (the fastest installed fp32 one agreeing with torch)."""
    precision: str
    size: tuple[int, int]
    """(h, w) of the input."""
    threads: int
    batch: int = 1

    def describe(self) -> str:
        return (f"batch {self.batch}, {self.size[0]}x{self.size[1]}, {self.backend} {self.precision}, "
                f"{self.threads} thread{'s' if self.threads != 1 else ''}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "size": list(self.size), "how": self.describe()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Latency:
        return cls(float(d["ms"]), d["backend"], d["precision"], (int(d["size"][0]), int(d["size"][1])),
                   int(d["threads"]), int(d.get("batch", 1)))


def latency_choices() -> list[Choice]:
    """The ways a model's latency may be run: every installed backend in fp32 (a lower precision
    would change the accuracy the figure stands beside)."""
    return [c for c in candidates(False) if c.precision == "fp32"]


def latency_key(info: ModelInfo, size: tuple[int, int]) -> str:
    """What a latency depends on: the architecture and its arguments, the input, the threads."""
    args = json.dumps(resolved_args(info.arch, **info.args), sort_keys=True, default=str)
    return f"{info.arch} {args} c{info.preprocess.in_channels} {size[0]}x{size[1]} b1 t{torch.get_num_threads()}"


def model_latency(info: ModelInfo, size: tuple[int, int], record: Path | None = None,
                  choices: list[Choice] | None = None, runs: int = 5) -> Latency:
    """The latency of ``info``'s architecture at ``size``: the fastest of ``choices`` (default
    :func:`latency_choices`) that agrees with torch, batch 1. Measured on the architecture with
    fresh weights (latency does not depend on them). ``record``: a run folder's latency.json; a
    figure found there (same architecture, size and threads) is returned as it is, a new one is
    added, so a run folder states one latency per model."""
    key = latency_key(info, size)
    book = _read(record)
    if key in book:
        return Latency.from_dict(book[key])
    choices = choices or latency_choices()
    # The same architecture, input and threads on this machine and these backends: measured once
    # per machine (each run folder still records its figure), so a run's end, every evaluate and the
    # test suite do not export and time the same graph again.
    machine = cache_root() / LATENCY_JSON
    machine_key = f"{key} | {cpu_description()} | torch {torch.__version__} | {','.join(c.label() for c in choices)} | {runs}"
    known = _read(machine).get(machine_key)
    lat = Latency.from_dict(known) if known is not None else _measure_latency(info, size, choices, runs)
    if record is not None:
        write_json(record, {**_read(record), key: lat.to_dict()})
    if known is None:
        try:
            write_json(machine, {**_read(machine), machine_key: lat.to_dict()})
        except OSError:
            pass  # a read-only cache: the figure is measured again next time
    return lat


def _measure_latency(info: ModelInfo, size: tuple[int, int], choices: list[Choice], runs: int) -> Latency:
    torch.manual_seed(0)
    fresh = ModelInfo(info.arch, resolved_args(info.arch, **info.args), info.preprocess, info.threshold, {})
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(Path(tmp) / "model.safetensors", create_model(info.arch, **info.args), fresh)
        best = choose(time_backends(path, fresh, size, choices, runs=runs, warmup=1))
    backend = best.choice.backend + (" channels-last" if best.choice.channels_last else "")
    return Latency(round(float(best.p50_ms), 4), backend, best.choice.precision,  # type: ignore[arg-type]
                   (int(size[0]), int(size[1])), torch.get_num_threads())


def model_cost(info: ModelInfo, size: int, record: Path | None = None) -> dict[str, Any]:
    """Parameters, GFLOPs and latency (:func:`model_latency`: the run folder's ``record`` where it
    holds one) of a model at ``size`` x ``size``, as a model card states them."""
    params, gflops = model_gflops(info, (size, size))
    lat = model_latency(info, (size, size), record)
    return {"params": params, "gflops": gflops, "cpu_ms": lat.ms, "how": lat.describe()}


def recorded_size(record: Path) -> tuple[int, int] | None:
    """The (h, w) a run folder's latency record was measured at (its figures share one size)."""
    sizes = [tuple(v["size"]) for v in _read(record).values() if isinstance(v, dict) and "size" in v]
    return (int(sizes[0][0]), int(sizes[0][1])) if sizes else None


def _read(record: Path | None) -> dict[str, Any]:
    if record is None or not record.is_file():
        return {}
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except ValueError:
        return {}  # a broken record is measured again, and rewritten


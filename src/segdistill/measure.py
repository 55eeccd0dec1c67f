"""The one place that measures: parameters, FLOPs, latency (eager CPU here; any backend through
inference/choose.py's ``measure``), throughput, memory and the machine's matmul peak. The backend
choice, the benchmark, the search and the reports ask it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .checkpoint import ModelInfo
from .inference.choose import Timing
from .models.registry import create_model
from .runtime import cpu_flags, cpu_has_native_bf16


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


@torch.inference_mode()
def cpu_latency_ms(
    model: nn.Module, in_channels: int, size: int, runs: int = 10, warmup: int = 2, channels_last: bool = True
) -> float:
    """Median wall time in ms of a batch-1 forward pass on the CPU, fp32.

    channels_last by default: it was measured to speed up CPU inference (docs/benchmarks.md).
    """
    model = model.to("cpu").eval()
    x = torch.randn(1, in_channels, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(warmup):
        model(x)
    ms = median_seconds(lambda: model(x), runs) * 1000
    model.to(memory_format=torch.contiguous_format)
    return ms


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

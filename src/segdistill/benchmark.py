"""Model cost measurements: parameters, GFLOPs and CPU latency, for reports and benchmarks."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gflops(model: nn.Module, in_channels: int, size: int) -> float:
    """Forward GFLOPs (multiply-adds count as 2 FLOPs) for one (in_channels, size, size) image."""
    model = model.eval()
    x = torch.zeros(1, in_channels, size, size, device=next(model.parameters()).device)
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
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    model.to(memory_format=torch.contiguous_format)
    return statistics.median(times) * 1000

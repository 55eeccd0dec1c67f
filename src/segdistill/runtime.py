"""Choosing device, precision, memory format and worker count from what the machine has.

Choices are made by checking the hardware, never by assumption: bf16 autocast on a CPU only where
the CPU computes bf16 natively (AVX-512 BF16 or AMX); on AVX2-only CPUs bf16 is emulated and was
measured up to 16x slower than fp32 (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import os
import platform
from functools import lru_cache

import torch

from .distributed import local_rank
from .errors import ConfigError


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but no CUDA GPU is available (use device: auto or cpu)")
    if name == "cuda":
        name = f"cuda:{local_rank()}"  # one GPU per torchrun process
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N)") from None


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_description() -> str:
    """One line naming the CPU and its vector/bf16 support, recorded with every benchmark."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = cpu_flags()
    isa = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    bf16 = "native bf16" if cpu_has_native_bf16() else "bf16 emulated"
    return f"{name}, {os.cpu_count()} cores, {isa}, {bf16}, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` (None = plain fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
        return torch.float16
    # auto
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def use_channels_last(setting: str, device: torch.device, training: bool) -> bool:
    """channels_last: on CUDA always; on the CPU for inference only (it was measured to speed up
    CPU inference but slow CPU training, docs/benchmarks.md)."""
    if setting in ("true", "false"):
        return setting == "true"
    return device.type == "cuda" or not training


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_workers(setting: int | str) -> int:
    """"auto": no worker processes on 2 cores or fewer (they would take cores from the model; data
    is cached in memory and augmentation costs far less than a training step), else up to 4."""
    if setting != "auto":
        return int(setting)
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 2 else min(4, cpus // 2)

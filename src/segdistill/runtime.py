"""Choosing device, precision, memory format and worker count from what the machine has.

Choices are made by checking the hardware, never by assumption: bf16 autocast on a CPU only where
the CPU computes bf16 natively (AVX-512 BF16 or AMX); on AVX2-only CPUs bf16 is emulated and was
measured up to 16x slower than fp32 (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import time
from functools import lru_cache

import torch

from .distributed import local_rank
from .errors import ConfigError

log = logging.getLogger("segdistill")


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


def precision_name(dtype: torch.dtype | None) -> str:
    """"fp32", "bf16" or "fp16": the name ``train.precision`` uses for an autocast dtype."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


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
    """"auto": no worker processes on 2 threads or fewer (they would take cores from the model;
    data is cached in memory and augmentation costs far less than a training step), else up to 4."""
    if setting != "auto":
        return int(setting)
    cpus = torch.get_num_threads()  # the threads this run was given (``threads``), not the machine
    return 0 if cpus <= 2 else min(4, cpus // 2)


# --------------------------------------------------------------------------------------------------
# Threads. Measured (docs/training.md, "Threads"): beside a process that keeps every core busy, a
# tiny training run with 2 OpenMP threads on 2 cores had epochs of 1.5 s and, in each run, some of
# 53 s (threads waiting at OpenMP barriers for a partner the scheduler had descheduled), while one
# thread ran every epoch in 0.5 s. So the default counts the cores this process may use and leaves
# out those other processes keep busy, measured at the start and again after a stalled epoch.


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (containers),
    divided among the torchrun processes of this node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota + 0.5)))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(per_node, 1))


def _cgroup_cpu_quota() -> float | None:
    """CPUs allowed by cgroup v2 ``cpu.max`` (or v1 ``cfs_quota_us``); None without a quota."""
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="utf-8") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", encoding="utf-8") as f:
            quota_us = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us", encoding="utf-8") as f:
            period_us = int(f.read())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def _cpu_busy_ticks(cpus: set[int] | None) -> tuple[int, int] | None:
    """(busy, total) clock ticks since boot, summed over ``cpus`` (all CPUs when None)."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            lines = [ln.split() for ln in f if ln.startswith("cpu")]
    except OSError:
        return None
    busy = total = 0
    for fields in lines:
        name = fields[0]
        if (cpus is None and name != "cpu") or (cpus is not None and (name == "cpu" or int(name[3:]) not in cpus)):
            continue
        ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None


def busy_cores_elsewhere(seconds: float = 0.3) -> float:
    """How many of this process's cores other processes keep busy, sampled over ``seconds``."""
    try:
        cpus: set[int] | None = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        cpus = None
    before, own_before = _cpu_busy_ticks(cpus), sum(os.times()[:2])
    time.sleep(seconds)
    after, own_after = _cpu_busy_ticks(cpus), sum(os.times()[:2])
    if before is None or after is None or after[1] <= before[1]:
        return 0.0
    n = len(cpus) if cpus is not None else (os.cpu_count() or 1)
    share = (after[0] - before[0]) / (after[1] - before[1])  # busy fraction of those CPUs
    own = (own_after - own_before) / seconds
    return max(0.0, share * n - own)


def auto_threads(measure: bool = True) -> tuple[int, str]:
    """(threads, why) for ``threads: auto``: OMP_NUM_THREADS when the user set it, else the
    available cores less those other processes keep busy (at least 1)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        return int(env), "OMP_NUM_THREADS"
    cores = available_cores()
    if not measure or cores == 1:
        return cores, f"{cores} available cores"
    busy = busy_cores_elsewhere()
    threads = max(1, min(cores, round(cores - busy)))
    why = f"{cores} available cores" + (f", {busy:.1f} busy with other processes" if threads < cores else "")
    return threads, why


def set_threads(setting: int | str = "auto") -> int:
    """Apply ``threads`` (an int, or "auto") to torch (intra-op OpenMP/MKL/oneDNN threads); data
    loading follows via :func:`resolve_workers`. Returns the number used."""
    if setting == "auto":
        n, why = auto_threads()
    else:
        n, why = int(setting), "set"
        if n < 1:
            raise ConfigError(f"threads must be at least 1 (or auto), got {n}")
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    log.debug("threads: %d (%s)", n, why)
    return n

"""Distributed training only through torchrun: read RANK/WORLD_SIZE/LOCAL_RANK, nothing else.

Single-process runs (the usual case) go through the same functions, which then do nothing.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Only this process writes files and prints progress."""
    return rank() == 0


def init_distributed(device: torch.device) -> bool:
    """Join the process group torchrun set up; returns True when running distributed."""
    if world_size() <= 1:
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return True


def broadcast_floats(values: list[float], device: torch.device) -> list[float]:
    """Rank 0's values on every rank (validation results drive LR, best model and early stopping,
    so every rank must act on the same numbers)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


def all_ranks(flag: bool, device: torch.device) -> bool:
    """True only when ``flag`` is true on every rank. A check that fails on one rank (a non-finite
    loss) must stop all of them together: a rank that stops alone leaves the others waiting in the
    next gradient all-reduce until the backend times out."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

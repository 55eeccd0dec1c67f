"""Distributed training only through torchrun: read RANK/WORLD_SIZE/LOCAL_RANK, nothing else.

Single-process runs (the usual case) go through the same functions, which then do nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import SegdistillError

T = TypeVar("T")


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


def is_distributed() -> bool:
    """True inside a process group (torchrun with more than one process)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard(n: int) -> range:
    """This rank's share of ``n`` items: every world_size-th from its rank, so the shares are
    disjoint, cover all items once, and no item is padded in twice (a padded duplicate would count
    twice in metrics summed over ranks)."""
    if not is_distributed():
        return range(n)
    return range(dist.get_rank(), n, dist.get_world_size())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` in one process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sync_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP keeps the weights equal,
    but each rank's last training forward updates its own running statistics from its own crops: a
    sharded validation must score, on every rank, the model that rank 0 saves."""
    if not is_distributed():
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


def decided_by_main_process(decide: Callable[[], T]) -> T:
    """``decide()`` run on rank 0 only, its result (picklable) on every rank. For a choice that
    depends on the disk and must be taken once (an output folder named NAME-2 when NAME holds
    files: each rank looking for itself could see rank 0's new files and pick NAME-3). When it
    raises on rank 0, the other ranks raise too, with its message, instead of waiting forever."""
    if not is_distributed():
        return decide()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = (True, decide())
        except BaseException as e:
            box[0] = (False, str(e))
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise SegdistillError(f"rank 0: {value}")
    return value


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
        dist.destroy_process_group()  # Gloo's threads may outlive it once DDP was used: see cli._leave


@contextmanager
def process_group(device: torch.device) -> Iterator[bool]:
    """Join torchrun's process group for the ``with`` block (yields whether distributed) and leave
    it at the end; inside a group that is already open (a distillation's labels-only twin) it is
    kept for its owner. On success every rank waits for the others before leaving: a rank that tore
    down its group and exited while rank 0 still wrote the report was seen to abort in Gloo's
    teardown ("terminate called without an active exception", SIGABRT, 2 runs in 7 on one CPU).
    So a job holds the group to its last words (report, summary), not only its training.
    After an error there is no wait: the other ranks may be stuck in a collective, and torchrun
    stops them when this one exits."""
    fresh = not is_distributed()
    distributed = init_distributed(device)
    try:
        yield distributed
    except BaseException:
        if fresh:
            cleanup()
        raise
    if fresh and distributed:
        dist.barrier()
        cleanup()

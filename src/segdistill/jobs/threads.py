"""Threads, set once where a job starts; and what a stalled epoch does (the clock reports it, the
job decides)."""

from __future__ import annotations

import logging

import torch

from ..engine.clock import StallHandler
from ..runtime import auto_threads, set_threads

log = logging.getLogger("segdistill")


def start_threads(setting: int | str) -> StallHandler | None:
    """Apply ``threads`` (a number, or "auto") for the whole job; returns what the job does when an
    epoch stalls: with "auto", go on with the cores other processes leave free; a number the user
    chose stays."""
    set_threads(setting)
    return fewer_threads_when_busy if setting == "auto" else None


def fewer_threads_when_busy(epoch: int, seconds: float, usual: float) -> None:
    """An epoch took several times the usual: other processes took cores. Re-measure the free cores
    and go on with fewer threads (oversubscribed threads slow every step far more than fewer do)."""
    if torch.get_num_threads() == 1:
        return
    threads, why = auto_threads()
    if threads < torch.get_num_threads():
        log.warning("epoch %d took %.1fs, %.0fx the usual %.1fs: other processes are using the CPU (%s); "
                    "training goes on with %d thread(s) (set threads to choose)", epoch, seconds,
                    seconds / usual, usual, why, threads)
        torch.set_num_threads(threads)

"""How long a run takes: epochs fitted to a time budget, the expected duration and an ETA, and a
watchdog for epochs stalled by other processes on the CPU.

Training and distillation both end each epoch with :meth:`RunClock.end_epoch`. The plan follows
measured epochs, never a guess about the machine: a CPU 5x faster simply gets 5x the epochs.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

log = logging.getLogger("segdistill")

StallHandler = Callable[[int, float, float], None]
"""What a job does when an epoch stalls: called with (epoch, seconds, the usual seconds)."""

_now = time.monotonic  # the clock, replaceable by a fake one in tests

STALL_FACTOR = 3.0
"""An epoch this many times slower than the usual one counts as stalled (threads re-measured)."""


def budget_margin(budget_s: float) -> float:
    """Seconds kept free at the end of a budget: start-up before the clock, saving, exiting."""
    return 0.02 * budget_s + 5.0


def epochs_that_fit(budget_s: float, elapsed_s: float, done: int, epoch_s: float, final_s: float) -> int:
    """Total epochs (``done`` of them finished, ``elapsed_s`` spent) that fit in ``budget_s`` at
    ``epoch_s`` each, keeping ``final_s`` for the final evaluation and a margin; at least ``done``."""
    left = budget_s - budget_margin(budget_s) - elapsed_s - final_s
    return done + max(0, int(left // max(epoch_s, 1e-9)))


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class RunClock:
    """Epoch planning for one run.

    Args:
        epochs: planned epochs (``train.epochs``, or what the budget fits once measured).
        budget_s: the time budget in seconds (``train.time_budget`` minutes), or None.
        started: ``time.monotonic()`` when the run started; the budget counts from there.
        final_views: forward passes per image of the final evaluation (test-time views), reserved
            from the budget at the measured validation time.
        on_stall: what the job does when an epoch stalls (takes STALL_FACTOR times the usual):
            called with (epoch, seconds, usual seconds); None: nothing (the clock only measures).
    """

    epochs: int
    budget_s: float | None = None
    started: float = field(default_factory=lambda: _now())
    final_views: int = 1
    on_stall: StallHandler | None = None
    epoch_times: list[float] = field(default_factory=list)
    """Wall time from the end of one epoch to the end of the next: the epoch, its validation and
    the previous epoch's saving and plotting, i.e. what each further epoch really costs."""
    val_times: list[float] = field(default_factory=list)
    _mark: float = field(default_factory=lambda: _now())

    def typical_epoch(self) -> float:
        """Median epoch time, leaving out the first of several (it also decodes and caches the data),
        or of the last three when that is longer (a machine that has slowed down). Medians, so that
        one stalled epoch (another program's burst) does not cut the plan for good: on a 30-minute
        run one 200 s epoch among 40 s ones once cut the plan from 44 epochs to 22."""
        t = self.epoch_times[1:] if len(self.epoch_times) > 1 else self.epoch_times
        return max(statistics.median(t), statistics.median(t[-3:]))

    def final_s(self) -> float:
        return self.final_views * (self.val_times[-1] if self.val_times else 0.0)

    def end_epoch(self, epoch: int, val_seconds: float | None, now: float | None = None) -> None:
        """Record a finished epoch (at ``now`` on this clock; default: read it) and refit ``epochs``
        to the budget (the caller then stretches its learning-rate schedule to match)."""
        now = _now() if now is None else now
        seconds, self._mark = now - self._mark, now
        self.epoch_times.append(seconds)
        if val_seconds is not None:
            self.val_times.append(val_seconds)
        self._watch_threads(epoch, seconds)
        before = self.epochs
        if self.budget_s is not None:
            elapsed = now - self.started
            fit = max(epoch, epochs_that_fit(self.budget_s, elapsed, epoch, self.typical_epoch(), self.final_s()))
            # The first two epochs set the plan (the second is the first without data decoding).
            # Later, a plan that no longer fits is shortened at once (a machine that slows down
            # still ends in time); one that clearly undershoots grows while the learning rate is
            # still high (the first half), where stretching the schedule changes little.
            if len(self.epoch_times) <= 2 or fit < self.epochs or (fit > 1.05 * self.epochs and 2 * epoch <= self.epochs):
                self.epochs = fit
            if len(self.epoch_times) == 1 or self.epochs != before:
                final = f" (+{self.final_s():.1f}s final evaluation)" if self.final_s() >= 0.05 else ""
                # The first plans are news; later trims (a slower stretch) are detail.
                log.log(logging.INFO if len(self.epoch_times) <= 2 else logging.DEBUG,
                        "time budget %s: epochs take about %.1fs here%s -> %d epochs fit; the learning-rate "
                        "schedule spans them", format_duration(self.budget_s), self.typical_epoch(), final, self.epochs)
            if self.epochs == epoch == 1:
                log.warning("the time budget of %s leaves no room for a second epoch of %.1fs: a smaller model, "
                            "train.input_size or train.samples_per_epoch would", format_duration(self.budget_s), seconds)
        if len(self.epoch_times) == 1:
            log.info("expected duration: about %s for %d epochs (finishing around %s)",
                     format_duration(self.remaining_s(epoch) + seconds), self.epochs,
                     (datetime.now() + timedelta(seconds=self.remaining_s(epoch))).strftime("%H:%M"))

    def remaining_s(self, epoch: int) -> float:
        return (self.epochs - epoch) * self.typical_epoch() + self.final_s()

    def eta(self, epoch: int) -> str:
        return format_duration(self.remaining_s(epoch))

    def _watch_threads(self, epoch: int, seconds: float) -> None:
        earlier = self.epoch_times[1:-1]
        if self.on_stall is None or len(earlier) < 2:
            return
        usual = statistics.median(earlier)
        if seconds > STALL_FACTOR * usual:
            self.on_stall(epoch, seconds, usual)

"""Fail points: kill this process at a named moment, for crash tests that do not depend on speed.

A crash test that kills a run after a wall-clock delay tests different moments on a fast and a slow
CPU (on a CPU 5x faster the run may even end before the kill). Instead, the test names the moment:
``SEGDISTILL_FAILPOINT="train_step:7"`` makes the process SIGKILL itself at the 7th training step
it runs, exactly as an outside ``kill -9`` at that moment would, on any machine. Several points may
be given, comma-separated; the first reached fires. ``NAME:N@R`` fires only in the process of rank
R under torchrun (``"train_step:5@1"``: rank 1 dies at its 5th step, the others run on), since
torchrun gives every rank the same environment.

Points (each counted from 1 in this process):
- ``train_step``: after an optimiser step (mid-epoch);
- ``val_step``: after a validation image (mid-validation);
- ``write``: a file's temporary copy is complete but not yet renamed into place (mid-write);
- ``write_begin``: a file's temporary copy has just been created, still empty.

Unset (the normal case), a fail point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "SEGDISTILL_FAILPOINT"
POINTS = ("train_step", "val_step", "write", "write_begin")

_targets: dict[str, int] | None = None
_hits: dict[str, int] = {}


def parse(spec: str, rank: int = 0) -> dict[str, int]:
    """``"name:N,name:M@R"`` -> {name: N, ...} for the process of ``rank`` (a point with ``@R`` only
    when R is ``rank``); a bad spec is an error, never silently ignored."""
    targets: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, at, only = part.partition("@")
        name, _, count = point.partition(":")
        if name not in POINTS or not count.isdigit() or int(count) < 1 or (at and not only.isdigit()):
            raise ValueError(f"{ENV}: '{part}' is not NAME:N or NAME:N@RANK with NAME one of {', '.join(POINTS)} "
                             "and N >= 1")
        if not at or int(only) == rank:
            targets[name] = int(count)
    return targets


def failpoint(name: str) -> None:
    """Count a hit of ``name``; SIGKILL this process when the count reaches the configured one."""
    global _targets
    if _targets is None:
        _targets = parse(os.environ.get(ENV, ""), int(os.environ.get("RANK", "0")))
    if name not in _targets:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == _targets[name]:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))  # SIGTERM: Windows

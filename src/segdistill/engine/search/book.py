"""RUN/search.json, the search's record: what it measured and decided, and the seconds it spent;
``distill --resume`` goes on from it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ...errors import SegdistillError
from ...fileio import read_json, write_json
from .. import clock
from .rules import Score, cost_ratio


class Book:
    """RUN/search.json: what the search measured and decided, saved atomically after every step;
    ``spent`` counts the seconds of every session (engine.clock's clock, replaceable in tests)."""

    def __init__(self, run_dir: Path, data: dict[str, Any]) -> None:
        self.path, self.data = run_dir / "search.json", data
        self._base, self._t0 = float(data.get("spent_s", 0.0)), clock._now()

    @classmethod
    def open(cls, run_dir: Path, fresh: bool) -> Book:
        path = run_dir / "search.json"
        if fresh:  # --overwrite onto an earlier run: nothing of its search may pass for this one's
            for name in ("search.json", "search.md", "search_pareto.png"):
                (run_dir / name).unlink(missing_ok=True)
            shutil.rmtree(run_dir / "search", ignore_errors=True)
        data = read_json(path) or {"runs": []}
        if not isinstance(data.get("runs"), list):
            raise SegdistillError(f"{path}: not a search record (no list of runs); delete it to start the search afresh")
        return cls(run_dir, data)

    @property
    def spent(self) -> float:
        return self._base + clock._now() - self._t0

    def save(self) -> None:
        self.data["spent_s"] = round(self.spent, 3)
        write_json(self.path, self.data)

    def runs(self, rung: int) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in self.data["runs"] if r["rung"] == rung}

    def epoch_s(self, name: str) -> float:
        """Seconds an epoch of ``name`` took (its latest run); before it ran, the configured
        student's epoch scaled by :func:`cost_ratio` (a student 10x slower to run is about 10x slower
        to train; one the size of the first has an epoch as long)."""
        mine = [r["epoch_s"] for r in self.data["runs"] if r["name"] == name]
        if mine:
            return float(mine[-1])
        return self._predicted(name) * max([1.0] + [r["epoch_s"] / self._predicted(r["name"]) for r in self.data["runs"]])

    def epoch_only_s(self, name: str) -> float:
        """An epoch of ``name`` without its run's fixed cost (a long run's epochs), once it ran."""
        run = [r for r in self.data["runs"] if r["name"] == name][-1]
        return float(run.get("epoch_only_s", run["epoch_s"]))

    def _predicted(self, name: str) -> float:
        """An epoch of ``name`` from the configured student's and the quick timings (the estimate
        above, before it learns from the runs how far off such estimates were: the worst miss
        so far scales every estimate up, so a budget is kept by overestimates)."""
        ref = self.data["reference"]
        t_ref = next(r["epoch_s"] for r in self.data["runs"] if r["name"] == ref)
        grid = {g["name"]: g for g in self.data["grid"]}
        return t_ref * cost_ratio(grid[name]["latency_ms"], grid[ref]["latency_ms"])

    def score(self, run: dict[str, Any]) -> Score:
        return Score(run["name"], float(run["iou"]), float(self.data["latency"][run["name"]]["latency_ms"]))

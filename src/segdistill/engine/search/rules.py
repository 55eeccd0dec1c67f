"""The search's pure rules, tested on their own: the objective, the candidate grid, the halving
schedule and its cost, the Pareto front, promotion, the winner and the default budget. No I/O, no
model runs: orchestration (``engine/search/__init__.py``) measures and distils, these decide."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from ...config import parse_search

BASES = (2, 3, 4, 6, 8, 12, 16, 24, 32)
DEPTHS = (2, 3, 4, 5)
SHRINK = (2, 1000)
"""Candidates have between 2x and 1000x fewer parameters than the teacher."""
MAX_LATENCY_SHARE = 0.5
"""Candidates run at most this share of the teacher's latency (a quick torch timing): a student
slower than half its teacher is no reason to distil (the configured student always stays)."""
MIN_GRID = 8
"""... but never fewer than this many (the fastest) are left to choose from."""
MAX_CANDIDATES = 16
MIN_RUNG_EPOCHS = 2
COPIED = ("norm", "up", "act", "dropout")
"""Arguments every candidate takes from the configured student."""


@dataclass(frozen=True)
class Objective:
    """``keep``: the fastest student keeping ``value`` of the teacher's validation IoU; ``latency``:
    the most accurate student at most ``value`` ms slow."""

    kind: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Objective:
        return cls(*parse_search(text))

    def __str__(self) -> str:
        return f"keep={self.value:g}" if self.kind == "keep" else f"latency={self.value:g}ms"

    def feasible(self, latency_ms: float) -> bool:
        return self.kind == "keep" or latency_ms <= self.value


@dataclass(frozen=True)
class Score:
    """A candidate's place on the accuracy/latency plane."""

    name: str
    iou: float
    latency_ms: float


def dominates(a: Score, b: Score) -> bool:
    """``a`` is at least as accurate and as fast as ``b``, and better in one of the two."""
    return a.iou >= b.iou and a.latency_ms <= b.latency_ms and (a.iou > b.iou or a.latency_ms < b.latency_ms)


def pareto_front(scores: list[Score]) -> list[Score]:
    """The scores no other score dominates, fastest first."""
    return sorted((s for s in scores if not any(dominates(o, s) for o in scores)), key=lambda s: (s.latency_ms, s.name))


def pareto_layers(scores: list[Score]) -> list[list[Score]]:
    """The front, then the front of the rest, and so on (non-dominated sorting)."""
    layers, rest = [], list(scores)
    while rest:
        front = pareto_front(rest)
        layers.append(front)
        rest = [s for s in rest if s not in front]
    return layers


def promote(scores: list[Score], n: int, objective: Objective) -> list[str]:
    """The ``n`` candidates of a rung that go on to the next one. ``latency``: the most accurate of
    those under the latency (none: the fastest). ``keep``: whole Pareto fronts first (a fast student still learning is
    not dropped for a slow accurate one); a front that does not fit goes in the objective's order:
    the fastest within the kept share of the rung's best IoU, then the most accurate."""
    if objective.kind == "latency":
        ok = sorted((s for s in scores if objective.feasible(s.latency_ms)), key=lambda s: (-s.iou, s.latency_ms, s.name))
        return [s.name for s in (ok or sorted(scores, key=lambda s: (s.latency_ms, s.name)))[:n]]
    target = objective.value * max((s.iou for s in scores), default=0.0)
    chosen: list[Score] = []
    for layer in pareto_layers(scores):
        if len(chosen) + len(layer) > n:
            layer = sorted(layer, key=lambda s: (s.iou < target, s.latency_ms if s.iou >= target else -s.iou, s.name))
        chosen += layer[: n - len(chosen)]
        if len(chosen) >= n:
            break
    return [s.name for s in chosen]


@dataclass(frozen=True)
class Pick:
    name: str
    meets: bool
    """False: no score met the objective, and ``name`` is the closest (most accurate, or fastest)."""


def pick_winner(scores: list[Score], objective: Objective, reference_iou: float) -> Pick:
    """The winner among ``scores``, always on their Pareto front. ``keep``: the fastest whose IoU is
    at least ``objective.value * reference_iou``, else the most accurate. ``latency``: the most
    accurate under the latency, else the fastest."""
    if objective.kind == "latency":
        ok = [s for s in scores if objective.feasible(s.latency_ms)]
        if ok:
            return Pick(max(ok, key=lambda s: (s.iou, -s.latency_ms)).name, True)
        return Pick(min(scores, key=lambda s: (s.latency_ms, -s.iou)).name, False)
    ok = [s for s in pareto_front(scores) if s.iou >= objective.value * reference_iou]
    if ok:
        return Pick(min(ok, key=lambda s: (s.latency_ms, -s.iou)).name, True)
    return Pick(max(scores, key=lambda s: (s.iou, -s.latency_ms)).name, False)


def candidate_name(args: dict[str, Any]) -> str:
    """``b4d3``; ``-us`` with the space-to-depth stem (``-us4`` by 4), ``-dw`` with depthwise-separable
    blocks; an encoder student ``lite0-d4-x50`` (encoder, depth, input scale in percent)."""
    if "encoder" in args:
        short = str(args["encoder"]).replace("efficientnet_", "")
        return f"{short}-d{args.get('depth', 5)}-x{round(100 * float(args.get('input_scale', 1.0)))}"
    stem = str(args.get("stem", "none"))
    return (f"b{args.get('base', 32)}d{args.get('depth', 4)}" + {"none": "", "unshuffle": "-us"}.get(stem, "-us" + stem[9:])
            + ("-dw" if args.get("block", "conv") != "conv" else ""))


def candidate_arch(args: dict[str, Any]) -> str:
    """The registered model a candidate's arguments are for."""
    return "encoder_unet" if "encoder" in args else "unet"


def design_name(args: dict[str, Any]) -> str:
    """The block/stem design of ``args``: plain, us, us4, dw or us-dw (as in :func:`candidate_name`),
    or the encoder's name."""
    if "encoder" in args:
        return str(args["encoder"]).replace("efficientnet_", "")
    return candidate_name({**args, "base": 0, "depth": 0})[4:].lstrip("-") or "plain"


def designs(signature: Collection[str]) -> list[dict[str, str]]:
    """The block/stem designs the ``unet`` family offers (``signature``: its argument names)."""
    out: list[dict[str, str]] = [{}]
    if "stem" in signature:
        # By 2 and by 4: the smallest students are fastest at half resolution, wider ones at a quarter
        # (docs/benchmarks.md, "Deployment and speed").
        out += [{"stem": "unshuffle"}, {"stem": "unshuffle4"}]
    if "block" in signature:
        out.append({"block": "dwsep"})
    if "stem" in signature and "block" in signature:
        out.append({"stem": "unshuffle", "block": "dwsep"})
    return out


def candidate_grid(reference: dict[str, Any], signature: Collection[str]) -> list[dict[str, Any]]:
    """The ``unet`` arguments to consider: ``reference`` (the configured student) first, then every
    width x depth x design (designs other than plain from width 4). Students of 2-3 channels at the
    top level get ``leaky_relu`` (a ReLU one collapsed to background for good, docs/distillation.md)."""
    common = {k: reference[k] for k in COPIED if k in reference}
    grid, names = [dict(reference)], {candidate_name(reference)}
    for design in designs(signature):
        for depth in DEPTHS:
            for base in BASES:
                if design and base < 4:
                    continue
                args = {**common, "base": base, "depth": depth, **design}
                if base <= 3 and args.get("act", "relu") == "relu":
                    args["act"] = "leaky_relu"
                if candidate_name(args) not in names:
                    names.add(candidate_name(args))
                    grid.append(args)
    return grid


ENCODER_DEPTHS = (3, 4, 5)
ENCODER_SCALES = (0.5, 0.75)
ENCODER_DECODER = (48, 24, 16, 12, 8)
"""The encoder students' decoder widths at strides 16 .. 1 (a cut encoder takes the shallow end)."""


def encoder_grid(encoder: str) -> list[dict[str, Any]]:
    """Pretrained students for a teacher on a pretrained encoder (photos): ``encoder`` cut at each
    depth, at half and three-quarter resolution, under the thin depthwise-separable decoder. Their
    ImageNet start is what keeps a small student accurate on photos (docs/distillation.md); their
    depth and scale set the speed."""
    return [{"encoder": encoder, "depth": depth, "decoder": list(ENCODER_DECODER[5 - depth:]), "block": "dwsep",
             "input_scale": scale} for depth in ENCODER_DEPTHS for scale in ENCODER_SCALES]


def spread(points: dict[str, tuple[float, ...]], n: int, first: list[str]) -> list[str]:
    """``n`` names chosen far apart (farthest-point order from ``first``): a few candidates that
    still cover the whole grid, from the smallest and fastest to the largest."""
    chosen = [f for f in first if f in points][:n]
    while len(chosen) < min(n, len(points)):
        rest = [p for p in points if p not in chosen]
        chosen.append(max(rest, key=lambda p: min(math.dist(points[p], points[c]) for c in chosen) if chosen else 0.0))
    return chosen


@dataclass(frozen=True)
class Rung:
    candidates: int
    epochs: int


def first_epochs(full_epochs: int) -> int:
    """Epochs of the first rung: a few (2), fewer for very short runs."""
    return max(1, min(MIN_RUNG_EPOCHS, full_epochs // 4))


def halving_schedule(n: int, full_epochs: int) -> list[Rung]:
    """Rungs for ``n`` candidates: all of them, then half (rounded up) for twice the epochs, ...,
    down to two; no rung longer than half the full distillation the winner gets after them."""
    e0, rungs, k = first_epochs(full_epochs), [], 0
    while True:
        rungs.append(Rung(n, min(e0 * 2**k, max(e0, full_epochs // 2))))
        if n <= 2:
            return rungs
        n, k = math.ceil(n / 2), k + 1


def schedule_cost(rungs: list[Rung]) -> int:
    """Candidate-epochs the rungs take."""
    return sum(r.candidates * r.epochs for r in rungs)


def fast_enough(grid: list[dict[str, Any]], teacher_ms: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, left out) of ``grid`` (entries with ``latency_ms``): those at most
    :data:`MAX_LATENCY_SHARE` of the teacher's latency, or the :data:`MIN_GRID` fastest when fewer
    are (a small teacher is bound by per-layer overhead like its students); in the grid's order."""
    limit = MAX_LATENCY_SHARE * teacher_ms
    fastest = {g["name"] for g in sorted(grid, key=lambda g: g["latency_ms"])[:MIN_GRID]}
    keep = [g for g in grid if g["latency_ms"] <= limit or g["name"] in fastest]
    if sum(g["latency_ms"] <= limit for g in grid) >= MIN_GRID:
        keep = [g for g in grid if g["latency_ms"] <= limit]
    return keep, [g for g in grid if g not in keep]


def favour(preferred: list[str], others: list[str], head: int, every: int = 3) -> list[str]:
    """``preferred`` and ``others`` merged: the first ``head`` of ``preferred`` (the configured
    student), then two of ``preferred`` for each one of ``others`` (every ``every``-th place), each
    in its own order; what is left of either at the end."""
    out, p, o = list(preferred[:head]), list(preferred[head:]), list(others)
    while p or o:
        take_other = (len(out) - head) % every == every - 1
        out.append((o if (take_other and o) or not p else p).pop(0))
    return out


def cost_ratio(latency_ms: float, reference_ms: float) -> float:
    """How much longer an epoch of a candidate is expected to take than one of the configured
    student, from their quick latencies: proportional above it, never below half (an epoch also
    loads, augments and validates, whatever the model)."""
    return max(0.5, latency_ms / reference_ms)


def weighted_cost(ratios: list[float], full_epochs: int) -> float:
    """Epochs (of the configured student) the rungs of candidates with these cost ratios take, in
    the order the search would promote them not known in advance: rung 1 runs every one, each later
    rung its share of them at their mean ratio."""
    rungs = halving_schedule(len(ratios), full_epochs)
    mean = sum(ratios) / len(ratios)
    return rungs[0].epochs * sum(ratios) + sum(r.candidates * r.epochs * mean for r in rungs[1:])


BUDGET_FACTOR = 1.8
"""The default budget in full distillations: about twice one, less the error of estimating an
epoch from the first ones (they run slower than the rest), so that the search ends within twice."""


def default_budget_s(full_epochs: int, epoch_s: float, setup_s: float) -> float:
    """The default budget: :data:`BUDGET_FACTOR` full distillations (``full_epochs`` of
    ``epoch_s``), the search's one-time setup (``setup_s``: filling the target cache, timing the
    grid) included, as a distillation's own is in its time; never less than the setup and 4 epochs."""
    return max(BUDGET_FACTOR * full_epochs * epoch_s, setup_s + 4 * epoch_s)

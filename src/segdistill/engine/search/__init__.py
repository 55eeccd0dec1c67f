"""The student search (``distill --search``), in two parts: ``rules.py``, the pure successive-halving
and budget rules (objective, grid, schedule, Pareto front, promotion, winner), tested on their own;
``orchestrate.py``, which measures the candidates, distils them through
``engine.distill.distill_student`` and records every step in RUN/search.json.

This package face holds the rules only, so that reading them loads no training code.
"""

from .rules import (  # noqa: F401  (re-exported: the rules are the package's face)
    BASES,
    BUDGET_FACTOR,
    COPIED,
    DEPTHS,
    ENCODER_DECODER,
    ENCODER_DEPTHS,
    ENCODER_SCALES,
    MAX_CANDIDATES,
    MAX_LATENCY_SHARE,
    MIN_GRID,
    MIN_RUNG_EPOCHS,
    SHRINK,
    Objective,
    Pick,
    Rung,
    Score,
    candidate_arch,
    candidate_grid,
    candidate_name,
    cost_ratio,
    default_budget_s,
    design_name,
    designs,
    dominates,
    encoder_grid,
    fast_enough,
    favour,
    first_epochs,
    halving_schedule,
    pareto_front,
    pareto_layers,
    pick_winner,
    promote,
    schedule_cost,
    spread,
    weighted_cost,
)

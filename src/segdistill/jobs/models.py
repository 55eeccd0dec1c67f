"""``segdistill models``: the registered models, their width, depth and size (from the catalogue,
so that the answer comes without importing torch)."""

from __future__ import annotations

from ..catalogue import CATALOGUE
from ..reports.tables import format_table


def models() -> None:
    """Print a table of the registered models (parameters counted on a 1-channel input)."""
    rows = [{"model": m.name, "width (base)": "" if m.base is None else m.base, "depth": "" if m.depth is None else m.depth,
             "params (1 channel)": f"{m.params / 1e6:.3f}M", "about": m.about} for m in CATALOGUE]
    print(format_table(rows))

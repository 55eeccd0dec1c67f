"""``segdistill models``: the registered models, their width, depth and size."""

from __future__ import annotations

from ..models import create_model, list_models, model_description, resolved_args
from ..report import format_table


def models() -> None:
    """Print a table of the registered models (parameters counted on a 1-channel input)."""
    rows = []
    for name in list_models():
        m = create_model(name)
        args = resolved_args(name)
        rows.append({"model": name, "width (base)": args.get("base", ""), "depth": args.get("depth", ""),
                     "params (1 channel)": f"{sum(p.numel() for p in m.parameters()) / 1e6:.3f}M",
                     "about": model_description(name)})
    print(format_table(rows))

"""Text tables, CSV history and training-curve plots."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from .fileio import atomic_path, write_text


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None, title: str | None = None) -> str:
    """A plain-text table; floats with 4 significant decimals."""
    if not rows:
        return ""
    columns = columns or list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [] if title is None else [title]
    out += [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def _numeric(s: str) -> bool:
    try:
        float(s.replace(",", "").rstrip("x%"))
        return True
    except ValueError:
        return False


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buf.getvalue())


def plot_curves(path: str | Path, history: list[dict[str, Any]], title: str = "") -> None:
    """Loss (train/val) and validation IoU/Dice per epoch, side by side, into ``path`` (PNG)."""
    if not history:
        return
    import matplotlib.pyplot as plt

    fig = curves_figure(history, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def curves_figure(history: list[dict[str, Any]], title: str = "") -> Any:
    """The matplotlib figure of :func:`plot_curves` (close it with ``plt.close``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    # Markers: one epoch is a point, which a line alone does not draw.
    style = {"marker": "o", "markersize": 4} if len(epochs) <= 30 else {}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train loss", **style)
    if any(h.get("val_loss") not in (None, "") for h in history):
        ax1.plot(epochs, [_f(h.get("val_loss")) for h in history], label="val loss", **style)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    for key, label in (("val_iou", "val IoU (Jaccard)"), ("val_dice", "val Dice")):
        ax2.plot(epochs, [_f(h.get(key)) for h in history], label=label, **style)
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.legend()
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")

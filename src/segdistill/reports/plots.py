"""Figures (matplotlib, Agg): training curves, threshold curves, the IoU-latency trade-off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..fileio import atomic_path


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
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    draw_loss(ax1, history)
    draw_scores(ax2, history)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def curve_panels(history: list[dict[str, Any]]) -> list[Any]:
    """The two plots of :func:`curves_figure` as figures of their own (report.html sets them side
    by side on a wide screen, one above the other on a phone)."""
    plt = pyplot()
    figs = []
    for draw in (draw_loss, draw_scores):
        fig, ax = plt.subplots(figsize=(4.2, 3.1))
        draw(ax, history)
        fig.tight_layout()
        figs.append(fig)
    return figs


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(history: list[dict[str, Any]]) -> dict[str, Any]:
    # Markers: one epoch is a point, which a line alone does not draw.
    return {"marker": "o", "markersize": 4} if len(history) <= 30 else {}


def _epoch_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_xlabel("epoch")
    ax.legend()
    ax.grid(alpha=0.3)


def draw_loss(ax: Any, history: list[dict[str, Any]]) -> None:
    """Train and validation loss per epoch."""
    epochs, style = [h["epoch"] for h in history], _style(history)
    ax.plot(epochs, [_f(h["train_loss"]) for h in history], label="train loss", **style)
    if any(h.get("val_loss") not in (None, "") for h in history):
        ax.plot(epochs, [_f(h.get("val_loss")) for h in history], label="val loss", **style)
    ax.set_ylabel("loss")
    _epoch_axis(ax)


def draw_scores(ax: Any, history: list[dict[str, Any]]) -> None:
    """Validation IoU and Dice per epoch."""
    epochs, style = [h["epoch"] for h in history], _style(history)
    for key, label in (("val_iou", "val IoU (Jaccard)"), ("val_dice", "val Dice")):
        ax.plot(epochs, [_f(h.get(key)) for h in history], label=label, **style)
    ax.set_ylim(0, 1)
    _epoch_axis(ax)


def threshold_panels(thresholds: list[float], iou: list[float], precision: list[float], recall: list[float],
                     current: float, best: float) -> list[Any]:
    """Two figures from a threshold sweep: the precision-recall curve, and IoU (with precision and
    recall) against the threshold; ``current`` (the model's threshold) and ``best`` (the highest
    IoU) marked on both."""
    plt = pyplot()
    at = {name: min(range(len(thresholds)), key=lambda i: abs(thresholds[i] - t)) for name, t in
          (("current", current), ("best", best))}
    pr, ax = plt.subplots(figsize=(4.2, 3.1))
    ax.plot(recall, precision, color="C0")
    ax.plot(recall[at["current"]], precision[at["current"]], "o", color="C1", label=f"threshold {current:g}")
    ax.plot(recall[at["best"]], precision[at["best"]], "*", color="C2", markersize=12, label=f"best IoU at {best:g}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="precision-recall")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    pr.tight_layout()
    curve, ax = plt.subplots(figsize=(4.2, 3.1))
    ax.plot(thresholds, iou, color="C0", label="IoU")
    ax.plot(thresholds, precision, color="C4", lw=1, ls="--", label="precision")
    ax.plot(thresholds, recall, color="C5", lw=1, ls="--", label="recall")
    ax.axvline(current, color="C1", ls=":", label=f"threshold {current:g}")
    ax.plot(best, iou[at["best"]], "*", color="C2", markersize=12, label=f"best IoU {iou[at['best']]:.3f} at {best:g}")
    ax.set(xlabel="threshold", ylabel="score", xlim=(0, 1), ylim=(0, 1.02), title="IoU against threshold")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    curve.tight_layout()
    return [pr, curve]


BACKEND_MARKERS = {"torch": "o", "onnxruntime": "s", "openvino": "^"}


def tradeoff_figure(rows: list[dict[str, Any]], labels: dict[str, str], ylabel: str, keep: float | None = 0.97,
                    footnote: str = "") -> Any:
    """IoU against latency (log scale): one point per model and backend/precision (``rows``: entries
    of ``segdistill benchmark --json`` that carry an ``iou``), hollow for fp32, filled for bf16/int8,
    one colour per name (``labels``: model path -> legend name, in legend order). The first model's
    torch fp32 IoU (the teacher's) is drawn as a line and ``keep`` of it dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    shown = [r for r in rows if r.get("iou") is not None and r.get("p50_ms") and r["model"] in labels]
    for i, name in enumerate(dict.fromkeys(labels.values())):  # files of one name (a model, its int8 export): one colour
        mine = [r for r in shown if labels[r["model"]] == name]
        if not mine:
            continue
        for r in mine:
            ax.scatter(r["p50_ms"], r["iou"], marker=BACKEND_MARKERS.get(r["backend"], "x"), color=f"C{i}", s=45,
                       facecolors="none" if r["precision"] == "fp32" else f"C{i}")
        ax.scatter([], [], color=f"C{i}", marker="o", label=f"{name} (fastest {min(r['p50_ms'] for r in mine):.1f} ms)")
    first = next(iter(labels), None)
    ref = next((r["iou"] for r in shown if r["model"] == first and r["backend"] == "torch" and r["precision"] == "fp32"), None)
    if ref is not None:
        ax.axhline(ref, color="grey", lw=1)
        if keep:
            ax.axhline(keep * ref, color="grey", lw=1, ls="--", label=f"{keep:.0%} of {labels[first]}")  # type: ignore[index]
    size = next((r["size"] for r in shown), None)
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (batch 1" + (f", {size[0]}x{size[1]}" if size else "") + ", log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title("o torch, s ONNX Runtime, ^ OpenVINO; hollow fp32, filled bf16/int8", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the points, never over them
    if footnote:
        fig.text(0.01, 0.01, footnote[:120], fontsize=6, color="grey")
    fig.tight_layout()
    return fig


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")

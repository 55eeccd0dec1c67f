"""The report of a student search (engine/search/): every candidate with its parameters, GFLOPs,
latency, IoU and epochs, the accuracy/latency Pareto front as a plot (search_pareto.png), the winner
marked and, with ``--baseline``, its labels-only twin; as search.md, as the ``search`` section of
distill_report.json, and as a table in the log."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..engine.search.rules import Objective, Score, pareto_front
from ..fileio import atomic_path, write_json, write_text
from .tables import format_table

log = logging.getLogger("segdistill")


def latest_runs(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each candidate's run of the deepest rung it reached."""
    latest: dict[str, dict[str, Any]] = {}
    for r in d["runs"]:
        if r["name"] not in latest or r["rung"] >= latest[r["name"]]["rung"]:
            latest[r["name"]] = r
    return latest


def candidate_rows(d: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per candidate (its deepest rung), then the winner after its full distillation."""
    teacher_iou, latest = d["teacher"]["val_iou"], latest_runs(d)
    front = {s.name for s in pareto_front([Score(n, r["iou"], d["latency"][n]["latency_ms"]) for n, r in latest.items()])}
    grid = {g["name"]: g for g in d["grid"]}
    winner, final = d.get("winner", {}).get("name"), d.get("final", {})
    rows = []
    for name in d["candidates"]:
        r = latest.get(name, {})
        rows.append(_row(name, grid[name], d["latency"][name], r.get("iou"), teacher_iou, r.get("epochs", 0),
                         r["rung"] + 1 if r else None, "yes" if name in front else "",
                         "winner" if name == winner else ""))
    if winner and final.get("done"):
        rows.append(_row(f"{winner} (full)", grid[winner], d["latency"][winner], final.get("iou"), teacher_iou,
                         final.get("epochs", 0), None, "", "winner, " + ("meets " if final.get("meets") else "misses ")
                         + d["objective"]))
    return rows


def _row(name: str, g: dict[str, Any], lat: dict[str, Any], iou: float | None, teacher_iou: float, epochs: int,
         rung: int | None, front: str, note: str) -> dict[str, Any]:
    return {"candidate": name, "params": g["params"], "GFLOPs": g["gflops"], "latency_ms": lat["latency_ms"],
            "backend": lat["backend"], "iou": iou, "keeps": round(iou / teacher_iou, 4) if iou is not None and teacher_iou else None,
            "epochs": epochs, "rung": rung, "pareto": front, "note": note}


def plot_pareto(path: Path, d: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """:func:`pareto_figure` saved as a PNG."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(d, rows)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def pareto_figure(d: dict[str, Any], rows: list[dict[str, Any]]) -> Any:
    """IoU against latency (log scale) for every candidate, coloured by the epochs it got; the front
    as a step line, the winner after its full distillation as a star, the teacher and the objective
    as lines. ``d``: search.json; ``rows``: :func:`candidate_rows`."""
    from .plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    tried = [r for r in rows if r["iou"] is not None and r["rung"] is not None]
    by_epochs = sorted({r["epochs"] for r in tried})
    for e in by_epochs:
        pts = [r for r in tried if r["epochs"] == e]
        ax.scatter([r["latency_ms"] for r in pts], [r["iou"] for r in pts], s=30, label=f"after {e} epoch(s)", zorder=3)
    for r in tried:
        ax.annotate(r["candidate"], (r["latency_ms"], r["iou"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = sorted((r for r in tried if r["pareto"]), key=lambda r: r["latency_ms"])
    if front:
        ax.step([r["latency_ms"] for r in front], [r["iou"] for r in front], where="post", color="gray", alpha=0.6,
                label="Pareto front")
    full = [r for r in rows if r["rung"] is None and r["iou"] is not None]
    for r in full:
        ax.scatter([r["latency_ms"]], [r["iou"]], marker="*", s=250, color="crimson", zorder=4,
                   label=f"winner {r['candidate']}, {r['epochs']} epochs")
    t = d["teacher"]
    ax.axhline(t["val_iou"], color="black", lw=1, ls=":", label=f"teacher ({t.get('latency_ms', 0):.1f} ms)")
    kind, _, value = d["objective"].partition("=")
    if kind == "keep":
        ax.axhline(float(value) * t["val_iou"], color="crimson", lw=1, ls="--", label=d["objective"])
    else:
        ax.axvline(float(value.removesuffix("ms")), color="crimson", lw=1, ls="--", label=d["objective"])
    ax.set_xscale("log")
    ax.set_xlabel(f"latency (ms, batch 1, {d['size'][0]}x{d['size'][1]}, fastest backend)")
    ax.set_ylabel("validation IoU" if d["validation"] == "labels" else "agreement IoU with the teacher")
    ax.set_title(f"Student search {d['objective']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def write_search_report(run_dir: Path, d: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """search_pareto.png, search.md and the ``search`` section of distill_report.json (returned
    with it); the table is logged."""
    rows = candidate_rows(d)
    plot_pareto(run_dir / "search_pareto.png", d, rows)
    w, f, t = d["winner"], d["final"], d["teacher"]
    section = {
        "objective": d["objective"], "validation": d["validation"], "winner": w["name"], "winner_args": w["args"],
        "meets": f.get("meets"), "keeps": f.get("keeps"), "rule": w["rule"],
        "latency": {"size": d["size"], "size_from": d["size_from"], "how": "batch 1, fp32, the fastest installed backend "
                    "that agrees with torch (inference/choose.py measure)"},
        "teacher": t, "budget_s": d["budget_s"], "budget_from": d["budget_from"], "spent_s": d.get("spent_s"),
        "stopped": d.get("stopped", {}).get("reason"), "rungs": d["rungs"], "full_epochs": d["full_epochs"],
        "teacher_forward_passes": t["forward_passes"], "candidates": rows,
        "pareto_front": [r["candidate"] for r in rows if r["pareto"]], "pareto_plot": "search_pareto.png",
        "markdown": "search.md", "baseline_labels_only": report.get("baseline_labels_only"),
    }
    report = {**report, "search": section}
    write_text(run_dir / "search.md", _markdown(d, rows, section))
    write_json(run_dir / "distill_report.json", report)
    shown = [{**r, "params": f"{r['params'] / 1e6:.3f}M"} for r in rows]
    log.info("%s\nsearch report: %s, %s", format_table(shown, title=f"\nStudent search {d['objective']} ({d['validation']})"),
             run_dir / "search.md", run_dir / "search_pareto.png")
    return report


def _markdown(d: dict[str, Any], rows: list[dict[str, Any]], s: dict[str, Any]) -> str:
    t, w, f = d["teacher"], d["winner"], d["final"]
    lines = [f"# Student search: {d['objective']}", "",
             f"Teacher {t['arch']}: {t['params']:,} parameters, {t['gflops']:.2f} GFLOPs, {t.get('latency_ms', 0):.2f} ms "
             f"({t.get('backend', '')}), validation IoU {t['val_iou']:.4f} ({d['validation']}).",
             f"Latency: {s['latency']['how']}, at {d['size'][0]}x{d['size'][1]} ({d['size_from']}).",
             f"Budget {d['budget_s'] / 60:.1f} min ({d['budget_from']}); spent {(d.get('spent_s') or 0) / 60:.1f} min; "
             f"search {s['stopped'] or 'done'}. Rungs: "
             + ", ".join(f"{r['candidates']} x {r['epochs']} epochs" for r in d["rungs"])
             + f"; the winner x {d['full_epochs']} epochs.",
             f"Teacher forward passes: {t['forward_passes']} (filling the target cache; none after).", "",
             f"**Winner: {w['name']}** ({w['rule']}); after its full distillation IoU "
             + (f"{f['iou']:.4f}, {100 * (f.get('keeps') or 0):.1f}% of the teacher's: " if f.get("iou") is not None else "-: ")
             + ("meets " if f.get("meets") else "does not meet ") + d["objective"] + ".", ""]
    twin = s.get("baseline_labels_only")
    if twin:
        lines += [f"Labels-only twin of the winner: validation IoU {twin['val_iou']:.4f} ({twin['run']}).", ""]
    cols = ["candidate", "params", "GFLOPs", "latency_ms", "backend", "iou", "keeps", "epochs", "rung", "pareto", "note"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r[c]) for c in cols) + " |")
    lines += ["", "![accuracy against latency](search_pareto.png)", ""]
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def log_outcome(d: dict[str, Any], objective: Objective) -> None:
    """The search's last log line: whether the winner met the objective, and by how much."""
    w, f = d["winner"], d["final"]
    lat = d["latency"][w["name"]]
    if f["meets"]:
        log.info("search %s: %s meets it: IoU %.4f (%.1f%% of the teacher's), %.2f ms (%s)", objective, w["name"],
                 f["iou"], 100 * (f["keeps"] or 0), lat["latency_ms"], lat["backend"])
    elif objective.kind == "keep":
        log.warning("search %s: no student was shown to keep %.0f%% of the teacher's IoU; the closest bet, %s, keeps "
                    "%.1f%% after its full distillation (a larger student or a longer run would keep more)", objective,
                    100 * objective.value, w["name"], 100 * (f["keeps"] or 0))
    else:
        log.warning("search %s: no student runs that fast here; the fastest found, %s, takes %.2f ms", objective,
                    w["name"], lat["latency_ms"])


def format_params(params: int) -> str:
    return f"{params / 1e6:.3f}M" if params >= 1e5 else f"{params / 1e3:.1f}K"

"""IoU against latency, one point per model and backend/precision, from a deploy_speed.py result.

    python benchmarks/tradeoff_plot.py [benchmarks/results/deploy_speed.json] [--out docs/img/membrane_tradeoff.png]

Reads the rows ``deploy_speed.py`` wrote (every model on every backend and precision of one run, with
the IoU each scored on that backend) and draws them; the teacher's fp32 IoU as a line, 97% of it
dashed. Models without an IoU (the random-weight references) are left out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common  # noqa: F401  (puts src/ on the path)
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label(model: str) -> str:
    p = Path(model)
    name = p.parent.name if p.stem == "model" else p.name.removesuffix(".int8.onnx").removesuffix("_model")
    name = name.replace("shapes_", "").replace("_s0", "")
    return {"membrane": "teacher (base 16)", "student": "plain student (base 4, depth 3)",
            "unshuffle_b4d3": "stem student (base 4, depth 3)", "unshuffle_b8d3": "stem student (base 8, depth 3)"}.get(name, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", type=Path, default=common.ROOT / "benchmarks" / "results" / "deploy_speed.json")
    ap.add_argument("--out", type=Path, default=common.ROOT / "docs" / "img" / "membrane_tradeoff.png")
    args = ap.parse_args()
    doc = json.loads(args.results.read_text(encoding="utf-8"))
    rows = [r for r in doc["models"] + doc.get("int8", []) if r.get("iou") is not None and r.get("p50_ms")
            and "plain_base4" not in r["model"]]  # the speed reference has random weights: no IoU to show
    teacher = rows[0]["model"]
    t_iou = next(r["iou"] for r in rows if r["model"] == teacher and r["backend"] == "torch" and r["precision"] == "fp32")
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    markers = {"torch": "o", "onnxruntime": "s", "openvino": "^"}
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(label(r["model"]), []).append(r)
    for i, (name, rs) in enumerate(groups.items()):
        color = f"C{i}"
        for r in rs:
            ax.scatter(r["p50_ms"], r["iou"], marker=markers.get(r["backend"], "x"), color=color,
                       facecolors="none" if r["precision"] == "fp32" else color, s=45)
        ax.scatter([], [], color=color, marker="o", label=f"{name} (fastest {min(r['p50_ms'] for r in rs):.1f} ms)")
    ax.axhline(t_iou, color="grey", lw=1)
    ax.axhline(0.97 * t_iou, color="grey", lw=1, ls="--")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (512x512, batch 1, log scale)")
    ax.set_ylabel("membrane validation IoU (on that backend)")
    ax.set_title("IoU against latency: o torch, s ONNX Runtime, ^ OpenVINO; hollow fp32, filled bf16/int8", fontsize=9)
    fig.text(0.01, 0.01, doc["machine"]["cpu"][:110], fontsize=6, color="grey")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()

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

from segdistill.reports.plots import tradeoff_figure


def label(model: str) -> str:
    p = Path(model)
    name = p.parent.name if p.stem == "model" else p.name.removesuffix(".int8.onnx").removesuffix("_model")
    name = name.replace("shapes_", "").replace("_s0", "")
    return {"membrane": "teacher (base 16, 1.94M)", "student": "plain (base 4, 30K)",
            "unshuffle_b4d3": "stem by 2, base 4 (31K)", "unshuffle_b8d3": "stem by 2, base 8 (121K)",
            "us4_b8d3": "stem by 4, base 8 (122K)", "us4_b16d3": "stem by 4, base 16 (485K): the recipe's",
            "us2_b16d3": "stem by 2, base 16 (483K)"}.get(name, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", type=Path, default=common.ROOT / "benchmarks" / "results" / "deploy_speed.json")
    ap.add_argument("--out", type=Path, default=common.ROOT / "docs" / "img" / "membrane_tradeoff.png")
    args = ap.parse_args()
    doc = json.loads(args.results.read_text(encoding="utf-8"))
    rows = [r for r in doc["models"] + doc.get("int8", []) if r.get("iou") is not None and r.get("p50_ms")
            and "plain_base4" not in r["model"]]  # the speed reference has random weights: no IoU to show
    labels = {r["model"]: label(r["model"]) for r in rows}
    fig = tradeoff_figure(rows, labels, "membrane validation IoU (on that backend)", footnote=doc["machine"]["cpu"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()

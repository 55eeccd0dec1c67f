"""Finding the student (issue 23): ``segdistill distill --search`` on the real data sets, each alone.

- membranes: ``-c configs/membrane_distill.yaml --search keep=0.97`` (54 transfer images, validation on
  the labelled images 24-29), from the membrane teacher;
- Kvasir-SEG: ``--search keep=0.90`` on the 880 training images (a seeded 10% validation split), from
  the Kvasir teacher; the teacher and the winner (and its labels-only twin, --baseline) are then
  scored on the 120 test images, which the search never saw.

    python benchmarks/student_search.py --membrane-teacher runs/membrane/model.safetensors \\
        --kvasir-teacher runs/kvasir_bench/teacher/model.safetensors [--sets membrane kvasir] \\
        [--budget MINUTES] [--baseline] [--out runs/student_search] [--tag student_search]

Without --budget each search takes its default budget (about twice one full distillation). Each set's
configured student is first distilled once as configured, to time one full distillation (the
yardstick of the search's time). Prints a
table (teacher, winner, compression, latency, IoU kept, whether the objective was met, minutes) and
writes benchmarks/results/TAG.json with every candidate of every search (their search.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common

from segdistill.jobs.evaluate import evaluate_model

DATA = common.SHARED_DATA
KVASIR = DATA / "kvasir_seg"
SETS: dict[str, dict[str, Any]] = {
    "membrane": {"objective": "keep=0.97", "data": DATA / "membrane" / "train",
                 "args": ["-c", "configs/membrane_distill.yaml"]},
    "kvasir": {"objective": "keep=0.90", "data": KVASIR / "train", "test": KVASIR / "test",
               "args": ["--images", str(KVASIR / "train" / "images"), "--data", str(KVASIR / "train"),
                        "--set", "data.val_fraction=0.1", "--input-size", "128", "--batch-size", "8"]},
}


def recipe_minutes(name: str, teacher: Path, out: Path, threads: int | None) -> float:
    """Minutes of one full distillation of the set's configured student (the yardstick of the
    search's time: "within twice one full distillation")."""
    cmd = [sys.executable, "-m", "segdistill", "distill", *SETS[name]["args"], "--teacher", str(teacher),
           "--output-dir", str(out), "--name", f"{name}_recipe", "--overwrite", "-q"]
    cmd += ["--threads", str(threads)] if threads else []
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=common.ROOT)
    return (time.perf_counter() - t0) / 60


def run(name: str, teacher: Path, out: Path, budget: float | None, baseline: bool, threads: int | None) -> dict[str, Any]:
    spec = SETS[name]
    recipe = recipe_minutes(name, teacher, out, threads)
    cmd = [sys.executable, "-m", "segdistill", "distill", *spec["args"], "--teacher", str(teacher),
           "--search", spec["objective"], "--output-dir", str(out), "--name", name, "--overwrite"]
    cmd += (["--search-budget", f"{budget:g}"] if budget else []) + (["--baseline"] if baseline else [])
    cmd += ["--threads", str(threads)] if threads else []
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=common.ROOT)
    minutes = (time.perf_counter() - t0) / 60
    run_dir = out / name
    search = json.loads((run_dir / "search.json").read_text(encoding="utf-8"))
    report = json.loads((run_dir / "distill_report.json").read_text(encoding="utf-8"))
    t, w, f = search["teacher"], search["winner"], search["final"]
    grid = {g["name"]: g for g in search["grid"]}
    reference = [r for r in search["runs"] if r["name"] == search["reference"]]
    row: dict[str, Any] = {
        "set": name, "objective": search["objective"], "teacher params": t["params"], "teacher IoU": t["val_iou"],
        "teacher ms": t.get("latency_ms"), "winner": w["name"], "params": grid[w["name"]]["params"],
        "compression": round(t["params"] / grid[w["name"]]["params"], 1),
        "ms": search["latency"][w["name"]]["latency_ms"], "backend": search["latency"][w["name"]]["backend"],
        "speed-up": round(t["latency_ms"] / search["latency"][w["name"]]["latency_ms"], 1) if t.get("latency_ms") else None,
        "val IoU": f["iou"], "keeps": f["keeps"], "meets": f["meets"],
        "configured": f"{search['reference']} {reference[-1]['iou']:.3f}@{reference[-1]['epochs']}ep" if reference else None,
        "candidates": len(search["candidates"]), "runs": len(search["runs"]), "stopped": search["stopped"]["reason"],
        "budget min": round(search["budget_s"] / 60, 1), "minutes": round(minutes, 1),
        "recipe minutes": round(recipe, 1), "time / recipe": round(minutes / recipe, 2),
        "configured ms": search["latency"][search["reference"]]["latency_ms"],
        "as fast as configured": search["latency"][w["name"]]["latency_ms"] <= search["latency"][search["reference"]]["latency_ms"],
    }
    if "test" in spec:
        for who, model in (("teacher", teacher), ("winner", run_dir / "model.safetensors"),
                           ("twin", run_dir / "baseline" / "model.safetensors")):
            if model.is_file():
                res = evaluate_model(model, spec["test"], out=run_dir / f"test_{who}.csv", all_images=True)
                row[f"test IoU {who}"] = res.metrics["iou"]
    if report.get("baseline_labels_only"):
        row["twin val IoU"] = report["baseline_labels_only"]["val_iou"]
    return {"row": row, "search": search, "report": report}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--membrane-teacher", type=Path, help="the membrane teacher's model file (configs/membrane.yaml)")
    ap.add_argument("--kvasir-teacher", type=Path, help="the Kvasir-SEG teacher's model file (benchmarks/kvasir_distill.py)")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--budget", type=float, help="--search-budget MINUTES for every search (default: its own)")
    ap.add_argument("--baseline", action="store_true", help="also the labels-only twin of each winner")
    ap.add_argument("--threads", type=int, help="--threads of segdistill (default auto)")
    ap.add_argument("--out", type=Path, default=common.ROOT / "runs" / "student_search")
    ap.add_argument("--tag", default="student_search", help="results/TAG.json")
    args = ap.parse_args()
    teachers = {"membrane": args.membrane_teacher, "kvasir": args.kvasir_teacher}
    for name in args.sets:
        if teachers[name] is None or not teachers[name].is_file():
            sys.exit(f"{name}: give its teacher's model file (--{name}-teacher PATH)")
        if not SETS[name]["data"].is_dir():
            sys.exit(f"{name}: data not found at {SETS[name]['data']}")
    results = [run(name, teachers[name], args.out, args.budget, args.baseline, args.threads) for name in args.sets]
    rows = [r["row"] for r in results]
    common.finish(args.tag, rows, {"searches": {r["row"]["set"]: {"search": r["search"], "report": r["report"]}
                                                for r in results}, "args": {k: str(v) for k, v in vars(args).items()}},
                  title="\nStudent search (distill --search): the winner of each data set")


if __name__ == "__main__":
    main()

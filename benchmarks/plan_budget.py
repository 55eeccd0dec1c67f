"""The training plan on the real data sets: ``segdistill train --data DIR --time MINUTES`` and nothing
else that decides how to train (issue 18), one data set after the other, each alone on the CPU.

What each run is given besides --data and --time defines the task, not the recipe: membranes are
the class of interest (``invert``: the masks mark them 0) and images 24-29 are the validation set of
the tuned recipe it is compared with. Kvasir-SEG trains on ``train/`` (a seeded 20% validation split)
and is scored on the 120 ``test/`` images; DSB 2018 nuclei uses its own seeded split.

    python benchmarks/plan_budget.py [--time 30] [--sets membrane kvasir dsb] [--out runs/plan_budget]

Prints a table (the plan, epochs, validation/test IoU, minutes) and writes
benchmarks/results/plan_budget.json (--tag). Targets: membranes within 0.01 of the tuned recipe on the same
machine (docs/benchmarks.md), Kvasir test IoU >= 0.624 (the tuned 66-minute teacher).
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
SETS: dict[str, dict[str, Any]] = {
    "membrane": {"data": DATA / "membrane" / "train",
                 "task": ["--set", "data.invert=true", "--set", "data.val_stems=[24, 25, 26, 27, 28, 29]"]},
    "kvasir": {"data": DATA / "kvasir_seg" / "train", "task": [], "test": DATA / "kvasir_seg" / "test"},
    "dsb": {"data": DATA / "dsb2018_nuclei", "task": []},
}


def run(name: str, minutes: float, out: Path, threads: str = "auto", reuse: bool = False) -> dict[str, Any]:
    spec = SETS[name]
    cmd = [sys.executable, "-m", "segdistill", "train", "--data", str(spec["data"]), "--time", f"{minutes:g}",
           "--output-dir", str(out), "--name", name, "--overwrite", "--threads", threads, *spec["task"]]
    run_dir = out / name
    t0 = time.perf_counter()
    if reuse and (run_dir / "model.safetensors").is_file():
        print(f"reusing {run_dir} (--reuse): scoring only", flush=True)
    else:
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=common.ROOT)
    wall = (time.perf_counter() - t0) / 60
    if reuse:
        wall = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("seconds", wall * 60) / 60
    plan = json.loads((run_dir / "plan.json").read_text(encoding="utf-8"))
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    history = (run_dir / "history.csv").read_text(encoding="utf-8").strip().splitlines()
    row: dict[str, Any] = {"set": name, "minutes": round(wall, 1), "epochs": len(history) - 1,
                           "val_iou": metrics.get("iou"), "planned": plan["applied"]}
    if "test" in spec:
        res = evaluate_model(run_dir / "model.safetensors", spec["test"], out=run_dir / "eval_test.csv", all_images=True)
        row["test_iou"] = res.metrics["iou"]
        row["test_dice"] = res.metrics["dice"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", type=float, default=30.0, help="minutes per run (--time of segdistill train)")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--out", type=Path, default=common.ROOT / "runs" / "plan_budget")
    ap.add_argument("--tag", default="plan_budget", help="results/TAG.json")
    ap.add_argument("--threads", default="auto", help="--threads of segdistill train (auto: the free cores at its start; "
                                                      "a fixed count where helpers' idle-class work shares the machine)")
    ap.add_argument("--reuse", action="store_true", help="score an existing run of the same --out instead of training")
    args = ap.parse_args()
    missing = [n for n in args.sets if not SETS[n]["data"].is_dir()]
    if missing:
        sys.exit(f"data not found for {', '.join(missing)} (expected under {DATA})")
    rows = [run(name, args.time, args.out, args.threads, args.reuse) for name in args.sets]
    table = [{"set": r["set"], "max_side": r["planned"].get("data.max_side"), "crop": r["planned"].get("train.input_size"),
              "vflip": r["planned"].get("augment.vflip"), "model": r["planned"].get("model.args.encoder") or f"unet {r['planned'].get('model.args.base')}/"
              f"{r['planned'].get('model.args.depth')}", "epochs": r["epochs"], "val IoU": r["val_iou"],
              "test IoU": r.get("test_iou"), "minutes": r["minutes"]} for r in rows]
    common.finish(args.tag, table, {"time_minutes": args.time, "runs": rows}, title=f"\nPlanned from the data, --time {args.time:g}")


if __name__ == "__main__":
    main()

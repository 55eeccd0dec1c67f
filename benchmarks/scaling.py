"""Scaling: training throughput with 1 process and with N torchrun processes on this machine.

Runs the same short training (synthetic data, U-Net base 16 depth 3, 96 px crops, batch 4 per
process) as: 1 process with 1 thread, 1 process with all cores' threads, and ``torchrun
--nproc_per_node=N`` with cores/N threads each (the default ``threads: auto`` divides the cores among
a node's processes). Throughput = crops per second over the epochs after the first (each epoch's
wall time from history.csv, validation included, which the processes share); efficiency = throughput
/ (processes x the 1-process-1-thread throughput).

    python benchmarks/scaling.py [--procs 2] [--epochs 5]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common

from segdistill.data.synth import make_synthetic_dataset
from segdistill.runtime import available_cores

SAMPLES = 128


def _run(data: Path, out: Path, name: str, procs: int, threads: int, epochs: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = str(common.ROOT / "src")
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
              if procs > 1 else [sys.executable])
    args = [*launch, "-m", "segdistill", "-q", "train", "--data", str(data), "--output-dir", str(out), "--name", name,
            "--epochs", str(epochs), "--batch-size", "4", "--input-size", "96", "--threads", str(threads),
            "--set", "model.args={base: 16, depth: 3}", "--set", f"train.samples_per_epoch={SAMPLES}",
            "--set", "train.precision=fp32", "--overwrite"]
    subprocess.run(args, check=True, env=env, capture_output=True, cwd=str(common.ROOT))
    seconds = [float(r["seconds"]) for r in csv.DictReader(open(out / name / "history.csv"))][1:]
    median = statistics.median(seconds)
    return {"processes": procs, "threads each": threads, "median epoch s": round(median, 3),
            "crops/s": round(SAMPLES / median, 2), "epoch seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    cores = available_cores()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_synthetic_dataset(Path(tmp) / "data", count=64, size=128, seed=0)
        plans = [(1, 1), (1, cores), (args.procs, max(1, cores // args.procs))]
        rows = [_run(data, Path(tmp), f"p{p}t{t}", p, t, args.epochs) for p, t in plans]
    base = rows[0]["crops/s"]
    for r in rows:
        r["speed-up vs 1x1"] = round(r["crops/s"] / base, 2)
        r["efficiency"] = round(r["crops/s"] / (r["processes"] * r["threads each"] * base), 2)
    table = [{k: v for k, v in r.items() if k != "epoch seconds"} for r in rows]
    common.finish("scaling", table, {"runs": rows}, title=f"Training throughput, {cores} cores")


if __name__ == "__main__":
    main()

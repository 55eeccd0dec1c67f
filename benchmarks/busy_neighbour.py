"""Training beside a busy neighbour: epoch times with the default threads against all cores.

Starts one CPU-bound loop per core this process may use (the neighbour), then runs a short tiny
training in a child process (``segdistill train``), once with the default ``threads: auto`` and
once with ``--threads`` forced to every core (what segdistill did before it had a threads setting:
torch's default). Reports the median and slowest epoch of each and their ratio. The neighbours are
always stopped at the end; each run is bounded by its epochs.

    python benchmarks/busy_neighbour.py [--epochs 12] [--no-forced] [--alone]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

from segdistill.data.synth import make_synthetic_dataset
from segdistill.runtime import available_cores


def _spin(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:  # a bound, in case the parent dies without stopping us
        x += 1


def _train(data: Path, out: Path, name: str, epochs: int, threads: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    args = [sys.executable, "-m", "segdistill", "train", "--data", str(data), "--output-dir", str(out),
            "--name", name, "--epochs", str(epochs), "--batch-size", "4", "--input-size", "64",
            "--set", "model.args.base=8", "--set", "model.args.depth=3", "--set", "train.samples_per_epoch=64",
            "--set", "train.precision=fp32", "--overwrite"] + (["--threads", threads] if threads else [])
    t0 = time.perf_counter()
    log = subprocess.run(args, check=True, env=env, capture_output=True, text=True, cwd=str(common.ROOT)).stderr
    wall = time.perf_counter() - t0
    seconds = [float(r["seconds"]) for r in csv.DictReader(open(out / name / "history.csv"))]
    median, slowest = statistics.median(seconds), max(seconds)
    used = re.search(r"(\d+) threads?\b", log)
    return {"run": name, "threads setting": threads or "auto (default)", "threads used": int(used.group(1)) if used else None,
            "median epoch s": round(median, 3), "slowest epoch s": round(slowest, 3),
            "slowest / median": round(slowest / median, 2), "wall s": round(wall, 1),
            "epoch seconds": [round(s, 3) for s in seconds]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--no-forced", action="store_true", help="skip the run with every core forced")
    ap.add_argument("--alone", action="store_true", help="also run both without the neighbour")
    args = ap.parse_args()
    cores = available_cores()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_synthetic_dataset(Path(tmp) / "data", count=24, size=96, seed=0)
        plans = [("auto", None)] + ([] if args.no_forced else [("forced", str(cores))])
        if args.alone:
            for name, threads in plans:
                rows.append({"neighbour": "none", **_train(data, Path(tmp), f"alone-{name}", args.epochs, threads)})
        ctx = mp.get_context("spawn")
        spinners = [ctx.Process(target=_spin, args=(time.time() + 3600,), daemon=True) for _ in range(cores)]
        for p in spinners:
            p.start()
        try:
            time.sleep(1.0)  # the neighbour is running before training starts
            for name, threads in plans:
                rows.append({"neighbour": f"{cores} busy loops", **_train(data, Path(tmp), f"busy-{name}", args.epochs, threads)})
        finally:
            for p in spinners:
                p.terminate()
                p.join()
    table = [{k: v for k, v in r.items() if k != "epoch seconds"} for r in rows]
    common.finish("busy_neighbour", table, {"runs": rows}, title=f"Training beside a busy neighbour ({cores} cores)")


if __name__ == "__main__":
    main()

"""Distillation on photos with the defaults (issue 28): Kvasir-SEG's teacher from the plan (a pretrained
encoder), then exactly ``segdistill distill --teacher RUN --images train/images --time 15``.

1. The distillation, with no other flags (the plan chooses the student: a pretrained encoder at half
   the teacher's resolution under a thin decoder).
2. The labels-only twin: the same student, epochs and rate, trained on the labelled training images
   (the distillation's own ``train_twin``), for the comparison distillation has to win.
3. Teacher, student and twin scored on the 120 test images (never seen), and ``segdistill benchmark``
   on the run: latency per backend and precision here, the best of each model compared.

    python benchmarks/photo_distill.py --teacher /tmp/bench/plan_enc288/kvasir [--time 15] [--out /tmp/bench/photo]

Targets: the student >= 5x faster than its teacher on their best backends, keeping >= 95% of the
teacher's test IoU, ahead of its twin. Prints a table; writes benchmarks/results/photo_distill.json.
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

from segdistill.checkpoint import read_model_info
from segdistill.config import load_config
from segdistill.engine.distill import train_twin
from segdistill.jobs.evaluate import evaluate_model

KVASIR = common.SHARED_DATA / "kvasir_seg"


def _best(rows: list[dict[str, Any]], model: Path) -> dict[str, Any]:
    mine = [r for r in rows if Path(str(r.get("model", ""))).resolve() == model.resolve() and r.get("p50_ms") and r.get("accurate")]
    return min(mine, key=lambda r: r["p50_ms"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, required=True, help="the teacher's run folder")
    ap.add_argument("--data", type=Path, default=KVASIR)
    ap.add_argument("--time", type=float, default=15.0)
    ap.add_argument("--out", type=Path, default=common.ROOT / "runs" / "photo_distill")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--reuse", action="store_true", help="keep an existing distillation/twin of the same --out")
    ap.add_argument("--tag", default="photo_distill")
    args = ap.parse_args()
    run = args.out / "student"
    teacher = args.teacher / "model.safetensors"
    t0 = time.perf_counter()
    if not (args.reuse and (run / "model.safetensors").is_file()):
        cmd = [sys.executable, "-m", "segdistill", "distill", "--teacher", str(args.teacher), "--images",
               str(args.data / "train" / "images"), "--time", f"{args.time:g}", "--output-dir", str(args.out),
               "--name", "student", "--overwrite", "--threads", args.threads]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=common.ROOT)
    minutes = (time.perf_counter() - t0) / 60
    if not (args.reuse and (run / "baseline" / "model.safetensors").is_file()):
        cfg = load_config(run / "config.yaml", [f"data.root={args.data / 'train'}"])
        train_twin(cfg, run, read_model_info(teacher))
    scores = {}
    for name, path in (("teacher", teacher), ("student", run / "model.safetensors"),
                       ("twin", run / "baseline" / "model.safetensors")):
        res = evaluate_model(path, args.data / "test", out=args.out / f"test_{name}.csv", all_images=True,
                             backend="torch", precision="fp32")
        scores[name] = res.metrics["iou"]
    speed = subprocess.run([sys.executable, "-m", "segdistill", "benchmark", str(run), "--runs", "30",
                            "--batch-sizes", "1", "--json", str(args.out / "speed.json")], cwd=common.ROOT)
    rows = json.loads((args.out / "speed.json").read_text(encoding="utf-8"))["entries"] if speed.returncode == 0 else []
    table = []
    for name, path in (("teacher", teacher), ("student", run / "model.safetensors"),
                       ("twin", run / "baseline" / "model.safetensors")):
        info = read_model_info(path)
        best = _best(rows, path) if rows else {}
        table.append({"model": name, "arch": f"{info.arch} {info.args.get('encoder', '')} x{info.args.get('input_scale', 1)}",
                      "test IoU": round(scores[name], 4), "kept": round(scores[name] / scores["teacher"], 4),
                      "best backend": f"{best.get('backend')} {best.get('precision')}" if best else None,
                      "p50 ms": best.get("p50_ms")})
    t_ms, s_ms = table[0]["p50 ms"], table[1]["p50 ms"]
    extra = {"distill_minutes": round(minutes, 1), "speedup": round(t_ms / s_ms, 2) if t_ms and s_ms else None,
             "history": (run / "history.csv").read_text(encoding="utf-8")}
    common.finish(args.tag, table, extra, title=f"\nKvasir-SEG: distill --time {args.time:g}, defaults")
    print(f"speed-up on the best backends: {extra['speedup']}x; kept {table[1]['kept']:.1%}; "
          f"student - twin: {scores['student'] - scores['twin']:+.4f}")


if __name__ == "__main__":
    main()

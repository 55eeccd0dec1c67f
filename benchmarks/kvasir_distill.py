"""Distillation where it matters: Kvasir-SEG polyps (RGB, varied sizes, 880 train / 120 test).

1. Train a teacher (or take one with --teacher).
2. For each student size (default: >=50x and >=250x fewer parameters than the teacher) and each
   seed: distill it from the teacher's cached soft targets on the 880 training images, and train the
   same student from the labels alone for the same number of epochs (same steps, about the same time).
3. Evaluate every model on the 120 test images (never seen in training or model selection) and
   print a table: parameters, GFLOPs, CPU latency, test IoU and Dice, mean over seeds.

    python benchmarks/kvasir_distill.py [--teacher-epochs 28] [--student-epochs 20] [--seeds 0 1] [--jobs 2]

--jobs N runs N (student, seed) pairs at once, one thread each: tiny students are bound by
per-operation overhead, not arithmetic, so two one-thread processes do about twice the work of one
two-thread process. Both members of a pair (distilled and labels only) run in the same process under
the same load, so their times stay comparable.

Model sizes are U-Net arguments: --teacher-args base=24,depth=4 --students base=6,depth=3 base=3,depth=3.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path
from typing import Any

import common
import torch

from segdistill.checkpoint import load_model
from segdistill.config import load_config
from segdistill.data.discovery import list_images
from segdistill.engine.targets import build_target_cache
from segdistill.engine.train import fit
from segdistill.jobs.distill import distill
from segdistill.jobs.evaluate import evaluate_model
from segdistill.measure import count_gflops, count_params, model_latency


def _unet_args(text: str) -> dict[str, int | str]:
    """"base=4,depth=3,act=leaky_relu" -> {"base": 4, "depth": 3, "act": "leaky_relu"}."""
    try:
        pairs = [kv.split("=") for kv in text.split(",")]
        return {k.strip(): int(v) if v.strip().lstrip("-").isdigit() else v.strip() for k, v in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE[,NAME=VALUE...], got {text!r}") from None


def _yaml(args: dict[str, int | str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in args.items()) + "}"


def _pair(overrides: list[str], test: str) -> dict[str, Any]:
    """Distill one student and train its label-only twin (one process); test-set metrics of both."""
    t1 = time.perf_counter()
    r = distill(load_config(None, overrides), overwrite=True)
    minutes = (time.perf_counter() - t1) / 60
    out: dict[str, Any] = {"run_dir": str(r.run_dir), "minutes": minutes}
    for kind, model in (("distilled", r.run_dir / "model.safetensors"),
                        ("labels only", r.run_dir / "baseline" / "model.safetensors")):
        out[kind] = evaluate_model(model, Path(test), all_images=True, out=r.run_dir / f"test_{kind.replace(' ', '_')}.csv").metrics
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(common.SHARED_DATA / "kvasir_seg"))
    ap.add_argument("--out", default="runs/kvasir_bench")
    ap.add_argument("--teacher", help="an existing teacher model file (skips step 1)")
    ap.add_argument("--teacher-args", type=_unet_args, default="base=24,depth=4")
    ap.add_argument("--teacher-epochs", type=int, default=28)
    ap.add_argument("--student-epochs", type=int, default=20)
    ap.add_argument("--students", type=_unet_args, nargs="+",
                    default=[{"base": 6, "depth": 3}, {"base": 3, "depth": 3}])
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of the label loss in distillation")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--max-side", type=int, default=160)
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--samples", type=int, default=None, help="crops per epoch (default: one per image)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=int, default=1, help="(student, seed) pairs run at once, one thread each")
    ap.add_argument("--set", dest="extra", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more config overrides for the students (e.g. distill.targets=online)")
    args = ap.parse_args()
    data = Path(args.data)
    if not (data / "train").is_dir():
        raise SystemExit(f"{data}: Kvasir-SEG not found (expected train/ and test/)")
    out = Path(args.out)
    common_set = [f"output_dir={out}", f"data.root={data / 'train'}", "data.val_fraction=0.1",
                  f"data.max_side={args.max_side}", f"train.input_size={args.input_size}", "train.batch_size=8",
                  f"device={args.device}"] + ([f"train.samples_per_epoch={args.samples}"] if args.samples else [])
    t0 = time.perf_counter()
    if args.teacher:
        teacher = Path(args.teacher)
        # Its training time, from the run's history beside it (None when the file travelled alone).
        hist = teacher.parent / "history.csv"
        teacher_minutes = (sum(float(r["seconds"]) for r in csv.DictReader(hist.open())) / 60) if hist.is_file() else None
    else:
        cfg = load_config(None, [*common_set, "name=teacher", f"train.epochs={args.teacher_epochs}",
                                 f"model.args={_yaml(args.teacher_args)}", "train.lr=0.002"])
        teacher = fit(cfg, overwrite=True).run_dir / "model.safetensors"
        teacher_minutes = (time.perf_counter() - t0) / 60
    test = data / "test"
    tm, tinfo = load_model(teacher)
    size, ch = args.input_size, tinfo.preprocess.in_channels
    t_eval = evaluate_model(teacher, test, all_images=True, out=out / "teacher_test.csv").metrics
    rows = [{"model": "teacher " + ", ".join(f"{k} {tinfo.args.get(k)}" for k in ("base", "depth")), "params": count_params(tm),
             "compression": 1.0, "GFLOPs": count_gflops(tm, ch, size), "CPU ms": model_latency(tinfo, (size, size)).ms,
             "test IoU": t_eval["iou"], "test Dice": t_eval["dice"], "minutes": teacher_minutes}]
    per_run = []
    jobs = []
    for sargs in args.students:
        for seed in args.seeds:
            name = "student_" + "_".join(f"{k[0]}{v}" for k, v in sargs.items()) + f"_s{seed}"
            overrides = [*common_set, f"name={name}", f"seed={seed}", f"train.epochs={args.student_epochs}",
                         f"distill.teacher={teacher}", f"distill.images={data / 'train' / 'images'}",
                         f"distill.student.args={_yaml(sargs)}", f"distill.alpha={args.alpha}",
                         "distill.baseline=true", *args.extra]
            jobs.append((sargs, seed, overrides))
    student_cfg = load_config(None, jobs[0][2])
    if args.jobs > 1 and student_cfg.distill.targets == "cached":
        # Fill the target cache once, here, so parallel jobs never race to run the teacher.
        images, _ = list_images(data / "train" / "images")
        cache = Path(student_cfg.distill.cache_dir) if student_cfg.distill.cache_dir else None
        build_target_cache(tm, tinfo, teacher, images, cache, args.device)
    outcomes = common.run_jobs(_pair, [(o, str(test)) for _, _, o in jobs], args.jobs)
    for sargs in args.students:
        label = ", ".join(f"{k} {v}" for k, v in sargs.items())
        results: dict[str, list[dict[str, float]]] = {"distilled": [], "labels only": []}
        for (jargs, seed, _), o in zip(jobs, outcomes):
            if jargs != sargs:
                continue
            for kind in results:
                results[kind].append(o[kind])
                per_run.append({"student": label, "seed": seed, "kind": kind,
                                "test IoU": o[kind]["iou"], "test Dice": o[kind]["dice"]})
            per_run[-1]["minutes (distill + baseline)"] = o["minutes"]
            run_dir = Path(o["run_dir"])
        sm, sinfo = load_model(run_dir / "model.safetensors")
        for kind, ms in results.items():
            rows.append({"model": f"student {label}, {kind}", "params": count_params(sm),
                         "compression": rows[0]["params"] / count_params(sm), "GFLOPs": count_gflops(sm, ch, size),
                         "CPU ms": model_latency(sinfo, (size, size)).ms,
                         "test IoU": statistics.mean(m["iou"] for m in ms), "test Dice": statistics.mean(m["dice"] for m in ms),
                         "minutes": None})
    for r in rows:
        r["params"] = f"{r['params'] / 1e6:.3f}M"
    common.finish("kvasir_distill", rows, {"per_run": per_run, "args": vars(args)},
                  title=f"Kvasir-SEG test set (120 images), mean of seeds {args.seeds}; latency batch 1 {size}x{size} fp32")
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


if __name__ == "__main__":
    main()

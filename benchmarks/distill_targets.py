"""Cached or online teacher targets? The same student, seed and epochs, distilled three ways.

Variants: ``cached`` (the teacher predicts each image once; augmentation warps the stored target),
``online`` (the teacher labels every augmented crop) and ``online+mixup`` (the teacher labels blends of
two crops: function matching). Validation on labelled images; reports the best and final validation
IoU, agreement with the teacher, minutes and teacher forward passes, mean over seeds.

    python benchmarks/distill_targets.py                      # built-in synthetic data, ~10 min
    python benchmarks/distill_targets.py --data DIR --teacher MODEL [--max-side 160 --input-size 128]

Without --teacher a teacher is trained first (as in `segdistill demo`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import common

from segdistill.checkpoint import load_model
from segdistill.config import load_config
from segdistill.data.discovery import discover, list_images
from segdistill.data.synth import make_synthetic_dataset
from segdistill.engine.targets import build_target_cache
from segdistill.engine.train import fit
from segdistill.jobs.distill import distill

VARIANTS = {
    "cached": ["distill.targets=cached"],
    "online": ["distill.targets=online"],
    "online+mixup": ["distill.targets=online", "distill.mixup=0.4"],
}


def _run(overrides: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = distill(load_config(None, overrides), overwrite=True)
    last = r.history[-1]
    return {"best IoU": max(h["val_iou"] for h in r.history), "final IoU": last["val_iou"],
            "agreement": last["agreement_iou"], "minutes": (time.perf_counter() - t0) / 60,
            "teacher passes": r.report["teacher_forward_passes"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", help="labelled data (default: synthetic data written under --out)")
    ap.add_argument("--teacher", help="teacher model file (default: train one)")
    ap.add_argument("--out", default="runs/distill_targets")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--student", default="{base: 4, depth: 3}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--max-side", type=int, default=None)
    ap.add_argument("--input-size", type=int, default=96)
    ap.add_argument("--samples", type=int, default=128, help="crops per epoch")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    args = ap.parse_args()
    out = Path(args.out)
    data = Path(args.data) if args.data else out / "data"
    if not args.data and not (data / "images").is_dir():
        make_synthetic_dataset(data, count=64, size=128, seed=0)
    base = [f"output_dir={out}", f"data.root={data}", "train.batch_size=8", f"train.input_size={args.input_size}",
            f"train.samples_per_epoch={args.samples}", "augment.elastic=0.3"]
    if args.max_side:
        base.append(f"data.max_side={args.max_side}")
    if args.teacher:
        teacher = Path(args.teacher)
    else:
        cfg = load_config(None, [*base, "name=teacher", "train.epochs=8", "train.lr=0.003", "model.args={base: 16, depth: 3}"])
        teacher = fit(cfg, overwrite=True).run_dir / "model.safetensors"
    cfg = load_config(None, base)
    train_images = [p.image for p in discover(cfg.data, 0).train]
    folder = train_images[0].parent
    # Fill the target cache once here, so parallel jobs never race to run the teacher.
    tm, tinfo = load_model(teacher)
    build_target_cache(tm, tinfo, teacher, list_images(folder)[0], None)
    runs = [(v, seed) for v in args.variants for seed in args.seeds]
    overrides = [[*base, f"name={v.replace('+', '_')}_s{seed}", f"seed={seed}", f"train.epochs={args.epochs}",
                  f"distill.teacher={teacher}", f"distill.images={folder}", f"distill.student.args={args.student}",
                  *VARIANTS[v]] for v, seed in runs]
    results = common.run_jobs(_run, [(o,) for o in overrides], args.jobs)
    rows = []
    for v in args.variants:
        rs = [r for (rv, _), r in zip(runs, results) if rv == v]
        rows.append({"targets": v, **{k: statistics.mean(r[k] for r in rs) for k in rs[0]},
                     "per seed final IoU": " / ".join(f"{r['final IoU']:.3f}" for r in rs)})
    common.finish("distill_targets", rows, {"args": vars(args)},
                  title=f"student {args.student}, {args.epochs} epochs, mean of seeds {args.seeds} ({args.jobs} jobs x 1 thread)")


if __name__ == "__main__":
    main()

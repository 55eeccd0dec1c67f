"""Deployment and speed (issue 19): the membrane recipe's teacher and student on every backend and
precision of this machine, against a plain base-4 U-Net in eager PyTorch fp32 and the classic
31M-parameter U-Net, with int8 exports calibrated on the training images; one run, side by side.

    python benchmarks/deploy_speed.py --teacher runs/membrane/model.safetensors \\
        --student runs/membrane_student/model.safetensors [--students MORE.safetensors ...] [--out runs/deploy_speed]

Checks (each ratio from this one run; 512x512 gray, batch 1, the process's threads):
- the student on its best backend >= 8x faster than the plain base-4 U-Net (4 levels, transposed
  convolutions) in eager PyTorch fp32, keeping >= 97% of the teacher's membrane IoU on that backend;
- student vs teacher, each on its best backend: speed-up >= half their GFLOP ratio;
- ``auto`` picks within 10% of the fastest for the classic U-Net and the student;
- int8 and bf16: membrane validation IoU within 0.01 of fp32, speed against fp32.
Writes benchmarks/results/deploy_speed.json (--tag) and prints the tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import common
import torch

from segdistill.checkpoint import ModelInfo, read_model_info, save_model
from segdistill.deploy.quantize import export_int8
from segdistill.deploy.speed import benchmark_models
from segdistill.models.registry import create_model

DATA = common.SHARED_DATA / "membrane" / "train"


def reference_model(path: Path, like: ModelInfo, **args: Any) -> Path:
    """A randomly initialised U-Net with the membrane models' preprocessing (speed does not depend
    on the weights)."""
    torch.manual_seed(0)
    model = create_model("unet", in_channels=like.preprocess.in_channels, **args).eval()
    info = ModelInfo("unet", {"in_channels": like.preprocess.in_channels, **args}, like.preprocess, summary={})
    save_model(path, model, info)
    return path


def best(rows: list[dict[str, Any]], model: Path) -> dict[str, Any]:
    mine = [r for r in rows if r["model"] == str(model) and r["p50_ms"] is not None and r["accurate"]]
    return min(mine, key=lambda r: r["p50_ms"])


def row_of(rows: list[dict[str, Any]], model: Path, backend: str, precision: str, cl: bool | None = None) -> dict[str, Any] | None:
    for r in rows:
        if r["model"] == str(model) and r["backend"] == backend and r["precision"] == precision and \
                (cl is None or r["channels_last"] == cl):
            return r
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--student", type=Path, required=True, help="the recipe's default student")
    ap.add_argument("--students", type=Path, nargs="*", default=[], help="more students to place on the trade-off")
    ap.add_argument("--out", type=Path, default=common.ROOT / "runs" / "deploy_speed")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--skip-classic", action="store_true", help="leave out the 31M U-Net (slow)")
    ap.add_argument("--tag", default="deploy_speed")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    info = read_model_info(args.teacher)
    plain = reference_model(args.out / "plain_base4_depth4.safetensors", info, base=4, depth=4, up="transpose")
    int8 = {}
    for m in (args.teacher, args.student, *args.students):
        int8[m] = export_int8(m, args.out / f"{m.parent.name}_{m.stem}.int8.onnx", DATA / "images").path

    models = [args.teacher, args.student, *args.students]
    rows = benchmark_models([*models, plain], backend="all", size=[512], runs=args.runs, data=str(DATA),
                            json_out=args.out / "bench_models.json")
    int8_rows = benchmark_models(list(int8.values()), backend="all", size=[512], runs=args.runs, data=str(DATA),
                                 json_out=args.out / "bench_int8.json")
    classic_rows: list[dict[str, Any]] = []
    if not args.skip_classic:
        classic = reference_model(args.out / "classic_unet_31m.safetensors", info, base=64, depth=4, up="transpose")
        classic_rows = benchmark_models([classic], backend="all", size=[512], runs=max(5, args.runs // 4),
                                        batch_sizes=[1, 2], json_out=args.out / "bench_classic.json")

    # The checks.
    plain_eager = row_of(rows, plain, "torch", "fp32", cl=False)
    s_best, t_best = best(rows + int8_rows, args.student), best(rows + int8_rows, args.teacher)
    s_best_all = min([r for r in rows + int8_rows if r["model"] in (str(args.student), str(int8[args.student]))
                      and r["p50_ms"] is not None and r["accurate"]], key=lambda r: r["p50_ms"])
    t_best_all = min([r for r in rows + int8_rows if r["model"] in (str(args.teacher), str(int8[args.teacher]))
                      and r["p50_ms"] is not None and r["accurate"]], key=lambda r: r["p50_ms"])
    t_fp32_iou = row_of(rows, args.teacher, "torch", "fp32", cl=False)["iou"]
    checks: list[dict[str, Any]] = [
        {"check": "student (best backend) vs plain base-4 U-Net, eager fp32", "value": plain_eager["p50_ms"] / s_best_all["p50_ms"],
         "target": ">= 8x", "detail": f"{s_best_all['backend']} {s_best_all['precision']} {s_best_all['p50_ms']:.2f} ms vs "
                                      f"{plain_eager['p50_ms']:.2f} ms"},
        {"check": "student IoU on that backend / teacher IoU (fp32)", "value": s_best_all["iou"] / t_fp32_iou,
         "target": ">= 0.97", "detail": f"{s_best_all['iou']:.4f} / {t_fp32_iou:.4f}"},
        {"check": "teacher/student speed-up (best backends) vs GFLOP ratio / 2",
         "value": (t_best_all["p50_ms"] / s_best_all["p50_ms"]) / (t_best["gflops"] / s_best["gflops"] / 2),
         "target": ">= 1", "detail": f"speed-up {t_best_all['p50_ms'] / s_best_all['p50_ms']:.1f}x, "
                                     f"GFLOP ratio {t_best['gflops'] / s_best['gflops']:.1f}x"},
    ]
    for name, group in (("student", [r for r in rows if r["model"] == str(args.student)]),
                        ("classic 31M U-Net", classic_rows)):
        ok = [r for r in group if r["p50_ms"] is not None and r["accurate"]]
        if not ok:
            continue
        fastest = min(r["p50_ms"] for r in ok)
        chosen = next(r for r in group if r["chosen"])
        checks.append({"check": f"auto's pick vs the fastest, {name}", "value": chosen["p50_ms"] / fastest,
                       "target": "<= 1.10", "detail": f"auto: {chosen['backend']} {chosen['precision']} "
                                                      f"{chosen['p50_ms']:.2f} ms; fastest {fastest:.2f} ms"})
    for m in (args.teacher, args.student):
        fp32 = row_of(rows, m, "torch", "fp32", cl=False)
        for label, r in (("bf16 torch", row_of(rows, m, "torch", "bf16")), ("bf16 openvino", row_of(rows, m, "openvino", "bf16")),
                         ("int8 onnxruntime", row_of(int8_rows, int8[m], "onnxruntime", "int8")),
                         ("int8 openvino", row_of(int8_rows, int8[m], "openvino", "int8"))):
            if r is None or r.get("iou") is None:
                continue
            checks.append({"check": f"{m.parent.name} {label}: IoU change vs fp32", "value": r["iou"] - fp32["iou"],
                           "target": "within 0.01", "detail": f"{r['p50_ms']:.2f} ms vs fp32 torch {fp32['p50_ms']:.2f} ms "
                                                              f"({fp32['p50_ms'] / r['p50_ms']:.2f}x)"})
    common.finish(args.tag, checks, extra={"models": rows, "int8": int8_rows, "classic": classic_rows},
                  title="Deployment checks (512x512 gray, batch 1)")


if __name__ == "__main__":
    main()

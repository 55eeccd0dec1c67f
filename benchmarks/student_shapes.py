"""Which student shape is fastest on a CPU, and what it costs in accuracy (docs/deployment.md).

A tiny U-Net at full resolution is bound by memory traffic and per-layer overhead, not arithmetic:
the membrane student (base 4, depth 3) has 64x fewer parameters and 21x fewer FLOPs than its
teacher and is only ~5x faster. This measures, for each design, parameters, GFLOPs and latency
(p50 and p90 of batch 1, gray, fp32) on each CPU backend: torch eager (NCHW and channels-last), ONNX
Runtime (the export ``segdistill export`` writes, run as ``predict`` runs it) and OpenVINO (when
importable; the same ONNX graph reshaped to the static input). Every round runs every (design,
backend) pair once, starting one further along each round, so that noise hits all alike; the medians
are over rounds.

With ``--distill`` every design is first distilled on membranes (configs/membrane_distill.yaml, the
design as ``distill.student.args``) and its validation IoU reported; the latencies are then those of
the distilled models, and a plot of IoU against latency (one point per design and backend) is saved
beside the JSON.

    python benchmarks/student_shapes.py [--tag NAME] [--threads 2] [--size 512] [--rounds 30]
    python benchmarks/student_shapes.py --distill [--jobs 2] [--seeds 0 1] [--set KEY=VALUE ...]
    python benchmarks/student_shapes.py --quick   # smoke run: 64x64, 2 rounds
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import torch
from torch import nn

from segdistill.checkpoint import ModelInfo, load_model
from segdistill.config import load_config
from segdistill.data.preprocess import Preprocess
from segdistill.deploy.export import onnx_bytes
from segdistill.inference.backends import OnnxRuntimeBackend, pad_multiple
from segdistill.jobs.distill import distill
from segdistill.measure import count_gflops, count_params
from segdistill.models import create_model, resolved_args

DESIGNS: dict[str, dict[str, Any]] = {
    # The reference: plain base 4, 4 levels, transposed-convolution up-sampling (122K).
    "reference_b4d4": {"base": 4, "depth": 4},
    # The first membrane student (30.5K).
    "plain_b4d3": {"base": 4, "depth": 3},
    # Space-to-depth stem: the whole network at half resolution.
    "unshuffle_b4d3": {"base": 4, "depth": 3, "stem": "unshuffle"},
    "unshuffle_b4d4": {"base": 4, "depth": 4, "stem": "unshuffle"},
    "unshuffle_b6d3": {"base": 6, "depth": 3, "stem": "unshuffle"},
    "unshuffle_b8d3": {"base": 8, "depth": 3, "stem": "unshuffle"},
    # A quarter of the resolution: the width it affords at the same latency (the recipe's: base 16).
    "unshuffle4_b8d3": {"base": 8, "depth": 3, "stem": "unshuffle4"},
    "unshuffle4_b16d3": {"base": 16, "depth": 3, "stem": "unshuffle4"},
    # Depthwise-separable blocks, alone and with the stem (wider: they are much cheaper per channel).
    "dwsep_b4d3": {"base": 4, "depth": 3, "block": "dwsep"},
    "dwsep_b8d3": {"base": 8, "depth": 3, "block": "dwsep"},
    "unshuffle_dwsep_b8d3": {"base": 8, "depth": 3, "stem": "unshuffle", "block": "dwsep"},
    "unshuffle_dwsep_b12d3": {"base": 12, "depth": 3, "stem": "unshuffle", "block": "dwsep"},
}
BACKENDS = ("torch", "torch_cl", "onnxruntime", "openvino")
REFERENCE = "reference_b4d4"


def _unet_args(text: str) -> dict[str, int | str]:
    """"base=6,depth=3,stem=unshuffle" -> {"base": 6, "depth": 3, "stem": "unshuffle"}."""
    try:
        pairs = [kv.split("=") for kv in text.split(",")]
        return {k.strip(): int(v) if v.strip().isdigit() else v.strip() for k, v in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE[,NAME=VALUE...], got {text!r}") from None


def _yaml(args: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in args.items()) + "}"


def _have_openvino() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _openvino(blob: bytes, shape: tuple[int, ...], threads: int) -> Callable[[Any], Any]:
    """The ONNX graph compiled by OpenVINO for the CPU: static ``shape``, fp32, ``threads`` threads."""
    import openvino as ov

    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(blob)
        model = core.read_model(str(path))
        model.reshape(list(shape))
        return core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
                                                 "PERFORMANCE_HINT": "LATENCY"})


def runners(model: nn.Module, info: ModelInfo, backends: list[str], size: int, threads: int) -> dict[str, Callable[[], Any]]:
    """One zero-argument call per backend, each a batch-1 forward pass of a (1, C, size, size) image."""
    model = model.float().cpu().eval()
    x = torch.randn(1, info.preprocess.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    out: dict[str, Callable[[], Any]] = {}
    if "torch" in backends:
        out["torch"] = lambda: model(x)
    if "torch_cl" in backends:
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        out["torch_cl"] = lambda: cl(x_cl)
    blob = onnx_bytes(model, info) if {"onnxruntime", "openvino"} & set(backends) else b""
    if "onnxruntime" in backends:
        ort = OnnxRuntimeBackend(blob, pad_multiple(info), threads)
        out["onnxruntime"] = lambda: ort(x)
    if "openvino" in backends:
        compiled = _openvino(blob, tuple(x.shape), threads)
        x_np = x.numpy()
        out["openvino"] = lambda: compiled(x_np)
    return out


@torch.inference_mode()
def interleaved_latency(calls: dict[tuple[str, str], Callable[[], Any]], rounds: int, warmup: int) -> dict[tuple[str, str], list[float]]:
    """Milliseconds of each call over ``rounds`` rounds (after ``warmup``); each round runs every call
    once, starting one further along the list than the round before."""
    keys = list(calls)
    times: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    for r in range(warmup + rounds):
        k = r % len(keys)
        for key in keys[k:] + keys[:k]:
            t0 = time.perf_counter()
            calls[key]()
            if r >= warmup:
                times[key].append((time.perf_counter() - t0) * 1000)
    return times


def _distill_one(config: str, overrides: list[str]) -> dict[str, Any]:
    r = distill(load_config(config, overrides), overwrite=True)
    s = r.report["student"]
    return {"run_dir": str(r.run_dir), "val_iou": s["val_iou"], "agreement": s["agreement"],
            "teacher_val_iou": r.report["teacher"]["val_iou"], "minutes": r.report["minutes"]}


def distill_designs(designs: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Distil every design with every seed; per design the mean IoU and agreement over the seeds and
    the run folder of its first seed (whose model the latencies are measured on)."""
    jobs = []
    for name, dargs in designs.items():
        for seed in args.seeds:
            overrides = [f"name=shapes_{name}_s{seed}", f"output_dir={args.out}", f"seed={seed}",
                         f"distill.student.args={_yaml(dargs)}", *([f"train.epochs={args.epochs}"] if args.epochs else []),
                         *args.extra]
            jobs.append((name, (args.config, overrides)))
    # The first job alone fills the teacher-target cache, so parallel jobs never race to run the teacher.
    done = common.run_jobs(_distill_one, [jobs[0][1]])
    done += common.run_jobs(_distill_one, [a for _, a in jobs[1:]], args.jobs)
    out: dict[str, dict[str, Any]] = {}
    for (name, _), res in zip(jobs, done):
        out.setdefault(name, {"runs": []})["runs"].append(res)
    for entry in out.values():
        runs = entry["runs"]
        entry["val_iou"] = statistics.mean(r["val_iou"] for r in runs) if all(r["val_iou"] is not None for r in runs) else None
        entry["agreement"] = statistics.mean(r["agreement"] for r in runs)
        entry["model"] = str(Path(runs[0]["run_dir"]) / "model.safetensors")
    return out


def plot(rows: list[dict[str, Any]], backends: list[str], path: Path, title: str, teacher_iou: float | None) -> None:
    """IoU against latency, one point per design and backend; the teacher's IoU as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    markers = dict(zip(BACKENDS, "osD^"))
    for b in backends:
        pts = [(r[f"{b} ms"], r["val IoU"], r["design"]) for r in rows if r.get(f"{b} ms") and r.get("val IoU") is not None]
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=markers[b], label=b)
        for xv, yv, name in pts:
            ax.annotate(name, (xv, yv), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if teacher_iou is not None:
        ax.axhline(teacher_iou, color="gray", linestyle="--", linewidth=1, label=f"teacher ({teacher_iou:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("latency p50, ms (batch 1, log scale)")
    ax.set_ylabel("validation IoU")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--designs", nargs="+", choices=list(DESIGNS), default=list(DESIGNS))
    ap.add_argument("--add", type=_unet_args, nargs="*", default=[], metavar="ARGS",
                    help="more designs as unet arguments, e.g. base=6,depth=3,stem=unshuffle,block=dwsep")
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tag", default="", help="results/student_shapes_TAG.json (and .png)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64x64, 2 rounds, 1 warm-up")
    ap.add_argument("--distill", action="store_true", help="also distil each design on membranes and report IoU")
    ap.add_argument("--config", default=str(common.ROOT / "configs" / "membrane_distill.yaml"))
    ap.add_argument("--out", default="runs/student_shapes", help="where the distillation runs go")
    ap.add_argument("--epochs", type=int, help="train.epochs of each distillation (default: the config's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--jobs", type=int, default=1, help="distillations at once, one thread each")
    ap.add_argument("--set", dest="extra", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more config overrides for the distillations (e.g. distill.teacher=PATH)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.rounds, args.warmup = 64, 2, 1
    backends = [b for b in args.backends if b != "openvino" or _have_openvino()]
    designs = {name: DESIGNS[name] for name in args.designs}
    for extra in args.add:
        designs["custom_" + "_".join(f"{k}{v}" for k, v in extra.items())] = extra
    trained = distill_designs(designs, args) if args.distill else {}

    torch.set_num_threads(args.threads)
    calls: dict[tuple[str, str], Callable[[], Any]] = {}
    rows: list[dict[str, Any]] = []
    for name, dargs in designs.items():
        if name in trained:
            model, info = load_model(trained[name]["model"])
        else:
            full = resolved_args("unet", **dargs)
            model, info = create_model("unet", **full).eval(), ModelInfo("unet", full, Preprocess())
        ch = info.preprocess.in_channels
        rows.append({"design": name, "args": _yaml(dargs), "params": count_params(model),
                     "GFLOPs": count_gflops(model, ch, args.size)})
        for backend, call in runners(model, info, backends, args.size, args.threads).items():
            calls[(name, backend)] = call
        print(f"{name}: ready ({', '.join(backends)})", flush=True)
    times = interleaved_latency(calls, args.rounds, args.warmup)

    latency: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        name = row["design"]
        for b in backends:
            t = sorted(times[(name, b)])
            p90 = t[min(len(t) - 1, int(round(0.9 * (len(t) - 1))))]
            latency.setdefault(name, {})[b] = {"p50": statistics.median(t), "p90": p90, "samples": t}
            row[f"{b} ms"] = statistics.median(t)
        best = min(backends, key=lambda b: row[f"{b} ms"])
        row["best"] = best
        if name in trained:
            row["val IoU"], row["agreement"] = trained[name]["val_iou"], trained[name]["agreement"]
    if REFERENCE in designs:
        ref = next(r for r in rows if r["design"] == REFERENCE)
        for row in rows:
            row["x vs reference (best)"] = ref[f"{ref['best']} ms"] / row[f"{row['best']} ms"]
    for row in rows:
        row["params"] = f"{row['params'] / 1e3:.1f}K"

    name = "student_shapes" + (f"_{args.tag}" if args.tag else "")
    title = (f"Student shapes: latency p50 in ms, batch 1, {args.size}x{args.size} gray, fp32, {args.threads} threads, "
             f"{args.rounds} interleaved rounds")
    versions = {"torch": torch.__version__}
    for mod in ("onnxruntime", "openvino"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    out = common.finish(name, rows, {"latency_ms": latency, "args": vars(args), "versions": versions,
                                     "distilled": trained}, title=title)
    if trained:
        png = out.with_suffix(".png")
        teacher = next(iter(trained.values()))["runs"][0]["teacher_val_iou"]
        plot(rows, backends, png, title, teacher)
        print(f"plot: {png}")


if __name__ == "__main__":
    main()

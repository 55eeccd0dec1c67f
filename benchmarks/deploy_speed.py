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
import json
from pathlib import Path
from typing import Any

import common
import torch

from segdistill.checkpoint import ModelInfo, read_model_info, save_model
from segdistill.deploy.quantize import export_int8
from segdistill.jobs.benchmark import benchmark_models
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


def row_of(rows: list[dict[str, Any]], model: Path, backend: str, precision: str, cl: bool | None = None) -> dict[str, Any] | None:
    for r in rows:
        if r["model"] == str(model) and r["backend"] == backend and r["precision"] == precision and \
                (cl is None or r["channels_last"] == cl):
            return r
    return None


def fastest(rows: list[dict[str, Any]], models: set[str], fp32_only: bool = False) -> dict[str, Any] | None:
    """The fastest accurate row of ``models`` (a model and its int8 file); ``fp32_only``: of the fp32
    rows only, what a CPU without native bf16 (and where int8 does not pay) is left with."""
    ok = [r for r in rows if r["model"] in models and r["p50_ms"] is not None and r["accurate"]
          and (not fp32_only or r["precision"] == "fp32")]
    return min(ok, key=lambda r: r["p50_ms"]) if ok else None


def key(r: dict[str, Any]) -> tuple[str, str, str, bool]:
    return r["model"], r["backend"], r["precision"], bool(r["channels_last"])


def interleaved(chosen: list[dict[str, Any]], rounds: int) -> dict[tuple[str, str, str, bool], float]:
    """``chosen`` rows (ways to run a model) timed again in interleaved rounds: every round runs each
    once, starting one further along, so that a teacher and its students are compared under the
    same load (``benchmark_models`` times one model after another, and this machine is shared).
    Returns the p50 ms of each :func:`key`."""
    import statistics
    import time

    from segdistill.inference.backends import Choice, build_backend
    from segdistill.inference.choose import probe_input

    keys = list(dict.fromkeys(key(r) for r in chosen))
    calls = []
    for model, backend, precision, cl in keys:
        info = read_model_info(Path(model))
        calls.append((build_backend(Choice(backend, precision, cl), Path(model), info), probe_input(info, (512, 512))))
    times: list[list[float]] = [[] for _ in keys]
    with torch.inference_mode():
        for r in range(3 + rounds):  # 3 warm-up rounds
            order = list(range(len(keys)))
            for i in order[r % len(order):] + order[:r % len(order)]:
                backend, x = calls[i]
                t0 = time.perf_counter()
                backend(x)
                if r >= 3:
                    times[i].append((time.perf_counter() - t0) * 1000)
    return {k: statistics.median(t) for k, t in zip(keys, times)}


def int8_of(rows: list[dict[str, Any]], model: str) -> set[str]:
    """The int8 export of ``model`` among ``rows`` (named as main() names them)."""
    name = f"{Path(model).parent.name}_{Path(model).stem}.int8.onnx"
    return {r["model"] for r in rows if Path(r["model"]).name == name}


Timings = dict[tuple[str, str, str, bool], float]


def student_rows(rows: list[dict[str, Any]], teacher: set[str], students: dict[str, set[str]], t_iou: float,
                 plain_ms: float, ms: dict[str, Timings]) -> list[dict[str, Any]]:
    """Every student (name -> its files: the model and its int8 export) against the teacher (its
    files), on the best backend of this machine and on the best fp32 one: latency (``ms``: the
    interleaved timings, else the row's own), the share of the teacher's fp32 IoU kept on that
    backend, speed-ups, and the GFLOP check (the speed-up over half the GFLOP ratio; >= 1 meets it)."""
    out = []
    for name, files in students.items():
        for label, fp32 in (("best", False), ("best fp32", True)):
            t, st = fastest(rows, teacher, fp32), fastest(rows, files, fp32)
            if t is None or st is None:
                continue
            mine = ms.get(name, {})
            t_ms, s_ms, ratio = mine.get(key(t), t["p50_ms"]), mine.get(key(st), st["p50_ms"]), t["gflops"] / st["gflops"]
            plain_ms = mine.get(("plain",), plain_ms)  # type: ignore[call-overload]
            out.append({"student": name, "on": label, "params": st["params"], "GFLOPs": st["gflops"],
                        "backend": f"{st['backend']} {st['precision']}", "ms": s_ms, "teacher ms": t_ms,
                        "IoU": st.get("iou"), "keeps": st["iou"] / t_iou if st.get("iou") is not None else None,
                        "vs plain eager": plain_ms / s_ms, "speed-up": t_ms / s_ms,
                        "GFLOP ratio": ratio, "GFLOP check": (t_ms / s_ms) / (ratio / 2)})
    return out


def print_students(doc: dict[str, Any], rounds: int) -> list[dict[str, Any]]:
    """The student table of a run (its results: models, int8), with every model's fastest way to
    run (any precision, and fp32 only) and the plain reference in eager fp32 timed again
    interleaved (``rounds``; 0: the benchmark's own timings)."""
    from segdistill.reports.tables import format_table

    rows = doc["models"] + doc.get("int8", [])
    models = list(dict.fromkeys(r["model"] for r in doc["models"]))
    teacher, students, plain = models[0], models[1:-1], models[-1]

    def files(m: str) -> set[str]:
        return {m} | int8_of(rows, m)

    plain_row = row_of(rows, Path(plain), "torch", "fp32", cl=False)
    ms: dict[str, Timings] = {}
    for m in students if rounds else []:
        # One session per student and kind: the teacher's and the student's fastest way (any
        # precision, with the plain reference in eager fp32; then fp32 only), nothing else loaded,
        # as a deployment would run them (idle runtimes of other models would share the cores).
        mine: Timings = {}
        for fp32 in (False, True):
            chosen = [r for r in (fastest(rows, files(teacher), fp32), fastest(rows, files(m), fp32)) if r is not None]
            got = interleaved(chosen + ([] if fp32 else [plain_row]), rounds)
            mine.update(got)
            if not fp32:
                mine[("plain",)] = got[key(plain_row)]  # type: ignore[index]
        ms[Path(m).parent.name] = mine
    t_iou = row_of(rows, Path(teacher), "torch", "fp32", cl=False)["iou"]
    out = student_rows(rows, files(teacher), {Path(m).parent.name: files(m) for m in students}, t_iou,
                       plain_row["p50_ms"], ms)
    how = f"timed again, {rounds} interleaved rounds with each student" if rounds else "the benchmark's timings"
    print(format_table(out, title=f"\nStudents against the teacher ({how}; the GFLOP check: speed-up / half the GFLOP "
                                  "ratio, >= 1 meets it)"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path)
    ap.add_argument("--student", type=Path, help="the recipe's default student")
    ap.add_argument("--students", type=Path, nargs="*", default=[], help="more students to place on the trade-off")
    ap.add_argument("--out", type=Path, default=common.ROOT / "runs" / "deploy_speed")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--skip-classic", action="store_true", help="leave out the 31M U-Net (slow)")
    ap.add_argument("--tag", default="deploy_speed")
    ap.add_argument("--from-json", type=Path, help="only the student table, from an earlier run's results")
    ap.add_argument("--rounds", type=int, default=30, help="interleaved rounds of the student table (0: none)")
    args = ap.parse_args()
    if args.from_json:
        print_students(json.loads(args.from_json.read_text(encoding="utf-8")), args.rounds)
        return
    if args.teacher is None or args.student is None:
        ap.error("--teacher and --student are required (or --from-json)")
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

    # The checks: the recipe's student against the plain reference and the teacher, from the
    # interleaved timings of the student table.
    doc = {"models": rows, "int8": int8_rows, "classic": classic_rows}
    students = print_students(doc, args.rounds)
    mine = next(r for r in students if r["student"] == args.student.parent.name and r["on"] == "best")
    fp32 = next(r for r in students if r["student"] == args.student.parent.name and r["on"] == "best fp32")
    checks: list[dict[str, Any]] = [
        {"check": "student (best backend) vs plain base-4 U-Net, eager fp32", "value": mine["vs plain eager"],
         "target": ">= 8x", "detail": f"{mine['backend']} {mine['ms']:.2f} ms vs {mine['ms'] * mine['vs plain eager']:.2f} ms"},
        {"check": "student IoU on that backend / teacher IoU (fp32)", "value": mine["keeps"], "target": ">= 0.97",
         "detail": f"{mine['IoU']:.4f}"},
        {"check": "teacher/student speed-up (best backends) vs GFLOP ratio / 2", "value": mine["GFLOP check"],
         "target": ">= 1", "detail": f"speed-up {mine['speed-up']:.1f}x, GFLOP ratio {mine['GFLOP ratio']:.1f}x"},
        {"check": "the same, fp32 backends only (a CPU without native bf16)", "value": fp32["GFLOP check"],
         "target": "(>= 1)", "detail": f"speed-up {fp32['speed-up']:.1f}x, GFLOP ratio {fp32['GFLOP ratio']:.1f}x"},
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
    common.finish(args.tag, checks, extra={**doc, "students": students},
                  title="Deployment checks (512x512 gray, batch 1)")


if __name__ == "__main__":
    main()

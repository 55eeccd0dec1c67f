"""``segdistill benchmark MODEL...``: how fast models run on this machine, per backend and precision.

For each model and each way to run it (inference/backends.py ``candidates``): parameters, GFLOPs at
the size, latency p50/p95 at batch 1, throughput at the best batch size, peak memory, the achieved
GFLOP/s beside this machine's measured matrix-multiply rate, and (``--data``) the IoU it scores, so
that a faster precision's accuracy cost is on the same line. The candidates run in interleaved
rounds (measure.py ``time_backends``), so noise from other work hits all of them alike, and the
one ``--backend auto`` would pick is marked. The first model is the reference for speed-ups.

A run folder's models also get the run's one latency figure (measure.model_latency, kept in
RUN/latency.json): speed.json's ``latency`` states it beside the per-backend comparison, at the size
it was recorded at, so distill_report.json, search.json, speed.json and report.html agree.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import ModelInfo, read_model_info
from ..errors import SegdistillError
from ..fileio import atomic_path, write_json
from ..inference.backends import Choice, candidates, is_ir, is_onnx, onnx_precision
from ..inference.choose import cache_key, remember
from ..measure import (
    LATENCY_JSON,
    choose,
    cpu_features,
    matmul_gflops,
    model_gflops,
    model_latency,
    recorded_size,
    throughput,
    time_backends,
)
from ..reports.tables import format_table
from ..runtime import cpu_description, select_device, set_threads
from . import model_file

log = logging.getLogger("segdistill")


def _default_size(info: ModelInfo) -> tuple[int, int]:
    side = info.preprocess.max_side or 512
    return side, side


def _iou(path: Path, data: str, choice: Choice, cache: dict[tuple[str, str], float]) -> float | None:
    from ..jobs.evaluate import evaluate_model

    key = (choice.backend, choice.precision)
    if key not in cache:
        precision = "fp32" if choice.precision == "int8" else choice.precision  # an int8 file runs int8 by itself
        with tempfile.TemporaryDirectory() as tmp:
            res = evaluate_model(path, data, out=Path(tmp) / "eval.csv", backend=choice.backend, precision=precision)
        cache[key] = res.metrics["iou"]
    return cache[key]


def _time_model(path: Path, backend: str, size: list[int] | None, batch_sizes: list[int], runs: int,
                data: str | None, record: Path | None, latency: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One model's rows: every way to run it, timed in interleaved rounds (and its record's latency
    added to ``latency``)."""
    info = read_model_info(path)
    hw = (size[0], size[-1]) if size else _default_size(info)
    params, gflops = model_gflops(info, hw)
    onnx_file = is_onnx(path)
    device = torch.device("cpu") if onnx_file else select_device("auto")  # torch rows on a GPU where there is one
    choices = candidates(onnx_file, onnx_precision(path) if onnx_file else "fp32", device, ir=is_ir(path))
    if backend not in ("all", "auto"):
        choices = [c for c in choices if c.backend == backend] or [Choice(backend)]
    log.info("timing %s at %dx%d: %s", path.name, *hw, ", ".join(c.label() for c in choices))
    timings = time_backends(path, info, hw, choices, runs=runs, keep=True, device=device)
    if record is not None and not onnx_file:
        latency[str(path)] = model_latency(info, hw, record).to_dict()
    chosen = choose(timings) if timings[0].p50_ms is not None else None
    if chosen is not None and backend in ("all", "auto") and device.type == "cpu":
        remember(cache_key(path, hw), timings, chosen)  # what predict/evaluate's auto will use
    x = timings[0].probe
    ious: dict[tuple[str, str], float] = {}
    model_rows = []
    for t in timings:
        row: dict[str, Any] = {"model": str(path), "backend": t.choice.backend, "precision": t.choice.precision,
                               "channels_last": t.choice.channels_last, "size": list(hw), "params": params,
                               "gflops": round(gflops, 4), "p50_ms": t.p50_ms, "p95_ms": t.p95_ms,
                               "agreement": t.agreement, "max_diff": t.max_diff, "accurate": t.accurate,
                               "error": t.error, "chosen": chosen is not None and t is chosen}
        if t.p50_ms is not None and t.backend is not None:
            row["gflops_per_s"] = gflops / (t.p50_ms / 1000)
            row["best_batch"], row["images_per_s"], row["peak_mb"] = throughput(t, x, batch_sizes)
            if data:
                row["iou"] = _iou(path, data, t.choice, ious)
        model_rows.append(row)
    return model_rows


def benchmark_models(models: list[str | Path], backend: str = "all", size: list[int] | None = None,
                     batch_sizes: list[int] | None = None, runs: int = 20, json_out: str | Path | None = None,
                     data: str | None = None, extra: dict[str, Any] | None = None,
                     record: Path | None = None) -> list[dict[str, Any]]:
    """Time every model on every installed backend and precision (``backend``: all, auto, or one
    backend's precisions); returns the rows (also printed, and written to ``json_out`` with
    ``extra``'s keys beside them). ``record``: a run folder's latency.json, whose figure for each
    model file (measured now where it has none) goes into ``json_out`` as ``latency``."""
    batch_sizes = batch_sizes or [1, 2, 4, 8]
    features = cpu_features()
    peak_fp32 = matmul_gflops()
    peak_bf16 = matmul_gflops(torch.bfloat16) if features["native_bf16"] else None
    rows: list[dict[str, Any]] = []
    reference_ms: float | None = None
    reference_gflops: float | None = None
    latency: dict[str, dict[str, Any]] = {}
    for model in models:
        model_rows = _time_model(Path(model), backend, size, batch_sizes, runs, data, record, latency)
        gflops = model_rows[0]["gflops"]
        best = min((r["p50_ms"] for r in model_rows if r["p50_ms"] is not None and r["accurate"]), default=None)
        if reference_ms is None:
            reference_ms, reference_gflops = best, gflops
        elif best is not None and reference_ms is not None:
            for r in model_rows:
                r["speedup_vs_first"] = reference_ms / best
                r["gflop_ratio_vs_first"] = reference_gflops / gflops if gflops else None
        rows += model_rows
    _print(rows, features, peak_fp32, peak_bf16)
    if json_out:
        write_json(json_out, {"machine": {"cpu": cpu_description(), "threads": torch.get_num_threads(), **features,
                                          "matmul_gflops_fp32": peak_fp32, "matmul_gflops_bf16": peak_bf16},
                              "entries": rows, **({"latency": latency} if record is not None else {}), **(extra or {})})
    return rows


def run_models(run_dir: Path) -> dict[str, str]:
    """The models of a run folder, path -> name: a distillation's teacher, student and labels-only
    twin (the teacher first, the reference for speed-ups); a training run's model."""
    from ..config import load_config

    distilled = (run_dir / "distill_report.json").is_file()
    models = {}
    if distilled:
        models[model_file(str(load_config(run_dir / "config.yaml").distill.teacher))] = "teacher"
    models[str(run_dir / "model.safetensors")] = "student" if distilled else run_dir.name
    if (run_dir / "baseline" / "model.safetensors").is_file():
        models[str(run_dir / "baseline" / "model.safetensors")] = "student, labels only"
    return models


def benchmark_run(run_dir: str | Path, backend: str = "all", size: list[int] | None = None,
                  batch_sizes: list[int] | None = None, runs: int = 20, data: str | None = None,
                  json_out: str | Path | None = None) -> list[dict[str, Any]]:
    """``segdistill benchmark RUN_DIR``: the run's models (:func:`run_models`) on every backend,
    each backend's IoU on the run's labelled data (``data``: other labelled data), written to
    RUN_DIR/speed.json, and the run's report.html rebuilt with the Speed section (IoU against
    latency, the trade-off a deployment chooses on)."""
    from ..config import load_config
    from ..reports.pages import SPEED_JSON
    from .report import run_report

    run_dir = Path(run_dir)
    models = run_models(run_dir)
    missing = [m for m in models if not Path(m).is_file()]
    if missing:
        raise SegdistillError(f"{run_dir}: model file {missing[0]} is missing")
    data = data or load_config(run_dir / "config.yaml").data.root
    if data is None:
        log.info("%s has no labelled data: latency only (--data DIR adds each backend's IoU)", run_dir)
    recorded = recorded_size(run_dir / LATENCY_JSON)
    size = size or (list(recorded) if recorded else None)  # the run's latency figures are at that size
    rows = benchmark_models(list(models), backend, size, batch_sizes, runs, run_dir / SPEED_JSON,
                            str(data) if data else None, extra={"labels": models}, record=run_dir / LATENCY_JSON)
    if json_out:
        with atomic_path(json_out) as tmp:  # a copy is written like every output: whole or not at all
            shutil.copyfile(run_dir / SPEED_JSON, tmp)
    log.info("report with the speed section: %s", run_report(run_dir))
    return rows


def _print(rows: list[dict[str, Any]], features: dict[str, bool], peak_fp32: float, peak_bf16: float | None) -> None:
    names = {r["model"] for r in rows}
    short = {m: Path(m).name for m in names}
    if len(set(short.values())) < len(names):  # model.safetensors of several runs: say whose
        short = {m: "/".join(Path(m).parts[-2:]) for m in names}
    shown = []
    for r in rows:
        shown.append({"model": short[r["model"]], "backend": r["backend"] + (" CL" if r["channels_last"] else ""),
                      "precision": r["precision"], "p50 ms": r["p50_ms"], "p95 ms": r["p95_ms"],
                      "img/s (batch)": f"{r['images_per_s']:.1f} ({r['best_batch']})" if "images_per_s" in r else "",
                      "GFLOP/s": r.get("gflops_per_s"), "peak MB": r.get("peak_mb"),
                      "agrees": "" if r["agreement"] is None else f"{r['agreement']:.2%}",
                      **({"IoU": r["iou"]} if "iou" in r else {}),
                      "": "<- auto" if r["chosen"] else ("" if r["accurate"] else (r["error"] or "disagrees")[:40])})
    flags = ", ".join(k for k, v in features.items() if v) or "none of AVX2/AVX-512/bf16/VNNI"
    title = (f"{cpu_description()}; {torch.get_num_threads()} threads; features: {flags}; matmul {peak_fp32:.0f} GFLOP/s fp32"
             + (f", {peak_bf16:.0f} bf16" if peak_bf16 else ""))
    print(format_table(shown, title=title))
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    for name, group in by_model.items():
        r = group[0]
        line = f"{name}: {r['params'] / 1e6:.3f}M parameters, {r['gflops']:.2f} GFLOPs at {r['size'][0]}x{r['size'][1]}"
        if "speedup_vs_first" in r:
            line += f"; {r['speedup_vs_first']:.1f}x faster than the first model (GFLOP ratio {r['gflop_ratio_vs_first']:.1f}x)"
        print(line)


def run_benchmark(models: list[str], backend: str = "all", size: list[int] | None = None,
                  batch_sizes: list[int] = (1, 2, 4, 8), runs: int = 20, data: str | None = None,  # type: ignore[assignment]
                  json_out: str | None = None, threads: int | str | None = None) -> None:
    """The benchmark command: one run folder alone is benchmarked as a run (:func:`benchmark_run`),
    anything else as model files (the first is the reference)."""
    set_threads(threads or "auto")
    run_dir = Path(models[0])
    if len(models) == 1 and (run_dir / "config.yaml").is_file() and (run_dir / "model.safetensors").is_file():
        benchmark_run(run_dir, backend=backend, size=size, batch_sizes=batch_sizes, runs=runs, data=data,
                      json_out=json_out)
        return
    benchmark_models([model_file(m) for m in models], backend=backend, size=size, batch_sizes=batch_sizes,
                     runs=runs, json_out=json_out, data=data)

"""Backends beyond torch (inference/backends.py, choose.py), int8 export (deploy/quantize.py) and
``segdistill benchmark`` (jobs/benchmark.py): outputs match eager PyTorch, ``auto`` picks by measured
timings and never a slower or disagreeing candidate, the choice is cached, the benchmark's JSON."""

from __future__ import annotations

import json

import pytest
import torch

from segdistill.checkpoint import load_model, read_model_info
from segdistill.cli import main
from segdistill.errors import SegdistillError
from segdistill.inference import choose as choose_mod
from segdistill.inference.backends import Choice, OpenVinoBackend, build_backend, onnx_precision
from segdistill.inference.choose import open_backend
from segdistill.measure import Timing, choose

pytest.importorskip("onnxruntime")


def _t(backend: str, precision: str, ms: float | None, diff: float = 0.0, agree: float = 1.0, error: str | None = None) -> Timing:
    return Timing(Choice(backend, precision), times_ms=[] if ms is None else [ms, ms, ms], max_diff=diff, agreement=agree,
                  error=error)


def test_auto_picks_the_fastest_accurate_candidate_and_never_a_slower_one():
    ref = _t("torch", "fp32", 10.0)
    # Faster but wrong (a broken conversion; bf16 whose masks disagree; a failed build) never wins.
    table = [ref, _t("onnxruntime", "fp32", 4.0, diff=0.2), _t("openvino", "bf16", 3.0, agree=0.95),
             _t("openvino", "fp32", 2.0, error="cannot compile"), _t("onnxruntime", "int8", 6.0, agree=0.995)]
    assert choose(table).choice == Choice("onnxruntime", "int8")
    # When every other candidate is slower (int8 slower than fp32, as on some CPUs), the reference stays.
    slower = [ref, _t("onnxruntime", "int8", 14.0, agree=1.0), _t("openvino", "fp32", 10.5, diff=1e-6)]
    assert choose(slower) is ref
    assert choose([ref, _t("openvino", "bf16", 5.0, agree=0.999)]).choice == Choice("openvino", "bf16")
    with pytest.raises(SegdistillError):
        choose([_t("torch", "fp32", None, error="no")])


def _runtimes() -> list[str]:
    names = ["onnxruntime"]
    try:
        import openvino  # noqa: F401

        names.append("openvino")
    except ImportError:
        pass
    return names


@pytest.mark.parametrize("runtime", _runtimes())
@pytest.mark.parametrize("shape", [(1, 1, 333, 500), (3, 1, 333, 500), (1, 1, 512, 512), (3, 1, 512, 512)])
def test_runtimes_match_eager_pytorch_in_fp32(tiny_model, runtime, shape):
    model, info = load_model(tiny_model)
    backend = build_backend(Choice(runtime, "fp32"), tiny_model, info, model=model)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = torch.sigmoid(model(x))
    got = torch.sigmoid(backend(x))
    assert got.shape == ref.shape and float((got - ref).abs().max()) < 1e-4


def test_openvino_is_a_backend_of_predict_when_installed(tiny_model, synth_dir, tmp_path):
    pytest.importorskip("openvino")
    backend, _ = open_backend(tiny_model, "openvino")
    assert isinstance(backend, OpenVinoBackend) and backend.describe() == "openvino fp32"
    for name, extra in (("torch", ["--backend", "torch"]), ("ov", ["--backend", "openvino"])):
        assert main(["-q", "predict", str(tiny_model), str(synth_dir / "images"), "--out", str(tmp_path), "--name", name,
                     *extra]) == 0
    ref = {p.name: p.read_bytes() for p in (tmp_path / "torch").glob("*.png")}
    assert len(ref) == 12 and {p.name: p.read_bytes() for p in (tmp_path / "ov").glob("*.png")} == ref


def test_int8_export_is_calibrated_checked_and_runs(tiny_model, synth_dir, tmp_path, capsys):
    out = tmp_path / "tiny.int8.onnx"
    with pytest.raises(SystemExit) as e:  # no calibration images: refused while parsing
        main(["-q", "export", str(tiny_model), "--int8", "--out", str(out)])
    assert e.value.code == 2
    assert "--calibrate" in capsys.readouterr().err and not out.exists()
    assert main(["export", str(tiny_model), "--int8", "--calibrate", str(synth_dir / "images"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "int8" in printed and "agree with fp32" in printed
    assert onnx_precision(out) == "int8" and read_model_info(out).to_json() == read_model_info(tiny_model).to_json()
    backend, _ = open_backend(out)
    assert backend.describe() == "onnxruntime int8"
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    model, info = load_model(tiny_model)
    with torch.no_grad():
        agree = float(((torch.sigmoid(model(x)) > 0.5) == (torch.sigmoid(backend(x)) > 0.5)).float().mean())
    assert agree > 0.9
    report = tmp_path / "e.csv"
    assert main(["-q", "evaluate", str(out), "--data", str(synth_dir), "--all", "--out", str(report)]) == 0
    assert json.loads(report.with_suffix(".json").read_text(encoding="utf-8"))["backend"] == "onnxruntime int8"


def test_auto_measures_once_then_uses_the_cached_choice(tiny_model, synth_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("SEGDISTILL_CACHE", str(tmp_path / "cache"))  # the choice must not leak into other tests
    image = sorted((synth_dir / "images").iterdir())[0]
    backend, _ = open_backend(tiny_model, "auto", measure_on=image)
    cached = choose_mod.cached_choice(tiny_model, choose_mod.working_size(image, read_model_info(tiny_model)))
    assert cached is not None and backend.name == cached.backend

    def no_measuring(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr(choose_mod, "time_backends", no_measuring)
    again, _ = open_backend(tiny_model, "auto", measure_on=image)
    assert again.name == backend.name and again.precision == backend.precision
    # Without a job big enough to measure and nothing cached at that size, auto is the plain default.
    monkeypatch.setenv("SEGDISTILL_CACHE", str(tmp_path / "empty-cache"))
    assert open_backend(tiny_model, "auto")[0].name == "torch"


def test_benchmark_writes_a_table_and_json_with_the_auto_choice_marked(tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SEGDISTILL_CACHE", str(tmp_path / "cache"))  # benchmark caches what auto picks
    out = tmp_path / "bench.json"
    args = ["benchmark", str(tiny_model), str(tiny_model), "--size", "64", "--runs", "3", "--batch-sizes", "1", "2",
            "--json", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "p50 ms" in printed and "<- auto" in printed and "GFLOP/s" in printed
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert {"cpu", "avx2", "avx512", "native_bf16", "vnni", "matmul_gflops_fp32"} <= set(doc["machine"])
    entries = doc["entries"]
    for e in entries:
        assert {"model", "backend", "precision", "size", "p50_ms", "p95_ms", "gflops", "params", "chosen"} <= set(e)
        assert e["size"] == [64, 64] and e["gflops"] > 0 and e["params"] > 0
    first = [e for e in entries if e is entries[0] or e["model"] == entries[0]["model"]][: len(entries) // 2]
    assert sum(e["chosen"] for e in first) == 1
    assert all(e["p50_ms"] <= e["p95_ms"] for e in entries if e["p50_ms"] is not None)
    assert "speedup_vs_first" in entries[-1] and entries[-1]["gflop_ratio_vs_first"] == pytest.approx(1.0)
    assert (tmp_path / "cache" / "backends.json").is_file()  # predict and evaluate's auto will use the pick


def test_a_models_latency_is_measured_once_per_machine_and_recorded_per_run(tmp_path, monkeypatch):
    from segdistill import measure
    from segdistill.checkpoint import ModelInfo
    from segdistill.data.preprocess import Preprocess

    monkeypatch.setenv("SEGDISTILL_CACHE", str(tmp_path / "cache"))
    timed = []
    real = measure.time_backends
    monkeypatch.setattr(measure, "time_backends", lambda *a, **k: timed.append(1) or real(*a, **k))
    info = ModelInfo("unet", {"base": 4, "depth": 2}, Preprocess(), 0.5, {})
    choices = [Choice("torch", "fp32", False)]
    first = measure.model_latency(info, (32, 32), tmp_path / "a" / "latency.json", choices=choices, runs=2)
    again = measure.model_latency(info, (32, 32), tmp_path / "b" / "latency.json", choices=choices, runs=2)
    assert len(timed) == 1 and again == first  # the second run folder takes this machine's figure
    key = measure.latency_key(info, (32, 32))
    for run in "ab":  # ... and each run folder records it, so the folder states one figure
        assert json.loads((tmp_path / run / "latency.json").read_text())[key]["ms"] == first.ms
    measure.model_latency(info, (48, 32), None, choices=choices, runs=2)  # another input: measured
    assert len(timed) == 2

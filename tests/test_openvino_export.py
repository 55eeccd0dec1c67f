"""``segdistill export --format openvino``: an OpenVINO IR (.xml + .bin) that carries the model
file's metadata, matches eager PyTorch within 1e-4 at any size, and that predict, evaluate and
benchmark take; a failed check leaves nothing; int8 from the calibrated QDQ graph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segdistill.checkpoint import load_model, read_model_info
from segdistill.cli import main
from segdistill.deploy.export import export_onnx
from segdistill.errors import SegdistillError
from segdistill.inference.backends import OpenVinoBackend, onnx_precision
from segdistill.inference.choose import open_backend

pytest.importorskip("openvino", reason="the [openvino] extra is not installed")


@pytest.fixture(scope="module")
def ir(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ir") / "tiny.xml"
    assert main(["-q", "export", str(tiny_model), "--format", "openvino", "--out", str(out)]) == 0
    return out


def test_the_ir_is_written_whole_and_carries_the_metadata(tiny_model: Path, ir: Path) -> None:
    assert sorted(p.name for p in ir.parent.iterdir()) == ["tiny.bin", "tiny.xml"]  # no staging folder left
    assert read_model_info(ir).to_json() == read_model_info(tiny_model).to_json()
    assert onnx_precision(ir) == "fp32"


@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (2, 1, 97, 131), (1, 1, 5, 7)])
def test_the_ir_matches_eager_pytorch_within_1e4(tiny_model: Path, ir: Path, shape: tuple[int, ...]) -> None:
    model, _ = load_model(tiny_model)
    backend, _ = open_backend(ir)  # auto: an IR runs on OpenVINO
    assert isinstance(backend, OpenVinoBackend) and backend.precision == "fp32"
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = torch.sigmoid(model(x))
    got = torch.sigmoid(backend(x))
    assert got.shape == ref.shape and float((got - ref).abs().max()) < 1e-4


def test_predict_evaluate_and_benchmark_take_the_ir(tiny_model: Path, ir: Path, synth_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    for name, model in (("torch", tiny_model), ("ir", ir)):
        assert main(["-q", "predict", str(model), str(synth_dir / "images"), "--out", str(tmp_path), "--name", name]) == 0
    torch_masks = {p.name: p.read_bytes() for p in (tmp_path / "torch").glob("*.png")}
    ir_masks = {p.name: p.read_bytes() for p in (tmp_path / "ir").glob("*.png")}
    assert len(ir_masks) == 12 and ir_masks == torch_masks
    out = tmp_path / "eval_ir.csv"
    assert main(["-q", "evaluate", str(ir), "--data", str(synth_dir), "--all", "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["backend"] == "openvino fp32"
    assert main(["-q", "benchmark", str(ir), "--size", "32", "--runs", "2", "--batch-sizes", "1",
                 "--json", str(tmp_path / "b.json")]) == 0
    rows = json.loads((tmp_path / "b.json").read_text())["entries"]
    assert rows and all(r["backend"] == "openvino" for r in rows)
    assert main(["predict", str(ir), str(synth_dir / "images"), "--out", str(tmp_path), "--backend", "onnxruntime"]) == 2
    assert "runs on openvino" in capsys.readouterr().err


def test_a_failed_check_leaves_no_ir(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(SegdistillError, match="openvino export differs from PyTorch .* nothing written"):
        export_onnx(tiny_model, tmp_path / "bad.xml", tolerance=-1.0, fmt="openvino")
    assert list(tmp_path.iterdir()) == []


def test_int8_ir(tiny_model: Path, synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.int8.xml"
    assert main(["-q", "export", str(tiny_model), "--format", "openvino", "--int8", "--calibrate",
                 str(synth_dir / "images"), "--out", str(out)]) == 0
    assert out.with_suffix(".bin").is_file() and onnx_precision(out) == "int8"
    backend, _ = open_backend(out)
    assert backend.describe() == "openvino int8"
    assert main(["-q", "predict", str(out), str(synth_dir / "images"), "--out", str(tmp_path), "--name", "p"]) == 0
    assert len(list((tmp_path / "p").glob("*.png"))) == 12

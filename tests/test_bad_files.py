"""Every command, a bad file of each format it reads: exit status 1 or 2, one line on stderr naming
the file, no traceback, nothing new in the output folder (docs/reliability.md, "Files by format").
Then the cases a reader must refuse before it allocates or follows anything: pixel bombs (peak
memory measured in a fresh process), ONNX and HDF5 data in other files, declared sizes that do not
fit, archives that unpack to far more than their size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from segdistill.cli import main
from segdistill.errors import DataError, ModelFileError, SegdistillError

from .badfiles import h5_with, png_header, tiny_onnx, y4m_header

BOMB = 30000  # pixels a side: 900 megapixels, 10x Pillow's decompression-bomb limit


# --------------------------------------------------------------------------------------------------
# The bad files, each made in a folder of its own; FOLDER in an argument stands for it.


def _images_with(folder: Path, synth_dir: Path, name: str, content: bytes, where: str = "images") -> Path:
    """A copy of the synthetic data with one file of ``where`` replaced by ``content``."""
    data = folder / "data"
    shutil.copytree(synth_dir, data)
    (data / where / "0003.png").unlink()
    (data / where / name).write_bytes(content)
    return data / where / name


def _run_with(folder: Path, synth_dir: Path, tiny_model: Path, file: str, content: bytes) -> Path:
    """A copy of a run folder (the tiny model's) with ``file`` replaced by ``content``."""
    run = folder / "run"
    shutil.copytree(tiny_model.parent, run)
    (run / file).write_bytes(content)
    return run / file


CORRUPT_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20
NOT_A_VIDEO = b"not a video at all " * 50

# (id, command line, the bad file: (name, maker), what the line says). In the command line, BAD is
# the bad file, MODEL the tiny model, DATA the synthetic data, OUT the output folder.
CASES: list[tuple[str, list[str], Callable[..., Path], str]] = [
    ("train-image", ["train", "--data", "BADDATA", "--output-dir", "OUT", "--epochs", "1"],
     lambda f, s, m: _images_with(f, s, "0003.png", CORRUPT_PNG), "corrupt or truncated image"),
    ("train-mask", ["train", "--data", "BADDATA", "--output-dir", "OUT", "--epochs", "1"],
     lambda f, s, m: _images_with(f, s, "0003.png", CORRUPT_PNG[:12], "masks"), "not an image file PIL can read"),
    ("train-config", ["train", "--data", "DATA", "--config", "BAD", "--output-dir", "OUT"],
     lambda f, s, m: _write(f / "c.yaml", b"train: [\x00"), "is not valid YAML"),
    ("train-resume-config", ["train", "--resume", "BADDIR"],
     lambda f, s, m: _run_with(f, s, m, "config.yaml", b"train: {epochs: [}"), "is not valid YAML"),
    ("evaluate-safetensors", ["evaluate", "BAD", "--data", "DATA", "--out", "OUT/e.csv"],
     lambda f, s, m: _write(f / "m.safetensors", os.urandom(300)), "m.safetensors"),
    ("evaluate-onnx-plain", ["evaluate", "BAD", "--data", "DATA", "--out", "OUT/e.csv"],
     lambda f, s, m: _write(f / "m.onnx", tiny_onnx(meta={})), "ONNX file without segdistill metadata"),
    ("evaluate-mask", ["evaluate", "MODEL", "--data", "BADDATA", "--out", "OUT/e.csv", "--all"],
     lambda f, s, m: _images_with(f, s, "0003.png", CORRUPT_PNG[:30], "masks"), "corrupt or truncated image"),
    ("report-json", ["report", "BADDIR"],
     lambda f, s, m: _run_with(f, s, m, "metrics.json", b"[1, 2"), "not a valid JSON file"),
    ("report-csv", ["report", "BADDIR"],
     lambda f, s, m: _run_with(f, s, m, "history.csv", b"epoch,val_iou\n1,\xff\xfe\n"), "not a readable CSV file"),
    ("predict-safetensors", ["predict", "BAD", "DATA/images", "--out", "OUT"],
     lambda f, s, m: _write(f / "m.safetensors", b"\x80\x04K\x01."), "pickle-based file"),
    ("predict-onnx-external", ["predict", "BAD", "DATA/images", "--out", "OUT"],
     lambda f, s, m: _write(f / "m.onnx", tiny_onnx(location="../../../etc/passwd")), "keeps its data in another file"),
    ("predict-image", ["predict", "MODEL", "BAD", "--out", "OUT"],
     lambda f, s, m: _write(f / "x.png", CORRUPT_PNG), "corrupt or truncated image"),
    ("predict-image-bomb", ["predict", "MODEL", "BAD", "--out", "OUT"],
     lambda f, s, m: _write(f / "x.png", png_header(BOMB, BOMB)), "decompression-bomb limit"),
    ("predict-video", ["predict", "MODEL", "BAD", "--out", "OUT"],
     lambda f, s, m: _write(f / "v.mp4", NOT_A_VIDEO), "not a video file PyAV can read"),
    ("predict-video-bomb", ["predict", "MODEL", "BAD", "--out", "OUT"],
     lambda f, s, m: _write(f / "v.mkv", y4m_header(BOMB, BOMB)), "v.mkv"),
    ("predict-config", ["predict", "MODEL", "DATA/images", "--config", "BAD", "--out", "OUT"],
     lambda f, s, m: _write(f / "c.yaml", b"\xff\xfe"), "not a text file"),
    ("export-safetensors", ["export", "BAD", "--out", "OUT/m.onnx"],
     lambda f, s, m: _write(f / "m.safetensors", b""), "empty file"),
    ("export-check-image", ["export", "MODEL", "--check", "BADDIR", "--out", "OUT/m.onnx"],
     lambda f, s, m: _write(f / "x.png", CORRUPT_PNG), "corrupt or truncated image"),
    ("export-calibrate-image", ["export", "MODEL", "--int8", "--calibrate", "BADDIR", "--out", "OUT/m.onnx"],
     lambda f, s, m: _write(f / "x.png", png_header(BOMB, BOMB)), "decompression-bomb limit"),
    ("benchmark-onnx-huge", ["benchmark", "BAD", "--json", "OUT/s.json", "--runs", "1"],
     lambda f, s, m: _write(f / "m.onnx", tiny_onnx(dims=[1 << 20, 1 << 20, 3, 3])), "declares"),
    ("benchmark-safetensors", ["benchmark", "BAD", "--json", "OUT/s.json", "--runs", "1"],
     lambda f, s, m: _write(f / "m.safetensors", b"{}"), "m.safetensors"),
    ("import-keras-not-hdf5", ["import-keras", "BAD", "OUT/m.safetensors"],
     lambda f, s, m: _write(f / "k.h5", b"PK\x03\x04" + bytes(100)), "not an HDF5 file"),
    ("import-keras-external", ["import-keras", "BAD", "OUT/m.safetensors"],
     lambda f, s, m: h5_with(f / "k.h5", "external"), "links to another file"),
    ("import-keras-huge", ["import-keras", "BAD", "OUT/m.safetensors"],
     lambda f, s, m: h5_with(f / "k.h5", "huge"), "declares shape (100000, 100000, 1, 1)"),
    ("import-keras-text", ["import-keras", "BAD", "OUT/m.safetensors"],
     lambda f, s, m: h5_with(f / "k.h5", "text"), "refusing to read it"),
    ("distill-teacher", ["distill", "--teacher", "BAD", "--images", "DATA/images", "--output-dir", "OUT"],
     lambda f, s, m: _write(f / "t.onnx", b"\x08\x07garbage"), "t.onnx"),
    ("distill-config", ["distill", "--teacher", "MODEL", "--images", "DATA/images", "--config", "BAD",
                        "--output-dir", "OUT"],
     lambda f, s, m: _write(f / "c.yaml", b"- a\n- b\n"), "the top level must be a mapping"),
    ("data-check-config", ["data", "check", "DATA", "--config", "BAD"],
     lambda f, s, m: _write(f / "c.yaml", b"data: {root: [}"), "is not valid YAML"),
    ("data-download-archive", ["data", "download", "kvasir-seg", "OUT/k", "--mirror", "MIRROR"],
     lambda f, s, m: _write(f / "kvasir-seg" / "kvasir-seg.zip", b"PK\x05\x06" + bytes(18)), "kvasir-seg.zip"),
]


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("argv", "make", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_file_is_one_line(argv: list[str], make: Callable[..., Path], message: str, synth_dir: Path,
                              tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    bad = make(tmp_path / "bad", synth_dir, tiny_model)
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    names = {"BADDIR": str(bad.parent), "BADDATA": str(bad.parents[1]), "BAD": str(bad), "MODEL": str(tiny_model),
             "DATA": str(synth_dir), "OUT": str(out),
             "MIRROR": (tmp_path / "bad").as_uri()}
    args = []
    for a in argv:
        for token, value in names.items():
            a = a.replace(token, value)
        args.append(a)
    watched = [bad.parent, tiny_model.parent]
    before = [_files(f) for f in watched]
    capsys.readouterr()
    rc = main(["-q", *args])
    stdout, err = capsys.readouterr()
    assert rc in (1, 2), (rc, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    assert bad.name in lines[0] or str(bad.parent) in lines[0], lines[0]
    assert _files(out) == [] and _files(cwd) == [], (_files(out), _files(cwd))
    assert [_files(f) for f in watched] == before


# --------------------------------------------------------------------------------------------------
# Pixel bombs: refused before decoding, in a fresh process whose peak memory is measured.

_PEAK = """
import sys
from segdistill.errors import DataError
kind, path = sys.argv[1], sys.argv[2]
try:
    if kind == "image":
        from segdistill.data.imageio import read_image
        read_image(path, "gray")
    else:
        from segdistill.data.video import VideoReader
        with VideoReader(path) as r:
            list(r.read())
    print("read")
except DataError as e:
    print("refused:", e)
# VmHWM: this process's peak resident memory (ru_maxrss would include the parent's from before exec).
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="peak memory from /proc/self/status")
@pytest.mark.parametrize(("kind", "name", "content"), [("image", "bomb.png", png_header(BOMB, BOMB)),
                                                      ("video", "bomb.mkv", y4m_header(BOMB, BOMB))])
def test_30000_pixel_sides_are_refused_before_decoding(kind: str, name: str, content: bytes, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    done = subprocess.run([sys.executable, "-c", _PEAK, kind, str(path)], capture_output=True, text=True, timeout=120)
    result, peak = done.stdout.strip().splitlines()
    assert result.startswith(f"refused: {path}: "), done.stdout + done.stderr
    assert float(peak) < 200, f"peak memory {peak} MB"


def test_video_frame_size_is_checked_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The size check itself (the 30000x30000 y4m above may already fail in FFmpeg's probe)."""
    from PIL import Image

    from segdistill.data.video import VideoReader

    path = tmp_path / "v.mkv"
    path.write_bytes(y4m_header(16, 12)[:-256] + bytes(192))
    with VideoReader(path) as r:
        assert [f.shape for _, f in r.read()] == [(12, 16, 3)]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match=r"v.mkv: video frames of 16x12 are larger than the decompression-bomb limit"):
        VideoReader(path)


# --------------------------------------------------------------------------------------------------
# ONNX: one field wrong at a time


@pytest.mark.parametrize(("change", "message"), [
    ({"meta": {}}, "ONNX file without segdistill metadata (not made by 'segdistill export'"),
    ({"meta": {"segdistill": "{not json"}}, "unreadable segdistill metadata"),
    ({"meta": {"segdistill": json.dumps({"format_version": 99})}}, "made by a newer segdistill"),
    ({"location": "../../etc/passwd"}, "tensor 'w' keeps its data in another file ('../../etc/passwd')"),
    ({"location": "w.bin"}, "keeps its data in another file ('w.bin')"),
    ({"dims": [1, 1, -3, 3]}, "tensor 'w' declares a negative size"),
    ({"dims": [1 << 20, 1 << 20, 3, 3]}, "tensor 'w' declares 39582418599936 bytes"),
    ({"dims": [1, 1, 3, 4]}, "declares shape [1, 1, 3, 4] but holds 36 bytes, not 48"),
    ({"data_type": 999}, "tensor 'w' has an unknown data type (999)"),
])
def test_onnx_field_made_wrong(change: dict, message: str, tmp_path: Path) -> None:
    from segdistill.checkpoint import read_model_info
    from segdistill.inference.backends import onnx_precision

    (tmp_path / "w.bin").write_bytes(bytes(36))
    path = tmp_path / "m.onnx"
    path.write_bytes(tiny_onnx(**change))
    with pytest.raises(ModelFileError) as e:
        read_model_info(path)
        onnx_precision(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_onnx_whose_output_does_not_fit_the_input_is_refused(tmp_path: Path) -> None:
    """Found by the fuzz tests: a byte of a Conv's pads changed gives a valid graph whose 4x4 input
    makes a 2x2 output, which was cropped into a wrong mask."""
    import torch

    from segdistill.inference.backends import OnnxRuntimeBackend

    path = tmp_path / "m.onnx"
    path.write_bytes(tiny_onnx(pads=0))
    with pytest.raises(ModelFileError, match=r"m.onnx: the graph returns shape \(1, 1, 2, 2\) for input \(1, 1, 4, 4\)"):
        OnnxRuntimeBackend(path, multiple=1, threads=1)(torch.zeros(1, 1, 4, 4))


def test_model_file_arguments_are_checked_before_building(tmp_path: Path) -> None:
    """Found by the fuzz tests: a model file whose metadata names an argument the architecture lacks
    gave an error without the file's name; arguments edited into a huge model allocate nothing."""
    from segdistill.checkpoint import load_model

    from .badfiles import tiny_safetensors

    good = tiny_safetensors()
    for old, new, message in [(b'\\"depth\\"', b'\\" epth\\"', "m.safetensors: model 'unet' has no argument ' epth'"),
                              (b'\\"base\\": 2', b'\\"base\\": 9', "m.safetensors: weights do not match architecture 'unet'"),
                              (b'\\"base\\": 2', b'\\"base\\": 8', "m.safetensors: weights do not match architecture 'unet'")]:
        assert old in good
        path = tmp_path / "m.safetensors"
        path.write_bytes(good.replace(old, new, 1))
        with pytest.raises(ModelFileError) as e:
            load_model(path)
        assert str(e.value).startswith(f"{tmp_path}/{message}"), str(e.value)


def test_valid_onnx_reads() -> None:
    import tempfile

    from segdistill.checkpoint import read_model_info

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        path.write_bytes(tiny_onnx())
        assert read_model_info(path).arch == "unet"


# --------------------------------------------------------------------------------------------------
# Archives: bombs and what already was refused


def test_archive_bomb_is_refused_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from segdistill.data import download

    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images/a.png", bytes(4 << 20))  # 4 MB of zeros in about 4 kB
    monkeypatch.setattr(download, "MIN_ALLOWANCE", 1 << 20)
    with pytest.raises(DataError, match=r"bomb.zip: would unpack to 4194304 bytes from \d+ \(more than 100x"):
        download.extract(archive, tmp_path / "out")
    assert _files(tmp_path / "out") == []
    monkeypatch.setattr(download, "MIN_ALLOWANCE", 8 << 20)  # within the allowance: unpacked
    download.extract(archive, tmp_path / "out")
    assert _files(tmp_path / "out") == ["images/a.png"]


# --------------------------------------------------------------------------------------------------
# JSON and CSV read back


@pytest.mark.parametrize(("content", "message"), [
    (b"{\"runs\": [", "not a valid JSON file"),
    (b"\xff\xfe{}", "not a valid JSON file"),
    (b"[" * 100000 + b"]" * 100000, "not a valid JSON file (nested too deeply)"),
    (b"[1, 2]", "expected a JSON object at the top level, found list"),
    (b"{\"runs\": 3}", "not a search record (no list of runs)"),
])
def test_search_record_read_back(content: bytes, message: str, tmp_path: Path) -> None:
    from segdistill.engine.search.book import Book

    (tmp_path / "search.json").write_bytes(content)
    with pytest.raises(SegdistillError) as e:
        Book.open(tmp_path, fresh=False)
    assert str(e.value).startswith(f"{tmp_path / 'search.json'}: {message}")

"""Bad inputs through the real CLI: each case checks the exit code and the one-line message.

Every test runs ``segdistill.cli.main`` in-process on a copy of the synthetic data (the session
fixtures are never modified), breaks one thing, and asserts what the user sees. The table in
docs/reliability.md lists the cases and what segdistill does for each.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save as save_safetensors_bytes
from safetensors.torch import save_file

from segdistill.checkpoint import read_model_info
from segdistill.cli import main
from segdistill.data.imageio import read_image, read_mask
from segdistill.errors import DataError
from segdistill.fileio import atomic_path, write_text
from segdistill.inference.sources import inside, output_names, safe_relative_name

from .conftest import TINY_TRAIN

PICKLE_MESSAGE = "this is a pickle-based file"
SRC = Path(__file__).resolve().parents[1] / "src" / "segdistill"


# --------------------------------------------------------------------------------------------------
# Helpers


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """Run ``segdistill -q ARGV`` in-process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main(["-q", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def only_error(err: str) -> str:
    """The single line of stderr, checked to be ``error: ...`` (no traceback, no extra lines)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def train(capsys: pytest.CaptureFixture[str], data: Path, runs: Path, *extra: object) -> tuple[int, str, str]:
    return cli(capsys, "train", "--data", data, "--output-dir", runs, "--name", "t", *TINY_TRAIN, *extra)


@pytest.fixture
def data(synth_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the 12-pair synthetic data set (images/0000.png.., masks/0000.png..)."""
    return Path(shutil.copytree(synth_dir, tmp_path / "data"))


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(path: Path, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------------------------
# Empty folders and non-image files


def test_data_check_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, _ = cli(capsys, "data", "check", empty)
    assert rc == 1
    assert f"error: {empty}: no known layout (expected images/+masks/" in out
    assert "FAILED: training would stop" in out


def test_train_empty_image_folder_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "d"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir()
    rc, _, err = train(capsys, d, tmp_path / "runs")
    assert rc == 2
    assert only_error(err).startswith(f"error: {d / 'images'}: no image files found (.png, .jpg")
    assert not (tmp_path / "runs").exists()


def test_predict_and_evaluate_empty_folder(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = cli(capsys, "predict", tiny_model, empty, "--out", tmp_path / "out")
    assert rc == 2
    assert only_error(err) == f"error: {empty}: no image files found (the folder is empty)"
    rc, _, err = cli(capsys, "evaluate", tiny_model, "--data", empty, "--out", tmp_path / "e.csv")
    assert rc == 2
    assert f"{empty}: no known layout" in only_error(err)
    rc, _, err = cli(capsys, "predict", tiny_model, tmp_path / "empty" / "*.png", "--out", tmp_path / "out")
    assert rc == 2
    assert only_error(err) == f"error: {empty}/*.png: no files match this pattern"


def test_non_image_files_are_ignored_and_reported(
    data: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (data / "images" / "notes.txt").write_text("not an image")
    (data / "masks" / "Thumbs.db").write_bytes(b"\0" * 32)
    (data / "images" / ".DS_Store").write_bytes(b"\0" * 32)  # hidden files are skipped silently
    rc, out, _ = cli(capsys, "data", "check", data)
    assert rc == 0
    assert f"warning: {data / 'images' / 'notes.txt'}: not an image file (ignored)" in out
    assert f"warning: {data / 'masks' / 'Thumbs.db'}: not an image file (ignored)" in out
    assert ".DS_Store" not in out
    assert re.search(r"train pairs\s+10\b", out) and re.search(r"val pairs\s+2\b", out)
    rc, out, err = cli(capsys, "predict", tiny_model, data / "images", "--out", tmp_path / "out")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == [f"{i:04d}.png" for i in range(12)]


# --------------------------------------------------------------------------------------------------
# Unreadable files: corrupt, truncated, empty


def _corrupt_png(png: bytes) -> bytes:
    """Valid signature and header, garbage inside the compressed pixel data."""
    b = bytearray(png)
    start = b.index(b"IDAT") + 4 + 8
    b[start : start + 48] = bytes(range(48))
    return bytes(b)


def _tiff_with_broken_second_page() -> bytes:
    """A two-page TIFF whose second page directory lacks ImageWidth (PIL: TypeError)."""
    pages = [Image.new("L", (8, 8), 50), Image.new("L", (8, 8), 200)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    b = bytearray(buf.getvalue())
    assert b[:4] == b"II*\0"
    first = int.from_bytes(b[4:8], "little")
    n = int.from_bytes(b[first : first + 2], "little")
    second = int.from_bytes(b[first + 2 + 12 * n : first + 6 + 12 * n], "little")
    for i in range(int.from_bytes(b[second : second + 2], "little")):
        entry = second + 2 + 12 * i
        if int.from_bytes(b[entry : entry + 2], "little") == 256:  # ImageWidth -> an unknown tag
            b[entry : entry + 2] = (65000).to_bytes(2, "little")
    return bytes(b)


def _broken(kind: str, png_path: Path) -> tuple[str, bytes, str]:
    """(file suffix, file content, expected message) for one kind of broken image."""
    png = png_path.read_bytes()
    if kind == "corrupt_png":
        return ".png", _corrupt_png(png), "corrupt or truncated image"
    if kind == "garbage_png":
        return ".png", b"\x89PNG\r\n\x1a\n" + random.Random(0).randbytes(400), "not an image file PIL can read"
    if kind == "truncated_png":
        return ".png", png[: len(png) // 2], "corrupt or truncated image (image file is truncated"
    jpg = jpeg_bytes(png_path)
    if kind == "corrupt_jpeg":
        return ".jpg", jpg[:2] + random.Random(0).randbytes(len(jpg) - 2), "not an image file PIL can read"
    if kind == "truncated_jpeg":
        return ".jpg", jpg[: len(jpg) // 2], "corrupt or truncated image (image file is truncated"
    if kind == "zero_byte":
        return ".png", b"", "empty file (0 bytes)"
    if kind == "broken_tiff_page":
        return ".tif", _tiff_with_broken_second_page(), "corrupt or truncated image (Missing dimensions)"
    raise AssertionError(kind)


BROKEN_KINDS = ["corrupt_png", "garbage_png", "truncated_png", "corrupt_jpeg", "truncated_jpeg", "zero_byte", "broken_tiff_page"]


@pytest.mark.parametrize("kind", BROKEN_KINDS)
def test_broken_image_in_data(kind: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = data / "images" / "0003.png"
    suffix, content, message = _broken(kind, original)
    original.unlink()
    bad = original.with_suffix(suffix)
    bad.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(f"{bad}: {message}")):
        read_image(bad, "gray")

    rc, out, _ = cli(capsys, "data", "check", data)
    assert rc == 1
    assert f"error: {bad}: {message}" in out

    rc, _, err = train(capsys, data, tmp_path / "runs")
    assert rc == 2
    assert only_error(err).startswith(f"error: {bad}: {message}")
    assert not (tmp_path / "runs").exists(), "training started although the data check failed"


@pytest.mark.parametrize("kind", BROKEN_KINDS)
def test_broken_image_in_predict_skips_it(
    kind: str, data: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = data / "images" / "0003.png"
    suffix, content, message = _broken(kind, original)
    original.unlink()
    bad = original.with_suffix(suffix)
    bad.write_bytes(content)
    rc, out, err = cli(capsys, "predict", tiny_model, data / "images", "--out", tmp_path / "out")
    assert rc == 1
    assert err.strip().splitlines()[-1].startswith(f"error: 1 file(s) could not be read; first: {bad}: {message}")
    assert out.startswith("11 masks written")
    written = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
    assert len(written) == 11 and "0003.png" not in written


def test_truncated_mask(data: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mask = data / "masks" / "0004.png"
    mask.write_bytes(mask.read_bytes()[:60])
    rc, out, _ = cli(capsys, "data", "check", data)
    assert rc == 1
    assert f"error: {mask}: corrupt or truncated image" in out
    rc, _, err = cli(capsys, "evaluate", tiny_model, "--data", data, "--out", tmp_path / "e.csv", "--all")
    assert rc == 2
    assert only_error(err).startswith(f"error: {mask}: corrupt or truncated image")


# --------------------------------------------------------------------------------------------------
# Image and mask sizes, mask encodings


def test_image_mask_size_mismatch(data: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mask = data / "masks" / "0003.png"
    Image.new("L", (32, 40)).save(mask)
    expected = f"error: {mask}: mask size 32x40 differs from image 0003.png 64x64"
    rc, out, _ = cli(capsys, "data", "check", data)
    assert rc == 1
    assert expected in out.splitlines()
    rc, _, err = train(capsys, data, tmp_path / "runs")
    assert rc == 2
    assert only_error(err) == expected
    assert not (tmp_path / "runs").exists()
    rc, _, err = cli(capsys, "evaluate", tiny_model, "--data", data, "--out", tmp_path / "e.csv", "--all")
    assert rc == 2
    assert only_error(err) == expected


def _mask_variants(fg: np.ndarray) -> dict[str, Image.Image]:
    """The same foreground in the encodings people use."""
    rgb = np.zeros((*fg.shape, 3), np.uint8)
    rgb[fg] = (200, 30, 90)
    pal = Image.fromarray(np.where(fg, 3, 0).astype(np.uint8), "P")
    pal.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20, 0, 255, 0] + [0] * 756)
    return {
        "m01.png": Image.fromarray(fg.astype(np.uint8)),
        "m0255.png": Image.fromarray(fg.astype(np.uint8) * 255),
        "mrgb.png": Image.fromarray(rgb),
        "mpal.png": pal,
        "m16.png": Image.fromarray(fg.astype(np.uint16) * 1000),
        "mjpeg.jpg": Image.fromarray(fg.astype(np.uint8) * 255),
    }


def test_mask_encodings_read_as_same_foreground(tmp_path: Path) -> None:
    fg = np.zeros((32, 48), bool)
    fg[8:24, 16:40] = True  # edges on the 8x8 JPEG grid, so JPEG noise stays below the threshold
    for name, im in _mask_variants(fg).items():
        path = tmp_path / name
        im.save(path, **({"quality": 90} if name.endswith(".jpg") else {}))
        got = read_mask(path)
        assert got.dtype == bool and got.shape == fg.shape, name
        assert np.array_equal(got, fg), name


def test_mask_encodings_give_equal_foreground_in_data_check(
    synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "d"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir()
    fg = read_mask(synth_dir / "masks" / "0000.png")
    variants = _mask_variants(fg)
    for stem in ("a", "b", "c"):
        shutil.copy(synth_dir / "images" / "0000.png", d / "images" / f"{stem}.png")
    variants["m01.png"].save(d / "masks" / "a.png")
    variants["m0255.png"].save(d / "masks" / "b.png")
    variants["mrgb.png"].save(d / "masks" / "c.png")
    rc, out, _ = cli(capsys, "data", "check", d)
    assert rc == 0
    assert "L {0,1} x1" in out and "L {0,255} x1" in out and "RGB RGB (2 colours) x1" in out
    frac = f"{fg.mean():.3f}"
    assert f"{frac} ({frac}-{frac})" in out  # mean (min-max) foreground: all three equal


def test_all_black_and_all_white_masks_warn_but_train(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    black, white = data / "masks" / "0002.png", data / "masks" / "0005.png"
    Image.new("L", (64, 64), 0).save(black)
    Image.new("L", (64, 64), 255).save(white)
    rc, out, _ = cli(capsys, "data", "check", data)
    assert rc == 0
    assert f"warning: {black}: no foreground pixels (all background)" in out
    assert f"warning: {white}: every pixel is foreground" in out
    assert "OK: training can use this data" in out
    rc, out, err = train(capsys, data, tmp_path / "runs")
    assert rc == 0, err
    assert (tmp_path / "runs" / "t" / "model.safetensors").is_file()


def test_every_mask_empty_is_an_error(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for m in (data / "masks").iterdir():
        Image.new("L", (64, 64), 0).save(m)
    rc, out, _ = cli(capsys, "data", "check", data)
    assert rc == 1
    assert "error: no mask has any foreground pixel: nothing to learn (wrong invert setting?)" in out
    rc, _, err = train(capsys, data, tmp_path / "runs")
    assert rc == 2
    assert only_error(err).startswith("error: no mask has any foreground pixel")


# --------------------------------------------------------------------------------------------------
# Image modes: 16-bit TIFF, RGBA, palette, EXIF rotation, 1x1


def test_16bit_tiff_images(
    data: Path, synth_dir: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for png in sorted((data / "images").glob("*.png")):
        arr16 = np.asarray(Image.open(png)).astype(np.uint16) * 257  # same intensities, 16 bits
        Image.fromarray(arr16).save(png.with_suffix(".tif"))
        png.unlink()
    tif = data / "images" / "0000.tif"
    assert Image.open(tif).mode == "I;16"
    x = read_image(tif, "gray")
    assert x.dtype == np.float32 and x.shape == (64, 64, 1)
    rc, out, _ = cli(capsys, "data", "check", data)
    assert rc == 0
    assert "I;16/1ch/16-bit x12" in out
    rc, _, err = cli(capsys, "predict", tiny_model, data / "images", "--out", tmp_path / "out", "--name", "tif")
    assert rc == 0, err
    rc, _, err = cli(capsys, "predict", tiny_model, synth_dir / "images", "--out", tmp_path / "out", "--name", "png")
    assert rc == 0, err
    for i in range(12):  # the 16-bit copies read as the same intensities, so the masks are the same
        from_tif = np.asarray(Image.open(tmp_path / "out" / "tif" / f"{i:04d}.png"))
        assert from_tif.shape == (64, 64)
        assert np.array_equal(from_tif, np.asarray(Image.open(tmp_path / "out" / "png" / f"{i:04d}.png")))


def test_16bit_values_scale_like_8bit(synth_dir: Path, tmp_path: Path) -> None:
    png = synth_dir / "images" / "0000.png"
    tif = tmp_path / "a.tif"
    Image.fromarray(np.asarray(Image.open(png)).astype(np.uint16) * 257).save(tif)
    assert np.array_equal(read_image(tif, "gray"), read_image(png, "gray"))
    assert np.array_equal(read_image(tif, "rgb"), read_image(png, "rgb"))


def test_rgba_and_palette_images(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "in"
    d.mkdir()
    rgba = np.zeros((6, 5, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:3, :, 3] = 255  # top half opaque, bottom half fully transparent: alpha is dropped
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    pal = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(d / "pal.png")

    x = read_image(d / "rgba.png", "rgb")
    assert x.shape == (6, 5, 3) and np.array_equal(x[..., 0], np.ones((6, 5))) and not x[..., 1:].any()
    assert read_image(d / "rgba.png", "gray").shape == (6, 5, 1)
    p = read_image(d / "pal.png", "rgb")
    assert p.tolist() == [[[0, 0, 0], [1, 0, 0]], [[0, 1, 0], [1, 0, 0]]]
    assert read_mask(d / "pal.png").tolist() == [[False, True], [True, True]]

    rc, out, err = cli(capsys, "predict", tiny_model, d, "--out", tmp_path / "out")  # a gray model
    assert rc == 0, err
    assert Image.open(tmp_path / "out" / "in" / "rgba.png").size == (5, 6)
    assert Image.open(tmp_path / "out" / "in" / "pal.png").size == (2, 2)


def _exif_jpeg(path: Path, arr: np.ndarray, orientation: int = 6) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation: 6 = rotate 90 degrees clockwise to display
    Image.fromarray(arr).save(path, exif=exif, quality=95)


def test_exif_rotated_jpeg(synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stored = np.zeros((24, 40, 3), np.uint8)  # stored 40 wide, 24 high
    stored[:8, :16] = 255  # a bright patch at the stored top-left
    path = tmp_path / "rot.jpg"
    _exif_jpeg(path, stored)
    with Image.open(path) as raw:
        decoded = np.asarray(raw.convert("RGB")).astype(np.float32) / 255  # without EXIF rotation
    x = read_image(path, "rgb")
    assert x.shape == (40, 24, 3)
    assert np.array_equal(x, np.rot90(decoded, k=-1))  # clockwise: the patch is now top-right
    assert x[:16, -8:].mean() > 0.9 and x[:16, :8].mean() < 0.1

    # A mask drawn on the displayed (rotated) image pairs with it; one of the stored size does not.
    d = tmp_path / "d"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir()
    for i in range(2):
        shutil.copy(synth_dir / "images" / f"000{i}.png", d / "images")
        shutil.copy(synth_dir / "masks" / f"000{i}.png", d / "masks")
    shutil.copy(path, d / "images" / "rot.jpg")
    mask_displayed = np.zeros((40, 24), np.uint8)
    mask_displayed[:16, -8:] = 255
    Image.fromarray(mask_displayed).save(d / "masks" / "rot.png")
    rc, out, _ = cli(capsys, "data", "check", d)
    assert rc == 0, out
    assert np.array_equal(read_mask(d / "masks" / "rot.png"), x[..., 0] > 0.5)

    Image.fromarray(np.zeros((24, 40), np.uint8)).save(d / "masks" / "rot.png")
    rc, out, _ = cli(capsys, "data", "check", d)
    assert rc == 1
    assert f"error: {d / 'masks' / 'rot.png'}: mask size 40x24 differs from image rot.jpg 24x40" in out


def test_exif_rotated_jpeg_mask_is_rotated_too(tmp_path: Path) -> None:
    fg = np.zeros((24, 40), np.uint8)
    fg[:8, :16] = 255
    path = tmp_path / "m.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(fg).save(path, exif=exif, quality=95)
    assert np.array_equal(read_mask(path), np.rot90(fg > 127, k=-1))


@pytest.mark.parametrize("size", [(1, 1), (1, 37), (37, 1)])
def test_tiny_images_predict(size: tuple[int, int], tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h, w = size
    src = tmp_path / "px.png"
    Image.fromarray(np.full((h, w), 128, np.uint8)).save(src)
    rc, out, err = cli(capsys, "predict", tiny_model, src, "--out", tmp_path / "out", "--probs")
    assert rc == 0, err
    assert out.startswith("1 mask written")
    mask = Image.open(tmp_path / "out" / "px" / "px.png")
    assert mask.size == (w, h)
    assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    assert Image.open(tmp_path / "out" / "px" / "probs" / "px.png").size == (w, h)


# --------------------------------------------------------------------------------------------------
# Decompression bombs


def test_decompression_bomb_is_refused(
    data: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64)  # the 64x64 synthetic images are allowed
    big = data / "images" / "0007.png"  # 100x100 > 2x the limit: PIL's hard error
    Image.new("L", (100, 100), 90).save(big)
    Image.new("L", (100, 100), 0).save(data / "masks" / "0007.png")
    mid = tmp_path / "mid.png"  # 80x80: over the limit but under 2x, where PIL only warns
    Image.new("L", (80, 80), 90).save(mid)
    for path in (big, mid):
        with pytest.raises(DataError, match=re.escape(f"{path}: image is larger than the decompression-bomb limit (4096 pixels)")):
            read_image(path, "gray")

    rc, out, _ = cli(capsys, "data", "check", data)
    assert rc == 1
    assert f"error: {big}: image is larger than the decompression-bomb limit (4096 pixels); refusing to decode it" in out

    rc, out, err = cli(capsys, "predict", tiny_model, data / "images", "--out", tmp_path / "out")
    assert rc == 1
    assert f"error: 1 file(s) could not be read; first: {big}: image is larger than the decompression-bomb limit" in err
    assert out.startswith("11 masks written")


# --------------------------------------------------------------------------------------------------
# File names: unicode, spaces, duplicates, odd characters


def test_unicode_and_spaces_in_names(synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "daten mit ü"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir()
    stems = [f"zellkern ü {i}" for i in range(5)] + ["细胞 5", "a  b"]
    for i, stem in enumerate(stems):
        shutil.copy(synth_dir / "images" / f"{i:04d}.png", d / "images" / f"{stem}.png")
        shutil.copy(synth_dir / "masks" / f"{i:04d}.png", d / "masks" / f"{stem}_mask.png")
    rc, out, _ = cli(capsys, "data", "check", d, "--set", "train.input_size=64")  # 64 px images: no crop warning
    assert rc == 0 and "warning:" not in out
    rc, _, err = train(capsys, d, tmp_path / "runs ü")
    assert rc == 0, err
    model = tmp_path / "runs ü" / "t" / "model.safetensors"
    rc, out, err = cli(capsys, "predict", model, d / "images", "--out", tmp_path / "preds")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "preds" / "images").iterdir()) == sorted(f"{s}.png" for s in stems)


@pytest.mark.parametrize("folder", ["2024_01", "010", "yes", "null", "1:30", "run #2"])
def test_names_that_yaml_would_read_as_other_values(
    folder: str, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flags are strings: a folder '2024_01' must not become the number 202401 (nor 'yes' true)."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(synth_dir, tmp_path / folder)
    rc, out, err = cli(capsys, "data", "check", folder)
    assert rc == 0, out + err
    assert f"Data check: {folder}" in out and "OK: training can use this data" in out
    if folder == "2024_01":  # one training run: the data folder and the run name both stay as typed
        rc, out, err = cli(capsys, "train", "--data", folder, "--output-dir", "runs", "--name", "010", *TINY_TRAIN)
        assert rc == 0, err
        assert (tmp_path / "runs" / "010" / "model.safetensors").is_file()


def test_duplicate_stems(data: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = data / "images"
    (images / "0001.jpg").write_bytes(jpeg_bytes(images / "0002.png"))
    rc, out, _ = cli(capsys, "data", "check", data)
    assert rc == 1
    expected = f"error: {images / '0001.png'}: duplicate image stem '0001' (also 0001.jpg); keep one file per stem"
    assert expected in out
    rc, _, err = train(capsys, data, tmp_path / "runs")
    assert rc == 2
    assert only_error(err).startswith(expected)
    assert not (tmp_path / "runs").exists()

    # Prediction needs no pairing: both files get their own output.
    rc, out, err = cli(capsys, "predict", tiny_model, images, "--out", tmp_path / "out")
    assert rc == 0, err
    written = {p.name for p in (tmp_path / "out" / "images").iterdir()}
    assert len(written) == 13
    assert {"0001_png.png", "0001_jpg.png"} <= written and "0001.png" not in written


def test_duplicate_mask_stems(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(data / "masks" / "0001.png", data / "masks" / "0001_mask.png")
    rc, out, _ = cli(capsys, "data", "check", data)
    assert rc == 1
    assert f"error: {data / 'masks' / '0001_mask.png'}: duplicate mask stem '0001' (also 0001.png)" in out


def test_predict_names_that_differ_only_by_extension_case(tiny_model: Path, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jpg").write_bytes(jpeg_bytes(synth_dir / "images" / "0000.png"))
    (d / "a.JPG").write_bytes(jpeg_bytes(synth_dir / "images" / "0001.png"))
    shutil.copy(synth_dir / "images" / "0002.png", d / "a.png")
    shutil.copy(synth_dir / "images" / "0003.png", d / "a_png.png")
    rc, out, err = cli(capsys, "predict", tiny_model, d, "--out", tmp_path / "out")
    assert rc == 0, err
    assert out.startswith("4 masks written")
    assert len(list((tmp_path / "out" / "in").iterdir())) == 4, "an output overwrote another"


def test_predict_glob_with_equal_names_in_two_folders(tiny_model: Path, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for sub, i in (("x", 0), ("y", 1)):
        (tmp_path / "in" / sub).mkdir(parents=True)
        shutil.copy(synth_dir / "images" / f"000{i}.png", tmp_path / "in" / sub / "img.png")
    rc, out, err = cli(capsys, "predict", tiny_model, tmp_path / "in" / "*" / "img.png", "--out", tmp_path / "out", "--name", "g")
    assert rc == 0, err
    assert len(list((tmp_path / "out" / "g").iterdir())) == 2


# --------------------------------------------------------------------------------------------------
# Config files and overrides


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  val_every: ten\n", "train.val_every: expected an integer, got 'ten'"),
        ("train:\n  lr: fast\n", "train.lr: expected a number, got 'fast'"),
        ("train:\n  epocs: 3\n", "train: unknown key 'epocs'; did you mean 'epochs'?"),
        ("trian:\n  epochs: 3\n", "unknown key 'trian'; did you mean 'train'?"),
        ('"trai\\nn": 3\n', "unknown key 'trai\\nn'; did you mean 'train'?"),
        ("train:\n  loss: dise\n", "train.loss: 'dise' is not one of 'bce', 'dice'"),
        ("train: [1\n", "line 2 is not valid YAML"),
        ("- 1\n- 2\n", "the top level must be a mapping of keys to values"),
    ],
    ids=["wrong-type", "not-a-number", "unknown-key", "unknown-section", "newline-in-key", "bad-choice", "bad-yaml",
         "not-a-mapping"],
)
def test_bad_config_file(text: str, message: str, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)  # keys that TINY_TRAIN's flags do not set, so no flag overrides the bad value
    rc, _, err = train(capsys, synth_dir, tmp_path / "runs", "--config", cfg)
    assert rc == 2
    line = only_error(err)
    assert line.startswith(f"error: {cfg}:") and message in line
    assert not (tmp_path / "runs").exists()
    rc, _, err = cli(capsys, "data", "check", synth_dir, "--config", cfg)
    assert rc == 2
    assert message in only_error(err)


@pytest.mark.parametrize("command", ["train", "data check", "predict"])
def test_missing_config_file(command: str, tiny_model: Path, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    argv = {
        "train": ["train", "--data", synth_dir, "--output-dir", tmp_path / "runs"],
        "data check": ["data", "check", synth_dir],
        "predict": ["predict", tiny_model, synth_dir / "images", "--out", tmp_path / "out"],
    }[command]
    rc, _, err = cli(capsys, *argv, "--config", missing)
    assert rc == 2
    assert only_error(err) == f"error: {missing}: config file not found"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_bad_overrides(synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        "train.lrr=1": "error: override 'train.lrr=1' (in train): unknown key 'lrr'; did you mean 'lr'?",
        "train.lr=abc": "error: train.lr: expected a number, got 'abc'",
        "data.invert=maybe": "error: data.invert: expected true or false, got 'maybe'",
        "train.epochs=0": "error: train.epochs must be at least 1",
        "epochs": "error: override 'epochs' must look like key=value (e.g. train.epochs=10)",
    }
    for override, expected in cases.items():
        rc, _, err = train(capsys, synth_dir, tmp_path / "runs", "--set", override)
        assert rc == 2, override
        assert only_error(err) == expected
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------------------
# Model files: truncated, other formats, newer versions, pickles


def _model_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _bad_model(kind: str, good: Path, folder: Path) -> tuple[Path, str]:
    """(model file, expected message after 'PATH: ')."""
    raw = good.read_bytes()
    header = int.from_bytes(raw[:8], "little")
    if kind == "truncated":
        path = folder / "model.safetensors"
        path.write_bytes(raw[: len(raw) // 2])
        return path, "corrupt or truncated safetensors file"
    if kind == "truncated-header":
        path = folder / "model.safetensors"
        path.write_bytes(raw[:100])
        return path, f"file is truncated (header says {header} bytes, file has 100)"
    if kind == "too-short":
        path = folder / "model.safetensors"
        path.write_bytes(b"\x10\x00\x00\x00\x00")
        return path, "file too short to be a safetensors model (truncated?)"
    if kind == "zero-byte":
        path = folder / "model.safetensors"
        path.write_bytes(b"")
        return path, "empty file (0 bytes)"
    if kind == "random-bytes":
        path = folder / "model.safetensors"
        path.write_bytes(b"\x17" + random.Random(0).randbytes(4095))
        return path, "not a safetensors file (unknown format)"
    if kind == "json":
        path = folder / "model.json"
        path.write_text(json.dumps({"arch": "unet", "args": {}, "format_version": 1}))
        return path, "not a safetensors file (unknown format)"
    if kind == "image":
        path = folder / "model.safetensors"
        path.write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
        return path, "not a safetensors file (unknown format)"
    if kind == "newer-version":
        path = folder / "model.safetensors"
        info = json.loads(read_model_info(good).to_json())
        info["format_version"] = 99
        save_file(_model_tensors(good), str(path), metadata={"segdistill": json.dumps(info), "format": "pt"})
        return path, "made by a newer segdistill (model format 99, this version reads up to 1); upgrade segdistill to load it"
    if kind == "plain-safetensors":
        path = folder / "model.safetensors"
        save_file({"weight": torch.zeros(3)}, str(path))
        return path, "safetensors file without segdistill metadata (not a segdistill model)"
    if kind == "wrong-weights":
        path = folder / "model.safetensors"
        save_file({"weight": torch.zeros(3)}, str(path), metadata={"segdistill": read_model_info(good).to_json()})
        return path, "weights do not match architecture 'unet'"
    if kind == "missing":
        return folder / "nope.safetensors", "model file not found"
    raise AssertionError(kind)


MODEL_KINDS = ["truncated", "truncated-header", "too-short", "zero-byte", "random-bytes", "json", "image",
               "newer-version", "plain-safetensors", "wrong-weights", "missing"]


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_bad_model_file(kind: str, tiny_model: Path, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, message = _bad_model(kind, tiny_model, tmp_path)
    rc, _, err = cli(capsys, "predict", path, synth_dir / "images", "--out", tmp_path / "out")
    assert rc == 2
    assert only_error(err).startswith(f"error: {path}: {message}")
    assert not (tmp_path / "out").exists()
    rc, _, err = cli(capsys, "evaluate", path, "--data", synth_dir, "--out", tmp_path / "e.csv")
    assert rc == 2
    assert only_error(err).startswith(f"error: {path}: {message}")


@pytest.mark.parametrize("first_bytes", [b"\x80", b"PK"])
def test_model_whose_header_length_looks_like_a_pickle_loads(
    first_bytes: bytes, tiny_model: Path, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A safetensors header of 0x..80 or 0x..4B50 bytes starts with a pickle or zip signature;
    such a model is still a valid model (regression: 1 in 256 trained models was refused)."""
    tensors = _model_tensors(tiny_model)
    info = read_model_info(tiny_model)

    def model_bytes(pad: int) -> bytes:
        info.summary["pad"] = "x" * pad  # each 'x' lengthens the header by one byte (before alignment)
        return save_safetensors_bytes(tensors, metadata={"segdistill": info.to_json(), "format": "pt"})

    h0 = int.from_bytes(model_bytes(0)[:8], "little")
    target = next(n for n in range(h0 + 32, h0 + 32 + (1 << 16)) if n.to_bytes(8, "little").startswith(first_bytes))
    pad = target - h0 - 16
    while int.from_bytes((raw := model_bytes(pad))[:8], "little") < target:
        pad += 1
    assert raw.startswith(first_bytes)
    path = tmp_path / "model.safetensors"
    path.write_bytes(raw)
    rc, out, err = cli(capsys, "predict", path, synth_dir / "images" / "0000.png", "--out", tmp_path / "out")
    assert rc == 0, err
    assert out.startswith("1 mask written")


class _Payload:
    """Unpickling this creates the marker file: proof that code in the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (builtins.open, (str(self.marker), "w"))


def _write_evil(how: str, path: Path, marker: Path) -> None:
    if how == "torch.save":
        torch.save({"state_dict": _Payload(marker)}, path)
    elif how == "pickle":
        with open(path, "wb") as f:
            pickle.dump(_Payload(marker), f)
    elif how == "pickle-protocol-0":
        with open(path, "wb") as f:
            pickle.dump(_Payload(marker), f, protocol=0)
    else:
        raise AssertionError(how)


def _unpickle(how: str, path: Path) -> None:
    """What a careless loader would do (the control that shows the payload is live)."""
    if how == "torch.save":
        with open(path, "rb") as f:  # a file object: torch.load would treat a *.safetensors path as safetensors
            obj = torch.load(f, weights_only=False)["state_dict"]
    else:
        with open(path, "rb") as f:
            obj = pickle.load(f)
    obj.close()  # the payload's result is the marker file, opened for writing


@pytest.mark.parametrize("how", ["torch.save", "pickle", "pickle-protocol-0"])
@pytest.mark.parametrize("name", ["evil.pt", "evil.safetensors"])
def test_pickle_model_is_refused_without_running_it(
    how: str, name: str, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / name
    _write_evil(how, evil, marker)
    message = PICKLE_MESSAGE if how != "pickle-protocol-0" else "not a safetensors file"

    rc, _, err = cli(capsys, "predict", evil, synth_dir / "images", "--out", tmp_path / "out")
    assert rc == 2
    line = only_error(err)
    assert line.startswith(f"error: {evil}: {message}")
    if how != "pickle-protocol-0":
        assert "refuses to load pickles because unpickling can run arbitrary code" in line
    rc, _, err = cli(capsys, "evaluate", evil, "--data", synth_dir, "--out", tmp_path / "e.csv")
    assert rc == 2 and only_error(err).startswith(f"error: {evil}: {message}")

    # A run folder whose training state is a pickle: --resume refuses it as well.
    run = tmp_path / "run"
    run.mkdir()
    write_text(run / "config.yaml", f"data:\n  root: {synth_dir}\n")
    shutil.copy(evil, run / "state.safetensors")
    rc, _, err = cli(capsys, "train", "--resume", run)
    assert rc == 2 and only_error(err).startswith(f"error: {run / 'state.safetensors'}: {message}")

    assert not marker.exists(), "segdistill unpickled the file: its code ran"
    _unpickle(how, evil)  # control: the payload is live, so the check above could have failed
    assert marker.exists()


def test_source_never_unpickles() -> None:
    """No pickle.load anywhere in the package, and torch.load only as weights_only=True (ImageNet
    state dicts, models/pretrained.py): files are safetensors + JSON, or tensors alone."""
    offenders = []
    for py in SRC.rglob("*.py"):
        text = py.read_text(encoding="utf-8")
        offenders += [f"{py.name}: {m.group(0)}" for m in re.finditer(r"\btorch\.load\(.*", text)
                      if "weights_only=True" not in m.group(0)]
        for pattern in (r"\bpickle\.loads?\(", r"^\s*import (c?pickle|dill|joblib)\b", r"\bnp\.load\(.*allow_pickle=True"):
            offenders += [f"{py.name}: {m.group(0)}" for m in re.finditer(pattern, text, re.MULTILINE)]
    assert not offenders


# --------------------------------------------------------------------------------------------------
# Output names cannot leave the output folder


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("..", "_"),
        ("../x.png", "_/x"),
        ("../../etc/passwd.png", "_/_/etc/passwd"),
        ("a/../../b.png", "a/_/_/b"),
        ("..png", "_"),
        ("...png", "_"),
        (".hidden.png", "hidden"),
        (" .png", "_"),
        ("a\\..\\b.png", "a_.._b"),
        ("x\x00y\n.png", "x_y_"),
        ("$(touch pwn).png", "__touch pwn_"),
        ("zellkern ü 1.png", "zellkern ü 1"),
    ],
)
def test_safe_relative_name(name: str, expected: str, tmp_path: Path) -> None:
    root = tmp_path / "in"
    got = safe_relative_name(root / name, root)
    assert got.as_posix() == expected
    out = tmp_path / "out"
    assert not got.is_absolute() and ".." not in got.parts
    assert all(not part.startswith(".") for part in got.parts)
    assert (out / got).resolve().is_relative_to(out.resolve())


@pytest.mark.parametrize("path", ["/etc/passwd", "/tmp/../etc/x.png", "../../x.png", "..", "C:\\Windows\\x.png"])
def test_safe_relative_name_outside_root(path: str, tmp_path: Path) -> None:
    for root in (None, tmp_path / "in"):
        got = safe_relative_name(Path(path), root)
        assert not got.is_absolute() and ".." not in got.parts and len(got.parts) == 1
        assert (tmp_path / "out" / got).resolve().parent == (tmp_path / "out").resolve()


def test_output_names_are_unique_and_inside(tmp_path: Path) -> None:
    root = tmp_path / "in"
    files = [root / n for n in ("a.png", "a.jpg", "a.JPG", "a_png.png", "b.png", "sub/a.png", "../a.png", "A.png")]
    names = output_names(files, root)
    keys = [n.as_posix().casefold() for n in names]
    assert len(set(keys)) == len(keys), names
    assert names[:2] == [Path("a_png"), Path("a_jpg")] and names[4] == Path("b") and names[5] == Path("sub/a")
    for n in names:
        assert (tmp_path / "out" / n).resolve().is_relative_to((tmp_path / "out").resolve())


def test_predict_folder_with_odd_names(tiny_model: Path, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "in"
    d.mkdir()
    names = ["..png", "...png", "a\\b.png", "$(touch pwn).png", "tab\tx.png", "new\nline.png", " .png", "-rf.png"]
    for i, n in enumerate(names):
        shutil.copy(synth_dir / "images" / f"{i:04d}.png", d / n)
    before = files_under(tmp_path)
    out = tmp_path / "out"
    rc, stdout, err = cli(capsys, "predict", tiny_model, d, "--out", out, "--probs", "--overlay")
    assert rc == 0, err
    # Hidden files ("..png", "...png") are skipped like every dot-file; the rest get cleaned names.
    assert stdout.startswith("6 masks written")
    assert sorted(p.name for p in (out / "in").glob("*.png")) == sorted(
        ["a_b.png", "__touch pwn_.png", "tab_x.png", "new_line.png", "_.png", "-rf.png"]
    )
    created = files_under(tmp_path) - before
    assert created and all(p.resolve().is_relative_to(out.resolve()) for p in created)
    assert not (tmp_path / "pwn").exists() and not Path("pwn").exists()


def test_predict_refuses_to_write_through_a_symlink(tiny_model: Path, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out" / "in"
    out.mkdir(parents=True)
    (out / "x.png").symlink_to(victim)
    (tmp_path / "in").mkdir()
    shutil.copy(synth_dir / "images" / "0000.png", tmp_path / "in" / "x.png")
    # predict on the command line writes to a fresh out/in-2 (or clears out/in with --overwrite);
    # the library function writes where it is told, and must not follow the link.
    from segdistill.inference.predictor import Predictor
    from segdistill.jobs.predict import predict_to_folder

    with pytest.raises(DataError, match=f"{out / 'x.png'}: output path would leave {out}; refusing to write it"):
        predict_to_folder(Predictor(tiny_model), tmp_path / "in", out)
    assert victim.read_text() == "precious"
    rc, _, err = cli(capsys, "predict", tiny_model, tmp_path / "in", "--out", tmp_path / "out", "--overwrite")
    assert rc == 2 and "holds x.png, which predict does not write" in err
    assert victim.read_text() == "precious"
    with pytest.raises(DataError, match="would leave"):
        inside(out / "x.png", out)


# --------------------------------------------------------------------------------------------------
# Crash safety


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old complete file")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a new fi")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temporary left


def test_written_files_are_complete_and_readable_by_others(tiny_model: Path, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Atomic writes go through a temporary file; the result must not keep mkstemp's 0600 mode."""
    umask = os.umask(0o022)
    os.umask(umask)
    rc, _, err = cli(capsys, "predict", tiny_model, synth_dir / "images", "--out", tmp_path / "out", "--probs")
    assert rc == 0, err
    written = files_under(tmp_path / "out")
    assert len(written) == 24
    assert not [p for p in written if ".tmp" in p.name]
    for p in [*written, tiny_model]:
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p


def test_evaluate_invert_can_be_switched_off() -> None:
    from segdistill.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["evaluate", "m.safetensors", "--data", "d", "--no-invert"]).invert is False
    assert parse(["evaluate", "m.safetensors", "--data", "d", "--invert"]).invert is True
    assert parse(["evaluate", "m.safetensors", "--data", "d"]).invert is None


def test_resume_with_other_flags_names_the_real_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["distill", "--resume", str(tmp_path), "--loss", "cwd"]) == 2
    assert "(got --loss)" in capsys.readouterr().err

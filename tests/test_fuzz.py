"""Property-based tests (hypothesis): image and mask loading, pairing, config parsing, tiling and
output names. Each property runs at most ~30 examples so the file stays well under a minute."""

from __future__ import annotations

import dataclasses
import io
import os
import random
import tempfile
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from segdistill.config import Config, ConfigError, config_from_dict, load_config
from segdistill.data.discovery import MASK_SUFFIXES, mask_key, pair_folder
from segdistill.data.imageio import read_image, read_mask
from segdistill.errors import DataError
from segdistill.inference.sources import output_names, safe_relative_name
from segdistill.inference.tiling import gaussian_weight, predict_tiled, tile_starts

# 30 examples keep the file fast; SEGDISTILL_FUZZ_EXAMPLES=2000 searches harder (a nightly run).
# Derandomised by default so CI is reproducible; SEGDISTILL_FUZZ_EXAMPLES=2000 searches harder (random).
_EXAMPLES = os.environ.get("SEGDISTILL_FUZZ_EXAMPLES")
# too_slow: an example costs what the CPU makes it cost; a loaded or slow machine is not a failure.
FUZZ = settings(max_examples=int(_EXAMPLES or 30), deadline=None, derandomize=_EXAMPLES is None,
                suppress_health_check=[HealthCheck.too_slow])
# The readers of untrusted files (images and masks here; the others in test_fuzz_readers.py): 200 each.
READER = settings(max_examples=max(200, int(_EXAMPLES or 0)), deadline=None, derandomize=_EXAMPLES is None,
                  database=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------------
# Image and mask loading

# Modes each format can store (as PIL writes them).
FORMAT_MODES = {
    ".png": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    ".tif": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK"],
    ".bmp": ["1", "L", "P", "RGB"],
    ".jpg": ["L", "RGB", "CMYK"],
}
CHANNELS = {"1": 1, "L": 1, "LA": 2, "P": 1, "RGB": 3, "RGBA": 4, "CMYK": 4, "I;16": 1, "I": 1, "F": 1}
DTYPES = {"1": np.bool_, "I;16": np.uint16, "I": np.int32, "F": np.float32}


@st.composite
def images(draw: st.DrawFn) -> tuple[str, str, np.ndarray, Image.Image]:
    """(suffix, mode, array, PIL image) for a random small image in a mode its format can store."""
    suffix = draw(st.sampled_from(sorted(FORMAT_MODES)))
    mode = draw(st.sampled_from(FORMAT_MODES[suffix]))
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    c = CHANNELS[mode]
    shape = (h, w) if c == 1 else (h, w, c)
    dtype = DTYPES.get(mode, np.uint8)
    if mode == "F":
        elements = st.floats(-1e4, 1e4, width=32, allow_nan=False)
    elif mode == "I":
        elements = st.integers(-70000, 70000)
    else:
        elements = None
    arr = draw(hnp.arrays(dtype, shape, elements=elements))
    if mode in ("1", "I;16", "I", "F"):
        im = Image.fromarray(arr)
    elif mode == "P":
        im = Image.fromarray(arr, "P")
        im.putpalette(draw(st.binary(min_size=768, max_size=768)))
    else:
        im = Image.fromarray(arr, mode)
    assert im.mode == mode
    return suffix, mode, arr, im


LOSSLESS = (".png", ".tif", ".bmp")


@FUZZ
@given(images(), st.sampled_from(["gray", "rgb"]))
def test_read_image_returns_float_hwc_in_unit_range(sample: tuple, channels: str) -> None:
    suffix, mode, arr, im = sample
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x.{suffix.rsplit('.', 1)[-1]}"
        im.save(path)
        x = read_image(path, channels)  # type: ignore[arg-type]
        m = read_mask(path)
    h, w = arr.shape[:2]
    assert x.dtype == np.float32 and x.shape == (h, w, 1 if channels == "gray" else 3)
    assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0
    assert m.dtype == np.bool_ and m.shape == (h, w)
    # Where the format is lossless, values are the stored ones scaled, and masks are "non-zero".
    if suffix in LOSSLESS and mode in ("L", "1") and channels == "gray":
        assert np.array_equal(x[..., 0], arr.astype(np.float32) / (1 if mode == "1" else 255))
        assert np.array_equal(m, arr > 0)
    if suffix in LOSSLESS and mode == "I;16":
        assert np.array_equal(x[..., 0] if channels == "gray" else x[..., 1], arr.astype(np.float32) / 65535)
        assert np.array_equal(m, arr > 0)
    if suffix in LOSSLESS and mode == "RGB" and channels == "rgb":
        assert np.array_equal(x, arr.astype(np.float32) / 255)
        assert np.array_equal(m, arr.max(axis=-1) > 0)
    if suffix in (".png", ".tif") and mode == "RGBA":
        assert np.array_equal(m, arr[..., :3].max(axis=-1) > 0)  # alpha is not a label


def _valid_files() -> dict[str, bytes]:
    """One small valid file per format (the TIFF has two pages, so page-directory code runs too)."""
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    out = {}
    for suffix, fmt in ((".png", "PNG"), (".jpg", "JPEG"), (".bmp", "BMP"), (".tif", "TIFF")):
        buf = io.BytesIO()
        extra = {"save_all": True, "append_images": [im.convert("L")]} if fmt == "TIFF" else {}
        im.save(buf, format=fmt, **extra)
        out[suffix] = buf.getvalue()
    deep = Image.fromarray(rng.integers(0, 65536, (16, 16), dtype=np.uint16))  # 16-bit gray: I;16
    for suffix, fmt in ((".16.png", "PNG"), (".16.tif", "TIFF")):
        buf = io.BytesIO()
        deep.save(buf, format=fmt)
        out[suffix] = buf.getvalue()
    return out


VALID = _valid_files()


def _read_or_data_error(content: bytes, suffix: str = ".png") -> None:
    """Reading ``content`` either gives a well-formed result or a DataError, nothing else."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x.{suffix.rsplit('.', 1)[-1]}"
        path.write_bytes(content)
        for read in (lambda: read_image(path, "rgb"), lambda: read_mask(path)):
            try:
                out = read()
            except DataError as e:
                assert str(e).startswith(f"{path}: ")
                continue
            assert out.ndim in (2, 3) and out.dtype in (np.float32, np.bool_)


@READER
@given(st.binary(max_size=2000))
def test_random_bytes_give_data_error(content: bytes) -> None:
    _read_or_data_error(content)


@READER
@given(st.binary(max_size=300))
def test_png_signature_with_random_bytes_gives_data_error(content: bytes) -> None:
    _read_or_data_error(b"\x89PNG\r\n\x1a\n" + content)


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the damage it reads past
@READER
@given(st.sampled_from(sorted(VALID)), st.data())
def test_damaged_files_give_data_error_or_an_image(suffix: str, data: st.DataObject) -> None:
    """Bytes overwritten and/or the end cut off, in each format."""
    b = bytearray(VALID[suffix])
    for pos, value in data.draw(st.lists(st.tuples(st.integers(0, len(b) - 1), st.integers(0, 255)), max_size=8)):
        b[pos] = value
    keep = data.draw(st.integers(1, len(b)))
    _read_or_data_error(bytes(b[:keep]), suffix)


# --------------------------------------------------------------------------------------------------
# Pairing images with masks

STEM = st.text(alphabet="abcXYZ019 éü", min_size=1, max_size=6).filter(lambda s: s.strip() == s and s.strip())


@FUZZ
@given(
    st.sets(STEM, min_size=1, max_size=8),
    st.sets(STEM, max_size=8),
    st.data(),
)
def test_pair_folder_pairs_exactly_the_matching_stems(image_stems: set[str], mask_stems: set[str], data: st.DataObject) -> None:
    # Some file systems fold case: one spelling per stem, so every stem is one file everywhere.
    canon: dict[str, str] = {}
    for s in sorted(image_stems | mask_stems):
        canon.setdefault(s.casefold(), s)
    image_stems = {canon[s.casefold()] for s in image_stems}
    mask_stems = {canon[s.casefold()] for s in mask_stems}
    with tempfile.TemporaryDirectory() as d:
        img_dir, mask_dir = Path(d) / "images", Path(d) / "masks"
        img_dir.mkdir()
        mask_dir.mkdir()
        for s in image_stems:
            (img_dir / f"{s}{data.draw(st.sampled_from(['.png', '.jpg', '.TIF']))}").write_bytes(b"")
        for s in mask_stems:
            suffix = data.draw(st.sampled_from(["", "_mask", "_gt", "_label", "_MASK", "-label"]))
            assert mask_key(s + suffix) == s
            (mask_dir / f"{s}{suffix}.png").write_bytes(b"")
        (img_dir / "readme.txt").write_text("not an image")
        rep = pair_folder(img_dir, mask_dir)
    both = image_stems & mask_stems
    assert {p.stem for p in rep.pairs} == both
    for p in rep.pairs:
        assert p.image.parent.name == "images" and p.mask is not None and mask_key(p.mask.stem) == p.stem
    assert {p.stem for p in rep.images_without_masks} == image_stems - mask_stems
    assert {mask_key(p.stem) for p in rep.masks_without_images} == mask_stems - image_stems
    assert [p.name for p in rep.ignored_files] == ["readme.txt"]


def test_mask_suffixes_are_stripped_once() -> None:
    for suffix in MASK_SUFFIXES:
        assert mask_key(f"cell{suffix}") == "cell"
        assert mask_key(suffix) == suffix  # a file named only "_mask" keeps its name


# --------------------------------------------------------------------------------------------------
# Config parsing

SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
HINTS = typing.get_type_hints(Config)
SECTION_KEYS = {
    name: [f.name for f in dataclasses.fields(HINTS[name])] for name in SECTIONS if dataclasses.is_dataclass(HINTS[name])
}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.sampled_from(["auto", "cosine", "adam", "true", "bce", "1e-3", "gray", "unet"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


@st.composite
def config_dicts(draw: st.DrawFn) -> dict:
    """Nested dicts that are mostly shaped like a config: real section and key names, random values,
    and now and then an unknown key or a value of the wrong kind."""
    out: dict = {}
    for key in draw(st.lists(st.sampled_from(sorted(SECTIONS)) | st.text(max_size=6), max_size=4, unique=True)):
        if key in SECTION_KEYS:
            sub_keys = st.sampled_from(SECTION_KEYS[key]) | st.text(max_size=6)
            out[key] = draw(st.dictionaries(sub_keys, values, max_size=4) | values)
        else:
            out[key] = draw(values)
    return out


@FUZZ
@given(config_dicts())
def test_config_from_dict_gives_a_config_or_a_config_error(data: dict) -> None:
    try:
        cfg = config_from_dict(data)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(cfg, Config)
    assert cfg.train.epochs >= 1 and cfg.train.lr > 0 and 0 < cfg.train.threshold < 1


@FUZZ
@given(st.one_of(st.lists(values, max_size=3), st.integers(), st.text(max_size=5), st.none()))
def test_config_top_level_that_is_not_a_mapping(data: object) -> None:
    if not data:  # nothing given: the defaults
        assert isinstance(config_from_dict(data), Config)  # type: ignore[arg-type]
        return
    with pytest.raises(ConfigError):
        config_from_dict(data)  # type: ignore[arg-type]


# (key, strategy of valid values, how to read it back)
OVERRIDES = [
    ("train.epochs", st.integers(1, 10**6)),
    ("train.batch_size", st.integers(1, 4096)),
    ("train.lr", st.floats(1e-9, 10.0)),
    ("train.threshold", st.floats(0.001, 0.999)),
    ("data.invert", st.booleans()),
    ("data.val_fraction", st.floats(0.0, 0.99)),
    ("train.optimizer", st.sampled_from(["adamw", "adam", "sgd"])),
    ("train.pos_weight", st.none() | st.just("auto") | st.floats(0.01, 100.0)),
    ("data.max_side", st.none() | st.integers(16, 8192)),
    ("name", st.text(alphabet="abcxyz019_- üé", min_size=1, max_size=10).filter(lambda s: s.strip() not in ("", ".", ".."))),
    ("data.val_stems", st.lists(st.text(alphabet="ab01 _", min_size=1, max_size=5), max_size=4)),
    ("augment.scale", st.lists(st.floats(0.1, 4.0), min_size=2, max_size=2).map(sorted)),  # valid: min <= max
]


@FUZZ
@given(st.sampled_from(OVERRIDES).flatmap(lambda kv: st.tuples(st.just(kv[0]), kv[1])))
def test_valid_overrides_round_trip(pair: tuple[str, object]) -> None:
    key, value = pair
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("\n...").strip()
    cfg = load_config(None, [f"{key}={text}"])
    node: object = cfg
    for part in key.split("."):
        node = getattr(node, part)
    assert node == value


# --------------------------------------------------------------------------------------------------
# Tiling

sizes = st.integers(1, 200)
tiles = st.integers(1, 96)
overlaps = st.floats(0.0, 0.9)


@FUZZ
@given(sizes, tiles, overlaps)
def test_tile_starts_cover_the_length(length: int, tile: int, overlap: float) -> None:
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] == length - tile
    assert all(0 <= s and s + tile <= length for s in starts)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()
    step = max(1, int(tile * (1 - overlap)))
    assert all(b - a <= step for a, b in zip(starts, starts[1:]))  # at least the asked-for overlap


@FUZZ
@given(st.integers(1, 70), st.integers(1, 70), st.integers(1, 48), overlaps, st.integers(1, 3))
def test_predict_tiled_with_identity_reproduces_the_input(h: int, w: int, tile: int, overlap: float, c: int) -> None:
    g = torch.Generator().manual_seed(h * 1000 + w)
    image = torch.randn(1, c, h, w, generator=g)
    seen: list[tuple[int, int]] = []

    def first_channel(x: torch.Tensor) -> torch.Tensor:  # (1, C, t, t) -> (1, 1, t, t)
        seen.append(tuple(x.shape[-2:]))
        return x[:, :1]

    out = predict_tiled(first_channel, image, tile, overlap)
    assert out.shape == (1, 1, h, w)
    torch.testing.assert_close(out, image[:, :1], rtol=1e-5, atol=1e-5)
    assert all(t == (min(tile, h), min(tile, w)) for t in seen)  # every window has the tile size


@FUZZ
@given(st.integers(1, 128), st.floats(0.05, 1.0))
def test_gaussian_weight_positive_with_peak_at_centre(tile: int, sigma: float) -> None:
    w = gaussian_weight(tile, sigma)
    assert w.shape == (tile, tile) and (w > 0).all() and float(w.max()) == pytest.approx(1.0)
    c = (tile - 1) // 2
    assert float(w[c, c]) == pytest.approx(1.0)
    torch.testing.assert_close(w, w.T)
    torch.testing.assert_close(w, w.flip(0).flip(1))
    assert float(w[0, 0]) <= float(w[c, c])


# --------------------------------------------------------------------------------------------------
# Output names

NAME_PART = st.text(min_size=1, max_size=12).filter(lambda s: "\0" not in s)


@FUZZ
@given(st.lists(st.lists(NAME_PART | st.sampled_from(["..", ".", "...", "~", " "]), min_size=1, max_size=4), min_size=1, max_size=6),
       st.sampled_from([".png", ".jpg", ".PNG"]))
def test_output_names_stay_inside_and_are_unique(paths: list[list[str]], suffix: str) -> None:
    root = Path("/data/in")
    out = Path("/results/out")
    files = [root.joinpath(*parts[:-1], parts[-1] + suffix) for parts in paths]  # a '/x' part leaves root
    names = output_names(files, root)
    assert len(names) == len(files)
    assert len({n.as_posix().casefold() for n in names}) == len(names)
    for f, n in zip(files, names):
        assert not n.is_absolute()
        assert all(part not in ("", ".", "..") and not part.startswith(".") for part in n.parts)
        joined = Path(*(out.parts + n.parts))
        assert joined.is_relative_to(out) and ".." not in joined.parts
        assert safe_relative_name(f, None).parts == (safe_relative_name(f, None).name,)


def test_output_names_examples() -> None:
    rnd = random.Random(0)
    names = ["a.png", "a.jpg", "a.JPG", "a_png.png", "sub/a.png", "../up.png", "/abs.png"]
    rnd.shuffle(names)
    files = [Path("/in") / n if not n.startswith("/") else Path(n) for n in names]
    got = output_names(files, Path("/in"))
    assert len({g.as_posix().casefold() for g in got}) == len(got)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("suffix", sorted(VALID))
def test_every_cut_of_each_image_format(suffix: str) -> None:
    """Each valid file (8-bit and 16-bit) cut at every offset: its chunks' and tags' boundaries included."""
    for k in range(len(VALID[suffix])):
        _read_or_data_error(VALID[suffix][:k], suffix)

"""Fuzzing every reader of a file the tool takes from a user (docs/reliability.md, "Fuzzing"): model
files (.safetensors, .onnx, Keras .h5), videos, downloaded archives, and the JSON and YAML it reads
back. For each: random bytes, the valid file cut at every offset (a superset of its structural
boundaries: the files are a few hundred bytes to a few kB), one byte changed, and (in
tests/test_bad_files.py) valid files with one named field made wrong. The only acceptable outcomes
are a valid result or the project's error type naming the file.

Each property runs READER_EXAMPLES (200) seeded examples; SEGDISTILL_FUZZ_EXAMPLES=2000 searches
harder with random seeds. Images and masks are fuzzed in tests/test_fuzz.py.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segdistill.errors import SegdistillError

from .badfiles import tiny_archive, tiny_h5, tiny_onnx, tiny_safetensors, tiny_video

_EXAMPLES = os.environ.get("SEGDISTILL_FUZZ_EXAMPLES")
READER_EXAMPLES = max(200, int(_EXAMPLES or 0))
# database=None: a failure a longer local search stored must not change what CI runs.
READER = settings(max_examples=READER_EXAMPLES, deadline=None, derandomize=_EXAMPLES is None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def damaged(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes; the valid file cut short; the valid file with one byte changed."""
    n = len(valid)
    return st.one_of(
        st.binary(max_size=n + 64),
        st.integers(0, n - 1).map(lambda k: valid[:k]),
        st.tuples(st.integers(0, n - 1), st.integers(0, 255)).map(lambda t: valid[:t[0]] + bytes([t[1]]) + valid[t[0] + 1:]),
    )


def outcome(read: Callable[[Path], Any], content: bytes, name: str) -> Any:
    """``read`` on a file holding ``content``: its result, or None after the project's error naming
    the file; any other exception fails the test."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(content)
        try:
            return read(path)
        except SegdistillError as e:
            assert path.name in str(e), f"the error does not name the file: {e}"
            assert "\n" not in str(e), f"not one line: {e!r}"
            return None


def every_cut(read: Callable[[Path], Any], valid: bytes, name: str, step: int = 1) -> None:
    """The valid file cut at every ``step``-th offset: a result or the project's error, each time."""
    assert outcome(read, valid, name) is not None, "the valid file must read"
    for k in range(0, len(valid), step):
        outcome(read, valid[:k], name)


# --------------------------------------------------------------------------------------------------
# .safetensors model files


SAFETENSORS = tiny_safetensors()


def _load_safetensors(path: Path) -> Any:
    from segdistill.checkpoint import load_model

    model, info = load_model(path)
    return info


def test_safetensors_every_cut() -> None:
    import struct

    header = struct.unpack("<Q", SAFETENSORS[:8])[0]
    # The structure: the length, the JSON header, then each tensor's bytes (offsets from the header).
    offsets = json.loads(SAFETENSORS[8:8 + header])
    ends = sorted({8, 8 + header} | {8 + header + v["data_offsets"][1] for k, v in offsets.items() if k != "__metadata__"})
    for k in [*range(0, 8 + header + 16, 7), *ends, *(e - 1 for e in ends)]:  # every 7th byte of the header
        outcome(_load_safetensors, SAFETENSORS[:k], "m.safetensors")


@READER
@given(damaged(SAFETENSORS))
def test_safetensors_fuzz(content: bytes) -> None:
    outcome(_load_safetensors, content, "m.safetensors")


# --------------------------------------------------------------------------------------------------
# .onnx (fp32 and int8 exports: the same reader)


ONNX = tiny_onnx()


def _read_onnx(path: Path) -> Any:
    from segdistill.checkpoint import read_model_info
    from segdistill.inference.backends import OnnxRuntimeBackend, onnx_precision

    info = read_model_info(path)
    assert onnx_precision(path) in ("fp32", "int8")
    import torch

    out = OnnxRuntimeBackend(path, multiple=1, threads=1)(torch.zeros(1, 1, 4, 4))
    assert out.shape == (1, 1, 4, 4)
    return info


def test_onnx_every_cut() -> None:
    every_cut(_read_onnx, ONNX, "m.onnx")


@READER
@given(damaged(ONNX))
def test_onnx_fuzz(content: bytes) -> None:
    outcome(_read_onnx, content, "m.onnx")


# --------------------------------------------------------------------------------------------------
# Keras .h5


H5 = tiny_h5()


def _read_h5(path: Path) -> Any:
    from segdistill.deploy.keras_h5 import read_keras_h5

    layers, about = read_keras_h5(path)
    assert all(isinstance(w, np.ndarray) for layer in layers for w in layer.weights)
    return layers


def test_h5_every_cut() -> None:
    every_cut(_read_h5, H5, "k.h5", step=8)  # HDF5 aligns its objects to 8 bytes


@READER
@given(damaged(H5))
def test_h5_fuzz(content: bytes) -> None:
    outcome(_read_h5, content, "k.h5")


# --------------------------------------------------------------------------------------------------
# Videos (PyAV)


VIDEO = tiny_video()


def _read_video(path: Path) -> Any:
    from segdistill.data.video import VideoReader

    with VideoReader(path) as reader:
        frames = [f for _, f in reader.read()]
    assert all(f.dtype == np.uint8 and f.shape == (reader.height, reader.width, 3) for f in frames)
    return frames or [None]


def test_video_every_cut() -> None:
    every_cut(_read_video, VIDEO, "v.mkv", step=max(1, len(VIDEO) // 400))


@READER
@given(damaged(VIDEO))
def test_video_fuzz(content: bytes) -> None:
    outcome(_read_video, content, "v.mkv")


# --------------------------------------------------------------------------------------------------
# Downloaded archives (zip, tar.gz)


ARCHIVES = {"zip": tiny_archive("zip"), "tar.gz": tiny_archive("tar.gz")}


def _extract(path: Path) -> Any:
    from segdistill.data.download import extract

    into = path.parent / "out"
    try:
        extract(path, into)
    finally:  # nothing lands outside the folder, whatever the archive holds
        assert sorted(p.name for p in path.parent.iterdir()) in ([path.name], sorted([path.name, "out"]))
    return sorted(p.relative_to(into).as_posix() for p in into.rglob("*"))


@pytest.mark.parametrize("kind", sorted(ARCHIVES))
def test_archive_every_cut(kind: str) -> None:
    every_cut(_extract, ARCHIVES[kind], f"a.{kind}")


@READER
@given(st.sampled_from(sorted(ARCHIVES)).flatmap(lambda k: st.tuples(st.just(k), damaged(ARCHIVES[k]))))
def test_archive_fuzz(case: tuple[str, bytes]) -> None:
    kind, content = case
    outcome(_extract, content, f"a.{kind}")


# --------------------------------------------------------------------------------------------------
# JSON read back (plan.json, search.json, caches) and YAML configs

RECORD = json.dumps({"runs": [{"name": "s", "rung": 0, "epoch_s": 1.5, "iou": 0.8}], "spent_s": 3.0}).encode()


def _read_search_record(path: Path) -> Any:
    from segdistill.engine.search.book import Book

    path.rename(path.parent / "search.json")
    book = Book.open(path.parent, fresh=False)
    assert isinstance(book.data["runs"], list)
    return book.data


def test_json_every_cut() -> None:
    every_cut(_read_search_record, RECORD, "search.json")


@READER
@given(damaged(RECORD))
def test_json_fuzz(content: bytes) -> None:
    outcome(_read_search_record, content, "search.json")


CONFIG = b"train:\n  epochs: 3\n  lr: 0.001\ndata:\n  root: d\nname: run\n"


def _read_config(path: Path) -> Any:
    from segdistill.config import load_config

    return load_config(path)


@READER
@given(damaged(CONFIG))
def test_config_fuzz(content: bytes) -> None:
    outcome(_read_config, content, "c.yaml")

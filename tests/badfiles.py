"""Tiny valid files of each format a reader takes (a few hundred bytes to a few kB), and ways to
make them wrong, for the fuzz tests (test_fuzz_readers.py) and the bad-file tests (test_bad_files.py)."""

from __future__ import annotations

import io
import struct
import tarfile
import tempfile
import zipfile
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np


def tiny_safetensors() -> bytes:
    import torch

    from segdistill.checkpoint import ModelInfo, save_model
    from segdistill.data.preprocess import Preprocess
    from segdistill.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", base=2, depth=1)
    with tempfile.TemporaryDirectory() as d:
        path = save_model(Path(d) / "m.safetensors", model, ModelInfo("unet", {"base": 2, "depth": 1}, Preprocess()))
        return path.read_bytes()


def tiny_onnx(meta: dict[str, str] | None = None, pads: int = 1, **tensor: Any) -> bytes:
    """A one-convolution graph with segdistill metadata (``tensor``: fields of its weight to change;
    ``pads`` other than 1: an output of another size than the input)."""
    import onnx
    from onnx import TensorProto, helper

    from segdistill.checkpoint import ModelInfo
    from segdistill.data.preprocess import Preprocess

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 3, 3], np.ones(9, np.float32).tobytes(), raw=True)
    for key, value in tensor.items():
        if key == "dims":
            del weight.dims[:]
            weight.dims.extend(value)
        elif key == "location":
            weight.data_location = TensorProto.EXTERNAL
            entry = weight.external_data.add()
            entry.key, entry.value = "location", value
            weight.ClearField("raw_data")
        else:
            setattr(weight, key, value)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[pads] * 4)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1, "h", "w"])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    info = ModelInfo("unet", {"base": 2, "depth": 1}, Preprocess())
    for key, value in ({"segdistill": info.to_json()} if meta is None else meta).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return onnx._serialize(model) if hasattr(onnx, "_serialize") else model.SerializeToString()


def tiny_h5() -> bytes:
    """A Keras 2 weights file (save_weights layout): one conv layer's kernel and bias."""
    import h5py

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.h5"
        with h5py.File(path, "w") as f:
            f.attrs["layer_names"] = [b"conv2d"]
            f.attrs["keras_version"] = b"2.4.0"
            g = f.create_group("conv2d")
            g.attrs["weight_names"] = [b"conv2d/kernel:0", b"conv2d/bias:0"]
            g.create_dataset("conv2d/kernel:0", data=np.ones((3, 3, 1, 2), np.float32))
            g.create_dataset("conv2d/bias:0", data=np.zeros(2, np.float32))
        return path.read_bytes()


def tiny_video() -> bytes:
    from segdistill.data.video import MASK_CODEC, video_writer

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v.mkv"
        with video_writer(path, MASK_CODEC, 16, 12, Fraction(25)) as write:
            for i in range(3):
                write(np.full((12, 16), 40 * i, np.uint8))
        return path.read_bytes()


def tiny_archive(kind: str) -> bytes:
    files = {"images/a.png": b"\x89PNG" + bytes(40), "masks/a.png": bytes(30), "README": b"tiny\n"}
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in files.items():
                z.writestr(name, data)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for name, data in files.items():
                member = tarfile.TarInfo(name)
                member.size = len(data)
                t.addfile(member, io.BytesIO(data))
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` 8-bit gray pixels and holds one row of them: what a
    decompression bomb looks like to a reader before it decodes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1 + min(width, 64)))) + \
        chunk(b"IEND", b"")


def y4m_header(width: int, height: int) -> bytes:
    """A YUV4MPEG2 video (FFmpeg reads it whatever its name) declaring ``width`` x ``height`` gray
    frames, with one short frame: a video bomb before decoding."""
    return f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 Cmono\nFRAME\n".encode() + bytes(256)


def h5_with(path: Path, kind: str) -> Path:
    """A Keras 2 weights file whose kernel is wrong in one way: ``external`` (a link to another
    file), ``huge`` (declares 40 GB, stores nothing), ``text`` (strings, not numbers)."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"conv2d"]
        g = f.create_group("conv2d")
        g.attrs["weight_names"] = [b"conv2d/kernel:0"]
        inner = g.create_group("conv2d")
        if kind == "external":
            inner["kernel:0"] = h5py.ExternalLink("/etc/passwd.h5", "/data")
        elif kind == "huge":
            inner.create_dataset("kernel:0", shape=(100_000, 100_000, 1, 1), dtype="f4", chunks=(1, 1, 1, 1))
        else:
            inner["kernel:0"] = np.array([b"import os"])
    return path



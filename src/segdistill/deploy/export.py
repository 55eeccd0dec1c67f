"""``segdistill export MODEL --format onnx|openvino``: a model file as an ONNX graph, or as an
OpenVINO IR (``.xml`` + ``.bin``, converted from that graph), that carries the model file's metadata,
checked against eager PyTorch before it is declared written.

The graph has a dynamic batch, height and width; height and width are multiples of the network's
total down-sampling (``pad_multiple``: the backend pads any image to that, as the model itself does
in PyTorch, and crops the result), so the graph holds no branch on the input's shape. Test-time augmentation stays a loop
outside the graph (inference/tta.py), as in PyTorch.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import file_sha256, load_model
from ..errors import SegdistillError
from ..fileio import atomic_path
from ..inference.backends import Backend, OnnxRuntimeBackend, OpenVinoBackend, import_openvino, is_ir
from ..inference.graph import CHECK_IMAGES, check_inputs, onnx_bytes, pad_multiple

__all__ = ["CHECK_IMAGES", "FORMATS", "ExportResult", "check_inputs", "export_onnx", "onnx_bytes", "write_ir"]

log = logging.getLogger("segdistill")

TOLERANCE = 1e-4
"""Largest difference of probabilities between the export and eager PyTorch (float32 rounding of a
reordered computation is ~1e-6)."""


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float
    """Largest |probability| difference against eager PyTorch over the checked images."""
    checked_on: str
    """What the check ran on (image files, or noise when there were none)."""


FORMATS = {"onnx": ".onnx", "openvino": ".xml"}
"""Export formats and their file suffix (an OpenVINO IR is ``NAME.xml`` + ``NAME.bin``)."""


def export_onnx(model_path: str | Path, out: str | Path | None = None, check: str | Path | None = None,
                tolerance: float = TOLERANCE, fmt: str = "onnx") -> ExportResult:
    """Export ``model_path`` to ``out`` (default: beside it, ``.onnx``, or ``.xml`` + ``.bin`` for
    ``fmt="openvino"``). The written graph is run in its runtime (ONNX Runtime; OpenVINO in f32) and
    compared with eager PyTorch on real images (``check``: a folder or image; default: the model's
    training data); a difference above ``tolerance`` is an error and no file is left."""
    if fmt not in FORMATS:
        raise SegdistillError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    model_path = Path(model_path)
    out = Path(out) if out is not None else model_path.with_suffix(FORMATS[fmt])
    model, info = load_model(model_path, "cpu")
    data = info.summary.get("data")
    inputs, checked_on = check_inputs(info, Path(check) if check is not None else None, Path(data) if data else None)
    blob = onnx_bytes(model, info)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        if fmt == "openvino":  # checked as written: the IR read back from disk
            staged = write_ir(blob, {"segdistill": info.to_json()}, Path(tmp) / out.name)
            runtime: Backend = OpenVinoBackend(staged, pad_multiple(info))
        else:
            runtime = OnnxRuntimeBackend(blob, pad_multiple(info))
        diff = max_difference(model, runtime, inputs)
        if not np.isfinite(diff) or diff > tolerance:
            raise SegdistillError(f"{model_path}: the {fmt} export differs from PyTorch by {diff:.2e} in probability "
                                  f"(more than {tolerance:g}) on {checked_on}; nothing written")
        if fmt == "openvino":
            move_ir(staged, out)
        else:
            with atomic_path(out) as tmp_out:
                tmp_out.write_bytes(blob)
    log.info("exported %s -> %s (%.1f MB); checked against PyTorch on %s: max probability difference %.2e",
             model_path, out, exported_bytes(out) / 1e6, checked_on, diff)
    log.info("source sha256 %s", file_sha256(model_path)[:16])
    return ExportResult(out, diff, checked_on)


def max_difference(model: torch.nn.Module, runtime: Backend, inputs: list[torch.Tensor]) -> float:
    """Largest |probability| difference between eager ``model`` and ``runtime`` over ``inputs``."""
    diff = 0.0
    with torch.inference_mode():
        for x in inputs:
            ref = torch.sigmoid(model(x).float())
            got = torch.sigmoid(runtime(x))
            diff = max(diff, float((ref - got).abs().max()))
    return diff


def write_ir(blob: bytes, metadata: dict[str, str], xml: Path) -> Path:
    """The ONNX graph ``blob`` as an OpenVINO IR at ``xml`` (+ ``.bin``, fp32 weights: reduced
    precision is chosen when it runs), the model file's ``metadata`` in its ``rt_info``."""
    ov = import_openvino()
    try:
        model = ov.Core().read_model(io.BytesIO(blob))
    except Exception as e:  # OpenVINO's own error types
        raise SegdistillError(f"OpenVINO cannot convert the exported graph ({str(e).strip().splitlines()[0][:200]})") from None
    for key, value in metadata.items():
        model.set_rt_info(value, [key])
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def move_ir(staged: Path, out: Path) -> None:
    """Move a staged IR into place: the ``.bin`` first, then the ``.xml`` that names the model, each
    renamed atomically, so a reader never finds an ``.xml`` without its weights."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".bin", ".xml"):
        with atomic_path(out.with_suffix(suffix)) as tmp:
            shutil.move(staged.with_suffix(suffix), tmp)


def exported_bytes(out: Path) -> int:
    return out.stat().st_size + (out.with_suffix(".bin").stat().st_size if is_ir(out) else 0)


def write_exported(blob: bytes, metadata: dict[str, str], out: Path) -> None:
    """Write a checked graph as ``out``: the ONNX bytes (``.onnx``), or an OpenVINO IR (``.xml``)."""
    if not is_ir(out):
        with atomic_path(out) as tmp:
            tmp.write_bytes(blob)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        move_ir(write_ir(blob, metadata, Path(tmp) / out.name), out)

"""``segdistill export MODEL --format onnx``: a model file as an ONNX graph that carries the model
file's metadata, checked against eager PyTorch before it is declared written.

The graph has a dynamic batch, height and width; height and width are multiples of the network's
total down-sampling (``pad_multiple``: the backend pads any image to that, as the model itself does
in PyTorch, and crops the result), so the graph holds no branch on the input's shape. Test-time augmentation stays a loop
outside the graph (inference/tta.py), as in PyTorch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import file_sha256, load_model
from ..errors import SegdistillError
from ..fileio import atomic_path
from ..inference.backends import OnnxRuntimeBackend
from ..inference.graph import CHECK_IMAGES, check_inputs, onnx_bytes, pad_multiple

__all__ = ["CHECK_IMAGES", "ExportResult", "check_inputs", "export_onnx", "onnx_bytes"]

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


def export_onnx(model_path: str | Path, out: str | Path | None = None, check: str | Path | None = None,
                tolerance: float = TOLERANCE) -> ExportResult:
    """Export ``model_path`` to ``out`` (default: beside it, ``.onnx``). The export is run in ONNX
    Runtime and compared with eager PyTorch on real images (``check``: a folder or image; default:
    the model's training data); a difference above ``tolerance`` is an error and no file is left."""
    model_path = Path(model_path)
    out = Path(out) if out is not None else model_path.with_suffix(".onnx")
    model, info = load_model(model_path, "cpu")
    data = info.summary.get("data")
    inputs, checked_on = check_inputs(info, Path(check) if check is not None else None, Path(data) if data else None)
    blob = onnx_bytes(model, info)
    runtime = OnnxRuntimeBackend(blob, pad_multiple(info))
    diff = 0.0
    with torch.inference_mode():
        for x in inputs:
            ref = torch.sigmoid(model(x).float())
            got = torch.sigmoid(runtime(x))
            diff = max(diff, float((ref - got).abs().max()))
    if not np.isfinite(diff) or diff > tolerance:
        raise SegdistillError(f"{model_path}: the ONNX export differs from PyTorch by {diff:.2e} in probability "
                              f"(more than {tolerance:g}) on {checked_on}; nothing written")
    with atomic_path(out) as tmp:
        tmp.write_bytes(blob)
    log.info("exported %s -> %s (%.1f MB); checked against PyTorch on %s: max probability difference %.2e",
             model_path, out, out.stat().st_size / 1e6, checked_on, diff)
    log.info("source sha256 %s", file_sha256(model_path)[:16])
    return ExportResult(out, diff, checked_on)

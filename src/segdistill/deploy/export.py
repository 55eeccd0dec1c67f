"""``segdistill export MODEL --format onnx``: a model file as an ONNX graph that carries the model
file's metadata, checked against eager PyTorch before it is declared written.

The graph has a dynamic batch, height and width; height and width are multiples of the network's
total down-sampling (``pad_multiple``: the backend pads any image to that, as the model itself does
in PyTorch, and crops the result), so the graph holds no branch on the input's shape. Test-time augmentation stays a loop
outside the graph (inference/tta.py), as in PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import ModelInfo, file_sha256, load_model
from ..data.discovery import collect_images
from ..data.imageio import read_image, resize_for_model
from ..errors import SegdistillError
from ..fileio import atomic_path
from ..inference.backends import OnnxRuntimeBackend, pad_multiple

log = logging.getLogger("segdistill")

TOLERANCE = 1e-4
"""Largest difference of probabilities between the export and eager PyTorch (float32 rounding of a
reordered computation is ~1e-6)."""
CHECK_IMAGES = 4
"""Images the check runs (the first of the folder, in name order)."""


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float
    """Largest |probability| difference against eager PyTorch over the checked images."""
    checked_on: str
    """What the check ran on (image files, or noise when there were none)."""


def onnx_bytes(model: nn.Module, info: ModelInfo) -> bytes:
    """The model as a serialised ONNX graph (float32, CPU) with the model file's metadata."""
    import onnx

    model = model.float().cpu().eval()
    m = pad_multiple(info)
    example = torch.zeros(1, info.preprocess.in_channels, 2 * m, 2 * m)
    dims = ({0: torch.export.Dim("batch", min=1, max=4096), 2: torch.export.Dim("h", min=1, max=4096) * m,
             3: torch.export.Dim("w", min=1, max=4096) * m},)
    # The exporter prints and logs its steps; a CLI export shows ours only.
    with warnings.catch_warnings(), _quiet_exporter(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=dims, input_names=["image"],
                                        output_names=["logits"], verbose=False, report=False)
        except Exception as e:  # the exporter's many error types; the first line says what failed
            raise SegdistillError(f"{info.arch}: ONNX export failed ({str(e).strip().splitlines()[0][:200]})") from None
    proto = program.model_proto
    for key, value in {"segdistill": info.to_json()}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    buf = io.BytesIO()
    onnx.save_model(proto, buf)
    return buf.getvalue()


class _quiet_exporter:
    """The exporter's loggers at ERROR for the block."""

    def __enter__(self) -> None:
        self.loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir", "torch._dynamo")]
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)


def check_inputs(info: ModelInfo, check: Path | None, default_dir: Path | None) -> tuple[list[torch.Tensor], str]:
    """Normalised (1, C, h, w) inputs to compare the export on: images of ``check`` (a folder or a
    file), else of the model's training data when it is still there, else noise at two odd sizes."""
    pre = info.preprocess
    source = check if check is not None else default_dir
    files: list[Path] = []
    if source is not None and source.exists():
        images = source / "images" if (source / "images").is_dir() else source
        files = [images] if images.is_file() else collect_images([images], False)[:CHECK_IMAGES]
    if check is not None and not files:
        raise SegdistillError(f"{check}: no images to check the export on")
    if files:
        xs = [pre.normalise(torch.from_numpy(resize_for_model(read_image(f, pre.channels), pre.max_side))
                            .permute(2, 0, 1)[None]) for f in files]
        return xs, f"{len(files)} image(s) of {source}"
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, pre.in_channels, h, w, generator=gen) for h, w in ((97, 131), (64, 50))], "noise (no images given)"


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

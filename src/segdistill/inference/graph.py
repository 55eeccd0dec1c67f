"""The model as an ONNX graph in memory, and the images a graph is checked on: what the backends,
the backend choice and the export share (the export writes; this module only builds)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import ModelInfo
from ..data.discovery import collect_images
from ..data.imageio import read_image, resize_for_model
from ..errors import SegdistillError
from ..models.unet import input_multiple

CHECK_IMAGES = 4
"""Images the check runs (the first of the folder, in name order)."""


def pad_multiple(info: ModelInfo) -> int:
    """What a model pads its input to: its total down-sampling (``models.unet.input_multiple``)."""
    return input_multiple(info.args)


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

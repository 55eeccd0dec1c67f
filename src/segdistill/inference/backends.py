"""Inference backends behind one small interface: a normalised batch in, logits out.

``Predictor``, ``evaluate``, tiling and test-time augmentation call a :class:`Backend` and never ask
which one it is. The backend is chosen in one place, :func:`open_backend`:

- ``torch``: the model file rebuilt in PyTorch (eager), channels-last where measured to pay;
- ``onnxruntime``: an exported ``.onnx`` file (``segdistill export``), or a ``.safetensors`` model
  exported in memory first.

The exported graph takes inputs whose height and width are multiples of the network's total
down-sampling (:func:`pad_multiple`; no shape-dependent branch inside the graph); the backend pads
with the model's own rule (``pad_to_multiple``: reflect) and crops the logits back, so any image
size gives what eager PyTorch gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import ModelInfo, load_model, read_model_info
from ..errors import ModelFileError, SegdistillError
from ..models.blocks import pad_to_multiple
from ..models.unet import input_multiple
from ..runtime import select_device, use_channels_last

BACKENDS = ("auto", "torch", "onnxruntime")


class Backend:
    """A model ready to run: ``backend(x)`` maps (B, C, H, W) float32 normalised images to
    (B, 1, H, W) float32 logits."""

    name = "backend"
    precision = "fp32"
    device = torch.device("cpu")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def eval(self) -> Backend:
        """Inference only, always (evaluate calls ``model.eval()``)."""
        return self

    def describe(self) -> str:
        return f"{self.name} {self.precision}"


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device, channels_last: bool) -> None:
        self.device = device
        self.channels_last = channels_last
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x).float()

    def describe(self) -> str:
        return f"torch {self.precision}" + (", channels-last" if self.channels_last else "")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model: str | Path | bytes, multiple: int, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - a regular dependency
            raise SegdistillError("onnxruntime is not installed: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # its warnings about unused initialisers are not the user's concern
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors for a bad file
            where = "the exported model" if isinstance(model, bytes) else str(model)
            raise ModelFileError(f"{where}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.multiple = multiple

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        padded, _, _ = pad_to_multiple(x.detach().float().cpu(), self.multiple)
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(padded.numpy())})[0]
        return torch.from_numpy(out[..., :h, :w].copy())


def pad_multiple(info: ModelInfo) -> int:
    """What a model pads its input to: its total down-sampling (``models.unet.input_multiple``)."""
    return input_multiple(info.args)


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def open_backend(path: str | Path, backend: str = "auto", device: str | torch.device = "auto",
                 channels_last: str = "auto") -> tuple[Backend, ModelInfo]:
    """The model file at ``path`` (``.safetensors`` or an exported ``.onnx``) on ``backend``:
    ``auto`` runs a ``.safetensors`` file in PyTorch and a ``.onnx`` file in ONNX Runtime."""
    if backend not in BACKENDS:
        raise SegdistillError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = Path(path)
    if is_onnx(path):
        if backend == "torch":
            raise SegdistillError(f"{path}: an exported ONNX model runs on onnxruntime; for torch give the "
                                  ".safetensors model file it was exported from")
        info = read_model_info(path)
        return OnnxRuntimeBackend(path, pad_multiple(info)), info
    dev = select_device(device)
    model, info = load_model(path, dev)
    if backend == "onnxruntime":
        if dev.type != "cpu":
            raise SegdistillError("--backend onnxruntime runs on the CPU; use --device cpu, or torch on the GPU")
        from ..deploy.export import onnx_bytes

        return OnnxRuntimeBackend(onnx_bytes(model, info), pad_multiple(info)), info
    return TorchBackend(model, dev, use_channels_last(channels_last, dev, training=False)), info

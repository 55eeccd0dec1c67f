"""Inference backends behind one small interface: a normalised batch in, logits out.

``Predictor``, ``evaluate``, tiling and test-time augmentation call a :class:`Backend` and never ask
which one it is. The backend is chosen in one place, :func:`.choose.open_backend`:

- ``torch``: the model file rebuilt in PyTorch (eager), channels-last where measured to pay;
- ``onnxruntime``: an exported ``.onnx`` file (``segdistill export``), or a ``.safetensors`` model
  exported in memory first;
- ``openvino`` (optional extra ``segdistill[openvino]``): the same ONNX graph compiled by OpenVINO,
  in f32 or (on CPUs that compute it natively) bf16.

An int8 file (``segdistill export --int8``) is a QDQ ONNX graph that both runtimes run in int8.
``auto`` picks among all of these by measuring them on the machine at hand (inference/choose.py).

The exported graph takes inputs whose height and width are multiples of the network's total
down-sampling (:func:`pad_multiple`; no shape-dependent branch inside the graph); the backend pads
with the model's own rule (``pad_to_multiple``: reflect) and crops the logits back, so any image
size gives what eager PyTorch gives.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import EXPORTED_SUFFIXES, ONNX_PRECISION_KEY, ModelInfo, exported_metadata, load_model
from ..errors import ModelFileError, SegdistillError
from ..extras import available, require
from ..models.blocks import pad_to_multiple
from ..runtime import cpu_has_native_bf16
from .graph import onnx_bytes, pad_multiple

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = ("auto", "fp32", "bf16")
"""ONNX metadata key naming an exported graph's precision ("int8" for a quantized export)."""


@dataclass(frozen=True)
class Choice:
    """One way to run a model: a backend, a precision and (torch) the memory format."""

    backend: str
    precision: str = "fp32"
    channels_last: bool = False

    def label(self) -> str:
        return f"{self.backend} {self.precision}" + (", channels-last" if self.channels_last else "")

    def to_dict(self) -> dict[str, object]:
        return {"backend": self.backend, "precision": self.precision, "channels_last": self.channels_last}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Choice:
        return cls(str(d["backend"]), str(d["precision"]), bool(d.get("channels_last", False)))


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

    def __init__(self, model: nn.Module, device: torch.device, channels_last: bool, precision: str = "fp32") -> None:
        self.device = device
        self.channels_last = channels_last
        self.precision = precision
        # bf16 by autocast (weights stay fp32; convolutions run in bf16 where the CPU or GPU computes it).
        self.dtype = torch.bfloat16 if precision == "bf16" else None
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.dtype is None:
            return self.model(x).float()
        with torch.autocast(device_type=self.device.type, dtype=self.dtype):
            return self.model(x).float()

    def describe(self) -> str:
        return f"torch {self.precision}" + (", channels-last" if self.channels_last else "")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model: str | Path | bytes, multiple: int, threads: int | None = None, precision: str = "fp32") -> None:
        self.precision = precision
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - a regular dependency
            raise SegdistillError("onnxruntime is not installed: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # its warnings about unused initialisers are not the user's concern
        source = model if isinstance(model, bytes) else str(model)
        self.where = "the exported model" if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors for a bad file
            raise ModelFileError(f"{self.where}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.multiple = multiple

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        padded, _, _ = pad_to_multiple(x.detach().float().cpu(), self.multiple)
        try:
            out = self.session.run(None, {self.input_name: np.ascontiguousarray(padded.numpy())})[0]
        except Exception as e:  # onnxruntime's untyped errors: a graph that loads but cannot run this input
            raise ModelFileError(f"{self.where}: ONNX Runtime cannot run it on a {tuple(padded.shape)} batch "
                                 f"({str(e).splitlines()[0][:200]})") from None
        return torch.from_numpy(logits_of(out, padded.shape, self.where)[..., :h, :w].copy())


def logits_of(out: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A graph's output checked to be one logit map per input, (B, 1, H, W) of the (padded) input:
    an ONNX file edited into another shape is refused rather than cropped into a wrong mask."""
    b, _, h, w = shape
    if tuple(out.shape) != (b, 1, h, w):
        raise ModelFileError(f"{where}: the graph returns shape {tuple(out.shape)} for input {tuple(shape)}; "
                             f"expected {(b, 1, h, w)} (not a segdistill segmentation export?)")
    return out


class OpenVinoBackend(Backend):
    """An ONNX graph compiled by OpenVINO for the CPU. ``precision``: the inference precision hint
    (``fp32`` -> f32, ``bf16``; an int8 QDQ graph runs in int8 either way). One compiled model per
    input shape (static shapes are what OpenVINO optimises best), a few kept."""

    name = "openvino"
    KEEP = 4

    def __init__(self, model: str | Path | bytes, multiple: int, threads: int | None = None, precision: str = "fp32",
                 graph_precision: str = "fp32") -> None:
        ov = import_openvino()
        self.core = ov.Core()
        self.multiple = multiple
        self.precision = graph_precision if graph_precision == "int8" else precision
        hint = "bf16" if precision == "bf16" else "f32"  # an int8 graph's quantized layers run int8 either way
        self.config = {"INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()), "INFERENCE_PRECISION_HINT": hint,
                       "PERFORMANCE_HINT": "LATENCY"}
        try:
            self.model = self.core.read_model(io.BytesIO(model) if isinstance(model, bytes) else str(model))
        except Exception as e:  # OpenVINO's own error types
            where = "the exported model" if isinstance(model, bytes) else str(model)
            raise ModelFileError(f"{where}: OpenVINO cannot load it ({str(e).strip().splitlines()[0][:200]})") from None
        self.input_name = self.model.inputs[0].get_any_name()
        self.compiled: dict[tuple[int, ...], object] = {}

    def _compiled(self, shape: tuple[int, ...]):
        if shape not in self.compiled:
            if len(self.compiled) >= self.KEEP:
                self.compiled.pop(next(iter(self.compiled)))
            model = self.model.clone()
            model.reshape({self.input_name: list(shape)})
            self.compiled[shape] = self.core.compile_model(model, "CPU", self.config)
        return self.compiled[shape]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        padded, _, _ = pad_to_multiple(x.detach().float().cpu(), self.multiple)
        arr = np.ascontiguousarray(padded.numpy())
        out = np.asarray(self._compiled(arr.shape)(arr)[0])
        return torch.from_numpy(logits_of(out, arr.shape, "the ONNX graph")[..., :h, :w].copy())


def import_openvino():
    return require("openvino")


def openvino_available() -> bool:
    return available("openvino")


def onnx_precision(path: str | Path) -> str:
    """"int8" for a quantized export (ONNX or OpenVINO IR), else "fp32" (from the file's metadata)."""
    return exported_metadata(Path(path)).get(ONNX_PRECISION_KEY, "fp32")


def is_onnx(path: str | Path) -> bool:
    """An exported graph: ``.onnx``, or an OpenVINO IR ``.xml`` (:func:`is_ir`)."""
    return Path(path).suffix.lower() in EXPORTED_SUFFIXES


def is_ir(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".xml"


def candidates(onnx_file: bool, graph_precision: str = "fp32", device: torch.device | None = None,
               ir: bool = False) -> list[Choice]:
    """The ways this machine can run a model file: its reference first (torch fp32 for a
    ``.safetensors`` file; ONNX Runtime for an ``.onnx`` one; OpenVINO fp32 for an IR ``.xml``
    (``ir``)), then the rest that are installed.
    bf16 only where the CPU computes it natively (emulated bf16 was 16x slower than fp32)."""
    if device is not None and device.type != "cpu":
        return [Choice("torch", "fp32", True), Choice("torch", "bf16", True)]
    bf16 = cpu_has_native_bf16()
    out: list[Choice] = []
    if not onnx_file:
        out += [Choice("torch", "fp32", False), Choice("torch", "fp32", True)]
        if bf16:
            out.append(Choice("torch", "bf16", True))
    if not ir:  # an OpenVINO IR runs on OpenVINO only
        out.append(Choice("onnxruntime", graph_precision))
    if ir or openvino_available():
        out.append(Choice("openvino", graph_precision if graph_precision == "int8" else "fp32"))
        if bf16 and graph_precision != "int8":
            out.append(Choice("openvino", "bf16"))
    return out


def build_backend(choice: Choice, path: Path, info: ModelInfo, model: nn.Module | None = None,
                  blob: bytes | None = None, device: torch.device | None = None) -> Backend:
    """The backend for ``choice`` on the model file at ``path`` (``model``: it already built in
    PyTorch; ``blob``: its ONNX export, made here when needed and not given)."""
    graph: str | Path | bytes
    if is_onnx(path):
        if choice.backend == "torch" or (is_ir(path) and choice.backend != "openvino"):
            runs_on = "openvino" if is_ir(path) else "onnxruntime or openvino"
            raise SegdistillError(f"{path}: an exported model runs on {runs_on}; for {choice.backend} give "
                                  "the .safetensors model file it was exported from")
        graph, graph_precision = path, onnx_precision(path)
    else:
        dev = device or torch.device("cpu")
        if model is None:
            model, _ = load_model(path, dev)
        if choice.backend == "torch":
            if choice.precision == "bf16" and dev.type == "cpu" and not cpu_has_native_bf16():
                log_bf16_emulated()
            return TorchBackend(model, dev, choice.channels_last, choice.precision)
        if dev.type != "cpu":
            raise SegdistillError(f"--backend {choice.backend} runs on the CPU; use --device cpu, or torch on the GPU")
        if blob is None:
            blob = onnx_bytes(model, info)
        graph, graph_precision = blob, "fp32"
    if choice.backend == "onnxruntime":
        if choice.precision == "bf16":
            raise SegdistillError("onnxruntime runs fp32 (or an int8 export) on the CPU; for bf16 use torch or openvino")
        return OnnxRuntimeBackend(graph, pad_multiple(info), precision=graph_precision)
    if choice.backend == "openvino":
        return OpenVinoBackend(graph, pad_multiple(info), precision=choice.precision, graph_precision=graph_precision)
    raise SegdistillError(f"unknown backend {choice.backend!r}; choose one of {', '.join(BACKENDS)}")


def log_bf16_emulated() -> None:
    import logging

    logging.getLogger("segdistill").warning("this CPU has no native bf16: bf16 inference is emulated and slow")

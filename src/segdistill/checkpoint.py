"""One model format, and a training-state format, neither of which can run code when loaded.

Model file (``model.safetensors``): the weights as a plain safetensors file, plus one metadata entry
``segdistill`` holding JSON: format version, architecture name and arguments, preprocessing,
threshold, and a training summary. ``predict`` needs only this file.

Training state (``state.safetensors``): any nested structure of dicts, lists, numbers, strings and
tensors (model, optimiser, scheduler, scaler, RNG, history). Tensors go into safetensors, the rest
into JSON. Loading is plain data parsing: there is no pickle anywhere, so a crafted file cannot
execute code. Files that are pickles (``torch.save`` output, ``.pt``/``.pth``/``.ckpt``) are refused
with a clear message rather than unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .data.preprocess import Preprocess
from .errors import ModelFileError, SegdistillError
from .fileio import atomic_path
from .models import create_model
from .remote import local_model
from .remote import sha256_file as file_sha256  # noqa: F401 (callers import it from here)

FORMAT_VERSION = 1
_META_KEY = "segdistill"
ONNX_PRECISION_KEY = "segdistill.precision"
"""The metadata entry that marks an int8 export."""
EXPORTED_SUFFIXES = (".onnx", ".xml")
"""Exported models (ONNX, OpenVINO IR): they carry the model file's metadata; predict, evaluate and
benchmark run them, nothing rewrites them."""


@dataclass
class ModelInfo:
    """Everything needed to rebuild and use a model, stored beside its weights."""

    arch: str
    args: dict[str, Any]
    preprocess: Preprocess
    threshold: float = 0.5
    summary: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    tta: int = 1
    """Test-time augmentation views predict and evaluate use (inference/tta.py)."""
    label_offset: list[float] = field(default_factory=lambda: [0.0, 0.0])
    """(dy, dx) pixels the training labels sat from the structures; TTA re-aligns its views by it."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "format_version": self.format_version,
                "arch": self.arch,
                "args": self.args,
                "preprocess": self.preprocess.to_dict(),
                "threshold": self.threshold,
                "summary": self.summary,
                "tta": self.tta,
                "label_offset": self.label_offset,
            }
        )


def _sniff(path: Path) -> None:
    """Refuse files that are not safetensors before any parser sees them."""
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            raise ModelFileError(f"{path} is a run folder; its model is {path / 'model.safetensors'}")
        raise ModelFileError(f"{path}: a folder, not a model file (expected a .safetensors file, e.g. RUN/model.safetensors)")
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if size == 0:
        raise ModelFileError(f"{path}: empty file (0 bytes)")
    header_len = int.from_bytes(head[:8], "little")
    safetensors_like = 0 < header_len <= 100_000_000 and head[8:9] == b"{"
    # A safetensors header length can begin with the bytes of a pickle (0x80) or zip ("PK")
    # signature (e.g. a 0x1780-byte header), so only files that are not safetensors-shaped count.
    if not safetensors_like and (head[:2] == b"PK" or head[:1] == b"\x80"):
        raise ModelFileError(
            f"{path}: this is a pickle-based file (torch.save/.pt/.ckpt); segdistill refuses to load "
            "pickles because unpickling can run arbitrary code. Use a segdistill .safetensors model file"
        )
    if size < 8:
        raise ModelFileError(f"{path}: file too short to be a safetensors model (truncated?)")
    if not safetensors_like:
        raise ModelFileError(f"{path}: not a safetensors file (unknown format)")
    if 8 + header_len > size:
        raise ModelFileError(f"{path}: file is truncated (header says {header_len} bytes, file has {size})")


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    return tensors, meta


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    # safetensors wants contiguous, unshared CPU tensors.
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=meta)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_model(path: str | Path, model: nn.Module, info: ModelInfo) -> Path:
    path = Path(path)
    state = unwrap(model).state_dict()
    _write(path, state, {_META_KEY: info.to_json(), "format": "pt"})
    return path


def store_threshold(path: str | Path, threshold: float) -> float:
    """Rewrite the model file's threshold (atomically; weights and every other entry as they were);
    returns the old threshold."""
    path = Path(path)
    if path.suffix.lower() in EXPORTED_SUFFIXES:
        raise ModelFileError(f"{path}: an exported model is not rewritten; store the threshold in the .safetensors "
                             "model it was exported from, then export again")
    if not 0 < threshold < 1:
        raise ModelFileError(f"threshold {threshold} must lie between 0 and 1")
    tensors, meta = _read(path)
    old = _parse_info(path, meta).threshold  # a file that is not a readable model fails here
    entry = json.loads(meta[_META_KEY])  # changed in place: keys this version does not know are kept
    entry["threshold"] = float(threshold)
    _write(path, tensors, {**meta, _META_KEY: json.dumps(entry)})
    return old


def read_model_info(path: str | Path) -> ModelInfo:
    """The metadata of a model file (``.safetensors``, an exported ``.onnx`` or OpenVINO ``.xml``; a
    path or an ``https://`` URL, see :func:`.remote.local_model`), without building the model."""
    path = local_model(path)
    if path.suffix.lower() in EXPORTED_SUFFIXES:
        return _parse_info(path, exported_metadata(path))
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    return _parse_info(path, meta)


MAX_ONNX_TENSOR_BYTES = 1 << 31
"""The largest weight tensor an ONNX file may declare (2 GiB, protobuf's own limit for a whole
file): a larger declared shape is a decompression bomb, not a segmentation model."""


def read_onnx(path: str | Path) -> Any:
    """An ONNX file as its ``ModelProto``, checked before anything allocates or follows it:
    every weight keeps its data inside the file (external data is refused, so no path in the file
    is ever opened), and every declared shape is non-negative, at most MAX_ONNX_TENSOR_BYTES, and
    matches the bytes the file holds for it.

    Raises:
        ModelFileError: missing, empty, not ONNX, external data, or a tensor that does not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: empty file (0 bytes)")
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for a file that is not ONNX
        raise ModelFileError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
    for tensor in _onnx_tensors(proto.graph):
        _check_onnx_tensor(path, tensor)
    return proto


def _onnx_tensors(graph: Any) -> Any:
    """The weight tensors of a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _onnx_tensors(sub)


def _check_onnx_tensor(path: Path, t: Any) -> None:
    import onnx

    name = t.name or "(unnamed)"
    if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:
        where = next((e.value for e in t.external_data if e.key == "location"), "?")
        raise ModelFileError(f"{path}: tensor {name!r} keeps its data in another file ({where!r}); segdistill reads "
                             "only self-contained ONNX files (as segdistill export writes them)")
    if any(d < 0 for d in t.dims):
        raise ModelFileError(f"{path}: tensor {name!r} declares a negative size {list(t.dims)}")
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        raise ModelFileError(f"{path}: tensor {name!r} has an unknown data type ({t.data_type})") from None
    count = 1
    for d in t.dims:
        count *= d
    if count * itemsize > MAX_ONNX_TENSOR_BYTES:
        raise ModelFileError(f"{path}: tensor {name!r} declares {count * itemsize} bytes (shape {list(t.dims)}); "
                             f"refusing more than {MAX_ONNX_TENSOR_BYTES}")
    if t.HasField("raw_data") and len(t.raw_data) != count * itemsize:
        raise ModelFileError(f"{path}: tensor {name!r} declares shape {list(t.dims)} but holds {len(t.raw_data)} "
                             f"bytes, not {count * itemsize} (corrupt or truncated)")


def exported_metadata(path: Path) -> dict[str, str]:
    """The metadata of an exported model (``segdistill export`` stores the model file's there): an
    ONNX file's metadata properties (the file checked by :func:`read_onnx`), an OpenVINO IR's
    ``rt_info`` (read as XML: no runtime needed)."""
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    if path.suffix.lower() == ".xml":
        try:
            rt_info = ElementTree.parse(path).getroot().find("rt_info")
        except (ElementTree.ParseError, OSError) as e:
            raise ModelFileError(f"{path}: not a readable OpenVINO IR .xml ({e})") from None
        return {} if rt_info is None else {child.tag: child.get("value", "") for child in rt_info}
    return _onnx_metadata(path)


def _onnx_metadata(path: Path) -> dict[str, str]:
    """The metadata properties of an ONNX file (``segdistill export`` stores the model file's there)."""
    return {p.key: p.value for p in read_onnx(path).metadata_props}


def _parse_info(path: Path, meta: dict[str, str]) -> ModelInfo:
    if _META_KEY not in meta:
        kind = {".onnx": "ONNX", ".xml": "OpenVINO IR"}.get(path.suffix.lower(), "safetensors")
        if kind == "ONNX":
            raise ModelFileError(f"{path}: ONNX file without segdistill metadata (not made by 'segdistill export'; "
                                 "its input size, channels, normalisation and threshold are unknown, so it is refused "
                                 "rather than guessed)")
        raise ModelFileError(f"{path}: {kind} file without segdistill metadata (not a segdistill model)")
    try:
        d = json.loads(meta[_META_KEY])
        version = int(d.get("format_version", 0))
    except (ValueError, TypeError, AttributeError):
        raise ModelFileError(f"{path}: unreadable segdistill metadata") from None
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: made by a newer segdistill (model format {version}, this version reads up to "
            f"{FORMAT_VERSION}); upgrade segdistill to load it"
        )
    try:
        return ModelInfo(
            arch=str(d["arch"]),
            args=dict(d["args"]),
            preprocess=Preprocess.from_dict(d["preprocess"]),
            threshold=float(d.get("threshold", 0.5)),
            summary=dict(d.get("summary", {})),
            format_version=version,
            tta=int(d.get("tta", 1)),
            label_offset=[float(v) for v in d.get("label_offset", [0.0, 0.0])],
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: incomplete segdistill metadata (missing {e})") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelInfo]:
    """Rebuild the architecture named in the file and load its weights (eval mode). ``path``: a
    model file, or an ``https://.../model.safetensors#sha256=HEX`` URL (downloaded once into the
    cache and verified: :func:`.remote.local_model`)."""
    path = local_model(path)
    tensors, meta = _read(path)
    info = _parse_info(path, meta)
    _check_shapes(path, info, tensors)
    model = create_model(info.arch, **info.args)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ModelFileError(f"{path}: weights do not match architecture '{info.arch}' ({first})") from None
    return model.to(device).eval(), info


def _check_shapes(path: Path, info: ModelInfo, tensors: dict[str, torch.Tensor]) -> None:
    """Build the architecture the file names on the meta device (no memory) and compare its weight
    shapes with the file's, so that arguments edited into a huge model allocate nothing, and an
    unknown name or argument is an error naming the file."""
    try:
        with torch.device("meta"):
            skeleton = create_model(info.arch, **info.args)
    except SegdistillError as e:
        raise ModelFileError(f"{path}: {e}") from None
    except (TypeError, ValueError, RuntimeError, OverflowError, ZeroDivisionError) as e:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ModelFileError(f"{path}: architecture '{info.arch}' cannot be built from the file's arguments "
                             f"({reason})") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    for key in sorted(expected.keys() ^ tensors.keys()) or sorted(k for k in expected if expected[k] != tuple(tensors[k].shape)):
        held = tuple(tensors[key].shape) if key in tensors else "missing"
        raise ModelFileError(f"{path}: weights do not match architecture '{info.arch}' ({key}: expected "
                             f"{expected.get(key, 'none')}, file has {held})")


# --------------------------------------------------------------------------------------------------
# Training state: nested python data with tensors, no pickle.


def _flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__" if isinstance(obj, list) else "__tuple__": [_flatten(v, tensors) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a training state")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            return [_unflatten(v, tensors) for v in obj["__list__"]]
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    return obj


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a training state (nested dicts/lists/numbers/strings/tensors) atomically."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors)
    meta = {"segdistill_state": json.dumps(skeleton), "format_version": str(FORMAT_VERSION)}
    _write(Path(path), tensors, meta)
    return Path(path)


def load_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    tensors, meta = _read(path)
    if "segdistill_state" not in meta:
        raise ModelFileError(f"{path}: not a segdistill training state")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: training state from a newer segdistill; upgrade to resume it")
    try:
        return _unflatten(json.loads(meta["segdistill_state"]), tensors)
    except (ValueError, KeyError, TypeError):
        raise ModelFileError(f"{path}: corrupt training state (unreadable metadata)") from None

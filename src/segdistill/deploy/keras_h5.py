"""``segdistill import-keras MODEL.h5 OUT.safetensors``: a U-Net saved by the original Keras tool
(its ``train.py`` / ``distill.py``, ``model.save(...h5)``) as a segdistill model file, read with h5py
alone (no TensorFlow, no Keras).

The weights are matched by order, kind and shape against ``unet_keras`` (models/unet.py), whose
width, depth and input channels are read off the file: Keras lists a model's layers in the order it
creates them, and that order is the layout's. Keras kernels are (kh, kw, in, out), PyTorch's
(out, in, kh, kw); batch norm maps gamma/beta/moving_mean/moving_variance to
weight/bias/running_mean/running_var, with Keras' epsilon (1e-3) built into the layout. A file whose
weights do not fit fails on the first layer that does not, by its Keras name.

Preprocessing is the original tool's: images read as gray (or RGB for a 3-channel model) and scaled
by 1/255 (``ImageDataGenerator(rescale=1/255)``), i.e. mean 0, std 1 on segdistill's [0, 1] scale.
The tool resized every image to the model's fixed input size; the imported model keeps the aspect
ratio and scales the longer side down to the input's longer side (``max_side``), which
``max_side`` overrides (0: the images' own resolution).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import ModelInfo, file_sha256, save_model
from ..data.preprocess import Preprocess
from ..errors import ModelFileError
from ..extras import require
from ..models import create_model, resolved_args
from ..models.unet import KerasUNet

log = logging.getLogger("segdistill")

ARCH = "unet_keras"
ORIGINAL = {"in_channels": 1, "base": 64, "depth": 4}
"""The original teacher's shape: what the file is compared with when its own cannot be read off it."""


@dataclass
class KerasLayer:
    """One Keras layer that has weights, as the ``.h5`` file holds it."""

    name: str
    weights: list[np.ndarray]
    config: dict[str, Any] | None = None
    """Its entry in the file's ``model_config`` (class_name, config), when the file has one."""

    def describe(self) -> str:
        kind = (self.config or {}).get("class_name", "layer")
        return f"'{self.name}' ({kind}, weights {' '.join(_shape(w.shape) for w in self.weights) or 'none'})"


@dataclass
class ImportResult:
    path: Path
    info: ModelInfo
    parameters: int


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_keras_h5(path: Path) -> tuple[list[KerasLayer], dict[str, Any]]:
    """The layers with weights, in the file's order, and what the file says about itself
    (``keras_version``, ``backend``, ``input_shape`` (H, W, C) when recorded).

    Raises:
        ModelFileError: not an HDF5 file, or one without Keras model weights.
    """
    h5py = require("h5py")
    if not path.is_file():
        raise ModelFileError(f"{path}: file not found")
    if not h5py.is_hdf5(path):
        with open(path, "rb") as f:
            zipped = f.read(2) == b"PK"
        hint = (" (a Keras 3 .keras archive: load it in Keras and save it with model.save('model.h5'))"
                if zipped else " (expected a .h5 model saved by Keras)")
        raise ModelFileError(f"{path}: not an HDF5 file{hint}")
    try:
        with h5py.File(path, "r") as f:
            if "model_weights" in f:  # model.save(...h5): weights, architecture, optimiser
                group = f["model_weights"]
            elif "layer_names" in f.attrs:  # model.save_weights(...h5) of Keras 2
                group = f
            elif "layers" in f and "vars" in f:
                raise ModelFileError(f"{path}: a Keras 3 weights file (.weights.h5), which does not keep the layer "
                                     "order; save the whole model with model.save('model.h5') and import that")
            else:
                raise ModelFileError(f"{path}: an HDF5 file without Keras model weights "
                                     "(no 'model_weights' group and no 'layer_names')")
            configs = _layer_configs(f.attrs.get("model_config"))
            layers = []
            for name in (_text(n) for n in group.attrs["layer_names"]):
                for owner, names in _by_owner([_text(w) for w in group[name].attrs.get("weight_names", [])], name):
                    weights = [_read_weight(path, group[name], w) for w in names]
                    layers.append(KerasLayer(owner, weights, configs.get(owner)))
            about = {"keras_version": _text(group.attrs.get("keras_version", f.attrs.get("keras_version", "?"))),
                     "backend": _text(group.attrs.get("backend", f.attrs.get("backend", "?"))),
                     "input_shape": _input_shape(configs)}
    except (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError, RuntimeError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else ""
        raise ModelFileError(f"{path}: unreadable Keras model file ({type(e).__name__}: {reason})") from None
    if not layers:
        raise ModelFileError(f"{path}: the Keras model file holds no weights")
    return layers, about


MAX_WEIGHT_BYTES = 1 << 30
"""The largest weight array an .h5 file may declare (1 GiB; the original U-Net's largest is 9 MB):
a larger declared shape is refused before it is read."""


def _read_weight(path: Path, group: Any, name: str) -> np.ndarray:
    """One weight array, read only if it lives in this file: an external link, external storage or a
    virtual dataset (data in other files) is refused, and so is a declared size over the limit."""
    import h5py

    link = group.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise ModelFileError(f"{path}: weight {name!r} links to another file ({link.filename!r}); refusing to follow it")
    data = group[name]
    if not isinstance(data, h5py.Dataset):
        raise ModelFileError(f"{path}: weight {name!r} is not an array")
    if data.external or data.is_virtual:
        raise ModelFileError(f"{path}: weight {name!r} keeps its data in other files; refusing to read them")
    if data.dtype.kind not in "fiu" or int(np.prod(data.shape, dtype=np.float64)) * data.dtype.itemsize > MAX_WEIGHT_BYTES:
        raise ModelFileError(f"{path}: weight {name!r} declares shape {data.shape} of {data.dtype}; refusing to read it "
                             f"(numbers of at most {MAX_WEIGHT_BYTES} bytes expected)")
    return np.asarray(data, dtype=np.float32)


def _by_owner(weight_names: list[str], layer: str) -> list[tuple[str, list[str]]]:
    """A layer's weights split by the layer that owns each (``conv2d_3/kernel:0`` -> ``conv2d_3``),
    in order: one group for a plain layer, one per inner layer for a model nested as a layer (a
    model wrapped by ``multi_gpu_model``, say)."""
    groups: list[tuple[str, list[str]]] = []
    for w in weight_names:
        owner = w.rsplit("/", 1)[0].rsplit("/", 1)[-1] if "/" in w else layer
        if groups and groups[-1][0] == owner:
            groups[-1][1].append(w)
        else:
            groups.append((owner, [w]))
    if len(groups) == 1:
        return [(layer, groups[0][1])]
    return groups


def _layer_configs(raw: Any) -> dict[str, dict[str, Any]]:
    """Layer name -> {class_name, config} from a ``model_config`` attribute (Keras 2 and 3 JSON);
    empty when there is none or it cannot be read (the weights alone are then checked)."""
    if raw is None:
        return {}
    try:
        cfg = json.loads(_text(raw))
        layers = cfg["config"]["layers"] if isinstance(cfg["config"], dict) else cfg["config"]
        return {entry["config"]["name"]: entry for entry in layers}
    except (ValueError, KeyError, TypeError):
        return {}


def _input_shape(configs: dict[str, dict[str, Any]]) -> list[int | None] | None:
    for entry in configs.values():
        if entry.get("class_name") == "InputLayer":
            c = entry.get("config", {})
            shape = c.get("batch_shape") or c.get("batch_input_shape")  # Keras 3, Keras 2
            if isinstance(shape, list) and len(shape) == 4:
                return list(shape[1:])
    return None


def infer_args(layers: list[KerasLayer]) -> dict[str, int]:
    """in_channels, base and depth of ``unet_keras`` read off the weights: the first convolution's
    inputs and outputs, and the encoder's length (1 + 4 layers per level up to the first 2x2
    convolution, the first up-step). What cannot be read is the original's."""
    args = dict(ORIGINAL)
    first_conv = next((layer.weights[0] for layer in layers if layer.weights[0].ndim == 4), None)
    if first_conv is not None:
        args["in_channels"], args["base"] = int(first_conv.shape[2]), int(first_conv.shape[3])
    first_up = next((i for i, layer in enumerate(layers) if layer.weights[0].shape[:2] == (2, 2)), None)
    if first_up is not None and (first_up - 1) % 4 == 0 and (first_up - 1) // 4 >= 2:
        args["depth"] = (first_up - 1) // 4 - 1
    return args


def _expected(module: nn.Module) -> tuple[str, list[tuple[int, ...]]]:
    """What a Keras layer must hold for ``module``: its kind and weight shapes (Keras order)."""
    if isinstance(module, nn.Conv2d):
        cout, cin, kh, kw = module.weight.shape
        return "Conv2D", [(kh, kw, cin, cout), (cout,)]
    c = module.num_features  # type: ignore[union-attr]
    return "BatchNormalization", [(c,)] * 4


def _check_config(layer: KerasLayer, kind: str, activation: str) -> str | None:
    """Why the layer's recorded architecture differs from the layout (None: it does not, or there
    is no record)."""
    if layer.config is None:
        return None
    cls, cfg = layer.config.get("class_name"), layer.config.get("config", {})
    if cls != kind:
        return f"a {cls} where the layout has a {kind}"
    if kind == "Conv2D":
        if cfg.get("activation", activation) != activation:
            return f"activation {cfg.get('activation')}, the layout's is {activation}"
        one_by_one = tuple(layer.weights[0].shape[:2]) == (1, 1)  # its padding changes nothing
        if (cfg.get("padding", "same") != "same" and not one_by_one) or tuple(cfg.get("strides", (1, 1))) != (1, 1):
            return f"padding {cfg.get('padding')} and strides {cfg.get('strides')}, the layout's are same and 1"
        if tuple(cfg.get("dilation_rate", (1, 1))) != (1, 1) or cfg.get("data_format", "channels_last") != "channels_last":
            return "dilated or channels_first, the layout's is neither"
    elif abs(float(cfg.get("epsilon", 1e-3)) - 1e-3) > 1e-9 or cfg.get("axis", -1) not in (-1, 3, [-1], [3]):
        return f"epsilon {cfg.get('epsilon')} on axis {cfg.get('axis')}, the layout's are 1e-3 on the channels"
    return None


def load_keras_weights(model: KerasUNet, layers: list[KerasLayer], path: Path) -> None:
    """Copy the Keras weights into ``model``, layer by layer in order.

    Raises:
        ModelFileError: naming the first Keras layer that does not fit the layout.
    """
    targets = model.keras_layers()
    for i, module in enumerate(targets):
        kind, shapes = _expected(module)
        want = f"a {kind} with weights {' '.join(_shape(s) for s in shapes)}"
        if i >= len(layers):
            raise ModelFileError(f"{path}: the model ends after {len(layers)} layers with weights; the Keras U-Net "
                                 f"layout ({_args_text(model)}) has {len(targets)}, next {want}")
        layer = layers[i]
        got = [tuple(w.shape) for w in layer.weights]
        why = f"where the layout has {want}" if got != shapes else _check_config(
            layer, kind, "sigmoid" if module is model.head else "relu")
        if why is not None:
            raise ModelFileError(f"{path}: layer {layer.describe()} does not fit the Keras U-Net layout "
                                 f"({_args_text(model)}): {why}")
        with torch.no_grad():
            if kind == "Conv2D":
                module.weight.copy_(torch.from_numpy(layer.weights[0]).permute(3, 2, 0, 1))  # HWIO -> OIHW
                module.bias.copy_(torch.from_numpy(layer.weights[1]))  # type: ignore[union-attr]
            else:
                gamma, beta, mean, var = (torch.from_numpy(w) for w in layer.weights)
                module.weight.copy_(gamma)
                module.bias.copy_(beta)
                module.running_mean.copy_(mean)  # type: ignore[union-attr]
                module.running_var.copy_(var)  # type: ignore[union-attr]
    if len(layers) > len(targets):
        raise ModelFileError(f"{path}: layer {layers[len(targets)].describe()} is beyond the Keras U-Net layout "
                             f"({_args_text(model)}), which ends after {len(targets)} layers with weights")


def _args_text(model: KerasUNet) -> str:
    return f"base {model.widths[0]}, depth {model.depth}, {model.input_norm.num_features} input channel(s)"


def import_keras(h5_path: str | Path, out: str | Path | None = None, max_side: int | None = None) -> ImportResult:
    """Convert a Keras U-Net ``.h5`` into a segdistill model file (``out``, default beside it with
    ``.safetensors``), written atomically.

    Args:
        max_side: the working resolution stored in the file (longer side); None: the Keras
            model's fixed input size where it has one, else the images' own; 0: the images' own.
    """
    h5_path = Path(h5_path)
    out = Path(out) if out is not None else h5_path.with_suffix(".safetensors")
    layers, about = read_keras_h5(h5_path)
    args = infer_args(layers)
    if args["in_channels"] not in (1, 3):
        raise ModelFileError(f"{h5_path}: layer {layers[0].describe()}: the model takes {args['in_channels']} input "
                             "channels; segdistill models take gray (1) or RGB (3) images")
    model = create_model(ARCH, **args)
    assert isinstance(model, KerasUNet)
    load_keras_weights(model, layers, h5_path)
    shape = about["input_shape"]
    if max_side is None and shape is not None and all(isinstance(d, int) for d in shape[:2]):
        max_side = max(shape[:2])
    c = args["in_channels"]
    pre = Preprocess(channels="gray" if c == 1 else "rgb", mean=[0.0] * c, std=[1.0] * c, max_side=max_side or None)
    summary = {"imported_from": h5_path.name, "source_sha256": file_sha256(h5_path),
               "keras_version": about["keras_version"], "keras_backend": about["backend"],
               "keras_input_shape": shape}
    info = ModelInfo(ARCH, resolved_args(ARCH, **args), pre, 0.5, summary)
    save_model(out, model.eval(), info)
    n = sum(p.numel() for p in model.parameters())
    log.info("%s (Keras %s): %s; preprocessing as the Keras tool: %s, x/255, %s", h5_path, about["keras_version"],
             _args_text(model), pre.channels,
             f"longer side at most {pre.max_side} px" if pre.max_side else "images at their own size")
    return ImportResult(out, info, n)

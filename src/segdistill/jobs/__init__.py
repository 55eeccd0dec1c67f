"""Jobs: one module per command, the only code that decides a command's output folder and writes
it. Each takes settings (a Config, paths, flags) and calls the library (data, models, engine,
inference); the library never imports a job. docs/architecture.md shows the layers."""

from __future__ import annotations

import logging
from pathlib import Path

from ..remote import is_url, local_model

log = logging.getLogger("segdistill")


def model_file(path: str) -> str:
    """A model file; a run folder (what ``train`` prints) stands for its model.safetensors, and a URL
    (``https://.../model.safetensors#sha256=HEX``) for its verified download in the cache."""
    if is_url(path):
        return str(local_model(path))
    p = Path(path)
    if p.is_dir() and (p / "model.safetensors").is_file():
        log.info("%s is a run folder: using its model %s", p, p / "model.safetensors")
        return str(p / "model.safetensors")
    return path

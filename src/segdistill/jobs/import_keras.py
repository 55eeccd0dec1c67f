"""``segdistill import-keras``: a U-Net .h5 of the original Keras tool as a model file."""

from __future__ import annotations

from pathlib import Path

from ..deploy.keras_h5 import import_keras as convert
from ..fileio import check_writable


def import_keras(model: str, out: str | None = None, max_side: int | None = None) -> None:
    """Convert ``model`` into ``out`` (default: beside it) and print what was imported."""
    check_writable(Path(out).parent if out else Path(model).parent, "model file")
    result = convert(model, out, max_side)
    pre = result.info.preprocess
    print(f"imported: {result.path} ({result.info.arch}, base {result.info.args['base']}, depth "
          f"{result.info.args['depth']}, {pre.channels}, {result.parameters / 1e6:.3f}M parameters)")

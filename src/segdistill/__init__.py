"""segdistill: train a U-Net for binary segmentation, predict masks, distill it into a small student.

The public API, imported on first use (PEP 562): ``import segdistill`` and ``segdistill --help``
stay fast and load neither torch nor the optional runtimes until a name below is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from .version import STARTED as STARTED
from .version import __version__ as __version__

# public name -> module that defines it
_EXPORTS = {
    "ModelInfo": "checkpoint", "load_model": "checkpoint", "read_model_info": "checkpoint", "save_model": "checkpoint",
    "Config": "config", "load_config": "config",
    "distill": "jobs.distill",
    "evaluate": "engine.evaluate", "evaluate_model": "jobs.evaluate",
    "fit": "engine.train", "train_one_epoch": "engine.train",
    "SegdistillError": "errors",
    "Predictor": "inference.predictor",
    "create_model": "models", "list_models": "models", "register_model": "models",
    "set_threads": "runtime",
    "run_report": "jobs.report",
}

__all__ = sorted([*_EXPORTS, "STARTED", "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'segdistill' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

"""segdistill: train a U-Net for binary segmentation, predict masks, distill it into a small student."""

import time as _time

__version__ = "0.1.0"
STARTED = _time.monotonic()
"""When this package was imported: the command line's time budget (--time) counts from here, so
that importing torch and reading the data count too."""

from .checkpoint import ModelInfo, load_model, read_model_info, save_model  # noqa: E402
from .config import Config, load_config  # noqa: E402
from .engine.distill import distill  # noqa: E402
from .engine.evaluate import evaluate, evaluate_model  # noqa: E402
from .engine.train import fit, train_one_epoch  # noqa: E402
from .errors import SegdistillError  # noqa: E402
from .inference.predictor import Predictor  # noqa: E402
from .models import create_model, list_models, register_model  # noqa: E402
from .runtime import set_threads  # noqa: E402

__all__ = [
    "Config",
    "ModelInfo",
    "Predictor",
    "SegdistillError",
    "__version__",
    "create_model",
    "distill",
    "evaluate",
    "evaluate_model",
    "fit",
    "list_models",
    "load_config",
    "load_model",
    "read_model_info",
    "register_model",
    "save_model",
    "set_threads",
    "train_one_epoch",
]

"""Model registry and architectures."""

from . import encoder_unet as _encoder_unet  # noqa: F401  (registers the encoder U-Net)
from . import unet as _unet  # noqa: F401  (registers the U-Nets)
from .registry import create_model, list_models, model_description, model_signature, register_model, resolved_args

__all__ = ["create_model", "list_models", "model_description", "model_signature", "register_model", "resolved_args"]

"""Models by name: ``register_model``, ``create_model``, ``list_models``."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_signature(name: str) -> dict[str, Any]:
    """The constructor arguments of a registered model and their defaults."""
    fn = _get(name)
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def model_description(name: str) -> str:
    """The first line of a registered model's docstring (what ``segdistill models`` shows)."""
    doc = (_get(name).__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split()).split(". ")[0].rstrip(".")


def _get(name: str) -> Callable[..., nn.Module]:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown model '{name}'; {hint}available: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; unknown arguments raise with a close-match suggestion."""
    fn = _get(name)
    valid = model_signature(name)
    for key in kwargs:
        if key not in valid:
            close = difflib.get_close_matches(key, list(valid), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid: {', '.join(valid)}"
            raise ConfigError(f"model '{name}' has no argument '{key}'{hint}")
    try:
        return fn(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model '{name}': {e}") from None


def resolved_args(name: str, **kwargs: Any) -> dict[str, Any]:
    """All constructor arguments (defaults filled in), as stored in a model file."""
    args = {k: v for k, v in model_signature(name).items() if v is not inspect.Parameter.empty}
    args.update(kwargs)
    return args

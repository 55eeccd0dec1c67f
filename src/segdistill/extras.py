"""Optional features and the packages behind them: importing one that is not installed is a one-line
error naming the ``pip install "segdistill[EXTRA]"`` to run, never an ImportError traceback.

Each optional package is imported only inside the function that needs it, through :func:`require`,
so ``import segdistill`` and every command that does not use the feature work without it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import SegdistillError

EXTRAS: dict[str, tuple[str, str]] = {
    # module -> (extra, what needs it)
    "av": ("video", "video files (PyAV)"),
    "h5py": ("keras", "import-keras (h5py reads Keras .h5 files)"),
    "openvino": ("openvino", "the OpenVINO backend and export --format openvino"),
}
"""The optional packages, their extra in pyproject.toml, and the feature that needs each."""


class MissingExtraError(SegdistillError):
    """An optional package a feature needs is not installed."""


def install_hint(module: str) -> str:
    extra, feature = EXTRAS[module]
    return f'{feature} needs the package {module!r}, which is not installed: pip install "segdistill[{extra}]"'


def require(module: str) -> ModuleType:
    """``import module`` for an optional feature; raises :class:`MissingExtraError` with the install
    command when it is absent (or broken: a failing import is reported the same way)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(install_hint(module)) from None


def available(module: str) -> bool:
    """Whether the optional ``module`` imports (without raising)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True

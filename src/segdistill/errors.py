"""User-facing errors: one line, naming the file and the problem.

The CLI catches :class:`SegdistillError` and prints ``error: <message>`` with exit code 2, so a bad
input never ends in a traceback from deep inside a library.
"""

from __future__ import annotations


class SegdistillError(Exception):
    """An error caused by the user's input (data, config, model file), not by a bug."""


class DataError(SegdistillError):
    """An image, mask or folder that cannot be used."""


class ConfigError(SegdistillError):
    """A config file or override that is wrong."""


class ModelFileError(SegdistillError):
    """A model or checkpoint file that cannot be loaded safely."""


class TrainingError(SegdistillError):
    """Training cannot go on (for example a non-finite loss)."""

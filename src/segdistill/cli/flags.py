"""Flag values checked while the command line is parsed: each ``type=`` here turns a bad value into
argparse's one-line error (exit 2) that says what is accepted, before any job starts.

Only what the text alone can tell is checked here (numbers, ranges, the shape of ``--search``,
whether a backend's package is installed, whether an output path can be written); the config's own
checks (``config.validate``) still apply to the same values set through a YAML file or ``--set``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

from ..extras import EXTRAS, install_hint
from ..fileio import why_not_writable

MAX_THREADS = 1024
MAX_MINUTES = 7 * 24 * 60.0
"""A week: a longer --time or --search-budget is a typo (seconds for minutes), not a plan."""
MAX_PIXELS_SIDE = 16384
"""The longest image side a size flag accepts (the exporter's dynamic axes end at 4096 times the
model's multiple; more than this is no segmentation crop)."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``segdistill CMD: error: ...; see -h``), not the
    usage block and then the error: the culprit is on the line a user (or a log) sees."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} -h')\n")


def integer(low: int, high: int | None = None, what: str = "a whole number") -> Callable[[str], int]:
    """``type=`` for an integer in [low, high] (high None: no upper end)."""
    accepted = f"{what} from {low} to {high}" if high is not None else f"{what} >= {low}"

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (expected {accepted})") from None
        if n < low or (high is not None and n > high):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range (expected {accepted})")
        return n

    return parse


def number(low: float, high: float = math.inf, low_open: bool = True, high_open: bool = False,
           what: str = "a number") -> Callable[[str], float]:
    """``type=`` for a finite float in the interval from low to high (open or closed at each end)."""
    left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
    accepted = f"{what} in {left}{low:g}, {high:g}{right}" if high != math.inf else \
        f"{what} {'>' if low_open else '>='} {low:g}"

    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number (expected {accepted})") from None
        inside = (x > low if low_open else x >= low) and (x < high if high_open else x <= high)
        if not math.isfinite(x) or not inside:
            raise argparse.ArgumentTypeError(f"{text!r} is out of range (expected {accepted})")
        return x

    return parse


MINUTES = number(0, MAX_MINUTES, what="minutes")
PROBABILITY = number(0, 1, high_open=True, what="a probability")
POSITIVE = number(0, what="a number")
COUNT = integer(1)
SIDE = integer(16, MAX_PIXELS_SIDE, what="pixels")


def threads(text: str) -> int | str:
    """``--threads``: auto, or 1 to MAX_THREADS."""
    if text == "auto":
        return text
    try:
        return integer(1, MAX_THREADS)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a thread count (a whole number from 1 to {MAX_THREADS}, "
                                         "or auto)") from None


def max_side(text: str) -> int:
    """``--max-side``: pixels >= 16, or 0 for the images' own size."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n != 0 and not 16 <= n <= MAX_PIXELS_SIDE:
        raise argparse.ArgumentTypeError(f"{text!r} is not a max side (pixels from 16 to {MAX_PIXELS_SIDE}, "
                                         "or 0 for the images' own size)")
    return n


def device(text: str) -> str:
    """``--device``: the names ``runtime.select_device`` knows (whether a GPU is there is asked later,
    when torch is loaded)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (expected auto, cpu, cuda or cuda:N)")
    return text


def search(text: str) -> str:
    """``--search``: keep=F with 0 < F <= 1, or latency=Nms with N > 0 (config.parse_search)."""
    from ..config import ConfigError, parse_search

    try:
        parse_search(text)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a search objective (expected keep=F with 0 < F <= 1, "
                                         "e.g. keep=0.97, or latency=Nms with N > 0, e.g. latency=8ms)") from None
    return text


_BACKEND_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def backend(choices: tuple[str, ...]) -> Callable[[str], str]:
    """``--backend``: one of ``choices``, whose package (if it needs one) is installed."""

    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not a backend (expected one of {', '.join(choices)})")
        package = _BACKEND_PACKAGES.get(text)
        if package and not installed(text):
            hint = install_hint(package) if package in EXTRAS else f"{text} is not installed here (pip install {package})"
            raise argparse.ArgumentTypeError(f"{hint}; installed: {', '.join(c for c in choices if installed(c))}")
        return text

    return parse


def installed(backend_name: str) -> bool:
    package = _BACKEND_PACKAGES.get(backend_name)
    try:  # a broken or blocked install can raise from find_spec itself
        return package is None or importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def output_file(text: str) -> str:
    """An output file's path: its folder exists or can be made, and can be written into."""
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder, expected a file name")
    reason = why_not_writable(path.parent if str(path.parent) else Path("."))
    if reason:
        raise argparse.ArgumentTypeError(f"{text}: cannot write here ({reason})")
    return text


def output_folder(text: str) -> str:
    """An output folder's path: it exists or can be made, and can be written into."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a file, expected a folder")
    reason = why_not_writable(path)
    if reason:
        raise argparse.ArgumentTypeError(f"{text}: cannot write here ({reason})")
    return text


# --------------------------------------------------------------------------------------------------
# Combinations: checked right after parsing (``set_defaults(combination=...)``), each a reason or None.


def check_export(args: argparse.Namespace) -> str | None:
    if args.int8 and not args.calibrate:
        return "--int8 needs --calibrate DIR: images to take the activation ranges from"
    if args.calibrate and not args.int8:
        return "--calibrate is only used with --int8 (an fp32 export needs no calibration)"
    if args.check and args.int8:
        return "--check is for fp32 exports; an int8 export is checked on its --calibrate images"
    return None


def check_backend_device(args: argparse.Namespace) -> str | None:
    """ONNX Runtime and OpenVINO run here on the CPU only (their CPU packages are what segdistill uses)."""
    on_gpu = (args.device or "auto").startswith("cuda")
    if on_gpu and args.backend in ("onnxruntime", "openvino"):
        return f"--backend {args.backend} runs on the CPU only; with --device {args.device} use --backend torch or auto"
    return None


def check_benchmark(args: argparse.Namespace) -> str | None:
    if args.size is not None and len(args.size) > 2:
        return f"--size takes a height and at most a width (got {len(args.size)} numbers)"
    return None

"""Crash-safe writing: every file is written under a temporary name and renamed into place.

``os.replace`` is atomic on POSIX and Windows for paths on one file system, so a reader (or a later
run) sees either the old complete file or the new complete file, never a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .errors import SegdistillError
from .failpoints import failpoint


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import (os.umask can only be read by setting it, which is not thread-safe later).
_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The suffix is kept so libraries that pick a format from the extension (PIL) still work.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        failpoint("write_begin")
        yield tmp_path
        failpoint("write")
        # mkstemp (and safetensors, which writes its own temporary file) make 0600 files; give the
        # result the permissions an ordinary open() would, so other users can read models and masks.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[BinaryIO]:
    """Open a temporary file for writing (``"w"`` text or ``"wb"`` binary) and rename it on success."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; rename it onto ``path`` (absent or empty) only if
    the block succeeds, else remove it with what was written into it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def why_not_writable(folder: str | os.PathLike[str]) -> str | None:
    """Why files cannot be written into ``folder`` (made where missing), or None if they can: the
    nearest part of it that exists must be a folder this process may write into. Asked before a
    command starts its work, so a read-only or mistyped output place fails in a second, not after.
    (Root passes permission checks; a read-only mount is caught by its flag.)"""
    probe = Path(folder)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only or not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is read-only"
    return None


def check_writable(folder: str | os.PathLike[str], what: str = "output folder") -> None:
    """SegdistillError (one line) unless files can be written into ``folder``."""
    reason = why_not_writable(folder)
    if reason:
        raise SegdistillError(f"{folder}: cannot write the {what} here ({reason})")


def read_json(path: str | os.PathLike[str], kind: type = dict) -> Any:
    """A JSON file segdistill wrote earlier (a run's plan, history, search record, a cache), or None
    when it does not exist. Anything else, a file cut short, edited by hand or of another kind, is
    one SegdistillError naming the file, never a JSONDecodeError (or a KeyError later).

    Args:
        kind: the type the top level must have (dict or list).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = str(e).splitlines()[0][:120] if not isinstance(e, RecursionError) else "nested too deeply"
        raise SegdistillError(f"{path}: not a valid JSON file ({reason}); delete it or restore it") from None
    if not isinstance(data, kind):
        raise SegdistillError(f"{path}: expected a JSON {'object' if kind is dict else 'array'} at the top level, "
                              f"found {type(data).__name__}; delete it or restore it")
    return data


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, str]] | None:
    """The rows of a CSV file segdistill wrote earlier (history.csv, per_image.csv), or None when it
    does not exist; a file that is not UTF-8 text or not CSV is one SegdistillError naming it."""
    import csv

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise SegdistillError(f"{path}: not a readable CSV file ({str(e).splitlines()[0][:120]}); "
                              "delete it or restore it") from None


def _fsync_file(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    except OSError:  # pragma: no cover - some file systems refuse fsync; rename is still atomic
        pass


def is_temporary(path: Path) -> bool:
    """True for the temporary files that :func:`atomic_path` creates (left only by a hard kill)."""
    return path.name.startswith(".") and ".tmp" in path.name


def remove_temporaries(folder: str | os.PathLike[str]) -> int:
    """Delete temporary files a hard kill left behind in ``folder`` (never trusted, so safe to drop)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.rglob(".*") if p.is_file() and is_temporary(p)]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def cache_root() -> Path:
    """Where segdistill keeps what it can recompute (teacher targets, measured backend choices):
    ``$SEGDISTILL_CACHE``, else ``$XDG_CACHE_HOME/segdistill``, else ``~/.cache/segdistill``."""
    root = os.environ.get("SEGDISTILL_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "segdistill")
    return Path(root)

"""Data set archives: safe extraction. The download itself (resumable, verified, atomic) is
:mod:`segdistill.remote`, which serves models and encoder weights too."""

from __future__ import annotations

import logging
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import DataError
from ..remote import CHUNK, error_reason, fetch, part_path, sha256_file

__all__ = ["extract", "fetch", "is_archive_name", "part_path", "sha256_file"]

log = logging.getLogger("segdistill")

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
MAX_EXPANSION = 100
"""How many times its own size an archive may unpack to: images and masks barely compress (a data
set's archive unpacks to 1-3x), a decompression bomb to thousands."""
MIN_ALLOWANCE = 1 << 30
"""Bytes any archive may unpack to, however small (text-heavy sets compress better than images)."""
MAX_MEMBERS = 1_000_000


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def extract(archive: Path, into: Path) -> None:
    """Unpack a zip or tar (plain, gzip, bzip2, xz) archive into ``into``.

    Only regular files and folders are written, each strictly inside ``into``: an absolute path, a
    drive letter or a '..' anywhere refuses the whole archive before anything is written; symbolic
    and hard links, devices and pipes are skipped (no data set needs them, and a link could point
    out of the folder). File permissions from the archive are not applied.
    """
    into.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, into)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, into)
        else:
            raise DataError(f"{archive.name}: not a zip or tar archive (the server may have sent a web page "
                            "instead; check the URL in a browser)")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma_error(), OSError, ValueError,
            NotImplementedError) as e:
        if isinstance(e, OSError) and e.filename:  # writing failed (disk full, permissions): not the archive's fault
            raise
        raise DataError(f"{archive.name}: corrupt archive ({error_reason(e)})") from None


def lzma_error() -> type[Exception]:
    import lzma

    return lzma.LZMAError


def _check_sizes(archive: Path, sizes: list[int]) -> None:
    """Refuse, before anything is written, an archive whose members declare more bytes than it may
    unpack to (zipfile and tarfile never return more than a member declares)."""
    if len(sizes) > MAX_MEMBERS:
        raise DataError(f"{archive.name}: more than {MAX_MEMBERS} members; refusing to unpack it")
    total, allowed = sum(sizes), max(MAX_EXPANSION * archive.stat().st_size, MIN_ALLOWANCE)
    if any(s < 0 for s in sizes) or total > allowed:
        raise DataError(f"{archive.name}: would unpack to {total} bytes from {archive.stat().st_size} (more than "
                        f"{MAX_EXPANSION}x, a decompression bomb?); nothing was extracted")


def _safe_target(archive: Path, into: Path, name: str) -> Path:
    posix = name.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix) or ".." in parts:
        raise DataError(f"{archive.name}: unsafe path in the archive: {name!r} (it would land outside the folder); "
                        "nothing was extracted")
    return into.joinpath(*[p for p in parts if p not in ("", ".")])


def _extract_zip(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        targets = [_safe_target(archive, into, m.filename) for m in members]  # all checked before writing
        _check_sizes(archive, [m.file_size for m in members])
        skipped = 0
        for m, target in zip(members, targets):
            kind = stat.S_IFMT(m.external_attr >> 16)
            if m.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif kind in (0, stat.S_IFREG):  # 0: written by a tool that records no Unix mode
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
            else:
                skipped += 1
    _log_skipped(archive, skipped)


def _extract_tar(archive: Path, into: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = []
        for m in tf:  # not getmembers(): a bomb of tiny members stops at the limit, not at memory's end
            members.append(m)
            if len(members) > MAX_MEMBERS:
                break
        targets = [_safe_target(archive, into, m.name) for m in members]
        _check_sizes(archive, [m.size for m in members if m.isfile()])
        skipped = 0
        for m, target in zip(members, targets):
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif m.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                assert src is not None  # a regular member always has data
                with src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
            else:
                skipped += 1
    _log_skipped(archive, skipped)


def _log_skipped(archive: Path, skipped: int) -> None:
    if skipped:
        log.warning("%s: %d link(s) or special file(s) skipped (only files and folders are extracted)",
                    archive.name, skipped)

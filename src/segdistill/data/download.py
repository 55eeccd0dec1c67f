"""Fetching files safely: resumable downloads with urllib, SHA-256 checks, safe archive extraction.

A file is streamed to ``FILE.part`` beside where it will live. A transfer that ends early (the
connection dropped, or fewer bytes than the server announced) keeps that part, and the next run asks
the server for the rest (HTTP Range); a server that does not resume sends the whole file again and
the part is started afresh. A complete file is checked against its published SHA-256 before anything
reads it, and deleted when it does not match. Every failure is one :class:`DataError` line.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ..errors import DataError
from ..version import __version__

log = logging.getLogger("segdistill")

CHUNK = 1 << 20
# A socket that stays silent this long counts as a dropped connection (the part is kept to resume).
TIMEOUT_S = 60
USER_AGENT = f"segdistill/{__version__} (data download)"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def part_path(dest: Path) -> Path:
    """Where the download of ``dest`` accumulates until it is complete and verified."""
    return dest.with_name(dest.name + ".part")


def fetch(url: str, dest: Path, sha256: str | None = None, size: int | None = None, progress: bool = True) -> str:
    """Download ``url`` to ``dest``, resuming ``dest.part`` when one is there; returns the SHA-256.

    Args:
        sha256: the published checksum; a mismatch deletes the file and raises.
        size: the published length in bytes, checked likewise (before the transfer where the
            server announces the length).
        progress: show a progress bar (on a terminal).
    Raises:
        DataError: network error, truncated or interrupted transfer (the part is kept for the
            next run), or a size or checksum mismatch (the file is deleted).
    """
    part = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.is_file() else 0
    resp, offset, total = _open(url, offset, dest.name)
    with resp:
        if size is not None and total is not None and total != size:
            part.unlink(missing_ok=True)
            raise DataError(f"{dest.name}: {url} offers {total:,} bytes, but the published file has {size:,} "
                            "(a changed file, or an error page); nothing was kept")
        received = _stream(resp, part, offset, total, dest.name, progress)
    if total is not None and received < total:
        raise DataError(f"{dest.name}: truncated download: received {received:,} of {total:,} bytes (Content-Length) "
                        f"from {url}; the part is kept in {part}: run the same command again to resume")
    if size is not None and received != size:
        part.unlink()
        raise DataError(f"{dest.name}: {received:,} bytes, but the published file has {size:,}; the file was "
                        "deleted: run the same command again to download it afresh")
    digest = sha256_file(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink()
        raise DataError(f"{dest.name}: SHA-256 mismatch: expected {sha256}, got {digest}; the file was deleted "
                        "(a corrupted or changed download): run the same command again to download it afresh")
    os.replace(part, dest)
    return digest


def _open(url: str, offset: int, name: str) -> tuple[http.client.HTTPResponse, int, int | None]:
    """The response for ``url`` from byte ``offset`` on; returns (response, the offset it really
    starts at (0 where the server sends the whole file), the file's full length if announced)."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # the part is not a prefix of the file (as long, or longer): start again
            log.info("%s: the partial download does not fit the file on the server; starting again", name)
            return _open(url, 0, name)
        raise DataError(f"{name}: network error: {url} answered HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DataError(f"{name}: network error: cannot reach {url} ({e.reason}); check the connection, "
                        "or set SEGDISTILL_DATA_MIRROR to a mirror (docs/data.md)") from None
    except (OSError, http.client.HTTPException) as e:
        raise DataError(f"{name}: network error: {url}: {_reason(e)}") from None
    status = getattr(resp, "status", None)
    length = resp.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if offset and status == 206:
        m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if m and int(m.group(1)) == offset:
            total = int(m.group(3)) if m.group(3) != "*" else (offset + length if length is not None else None)
            log.info("%s: resuming at byte %s", name, f"{offset:,}")
            return resp, offset, total
        resp.close()
        return _open(url, 0, name)
    if offset:
        log.info("%s: the server does not resume downloads; starting again from the beginning", name)
    return resp, 0, length


def _stream(resp: http.client.HTTPResponse, part: Path, offset: int, total: int | None, name: str,
            progress: bool) -> int:
    """Append the response body to ``part`` (from scratch where ``offset`` is 0); returns its length."""
    received = offset
    with open(part, "ab" if offset else "wb") as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
            disable=None if progress else True, leave=False) as bar:
        while True:
            try:
                chunk = resp.read(CHUNK)
            except (OSError, http.client.HTTPException) as e:  # reset, timeout, incomplete chunked body
                f.flush()
                of = f" of {total:,}" if total is not None else ""
                raise DataError(f"{name}: download interrupted after {received:,}{of} bytes ({_reason(e)}); the "
                                f"part is kept in {part}: run the same command again to resume") from None
            if not chunk:
                return received
            f.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return text if text else type(e).__name__


# ---------------------------------------------------------------------------------------------
# Extraction


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
        raise DataError(f"{archive.name}: corrupt archive ({_reason(e)})") from None


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

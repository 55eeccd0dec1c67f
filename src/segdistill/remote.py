"""Files from the network, fetched safely: one downloader for data sets, encoder weights and models.

A file is streamed to ``FILE.part`` beside where it will live. A transfer that ends early (the
connection dropped, or fewer bytes than the server announced) keeps that part, and the next run asks
the server for the rest (HTTP Range); a server that does not resume sends the whole file again and
the part is started afresh. A complete file is checked against its published SHA-256 before anything
reads it, deleted when it does not match, and only then renamed into place (atomic). Every failure
is one :class:`DataError` line.

Models by URL (``https://host/model.safetensors#sha256=HEX``): :func:`local_model` downloads one
into the cache (``$SEGDISTILL_CACHE/models``, default ``~/.cache/segdistill``) once and hands back
its path; with a ``#sha256=`` the file is verified on every use and refused when it differs.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .errors import DataError, ModelFileError
from .fileio import cache_root
from .version import __version__

log = logging.getLogger("segdistill")

CHUNK = 1 << 20
# A socket that stays silent this long counts as a dropped connection (the part is kept to resume).
TIMEOUT_S = 60
USER_AGENT = f"segdistill/{__version__}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def part_path(dest: Path) -> Path:
    """Where the download of ``dest`` accumulates until it is complete and verified."""
    return dest.with_name(dest.name + ".part")


def fetch(url: str, dest: Path, sha256: str | None = None, size: int | None = None, progress: bool = True,
          offline_hint: str = "check the connection") -> str:
    """Download ``url`` to ``dest``, resuming ``dest.part`` when one is there; returns the SHA-256.

    Args:
        sha256: the published checksum; a mismatch deletes the file and raises.
        size: the published length in bytes, checked likewise (before the transfer where the
            server announces the length).
        progress: show a progress bar (on a terminal).
        offline_hint: what the "cannot reach" error suggests.
    Raises:
        DataError: network error, truncated or interrupted transfer (the part is kept for the
            next run), or a size or checksum mismatch (the file is deleted).
    """
    part = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.is_file() else 0
    resp, offset, total = _open(url, offset, dest.name, offline_hint)
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
        raise DataError(f"{dest.name}: SHA-256 mismatch: expected {sha256}, got {digest}; refused and deleted "
                        "(a corrupted or changed download): run the same command again to download it afresh")
    os.replace(part, dest)
    return digest


def _open(url: str, offset: int, name: str, offline_hint: str = "check the connection"
          ) -> tuple[http.client.HTTPResponse, int, int | None]:
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
            return _open(url, 0, name, offline_hint)
        raise DataError(f"{name}: network error: {url} answered HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DataError(f"{name}: network error: cannot reach {url} ({e.reason}); {offline_hint}") from None
    except (OSError, http.client.HTTPException) as e:
        raise DataError(f"{name}: network error: {url}: {error_reason(e)}") from None
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
        return _open(url, 0, name, offline_hint)
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
                chunk = resp.read1(CHUNK)  # what has arrived: bytes before a reset are kept for the resume
            except (OSError, http.client.HTTPException) as e:  # reset, timeout, incomplete chunked body
                f.flush()
                of = f" of {total:,}" if total is not None else ""
                raise DataError(f"{name}: download interrupted after {received:,}{of} bytes ({error_reason(e)}); the "
                                f"part is kept in {part}: run the same command again to resume") from None
            if not chunk:
                return received
            f.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))


def error_reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return text if text else type(e).__name__


# ---------------------------------------------------------------------------------------------
# Models by URL

URL_SCHEMES = ("https://", "http://")


def is_url(text: str | os.PathLike[str]) -> bool:
    return isinstance(text, str) and text.lower().startswith(URL_SCHEMES)


def split_model_url(url: str) -> tuple[str, str | None]:
    """(the URL to download, the SHA-256 its ``#sha256=HEX`` fragment pins, or None)."""
    base, _, fragment = url.partition("#")
    if not fragment:
        return base, None
    params = urllib.parse.parse_qs(fragment)
    sha = (params.get("sha256") or [""])[0].lower()
    if set(params) - {"sha256"} or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ModelFileError(f"{url}: the fragment must be #sha256= and 64 hex digits (the file's SHA-256)")
    return base, sha


def models_cache() -> Path:
    return cache_root() / "models"


def local_model(source: str | os.PathLike[str]) -> Path:
    """The model file ``source`` names: a local path as it is, or a URL's download in the cache.

    A URL is downloaded once (resumably: an interrupted download goes on where it stopped on the
    next call) to ``models_cache()/<hash of the URL>/<file name>``; with ``#sha256=HEX`` a cached
    file is checked again before each use, and a download whose hash differs is refused and deleted.
    """
    if not is_url(source):
        return Path(source)
    url, sha = split_model_url(str(source))
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name.endswith((".safetensors", ".onnx")):
        raise ModelFileError(f"{url}: a model URL names a .safetensors or .onnx file")
    dest = models_cache() / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if dest.is_file():
        if sha is None or sha256_file(dest) == sha:
            log.debug("%s: cached as %s", url, dest)
            return dest
        log.info("%s: the cached copy differs from #sha256=%s...; downloading it again", url, sha[:12])
        dest.unlink()
    log.info("downloading %s -> %s", url, dest)
    try:
        fetch(url, dest, sha256=sha, progress=True)
    except DataError as e:
        raise ModelFileError(str(e)) from None
    return dest

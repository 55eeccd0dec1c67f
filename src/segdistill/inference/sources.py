"""Input sources for prediction, and safe output names derived from input file names."""

from __future__ import annotations

import re
from pathlib import Path

from ..data.discovery import list_images, no_images_message, resolve_image_dir
from ..data.video import split_videos
from ..errors import DataError


def collect_inputs(source: str | Path | list[str] | list[Path], recursive: bool = False) -> tuple[list[Path], Path | None]:
    """Image and video files from a file, folder or glob, or a list of them (the files a shell
    expanded a glob to); returns (files, the folder names are relative to: a single folder source's,
    else None)."""
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    image_sources, videos = split_videos(sources, recursive)
    files: list[Path] = []
    seen: set[Path] = set()
    for src in image_sources:
        found, _ = list_images(src, recursive)
        if not found:
            folder = Path(src)
            raise DataError(no_images_message(resolve_image_dir(folder)) if folder.is_dir() else f"{src}: no image files found")
        for f in found:
            if f.resolve() not in seen:  # a file named twice is predicted once
                seen.add(f.resolve())
                files.append(f)
    files += [v for v in videos if v.resolve() not in seen]
    root = None
    if len(sources) == 1 and Path(sources[0]).is_dir():
        root = resolve_image_dir(Path(sources[0]))
    return files, root


_UNSAFE = re.compile(r"[^\w\-. ]", re.UNICODE)


def safe_relative_name(path: Path, root: Path | None) -> Path:
    """A relative output path (no suffix) for ``path`` that cannot leave the output folder:
    no absolute parts, no '..', no separators or control characters smuggled in the name."""
    rel = path.relative_to(root) if root is not None and path.is_relative_to(root) else Path(path.name)
    parts = []
    for part in rel.with_suffix("").parts:
        clean = _UNSAFE.sub("_", part).strip()
        if clean in ("", ".", ".."):
            clean = "_"
        parts.append(clean.lstrip("."))
    parts = [p or "_" for p in parts]
    return Path(*parts)


def output_names(files: list[Path], root: Path | None) -> list[Path]:
    """Safe names, made unique when two inputs share a stem (``a.png`` and ``a.jpg``), and numbered
    where the extension is not enough (``a.jpg`` and ``a.JPG``, equal names from a glob)."""
    names = [safe_relative_name(f, root) for f in files]
    seen: dict[Path, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    out = []
    taken: set[str] = set()
    for f, n in zip(files, names):
        if seen[n] > 1:
            n = n.with_name(f"{n.name}_{f.suffix.lstrip('.').lower()}")
        base, k = n, 2
        # Compared case-folded: on macOS and Windows 'A.png' and 'a.png' are the same file.
        while n.as_posix().casefold() in taken:
            n, k = base.with_name(f"{base.name}_{k}"), k + 1
        taken.add(n.as_posix().casefold())
        out.append(n)
    return out


def inside(path: Path, folder: Path) -> Path:
    """``path`` resolved, checked to lie inside ``folder``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(folder.resolve()):
        raise DataError(f"{path}: output path would leave {folder}; refusing to write it")
    return resolved

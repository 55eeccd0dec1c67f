"""Finding image/mask pairs in the supported folder layouts.

Layouts (``data.layout: auto`` tries them in this order):
- explicit: ``train_images``/``train_masks`` (and optionally ``val_images``/``val_masks``) paths.
- keras: ``ROOT/train_images/0/``, ``ROOT/train_masks/0/``, ``ROOT/val_images/0/``, ``ROOT/val_masks/0/``
  (names from ``data.keras_names``); the single class subfolder is how Keras' flow_from_directory
  wants files, and any folder holding exactly one subfolder and no images is descended into.
- split: ``ROOT/train/{images,masks}`` + ``ROOT/val/{images,masks}`` (``valid`` also accepted).
- flat: ``ROOT/images`` + ``ROOT/masks``; a seeded fraction (or ``val_stems``) becomes validation.
Pairs match by file stem; masks may carry a suffix such as ``_mask``, ``_label`` or ``_gt``.
"""

from __future__ import annotations

import glob
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from .imageio import is_image_file

MASK_SUFFIXES = ("_mask", "_masks", "_label", "_labels", "_gt", "_seg", "-mask", "-label", "_segmentation")


@dataclass
class Pair:
    stem: str
    image: Path
    mask: Path | None


@dataclass
class PairReport:
    pairs: list[Pair]
    images_without_masks: list[Path] = field(default_factory=list)
    masks_without_images: list[Path] = field(default_factory=list)
    ignored_files: list[Path] = field(default_factory=list)


@dataclass
class Split:
    train: list[Pair]
    val: list[Pair]
    layout: str
    reports: list[PairReport] = field(default_factory=list)


def resolve_image_dir(path: Path) -> Path:
    """Descend into a lone subfolder (Keras' class folder, e.g. ``0/``) when a folder holds no images."""
    seen = 0
    while path.is_dir() and seen < 3:
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        subdirs = [p for p in entries if p.is_dir()]
        if len(subdirs) == 1 and not any(is_image_file(p) for p in entries if p.is_file()):
            path = subdirs[0]
            seen += 1
        else:
            break
    return path


def list_images(path: str | Path, recursive: bool = False) -> tuple[list[Path], list[Path]]:
    """Image files under a folder, a single file, or a glob; returns (images, other files)."""
    text = str(path)
    if any(ch in text for ch in "*?[") and not Path(text).exists():
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{text}: no files match this pattern")
    else:
        p = Path(path)
        if p.is_file():
            if not is_image_file(p):
                raise DataError(f"{p}: not a supported image type ({', '.join(_exts())})")
            return [p], []
        if not p.is_dir():
            raise DataError(f"{p}: no such file or folder")
        p = resolve_image_dir(p)
        it = p.rglob("*") if recursive else p.iterdir()
        files = sorted(f for f in it if f.is_file() and not f.name.startswith("."))
    images = [f for f in files if is_image_file(f)]
    others = [f for f in files if not is_image_file(f)]
    return images, others


def no_images_message(folder: Path) -> str:
    """Why a folder gave no images, naming what is there instead (subfolders, other files)."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []
    if not entries:
        return f"{folder}: no image files found (the folder is empty)"
    subdirs = [p.name for p in entries if p.is_dir()]
    files = [p.name for p in entries if p.is_file()]
    if subdirs and not files:
        shown = " and ".join(f"{d}/" for d in subdirs[:2]) + (f" and {len(subdirs) - 2} more folders" if len(subdirs) > 2 else "")
        guess = next((d for d in subdirs if d.lower() in ("images", "image", "imgs")), subdirs[0])
        return f"{folder}: no images directly in it; it holds {shown} (did you mean {folder / guess}?)"
    return (f"{folder}: no image files found; it holds {len(files)} other file(s), e.g. {files[0]} "
            f"(images are {', '.join(_exts())})")


def collect_images(folders: list[str] | str, recursive: bool = False, exclude: frozenset[Path] = frozenset()) -> list[Path]:
    """The images of one or more folders (files, globs), without duplicates (by resolved path) and
    without the resolved paths in ``exclude``, in the order found."""
    seen: dict[Path, Path] = {}
    for folder in [folders] if isinstance(folders, str) else folders:
        found = list_images(folder, recursive)[0]
        if not found and Path(folder).is_dir():
            raise DataError(no_images_message(resolve_image_dir(Path(folder))))
        for p in found:
            if p.resolve() not in exclude:
                seen.setdefault(p.resolve(), p)
    return list(seen.values())


def _exts() -> list[str]:
    from .imageio import IMAGE_EXTENSIONS

    return list(IMAGE_EXTENSIONS)


def mask_key(stem: str) -> str:
    low = stem.lower()
    for suffix in MASK_SUFFIXES:
        if low.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _key(path: Path, root: Path) -> str:
    """Stem relative to the root, so recursive folders with equal file names stay apart."""
    rel = path.relative_to(root).with_suffix("")
    return rel.as_posix()


def _index(files: list[Path], root: Path, what: str, strip_suffix: bool) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for f in files:
        key = _key(f, root)
        if strip_suffix:
            key = str(Path(key).parent / mask_key(Path(key).name)) if "/" in key else mask_key(key)
        if key in index:
            raise DataError(
                f"{f}: duplicate {what} stem '{key}' (also {index[key].name}); "
                "keep one file per stem so pairing is unambiguous"
            )
        index[key] = f
    return index


def pair_folder(images_dir: Path, masks_dir: Path | None, recursive: bool = False) -> PairReport:
    """Pair images with masks by stem; unmatched files are reported, not silently dropped."""
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found")
    images_dir = resolve_image_dir(images_dir)
    images, others = list_images(images_dir, recursive)
    if not images:
        raise DataError(f"{images_dir}: no image files found ({', '.join(_exts())})")
    img_index = _index(images, images_dir, "image", strip_suffix=False)
    if masks_dir is None:
        return PairReport([Pair(k, p, None) for k, p in img_index.items()], ignored_files=others)
    if not masks_dir.is_dir():
        raise DataError(f"{masks_dir}: mask folder not found")
    masks_dir = resolve_image_dir(masks_dir)
    masks, mask_others = list_images(masks_dir, recursive)
    mask_index = _index(masks, masks_dir, "mask", strip_suffix=True)
    # An image whose own stem ends in a mask suffix ("cell_gt.png") pairs with the same stem.
    exact = {_key(m, masks_dir): m for m in masks}
    match = {k: mask_index.get(k) or exact.get(k) for k in img_index}
    used = {m for m in match.values() if m is not None}
    return PairReport(
        pairs=[Pair(k, p, match[k]) for k, p in img_index.items() if match[k] is not None],  # type: ignore[arg-type]
        images_without_masks=[p for k, p in img_index.items() if match[k] is None],
        masks_without_images=[m for m in masks if m not in used],
        ignored_files=others + mask_others,
    )


def split_pairs(pairs: list[Pair], fraction: float, seed: int, val_stems: list[str] | None = None) -> tuple[list[Pair], list[Pair]]:
    """Deterministic split: explicit stems, or a seeded shuffle of the sorted stems."""
    if val_stems is not None:
        wanted = set(map(str, val_stems))
        missing = wanted - {p.stem for p in pairs}
        if missing:
            raise DataError(f"data.val_stems names stems with no image/mask pair: {', '.join(sorted(missing)[:5])}")
        return [p for p in pairs if p.stem not in wanted], [p for p in pairs if p.stem in wanted]
    ordered = sorted(pairs, key=lambda p: p.stem)
    if fraction <= 0 or len(ordered) < 2:
        return ordered, []
    random.Random(seed).shuffle(ordered)
    n_val = max(1, round(len(ordered) * fraction))
    return ordered[n_val:], ordered[:n_val]


def _child(root: Path, *names: str) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def discover(cfg: DataConfig, seed: int = 0) -> Split:
    """Find training and validation pairs as the config describes."""
    root = Path(cfg.root) if cfg.root else None
    if root is not None and not root.is_dir():
        raise DataError(f"{root}: data folder not found")

    def rel(p: str | None) -> Path | None:
        if p is None:
            return None
        q = Path(p)
        return q if q.is_absolute() or root is None else root / q

    layout = cfg.layout
    if layout == "auto":
        layout = _detect(cfg, root)
    if layout in ("keras", "split", "flat") and root is None:
        raise DataError(f"data.layout {layout} needs data.root (--data DIR)")
    reports: list[PairReport] = []
    if layout in ("explicit", "keras"):
        if layout == "keras":
            ti, tm, vi, vm = (root / n for n in cfg.keras_names)
            vi = vi if vi.is_dir() else None
            vm = vm if vm.is_dir() else None
        else:
            ti, tm, vi, vm = rel(cfg.train_images), rel(cfg.train_masks), rel(cfg.val_images), rel(cfg.val_masks)
            if ti is None or tm is None:
                raise DataError("data.train_images and data.train_masks must both be set for the explicit layout")
        train_rep = pair_folder(ti, tm, cfg.recursive)
        reports.append(train_rep)
        if vi is not None and vm is not None:
            val_rep = pair_folder(vi, vm, cfg.recursive)
            reports.append(val_rep)
            train, val = train_rep.pairs, val_rep.pairs
        else:
            train, val = split_pairs(train_rep.pairs, cfg.val_fraction, seed, cfg.val_stems)
    elif layout == "split":
        tr, va = root / "train", _child(root, "val", "valid", "validation")
        train_rep = pair_folder(_child(tr, "images", "image", "imgs") or tr / "images", _child(tr, "masks", "mask", "labels", "label") or tr / "masks", cfg.recursive)
        reports.append(train_rep)
        train, val = train_rep.pairs, []
        if va is not None:
            val_rep = pair_folder(_child(va, "images", "image", "imgs") or va / "images", _child(va, "masks", "mask", "labels", "label") or va / "masks", cfg.recursive)
            reports.append(val_rep)
            val = val_rep.pairs
        else:
            train, val = split_pairs(train, cfg.val_fraction, seed, cfg.val_stems)
    else:  # flat
        img_dir = _child(root, "images", "image", "imgs")
        mask_dir = _child(root, "masks", "mask", "labels", "label")
        if img_dir is None or mask_dir is None:
            raise DataError(f"{root}: expected images/ and masks/ folders")
        rep = pair_folder(img_dir, mask_dir, cfg.recursive)
        reports.append(rep)
        train, val = split_pairs(rep.pairs, cfg.val_fraction, seed, cfg.val_stems)
    if not train:
        raise DataError(f"{root or cfg.train_images}: no image/mask pairs found (pairs match by file stem){_unpaired_example(reports)}")
    return Split(train=train, val=val, layout=layout, reports=reports)


def _unpaired_example(reports: list[PairReport]) -> str:
    """An example name from each side, so that a naming mismatch shows at a glance."""
    rep = next((r for r in reports if r.images_without_masks and r.masks_without_images), None)
    if rep is None:
        return ""
    return (f": image {rep.images_without_masks[0].name} has no mask {rep.images_without_masks[0].stem}.png "
            f"(or {rep.images_without_masks[0].stem}_mask.png), and the masks are named like {rep.masks_without_images[0].name}")


def _detect(cfg: DataConfig, root: Path | None) -> str:
    if cfg.train_images or cfg.train_masks:
        return "explicit"
    if root is None:
        raise DataError("no data given: set data.root (or --data DIR)")
    if (root / cfg.keras_names[0]).is_dir() and (root / cfg.keras_names[1]).is_dir():
        return "keras"
    if (root / "train").is_dir():
        return "split"
    if _child(root, "images", "image", "imgs") and _child(root, "masks", "mask", "labels", "label"):
        return "flat"
    raise DataError(
        f"{root}: no known layout (expected images/+masks/, train/+val/, or "
        f"{cfg.keras_names[0]}/0/ + {cfg.keras_names[1]}/0/)"
    )

"""Converters for the standard data sets (:mod:`.standard`): each reads a data set's downloaded and
unpacked source files and writes segdistill's layout into an output folder, masks as 0/255 PNG
(255 = the data set's foreground). Kept apart from the catalogue and the download machinery because
they are the part that knows each data set's file formats.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError
from tqdm import tqdm

from ..errors import DataError
from .imageio import is_image_file


@dataclass
class Conversion:
    """What a converter wrote: image/mask pairs per split ("" for a flat images/ + masks/ folder),
    unlabelled images, and the source items left out, each with its reason."""

    pairs: dict[str, int]
    unlabelled: int = 0
    skipped: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"{n} pairs" + (f" in {split}/" if split else "") for split, n in self.pairs.items()]
        if self.unlabelled:
            parts.append(f"{self.unlabelled} unlabelled images")
        if self.skipped:
            parts.append(f"{len(self.skipped)} items skipped (listed in README.txt)")
        return ", ".join(parts)


# (downloaded files by name, folder the archives were unpacked into, output folder, progress bars)
# -> what was written
Converter = Callable[[dict[str, Path], Path, Path, bool], Conversion]


def _save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


def _mask_png(path: Path, foreground: np.ndarray) -> None:
    _save_png(path, np.where(foreground, 255, 0).astype(np.uint8))


def _pixels(path: Path) -> np.ndarray:
    """A label file's stored pixel grid, gray (EXIF orientation deliberately not applied: labels are
    drawn on the stored grid, and the image beside them is written without a rotation tag)."""
    with Image.open(path) as im:
        im.load()
        if im.mode not in ("L", "P"):
            im = im.convert("L")
        return np.asarray(im)


def _place_image(src: Path, out_dir: Path, stem: str) -> tuple[int, int]:
    """Move an image into ``out_dir`` as STEM.jpg with its bytes unchanged when it is a plain RGB or
    gray JPEG without a rotation tag; otherwise re-encode its stored pixels as STEM.png (a PNG named
    .jpg, CMYK or RGBA content, or an EXIF rotation segdistill would apply to the image but not to
    the mask). Returns the image's (width, height); raises DataError when it cannot be decoded."""
    try:
        with Image.open(src) as im:
            im.load()  # a truncated file fails here, not later in training
            size, fmt, mode = im.size, im.format, im.mode
            rotated = im.getexif().get(0x0112, 1) != 1
            out_dir.mkdir(parents=True, exist_ok=True)
            if fmt == "JPEG" and mode in ("RGB", "L") and not rotated:
                os.replace(src, out_dir / f"{stem}.jpg")
            else:
                (im if mode in ("RGB", "L") else im.convert("RGB")).save(out_dir / f"{stem}.png", format="PNG")
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as e:
        raise DataError(f"unreadable image ({e})") from None
    return size


def _tiff_pages(path: Path) -> list[np.ndarray]:
    """The pages of a multi-page TIFF as uint8 arrays (H, W)."""
    try:
        with Image.open(path) as im:
            return [np.asarray(page.convert("L")) for page in ImageSequence.Iterator(im)]
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as e:
        raise DataError(f"{path.name}: not a TIFF stack that can be read ({e}); the server may have sent a web "
                        "page instead: check the URL in a browser") from None


def convert_isbi2012(files: dict[str, Path], unpacked: Path, out: Path, progress: bool = True) -> Conversion:
    """Three 30-page TIFF stacks -> train/images/N.png, train/masks/N.png (labels as published:
    255 = cell interior, 0 = membrane) and unlabeled/N.png (the test volume)."""
    volume, labels = _tiff_pages(files["train-volume.tif"]), _tiff_pages(files["train-labels.tif"])
    test = _tiff_pages(files["test-volume.tif"])
    if len(volume) != len(labels) or any(v.shape != m.shape for v, m in zip(volume, labels)):
        raise DataError(f"train-volume.tif ({len(volume)} pages) and train-labels.tif ({len(labels)} pages) "
                        "differ in page count or page size")
    for i, (image, label) in enumerate(zip(volume, labels)):
        _save_png(out / "train" / "images" / f"{i}.png", image)
        _mask_png(out / "train" / "masks" / f"{i}.png", label > 127)
    for i, image in enumerate(test):
        _save_png(out / "unlabeled" / f"{i}.png", image)
    return Conversion({"train": len(volume)}, unlabelled=len(test))


def _find_folder(root: Path, holds: tuple[str, ...]) -> Path:
    """The first folder under ``root`` (breadth first, itself included) holding all of ``holds``."""
    queue = [root]
    while queue:
        d = queue.pop(0)
        if all((d / h).is_dir() for h in holds):
            return d
        queue += sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    raise DataError(f"the archive holds no folder with {' and '.join(h + '/' for h in holds)}")


def convert_kvasir_seg(files: dict[str, Path], unpacked: Path, out: Path, progress: bool = True) -> Conversion:
    """Kvasir-SEG/images/*.jpg + Kvasir-SEG/masks/*.jpg -> images/ (bytes unchanged) + masks/*.png
    (the JPEG masks thresholded at 127, which removes compression noise: 255 = polyp)."""
    root = _find_folder(unpacked, ("images", "masks"))
    images = {p.stem: p for p in sorted((root / "images").iterdir()) if is_image_file(p)}
    masks = {p.stem: p for p in sorted((root / "masks").iterdir()) if is_image_file(p)}
    skipped = [f"mask {m.name}: no image" for stem, m in masks.items() if stem not in images]
    pairs = 0
    for stem, image in tqdm(images.items(), desc="converting", unit="image", disable=None if progress else True,
                            leave=False):
        pairs += _convert_pair(image, masks.get(stem), out, stem, lambda m: m > 127, skipped)
    return Conversion({"": pairs}, skipped=skipped)


def _convert_pair(image: Path, mask: Path | None, out: Path, stem: str,
                  foreground: Callable[[np.ndarray], np.ndarray], skipped: list[str]) -> int:
    """Write one pair into out/images + out/masks; 1 if written, else 0 with the reason in ``skipped``."""
    if mask is None or not mask.is_file():
        skipped.append(f"{image.name}: no mask")
        return 0
    try:
        label = _pixels(mask)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as e:
        skipped.append(f"{mask.name}: unreadable mask ({e})")
        return 0
    try:
        fg = foreground(label)
    except DataError as e:
        skipped.append(f"{mask.name}: {e}")
        return 0
    try:
        w, h = _place_image(image, out / "images", stem)
    except DataError as e:
        skipped.append(f"{image.name}: {e}")
        return 0
    if (h, w) != label.shape:
        for p in (out / "images").glob(f"{stem}.*"):
            p.unlink()
        skipped.append(f"{image.name}: image {w}x{h} but mask {label.shape[1]}x{label.shape[0]}")
        return 0
    _mask_png(out / "masks" / f"{stem}.png", fg)
    return 1


def _trimap_foreground(trimap: np.ndarray) -> np.ndarray:
    """Oxford-IIIT Pet trimap -> pet mask: 1 (pet) and 3 (border, "not classified") are pet, 2 is
    background. The border band runs along the pet's outline and holds its edge (fur, ears, tail
    tips, whiskers); as background, thin parts would vanish from the masks."""
    values = set(np.unique(trimap).tolist())
    if not values <= {1, 2, 3}:
        raise DataError(f"trimap values {sorted(values)} are not 1 (pet), 2 (background), 3 (border)")
    return (trimap == 1) | (trimap == 3)


def _split_list(path: Path) -> list[str]:
    """Image names of a pets split file (lines "Abyssinian_100 1 1 1"; '#' starts a comment)."""
    if not path.is_file():
        raise DataError(f"the archive has no {path.name} (annotations/{path.name})")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def convert_oxford_pets(files: dict[str, Path], unpacked: Path, out: Path, progress: bool = True) -> Conversion:
    """images/*.jpg + annotations/{trainval,test}.txt + annotations/trimaps/*.png -> train/ (trainval)
    and test/ (test), each images/ + masks/ (255 = pet, the trimap's border counted as pet)."""
    images = _find_folder(unpacked, ("images",)) / "images"
    annotations = _find_folder(unpacked, ("annotations",)) / "annotations"
    splits = {"train": _split_list(annotations / "trainval.txt"), "test": _split_list(annotations / "test.txt")}
    pairs: dict[str, int] = {}
    skipped: list[str] = []
    for split, names in splits.items():
        pairs[split] = 0
        for name in tqdm(names, desc=f"converting {split}", unit="image", disable=None if progress else True,
                         leave=False):
            image = images / f"{name}.jpg"
            if not image.is_file():
                skipped.append(f"{name}: listed in {'trainval' if split == 'train' else 'test'}.txt, no image")
                continue
            pairs[split] += _convert_pair(image, annotations / "trimaps" / f"{name}.png", out / split, name,
                                          _trimap_foreground, skipped)
    return Conversion(pairs, skipped=skipped)

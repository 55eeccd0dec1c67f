"""Reading images and masks into numpy arrays, with one-line errors naming the file.

Images come back as float32 (H, W, C) in [0, 1] with C = 1 (gray) or 3 (RGB); masks as bool (H, W).
Rules (see docs/data.md):
- EXIF orientation is applied to images and masks alike.
- RGBA drops alpha; palette and gray+alpha images are converted to RGB or gray; 16-bit images are
  scaled by 1/65535.
- A mask pixel is foreground where it is non-zero ({0,1}, {0,255}, instance ids, RGB colours,
  palette colours), except JPEG masks, whose compression noise is removed by thresholding at half
  the range.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
JPEG_EXTENSIONS = (".jpg", ".jpeg")
Channels = Literal["gray", "rgb"]


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode one image, with EXIF rotation applied; DataError on any problem."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings():
            # Above PIL's pixel limit an image may be a decompression bomb: refuse, don't decode.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()  # decode now so truncated files fail here, not later in a worker
                if getattr(im, "n_frames", 1) > 1:
                    warnings.warn(f"{path}: multi-page file; using the first page only", stacklevel=2)
                im = ImageOps.exif_transpose(im) or im
                return im.copy()
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(
            f"{path}: image is larger than the decompression-bomb limit "
            f"({Image.MAX_IMAGE_PIXELS} pixels); refusing to decode it"
        ) from None
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError, TypeError) as e:
        # PIL reports truncated and corrupt files as OSError ("image file is truncated", ...), and
        # a TIFF with a broken page directory as TypeError ("Missing dimensions").
        raise DataError(f"{path}: corrupt or truncated image ({e})") from None


def _to_array(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im, dtype=np.uint16)
    if im.mode == "I":
        return np.asarray(im, dtype=np.int32)
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)
    if im.mode == "1":
        return np.asarray(im.convert("L"))
    return np.asarray(im)


def image_channels(im: Image.Image) -> int:
    """1 for gray-like modes, 3 for colour ones (RGBA and palette count as colour)."""
    return 1 if im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F") else 3


def image_to_array(im: Image.Image, channels: Channels, path: Path | str = "") -> np.ndarray:
    """Convert a decoded PIL image to float32 (H, W, C) in [0, 1]."""
    if im.mode in ("P", "PA", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "La", "RGBa"):
        im = im.convert("RGB")
    elif im.mode == "LA":
        im = im.convert("L")
    arr = _to_array(im)
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        x = arr.astype(np.float32) / 65535.0
    elif arr.dtype == np.int32:
        # PIL opens some 16-bit PNGs as mode "I"; the values still fit 16 bits.
        x = np.clip(arr, 0, 65535).astype(np.float32) / (65535.0 if arr.max() > 255 else 255.0)
    else:
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        x = (arr.astype(np.float32) - lo) / (hi - lo if hi > lo else 1.0)
    if x.ndim == 2:
        x = x[..., None]
    if x.shape[-1] == 4:
        x = x[..., :3]
    if channels == "gray" and x.shape[-1] == 3:
        x = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    elif channels == "rgb" and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if not np.isfinite(x).all():
        raise DataError(f"{path}: image contains NaN or infinite values")
    return np.ascontiguousarray(x, dtype=np.float32)


def read_image(path: str | Path, channels: Channels) -> np.ndarray:
    """Read an image as float32 (H, W, C) in [0, 1]."""
    return image_to_array(open_image(path), channels, path)


def mask_to_array(im: Image.Image, path: Path | str = "") -> np.ndarray:
    """Convert a decoded mask to bool (H, W): True = foreground."""
    jpeg = Path(path).suffix.lower() in JPEG_EXTENSIONS
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" else "RGB")
    arr = _to_array(im)
    if arr.ndim == 3:
        if arr.shape[-1] in (2, 4):  # drop alpha; a transparent pixel is not a label
            arr = arr[..., :-1]
        arr = arr.max(axis=-1)
    if jpeg:
        return arr > (127 if arr.dtype == np.uint8 else arr.max() / 2)
    return arr > 0


def read_mask(path: str | Path) -> np.ndarray:
    return mask_to_array(open_image(path), path)


def resize_for_model(arr: np.ndarray, max_side: int | None, is_mask: bool = False) -> np.ndarray:
    """Downscale so the longer side is at most ``max_side`` (aspect kept); no-op otherwise."""
    h, w = arr.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return arr
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if is_mask:
        im = Image.fromarray(arr.astype(np.uint8) * 255)
        return np.asarray(im.resize(size, Image.BILINEAR)) > 127
    if arr.ndim == 2:
        return np.asarray(Image.fromarray(arr).resize(size, Image.BILINEAR))
    chans = [np.asarray(Image.fromarray(arr[..., c]).resize(size, Image.BILINEAR)) for c in range(arr.shape[-1])]
    return np.stack(chans, axis=-1)

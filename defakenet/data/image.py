"""Image decoding shared by data inspection, training, evaluation and serving.

One function turns bytes (or a path) into an RGB uint8 array, whatever the file: EXIF orientation applied,
grayscale / palette / CMYK / RGBA converted to RGB, and decompression bombs refused instead of decoded.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from defakenet.errors import DataError

# file extensions read as images, compared lower-case
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})

# 64 megapixels: far above any face crop, far below what a decompression bomb expands to
DEFAULT_MAX_PIXELS = 64_000_000


def is_image_path(path: str | Path) -> bool:
    """True when the file name has an image extension (any case)."""
    return Path(str(path)).suffix.lower() in IMAGE_EXTENSIONS


def decode_rgb(data: bytes, *, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an HxWx3 uint8 RGB array.

    Raises DataError naming `name` for empty, truncated, non-image or oversized input.
    """
    if not data:
        raise DataError(f"{name}: empty file, expected JPEG, PNG, WebP, BMP or TIFF bytes")
    try:
        # Image.open refuses (DecompressionBombError) past Pillow's own cap; our tighter cap is checked before
        # any pixel is decoded. no warnings filter here: it would be process-global and decoding runs in threads.
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise DataError(f"{name}: {w}x{h} pixels is over the limit of {max_pixels:,} pixels")
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                    # composite on white so transparent areas don't turn black
                    rgba = img.convert("RGBA")
                    bg = Image.new("RGB", rgba.size, (255, 255, 255))
                    bg.paste(rgba, mask=rgba.getchannel("A"))
                    img = bg
                else:
                    img = img.convert("RGB")
            return np.asarray(img, dtype=np.uint8).copy()
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"{name}: image too large ({e})") from None
    except UnidentifiedImageError:
        raise DataError(f"{name}: not an image (expected JPEG, PNG, WebP, BMP or TIFF)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{name}: unreadable or truncated image ({e})") from None


def load_rgb(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode an image file; DataError names the path when it is missing or unreadable."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
    return decode_rgb(data, name=str(p), max_pixels=max_pixels)

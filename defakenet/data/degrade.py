"""Deterministic image degradations for evaluation: what happens to a face between the generator and the upload.

A spec names one degradation or a chain of them, applied left to right:

    none            the image unchanged
    jpeg:Q          JPEG re-compression at quality Q (int, 1..100)
    blur:SIGMA      Gaussian blur, sigma > 0 px (kernel sized from sigma)
    resize:FACTOR   down-scale by FACTOR (0 < F < 1, INTER_AREA) then back to the original size (INTER_LINEAR):
                    area averaging is how uploads are usually shrunk, bilinear how viewers blow them back up
    noise:STD       additive Gaussian noise, mean 0, std STD as a share of 255 (0 < STD <= 1), per channel
    resize:0.5+jpeg:75   a chain: shrunk, then re-compressed

Each step is an albumentations transform with its parameter fixed (quality_range=(Q, Q), ...). `degrade(image,
spec, key)` seeds the chain from `key` alone (the pipeline's stable hash of the file's relative path), so a
random step such as noise gives the same bytes for the same (image, spec, key) on every run and in every process.
Parsing needs no albumentations: CLI and config errors come without importing torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from defakenet.errors import ConfigError

if TYPE_CHECKING:
    import albumentations as A

NONE = "none"
_NAMES = ("jpeg", "blur", "resize", "noise")
FORMS = ("none, jpeg:Q (Q 1..100), blur:SIGMA (> 0), resize:FACTOR (0 < F < 1), "
         "noise:STD (share of 255, 0 < STD <= 1), chained with +")
# keeps degradation seeds apart from the training augmentation's (seed, epoch, key) entropy
_SALT = 0x64656772616465  # "degrade"


def parse_degradations(specs: str | Iterable[str]) -> list[str]:
    """Comma-separated specs (or a list of them) → their canonical forms, duplicates removed, order kept.

    `"none, JPEG:75.0 ,blur:1.0,jpeg:75"` → `["none", "jpeg:75", "blur:1"]`. A bad spec raises ConfigError naming
    it and listing the valid forms.
    """
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    out: list[str] = []
    for item in items:
        spec = canonical(item)
        if spec not in out:
            out.append(spec)
    if not out:
        raise ConfigError(f"no degradations in {specs!r}; expected a comma-separated list of {FORMS}")
    return out


def canonical(spec: str) -> str:
    """One spec's canonical form (`jpeg:75`, `blur:1`, `resize:0.5+jpeg:75`); ConfigError if it is not valid."""
    return "+".join(f"{name}:{_fmt(value)}" if name != NONE else NONE for name, value in _steps(spec))


def slug(spec: str) -> str:
    """A name for the spec safe in MLflow metric keys and file names: `resize:0.5+jpeg:75` → `resize0.5_jpeg75`."""
    return canonical(spec).replace(":", "").replace("+", "_")


def degrade(image: np.ndarray, spec: str, key: int) -> np.ndarray:
    """Apply `spec` to an RGB uint8 HWC image; the same (image, spec, key) gives the same bytes everywhere.

    `none` returns `image` itself. The output has the input's shape and dtype.
    """
    spec = canonical(spec)
    if spec == NONE:
        return image
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"degrade expects an RGB uint8 H×W×3 image, got {image.dtype} {image.shape}")
    from defakenet.data.augment import reseed

    compose = _compose(spec)
    reseed(compose, [_SALT, int(key) % (1 << 63)])
    return compose(image=image)["image"]


# ---- internals


def _steps(spec: str) -> list[tuple[str, float]]:
    """Validated (name, value) steps of one spec; `none` alone is [("none", 0)]."""
    text = str(spec).strip().lower()
    if text == NONE:
        return [(NONE, 0.0)]
    steps = []
    for part in text.split("+"):
        name, sep, raw = (x.strip() for x in part.partition(":"))
        value = _value(name, raw) if sep else None
        if value is None:
            what = "invalid" if sep and name in _NAMES else "unknown"
            step = f" (step {part.strip()!r})" if "+" in text else ""
            raise ConfigError(f"{what} degradation {str(spec).strip()!r}{step}; expected {FORMS}")
        steps.append((name, value))
    return steps


def _value(name: str, raw: str) -> float | None:
    # the step's parameter, or None when the name is unknown or the value out of range
    try:
        v = float(raw)
    except ValueError:
        return None
    if not math.isfinite(v):
        return None
    if name == "jpeg":
        return v if v.is_integer() and 1 <= v <= 100 else None
    if name == "blur":
        return v if v > 0 else None
    if name == "resize":
        return v if 0 < v < 1 else None
    if name == "noise":
        return v if 0 < v <= 1 else None
    return None


def _fmt(v: float) -> str:
    # 75.0 → "75", 0.5 → "0.5": the shortest text that reads back as the same float
    return str(int(v)) if v.is_integer() else repr(v)


@functools.lru_cache(maxsize=64)
def _compose(spec: str) -> A.Compose:
    # one Compose per canonical spec and process; degrade() reseeds it per image. augment first: it turns off
    # albumentations' update check before the import
    import defakenet.data.augment  # noqa: F401

    import albumentations as A
    import cv2

    steps = []
    for name, v in _steps(spec):
        if name == "jpeg":
            steps.append(A.ImageCompression(compression_type="jpeg", quality_range=(int(v), int(v)), p=1.0))
        elif name == "blur":
            steps.append(A.GaussianBlur(blur_limit=0, sigma_limit=(v, v), p=1.0))
        elif name == "resize":
            steps.append(A.Downscale(scale_range=(v, v), p=1.0, interpolation_pair={
                "downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR}))
        else:
            assert name == "noise", name
            steps.append(A.GaussNoise(std_range=(v, v), mean_range=(0.0, 0.0), per_channel=True, p=1.0))
    return A.Compose(steps, p=1.0)

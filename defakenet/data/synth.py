"""Synthetic real/fake face-like images for tests, demos and smoke runs.

Both classes draw faces from the same distribution (skin tone, hair, eyes, mouth, background, lighting), so
per-channel means and spreads carry no label signal. Fakes carry what GAN and face-swap pipelines leave behind:
- a face rendered at half resolution and nearest-upsampled (2x2 block structure, a spectral replica);
- a faint checkerboard, the transposed-convolution trace (Odena et al. 2016);
- a face region colour-graded apart from its surroundings with a hard blending seam.
Reals get sensor-like per-pixel noise of matched variance instead. A CNN learns the difference quickly; a
logistic regression on channel statistics does not (tests check both).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from defakenet.errors import DataError

CLASSES = ("real", "fake")


def _soft_ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, edge: float) -> np.ndarray:
    d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip((1.0 - d) / edge + 0.5, 0.0, 1.0)


def _render_face(rng: np.random.Generator, size: int, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """Render one face at `size` px from shared params; returns (float RGB in 0..255, face mask)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    edge = 1.5 / (size * 0.3)
    p = params
    # background: a lit gradient
    img = p["bg"][None, None, :] * (0.75 + 0.35 * (p["light"] * xx + (1 - p["light"]) * yy))[..., None]
    hair = _soft_ellipse(yy, xx, p["cy"] - 0.08, p["cx"], p["ry"] * 1.1, p["rx"] * 1.15, edge)
    img = img * (1 - hair[..., None]) + p["hair"] * hair[..., None]
    face = _soft_ellipse(yy, xx, p["cy"], p["cx"], p["ry"], p["rx"], edge)
    shade = 1.0 - 0.25 * np.clip(((xx - p["cx"]) / p["rx"]) ** 2 + ((yy - p["cy"]) / p["ry"]) ** 2, 0, 1)
    img = img * (1 - face[..., None]) + (p["skin"] * shade[..., None]) * face[..., None]
    for side in (-1, 1):
        ex = p["cx"] + side * p["rx"] * 0.42
        ey = p["cy"] - p["ry"] * 0.18
        white = _soft_ellipse(yy, xx, ey, ex, p["ry"] * 0.09, p["rx"] * 0.2, edge)
        img = img * (1 - white[..., None]) + np.array([235, 235, 230]) * white[..., None]
        iris = _soft_ellipse(yy, xx, ey, ex, p["ry"] * 0.08, p["rx"] * 0.09, edge)
        img = img * (1 - iris[..., None]) + p["iris"] * iris[..., None]
    mouth = _soft_ellipse(yy, xx, p["cy"] + p["ry"] * 0.5, p["cx"], p["ry"] * 0.07, p["rx"] * 0.35, edge)
    img = img * (1 - mouth[..., None]) + p["lips"] * mouth[..., None]
    return img, face


def _draw_params(rng: np.random.Generator) -> dict:
    return {
        "bg": rng.uniform(30, 230, 3),
        "light": rng.uniform(0, 1),
        "hair": rng.uniform(10, 120, 3) * rng.uniform(0.5, 1.5),
        "skin": np.array([224, 172, 140]) * rng.uniform(0.45, 1.1) + rng.normal(0, 10, 3),
        "iris": rng.uniform(20, 120, 3),
        "lips": np.array([170, 70, 80]) * rng.uniform(0.6, 1.1),
        "cy": rng.uniform(0.5, 0.6),
        "cx": rng.uniform(0.44, 0.56),
        "ry": rng.uniform(0.28, 0.36),
        "rx": rng.uniform(0.2, 0.27),
    }


def make_image(rng: np.random.Generator, size: int, fake: bool, strength: float = 1.0) -> np.ndarray:
    """One synthetic face as HxWx3 uint8; `strength` scales the fake traces (1.0 = default)."""
    params = _draw_params(rng)
    sigma = 7.0
    if fake:
        half = max(size // 2, 4)
        img, face = _render_face(rng, half, params)
        img = img + rng.normal(0, sigma, img.shape)
        # nearest upsampling: each half-res pixel becomes a 2x2 block
        img = img.repeat(2, axis=0).repeat(2, axis=1)[:size, :size]
        face = face.repeat(2, axis=0).repeat(2, axis=1)[:size, :size]
        yy, xx = np.mgrid[0:size, 0:size]
        checker = np.where((yy + xx) % 2 == 0, 1.0, -1.0)[..., None]
        img = img + checker * 8.0 * strength
        # blending seam: the pasted face is graded apart from its surroundings with a hard edge
        seam = (face > 0.5)[..., None]
        grade = rng.normal(0, 12.0 * strength, 3)
        img = np.where(seam, img + grade, img)
    else:
        img, _ = _render_face(rng, size, params)
        img = img + rng.normal(0, np.sqrt(sigma**2 + (8.0 * strength) ** 2), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_dataset(
    out: str | Path, *, n: int = 100, size: int = 64, seed: int = 0, strength: float = 1.0, progress: bool = False
) -> Path:
    """Write `n` real and `n` fake PNGs in the flat layout `OUT/{real,fake}/NNNNN.png`; deterministic per seed."""
    if n < 1:
        raise DataError(f"--n must be at least 1 image per class, got {n}")
    if size < 16:
        raise DataError(f"--size must be at least 16 px, got {size}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    for cls in CLASSES:
        (out / cls).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        for label, cls in enumerate(CLASSES):
            # one generator per image: any single file can be regenerated on its own
            rng = np.random.default_rng([seed, label, i])
            Image.fromarray(make_image(rng, size, fake=bool(label), strength=strength)).save(out / cls / f"{i:05d}.png")
        if progress and ((i + 1) % 100 == 0 or i + 1 == n):
            print(f"\rsynth: {2 * (i + 1)}/{2 * n} images", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return out

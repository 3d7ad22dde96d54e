"""Albumentations pipelines and the model's input normalisation.

Two input policies (data.input_policy) decide the geometry:
- resize: train = random resized crop; eval = resize the short side to image_size / crop_pct, centre crop;
- crop: image_size crops at the image's native resolution, never resampled (random in training, centre in eval),
  so the generator's pixel-level traces survive; a side smaller than image_size is zero-padded evenly around the
  image, never upscaled.
Train then adds flip, colour jitter, and the degradations of Wang et al. (CVPR 2020, "CNN-generated images are
surprisingly easy to spot… for now"): JPEG re-compression (quality 30-100) and Gaussian blur (sigma 0-3), plus
Gaussian noise, each with its own probability. Both end in the normalisation the model's weights expect and
return CHW float32.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from defakenet.config import AugmentConfig, DataConfig

# albumentations checks PyPI for updates when imported unless told not to; clusters are often air-gapped
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0


def normalize(images: np.ndarray, mode: str) -> np.ndarray:
    """uint8 HWC (or NHWC) → float32 CHW (or NCHW) in the model's input range.

    'tf' is Keras's `preprocess_input` for ResNetV2 (x/127.5 - 1); 'torch' is ImageNet mean/std.
    """
    x = images.astype(np.float32)
    if mode == "tf":
        x = x / 127.5 - 1.0
    elif mode == "torch":
        x = (x - _IMAGENET_MEAN) / _IMAGENET_STD
    else:
        raise ValueError(f"Invalid preprocessing mode {mode!r}. Only 'tf' and 'torch' are supported.")
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def train_transform(data: DataConfig, aug: AugmentConfig, seed: int | None = None) -> A.Compose:
    """The training pipeline: geometry (data.input_policy), colour, then the degradations, each with its own
    probability."""
    s = data.image_size
    if _policy(data) == "crop":
        geometry = [_pad_to(s), A.RandomCrop(height=s, width=s, p=1.0)]
    else:
        geometry = [A.RandomResizedCrop(size=(s, s), scale=(aug.scale_min, 1.0), p=1.0)]
    compose = A.Compose(
        [
            *geometry,
            A.HorizontalFlip(p=aug.flip_p),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=aug.jitter_p),
            A.ImageCompression(quality_range=(aug.jpeg_quality_min, 100), p=aug.jpeg_p),
            # blur_limit 0 lets albumentations size the kernel from sigma; sigma 0 is a no-op blur
            A.GaussianBlur(blur_limit=0, sigma_limit=(1e-3, aug.blur_sigma_max), p=aug.blur_p),
            A.GaussNoise(std_range=(0.0, aug.noise_std_max), p=aug.noise_p),
            A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.1, 0.25), hole_width_range=(0.1, 0.25),
                            fill=0, p=aug.erase_p),
        ]
    )
    if seed is not None:
        reseed(compose, seed)
    return compose


def reseed(compose: A.Compose, entropy: list[int] | int) -> None:
    """Give the Compose and each of its transforms an independent seed drawn from `entropy`.

    Compose(seed=s) hands the same s to every transform, whose identical streams then make the same apply/skip
    draws (flip whenever jitter, blur whenever JPEG, ...): each transform gets its own seed instead.
    """
    words = np.random.SeedSequence(entropy).generate_state(len(compose.transforms) + 1)
    compose.set_random_seed(int(words[0]))
    for t, w in zip(compose.transforms, words[1:]):
        t.set_random_seed(int(w))


def eval_transform(data: DataConfig) -> A.Compose:
    """resize: the short side to image_size / crop_pct, then centre crop image_size. crop: centre crop of
    data.input_size (eval_size, else image_size) at native resolution, zero-padded when smaller."""
    s = data.image_size
    if _policy(data) == "crop":
        s = data.input_size
        return A.Compose([_pad_to(s), A.CenterCrop(height=s, width=s, p=1.0)])
    return A.Compose(
        [A.SmallestMaxSize(max_size=int(round(s / data.crop_pct)), p=1.0), A.CenterCrop(height=s, width=s, p=1.0)]
    )


def input_box(height: int, width: int, data: DataConfig) -> tuple[float, float, float, float]:
    """The square (x0, y0, x1, y1) of a height x width image that eval_transform turns into the network's input,
    in the image's pixels; it reaches outside the image where the crop policy pads a small image."""
    if _policy(data) == "crop":
        side = float(data.input_size)
    else:  # SmallestMaxSize scales the short side to image_size / crop_pct; CenterCrop takes image_size of it
        side = data.image_size * min(height, width) / int(round(data.image_size / data.crop_pct))
    x0, y0 = (width - side) / 2, (height - side) / 2
    return x0, y0, x0 + side, y0 + side


def _policy(data: DataConfig) -> str:
    # config.py validates the choice; this catches a DataConfig built by hand
    if data.input_policy not in ("resize", "crop"):
        raise ValueError(f"Invalid input policy {data.input_policy!r}. Only 'resize' and 'crop' are supported.")
    return data.input_policy


def _pad_to(s: int) -> A.PadIfNeeded:
    # sides below s get zeros, split evenly (the odd pixel at the bottom/right); a no-op for larger images.
    # the crop that follows then takes the whole padded side, so a small image is never resampled
    return A.PadIfNeeded(min_height=s, min_width=s, position="center", border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)


class Preprocess:
    """Callable: RGB uint8 HWC → normalised CHW float32, with or without training augmentation."""

    def __init__(self, data: DataConfig, aug: AugmentConfig | None, mode: str, seed: int | None = None):
        self.transform = train_transform(data, aug, seed) if aug is not None else eval_transform(data)
        self.mode = mode

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return normalize(self.transform(image=image)["image"], self.mode)

"""Evaluation degradations: spec parsing, determinism, and that each step is the albumentations transform it names."""

from __future__ import annotations

import os
import re

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from defakenet.data.degrade import canonical, degrade, parse_degradations, slug  # noqa: E402
from defakenet.data.synth import make_image  # noqa: E402
from defakenet.errors import ConfigError  # noqa: E402

SPECS = ["jpeg:75", "blur:1", "resize:0.5", "noise:0.05", "resize:0.5+jpeg:75"]


@pytest.fixture(scope="module")
def img():
    # odd sides, so the down-up resize has to round
    return np.ascontiguousarray(make_image(np.random.default_rng(0), 64, fake=True)[:45, :51])


def test_parse_canonical_dedupe_and_order():
    got = parse_degradations(" none, JPEG:75.0 ,blur:1.0,jpeg:75,resize:0.50+jpeg:75, noise:0.05 ,blur:1")
    assert got == ["none", "jpeg:75", "blur:1", "resize:0.5+jpeg:75", "noise:0.05"]
    assert parse_degradations(["blur:2.5", "none"]) == ["blur:2.5", "none"]
    assert canonical("resize:0.25 + blur:0.5") == "resize:0.25+blur:0.5"


@pytest.mark.parametrize("bad", ["jpg:75", "jpeg:0", "jpeg:101", "jpeg:75.5", "blur:0", "blur:-1", "blur:nan",
                                 "resize:1", "resize:0", "noise:0", "noise:1.5", "jpeg", "none+jpeg:75", "jpeg:75+"])
def test_bad_specs_name_the_spec_and_the_valid_forms(bad):
    with pytest.raises(ConfigError) as e:
        parse_degradations(f"none,{bad}")
    msg = str(e.value)
    assert f"degradation {bad!r}" in msg
    for form in ("none", "jpeg:Q (Q 1..100)", "blur:SIGMA (> 0)", "resize:FACTOR (0 < F < 1)",
                 "noise:STD (share of 255, 0 < STD <= 1)", "chained with +"):
        assert form in msg


def test_empty_list_is_an_error():
    with pytest.raises(ConfigError, match="degradation"):
        parse_degradations("")


def test_slug_is_safe_for_metric_keys_and_file_names():
    assert slug("jpeg:75") == "jpeg75"
    assert slug("resize:0.5+jpeg:75") == "resize0.5_jpeg75"
    assert slug("none") == "none"
    assert slug("blur:1.0") == "blur1"
    for spec in [*SPECS, "blur:0.00001", "noise:1"]:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+", slug(spec)), slug(spec)
    assert len({slug(s) for s in SPECS}) == len(SPECS)


def test_none_is_the_identity(img):
    assert degrade(img, "none", 3) is img


@pytest.mark.parametrize("spec", SPECS)
def test_deterministic_and_shape_kept(img, spec):
    a = degrade(img, spec, 11)
    degrade(np.zeros_like(img), spec, 12)  # another image in between must not shift the streams
    b = degrade(img.copy(), spec, 11)
    assert a.dtype == np.uint8 and a.shape == img.shape
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, img)


def test_noise_depends_on_the_key_and_has_the_asked_std():
    grey = np.full((64, 64, 3), 128, dtype=np.uint8)
    a = degrade(grey, "noise:0.05", 1).astype(np.float64) - 128
    b = degrade(grey, "noise:0.05", 2).astype(np.float64) - 128
    assert not np.array_equal(a, b)
    for n in (a, b):
        assert abs(n.mean()) < 0.5 and abs(n.std() - 0.05 * 255) < 0.6
    assert not np.array_equal(a[..., 0], a[..., 1])  # per channel, not the same noise in R, G and B


def test_jpeg_is_albumentations_image_compression_at_q(img):
    for q in (30, 75):
        expected = A.ImageCompression(quality_range=(q, q), p=1.0)(image=img)["image"]
        np.testing.assert_array_equal(degrade(img, f"jpeg:{q}", 5), expected)
    assert not np.array_equal(degrade(img, "jpeg:30", 5), degrade(img, "jpeg:75", 5))


def test_blur_is_albumentations_gaussian_blur_at_sigma(img):
    expected = A.GaussianBlur(blur_limit=0, sigma_limit=(1.5, 1.5), p=1.0)(image=img)["image"]
    np.testing.assert_array_equal(degrade(img, "blur:1.5", 5), expected)


def test_resize_is_area_down_then_linear_up_to_the_same_size(img):
    h, w = img.shape[:2]
    small = cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    expected = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    out = degrade(img, "resize:0.5", 5)
    assert out.shape == img.shape
    np.testing.assert_array_equal(out, expected)


def test_chain_applies_in_order(img):
    resized = degrade(img, "resize:0.5", 9)
    expected = A.ImageCompression(quality_range=(75, 75), p=1.0)(image=resized)["image"]
    np.testing.assert_array_equal(degrade(img, "resize:0.5+jpeg:75", 9), expected)
    assert not np.array_equal(degrade(img, "jpeg:75+resize:0.5", 9), expected)

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from defakenet.config import AugmentConfig, Config, DataConfig
from defakenet.data.augment import Preprocess, normalize
from defakenet.data.synth import make_dataset, make_image
from defakenet.errors import DataError


def test_synth_is_deterministic_and_flat(tmp_path):
    a = make_dataset(tmp_path / "a", n=3, size=32, seed=7)
    b = make_dataset(tmp_path / "b", n=3, size=32, seed=7)
    c = make_dataset(tmp_path / "c", n=3, size=32, seed=8)
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.png"))
    assert files == ["fake/00000.png", "fake/00001.png", "fake/00002.png", "real/00000.png", "real/00001.png", "real/00002.png"]
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes()
        assert Image.open(a / f).size == (32, 32)
    assert (a / files[0]).read_bytes() != (c / files[0]).read_bytes()


def test_synth_bad_args(tmp_path):
    with pytest.raises(DataError, match="--n must be at least 1"):
        make_dataset(tmp_path / "x", n=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="exists and is not a folder"):
        make_dataset(tmp_path / "file", n=1)


def test_trivial_statistics_do_not_separate_fakes():
    """Per-channel mean and std carry no label: logistic regression ROC-AUC must stay <= 0.65."""
    feats, labels = [], []
    for i in range(200):
        for label in (0, 1):
            img = make_image(np.random.default_rng([3, label, i]), 64, bool(label)).astype(np.float64)
            feats.append(np.concatenate([img.mean((0, 1)), img.std((0, 1))]))
            labels.append(label)
    clf = make_pipeline(StandardScaler(), LogisticRegression())
    p = cross_val_predict(clf, np.array(feats), np.array(labels), cv=5, method="predict_proba")[:, 1]
    auc = roc_auc_score(labels, p)
    assert auc <= 0.65, auc


def test_fake_traces_are_there():
    """The 2x2 block structure of fakes shows as near-zero differences inside blocks; reals have none."""
    rng = np.random.default_rng(0)
    real = make_image(rng, 64, fake=False).astype(float)
    fake = make_image(rng, 64, fake=True, strength=0.0).astype(float)
    inside = lambda im: np.abs(im[:, 0::2] - im[:, 1::2]).mean()  # noqa: E731
    assert inside(fake) < 0.5 * inside(real)


def test_normalize_modes():
    img = np.array([[[0, 127, 255]]], dtype=np.uint8)
    tf = normalize(img, "tf")
    assert tf.shape == (3, 1, 1) and tf.dtype == np.float32
    np.testing.assert_allclose(tf[:, 0, 0], [-1.0, 127 / 127.5 - 1, 1.0], atol=1e-6)
    torch_mode = normalize(img, "torch")
    np.testing.assert_allclose(torch_mode[0, 0, 0], (0 - 0.485 * 255) / (0.229 * 255), rtol=1e-5)
    with pytest.raises(ValueError, match="Only 'tf' and 'torch'"):
        normalize(img, "caffe")


def test_train_pipeline_deterministic_under_seed_and_eval_is_fixed():
    data = DataConfig(image_size=48)
    aug = AugmentConfig(jpeg_p=1.0, blur_p=1.0, noise_p=1.0, jitter_p=1.0)
    img = make_image(np.random.default_rng(1), 64, fake=True)
    a = [Preprocess(data, aug, "tf", seed=5)(img) for _ in range(1)][0]
    b = Preprocess(data, aug, "tf", seed=5)(img)
    c = Preprocess(data, aug, "tf", seed=6)(img)
    assert a.shape == (3, 48, 48) and a.dtype == np.float32 and -1.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    ev = Preprocess(data, None, "tf")
    np.testing.assert_array_equal(ev(img), ev(img))
    # eval = shorter-side resize then centre crop: a 64x96 image becomes 48x48
    wide = np.zeros((64, 96, 3), dtype=np.uint8)
    assert ev(wide).shape == (3, 48, 48)


def test_augment_config_defaults_follow_wang_et_al():
    aug = Config().augment
    assert aug.jpeg_quality_min == 30 and aug.blur_sigma_max == 3.0


def test_transforms_draw_independently():
    """Each augmentation decides on its own: with p=0.5 each, flips and JPEG must not always coincide."""
    from defakenet.data.augment import train_transform

    aug = AugmentConfig(flip_p=0.5, jitter_p=0.5, jpeg_p=0.5, blur_p=0.5, noise_p=0.5)
    t = train_transform(DataConfig(image_size=32), aug, seed=0)
    draws = [tuple(float(tr.py_random.random()) for tr in t.transforms) for _ in range(1)][0]
    assert len(set(draws)) == len(draws)


# ---- input policies

NO_AUG = AugmentConfig(flip_p=0, jitter_p=0, jpeg_p=0, blur_p=0, noise_p=0)
CROP = DataConfig(image_size=32, input_policy="crop")


def _random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_crop_policy_eval_is_a_native_centre_crop():
    img = _random_image(45, 60)
    out = Preprocess(CROP, None, "tf")(img)
    # albumentations' centre: offset (45 - 32) // 2 = 6 rows, (60 - 32) // 2 = 14 columns
    np.testing.assert_array_equal(out, normalize(img[6:38, 14:46], "tf"))


def test_crop_policy_eval_size_widens_the_centre_crop_only_in_evaluation():
    from defakenet.artifact import preprocessing_meta
    from defakenet.errors import ConfigError

    img = np.random.default_rng(3).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    wide = DataConfig(image_size=32, input_policy="crop", eval_size=48)
    out = Preprocess(wide, None, "tf")(img)
    np.testing.assert_array_equal(out, normalize(img[8:56, 16:64], "tf"))  # (64-48)//2, (80-48)//2
    assert Preprocess(wide, AugmentConfig(), "tf", seed=0)(img).shape == (3, 32, 32)  # training still crops 32
    meta = preprocessing_meta(Config.from_dict({"data": {"input_policy": "crop", "image_size": 32, "eval_size": 48}}))
    assert (meta["image_size"], meta["input_size"]) == (32, 48)
    for bad in ({"eval_size": 48}, {"input_policy": "crop", "image_size": 64, "eval_size": 48}):
        with pytest.raises(ConfigError, match="data.eval_size 48 needs data.input_policy crop"):
            Config.from_dict({"data": bad})


def test_crop_policy_pads_small_images_evenly_and_never_upscales():
    img = _random_image(20, 25)
    out = Preprocess(CROP, None, "tf")(img)
    assert out.shape == (3, 32, 32)
    expected = np.zeros((32, 32, 3), dtype=np.uint8)
    expected[6:26, 3:28] = img  # 12 rows of padding split 6 / 6, 7 columns split 3 / 4
    np.testing.assert_array_equal(out, normalize(expected, "tf"))
    # one side short, the other long: pad the one, centre crop the other
    tall = _random_image(20, 50, seed=1)
    expected[:] = 0
    expected[6:26] = tall[:, 9:41]
    np.testing.assert_array_equal(Preprocess(CROP, None, "tf")(tall), normalize(expected, "tf"))
    # training pads the same way; the random crop of 32 from 32 then takes all of it
    train = Preprocess(CROP, NO_AUG, "tf", seed=3)(img)
    expected[:] = 0
    expected[6:26, 3:28] = img
    np.testing.assert_array_equal(train, normalize(expected, "tf"))


def test_crop_policy_train_crops_are_unresampled_windows():
    from defakenet.data.augment import train_transform

    img = _random_image(48, 56)
    corners = set()
    for seed in range(6):
        out = train_transform(CROP, NO_AUG, seed=seed)(image=img)["image"]
        assert out.shape == (32, 32, 3)
        hits = [(y, x) for y in range(48 - 32 + 1) for x in range(56 - 32 + 1)
                if np.array_equal(out, img[y:y + 32, x:x + 32])]
        assert len(hits) == 1, seed  # exactly one window of the input, pixel for pixel
        corners.add(hits[0])
    assert len(corners) > 1  # random, not a fixed crop
    # the other augmentations still run under the crop policy
    aug = AugmentConfig(jitter_p=1.0, jpeg_p=1.0, blur_p=1.0, noise_p=1.0)
    full = Preprocess(CROP, aug, "tf", seed=0)(img)
    assert full.shape == (3, 32, 32)
    assert not any(np.array_equal(full, normalize(img[y:y + 32, x:x + 32], "tf"))
                   for y in range(17) for x in range(25))


def test_resize_policy_is_unchanged():
    """The resize policy's pipelines, as they were before input_policy existed, give the same output."""
    import albumentations as A

    from defakenet.data.augment import eval_transform, reseed, train_transform

    data = DataConfig(image_size=32, crop_pct=0.875)
    aug = AugmentConfig(flip_p=0.5, jitter_p=1.0, jpeg_p=1.0, blur_p=1.0, noise_p=1.0)
    before_train = A.Compose([
        A.RandomResizedCrop(size=(32, 32), scale=(aug.scale_min, 1.0), p=1.0),
        A.HorizontalFlip(p=aug.flip_p),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=aug.jitter_p),
        A.ImageCompression(quality_range=(aug.jpeg_quality_min, 100), p=aug.jpeg_p),
        A.GaussianBlur(blur_limit=0, sigma_limit=(1e-3, aug.blur_sigma_max), p=aug.blur_p),
        A.GaussNoise(std_range=(0.0, aug.noise_std_max), p=aug.noise_p),
    ])
    before_eval = A.Compose([A.SmallestMaxSize(max_size=37, p=1.0), A.CenterCrop(height=32, width=32, p=1.0)])
    img = _random_image(45, 60)
    for seed in (0, 1):
        reseed(before_train, [seed, 2, 7])
        now = train_transform(data, aug)
        reseed(now, [seed, 2, 7])
        np.testing.assert_array_equal(now(image=img)["image"], before_train(image=img)["image"])
    np.testing.assert_array_equal(eval_transform(data)(image=img)["image"], before_eval(image=img)["image"])
    assert Config().data.input_policy == "resize"


def test_input_policy_is_stored_with_the_model():
    from defakenet.artifact import preprocessing_meta

    crop = preprocessing_meta(Config.from_dict({"data": {"input_policy": "crop"}}))
    resize = preprocessing_meta(Config())
    assert crop["input_policy"] == "crop" and "native resolution" in crop["resize"] and "pad" in crop["resize"]
    assert resize["input_policy"] == "resize" and resize["resize"].startswith("shorter-side resize")
    with pytest.raises(ValueError, match="'scale'.*'resize' and 'crop'"):
        Preprocess(DataConfig(input_policy="scale"), None, "tf")

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

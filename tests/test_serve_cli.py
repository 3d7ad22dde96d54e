"""`defakenet serve` as a user runs it: its own process, blocking until Ctrl-C or SIGTERM.

A user's mistakes (a model that is not there, an alias nobody set, a port another server holds) end the command
with one line and exit status 2 before Ray starts. A good model serves over HTTP on 127.0.0.1 what `evaluate`
scores, and SIGTERM (what `kill`, systemd and Kubernetes send) takes the endpoint down and exits 0. The serving
process drives the session's Ray instance (RAY_ADDRESS), as the other multi-process tests do.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow_server import free_port
from PIL import Image

from defakenet.config import Config

SIZE = 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    from defakenet.artifact import save_model
    from defakenet.model import DeFakeNet

    cfg = Config().replace(**{"data.image_size": SIZE})
    torch.manual_seed(7)
    model = DeFakeNet(dropout=cfg.model.dropout, freeze_depth=cfg.model.freeze_depth)
    with torch.no_grad():  # random BN statistics, so scores are not all 0.5
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    return save_model(tmp_path_factory.mktemp("served") / "model", model, cfg, {"threshold": 0.45})


def _env(**extra: str) -> dict[str, str]:
    # as on a user's machine: no Ray cluster or tracking server unless the test names one
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return env | extra


def _serve(args: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "defakenet", "serve", *args], env=env, capture_output=True,
                          text=True, timeout=180, **kw)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("defakenet: error: "), err
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr  # refused before anything started
    return err


def test_missing_model_is_one_line_before_ray_starts(tmp_path):
    missing = tmp_path / "no-such-model"
    err = _one_line_error(_serve(["--model", str(missing), "--port", str(free_port())], _env(), cwd=tmp_path))
    assert f"model {missing} does not exist" in err


def test_unknown_registered_model_is_one_line(mlflow_server, tmp_path):
    name = f"nobody-{uuid.uuid4().hex[:6]}"
    err = _one_line_error(_serve(["--model", f"models:/{name}@champion", "--tracking-uri", mlflow_server,
                                  "--port", str(free_port())], _env(), cwd=tmp_path))
    assert f"no registered model '{name}' at {mlflow_server}" in err


def test_port_in_use_is_one_line(model_dir, tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        err = _one_line_error(_serve(["--model", str(model_dir), "--port", str(port)], _env(), cwd=tmp_path))
    assert f"--host 127.0.0.1 --port {port}: cannot listen there (Address already in use)" in err


def test_high_throughput_without_haproxy_is_one_line(model_dir, tmp_path):
    bad = tmp_path / "no-haproxy"
    err = _one_line_error(_serve(["--model", str(model_dir), "--port", str(free_port()), "--high-throughput"],
                                 _env(RAY_SERVE_HAPROXY_BINARY_PATH=str(bad)), cwd=tmp_path))
    assert f"--high-throughput: RAY_SERVE_HAPROXY_BINARY_PATH='{bad}' does not point to an executable file" in err


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 56, 3), dtype=np.uint8), "RGB").save(buf, "PNG")
    return buf.getvalue()


def _offline_scores(model_dir, blobs: list[bytes]) -> np.ndarray:
    from defakenet.artifact import load_model
    from defakenet.data.image import decode_rgb
    from defakenet.evaluate import _Scorer

    pre = load_model(model_dir).preprocess()
    images = np.stack([pre(decode_rgb(b)) for b in blobs])
    return _Scorer(str(model_dir), use_gpu=False)({"image": images, "label": np.zeros(len(blobs))})["score"]


def _start(args: list[str], env: dict[str, str], tmp_path) -> subprocess.Popen:
    """`defakenet serve ARGS` in the background, logging to tmp_path/serve.log; returns once /healthz answers."""
    url = f"http://127.0.0.1:{args[args.index('--port') + 1]}"
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "defakenet", "serve", *args], env=env, cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "serve.log").read_text()[-3000:])
            try:
                if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                    return proc
            except requests.RequestException:  # not listening yet, or too busy starting to answer in 5 s
                pass
            if time.monotonic() > deadline:
                raise AssertionError("endpoint not ready in 180 s: " + (tmp_path / "serve.log").read_text()[-3000:])
            time.sleep(1)
    except BaseException:
        proc.kill()  # a failed start leaves no server (and its Ray instance) running through the rest of the suite
        proc.wait()
        raise


def _answers_as_evaluate(url: str, model_dir) -> None:
    blobs = [_png(1), _png(2)]
    want = _offline_scores(model_dir, blobs)
    for blob, p in zip(blobs, want):
        r = requests.post(f"{url}/v1/predict", data=blob, headers={"Content-Type": "image/png"}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert abs(body["p_fake"] - p) < 1e-5 and body["threshold"] == 0.45
        assert body["label"] == ("fake" if p >= 0.45 else "real")


def _sigterm(proc: subprocess.Popen, tmp_path) -> str:
    """SIGTERM, as `kill` and Kubernetes send: exits 0; the log."""
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = (tmp_path / "serve.log").read_text()
    assert "defakenet: endpoint stopped" in out and "SIGTERM received" not in out
    return out


@pytest.mark.slow
def test_serves_until_sigterm_then_stops_cleanly(ray_session, model_dir, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = _env(RAY_ADDRESS=ray_session.get_runtime_context().gcs_address, PYTHONUNBUFFERED="1")
    proc = _start(["--model", str(model_dir), "--port", str(port), "--arg", "batch_wait_timeout_s=0.005"], env,
                  tmp_path)
    try:
        _answers_as_evaluate(url, model_dir)
        assert requests.get(f"{url}/v1/model", timeout=30).json()["input_size"] == SIZE
    finally:
        out = _sigterm(proc, tmp_path)
    assert f"defakenet: serving {model_dir} at {url}/v1/predict" in out
    # a quiet console: the replica's access log and per-request lines went to Serve's log files, not here
    assert '"event": "predict"' not in out and "POST /v1/predict" not in out, out[-3000:]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=5)


def _haproxy_pids(state: str) -> list[int]:
    """HAProxy processes running on a config under `state`."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"haproxy") and any(state.encode() in a for a in argv):
            pids.append(int(d.name))
    return pids


@pytest.mark.slow
def test_high_throughput_mode_serves_through_haproxy(model_dir, tmp_path):
    """--high-throughput on a Ray instance of its own: HAProxy, not Serve's Python proxy, listens on --port and answers
    what evaluate scores; SIGTERM stops HAProxy with the rest. The instance gets its own Ray temp root, so the
    session's instance (and Ray Train's view of "the" cluster) is left alone."""
    ray_tmp = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # short: Ray's socket paths live under it
    state = tempfile.mkdtemp(prefix="hp-", dir="/tmp")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = _env(RAY_TMPDIR=ray_tmp, RAY_SERVE_HAPROXY_SERVER_STATE_BASE=state, PYTHONUNBUFFERED="1")
    try:
        proc = _start(["--model", str(model_dir), "--port", str(port), "--high-throughput", "--arg",
                       "batch_wait_timeout_s=0.005"], env, tmp_path)
        try:
            (cfg,) = Path(state).rglob("haproxy.cfg")
            assert f"bind 127.0.0.1:{port}" in cfg.read_text()
            assert _haproxy_pids(state), "no HAProxy process runs on the generated config"
            _answers_as_evaluate(url, model_dir)
        finally:
            out = _sigterm(proc, tmp_path)
        assert f"at {url}/v1/predict (try it: {url}/, API docs {url}/docs) through HAProxy (high-throughput mode)" in out
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/healthz", timeout=5)
        deadline = time.monotonic() + 30
        while _haproxy_pids(state) and time.monotonic() < deadline:
            time.sleep(1)
        assert not _haproxy_pids(state), "HAProxy outlived the endpoint"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)

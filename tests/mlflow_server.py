"""A real `mlflow server` on loopback for tests: SQLite backend and proxied artifacts in a temp folder.

Not a conftest: import `mlflow_server_fixture` and register it as a session fixture where it is needed
(pytest puts `tests/` on sys.path, as there is no `tests/__init__.py`):

    from mlflow_server import mlflow_server_fixture
    mlflow_server = pytest.fixture(scope="session")(mlflow_server_fixture)

The fixture yields the server's `http://127.0.0.1:PORT` URI and stops the server at the end of the session.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

# the child must not phone home or start the GenAI job runner (an extra huey process we don't need)
SERVER_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


_STORES: dict[str, Path] = {}


def store_dir(uri: str) -> Path:
    """The folder holding the `mlflow.db` and `mlartifacts/` of the server started here at `uri`."""
    return _STORES[uri]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(tmp_dir: str | Path, timeout_s: float = 90.0) -> tuple[str, subprocess.Popen]:
    """Start `mlflow server` (1 worker) on a free loopback port; return (uri, process) once /health answers.

    Store: `tmp_dir/mlflow.db`; artifacts: `tmp_dir/mlartifacts`, served through the server (`--serve-artifacts`),
    so clients upload over HTTP as remote Ray workers would. Output goes to `tmp_dir/server.log`, whose tail is in
    the error when the server exits early or does not answer within `timeout_s`.
    """
    tmp = Path(tmp_dir).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = tmp / "server.log"
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
           "--serve-artifacts", "--artifacts-destination", str(tmp / "mlartifacts")]
    env = {**os.environ, **SERVER_ENV}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log_path, "wb") as log:
        # own process group, so stop() reaches the uvicorn worker the CLI spawns
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with status {proc.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    _STORES[uri] = tmp
                    return uri, proc
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            stop_mlflow_server(proc)
            raise RuntimeError(
                f"mlflow server at {uri} did not answer /health within {timeout_s:.0f}s:\n{_tail(log_path)}")
        time.sleep(0.25)


def stop_mlflow_server(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever of that group is left after `timeout_s`."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        # the group may outlive its leader (a uvicorn worker still shutting down)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def mlflow_server_fixture(tmp_path_factory) -> Iterator[str]:
    """Generator for a session fixture: yields the URI of a fresh server, stops it afterwards."""
    uri, proc = start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"))
    try:
        yield uri
    finally:
        stop_mlflow_server(proc)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no server log)"

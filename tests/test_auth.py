"""MLflow as production runs it, part 2: `mlflow server --app-name basic-auth` on loopback (its users in a SQLite
auth database of their own, an admin whose password is set here). defakenet authenticates with what mlflow reads
from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, passes them on to the Ray processes it starts, and a refused
login is one line naming the server and the variables to set, never the password. Training and tuning through
such a server (credentials reaching the Ray processes): tests/test_postgres.py, whose server runs basic auth.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid

import pytest
import requests
from mlflow_server import basic_auth_env, start_mlflow_server, stop_mlflow_server
from test_registry import _cli, _one_line_error, _register

from defakenet import tracking
from defakenet.runtime import QUIET_ENV, quiet_env

ADMIN = "admin"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """(uri, admin password) of a basic-auth server; SQLite for runs, proxied artifacts."""
    tmp = tmp_path_factory.mktemp("mlflow_auth")
    password = secrets.token_urlsafe(12)
    uri, proc = start_mlflow_server(tmp, app_name="basic-auth", env=basic_auth_env(tmp, password, ADMIN))
    yield uri, password
    stop_mlflow_server(proc)


@pytest.fixture
def login(auth_server, monkeypatch):
    """The admin's credentials in this process's environment (where mlflow's client reads them)."""
    uri, password = auth_server
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    return uri


def test_right_password_registers_promotes_and_lists(auth_server, login, capsys):
    uri, password = auth_server
    # the server does ask: an anonymous request to the API is refused
    assert requests.get(f"{uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1}).status_code == 401
    name = f"auth-test-{uuid.uuid4().hex[:8]}"
    assert _register(uri, name, 0.91, 0.88) == 1
    code, out, _ = _cli(capsys, "registry", "promote", "1", "--name", name, "--tracking-uri", uri)
    assert code == 0 and f"{name} v1 is now champion" in out
    code, out, _ = _cli(capsys, "registry", "list", "--name", name, "--tracking-uri", uri)
    assert code == 0 and out.strip().splitlines()[1].split()[:4] == ["1", "champion", "0.9100", "0.8800"]
    assert password not in out


def test_wrong_password_is_one_line_naming_server_and_variables(auth_server):
    uri, password = auth_server
    wrong = password + "-wrong"
    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": wrong}
    env.pop("MLFLOW_TRACKING_TOKEN", None)
    r = subprocess.run([sys.executable, "-m", "defakenet", "registry", "list", "--tracking-uri", uri],
                       check=False, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr == (f"defakenet: error: MLflow tracking server {uri} refused the credentials of user 'admin' "
                        "(401 Unauthorized): check MLFLOW_TRACKING_PASSWORD, or set MLFLOW_TRACKING_USERNAME and "
                        "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an account of that server\n")
    assert wrong not in r.stderr and password not in r.stderr


def test_missing_credentials_say_which_variables_to_set(auth_server, monkeypatch, capsys):
    uri, _ = auth_server
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    code, _, err = _cli(capsys, "registry", "list", "--tracking-uri", uri)
    assert code == 2 and _one_line_error(err).strip() == (
        f"defakenet: error: MLflow tracking server {uri} requires credentials (401 Unauthorized; none are set): "
        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an account of "
        "that server")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)  # half a login
    code, _, err = _cli(capsys, "registry", "list", "--tracking-uri", uri)
    assert code == 2 and "MLFLOW_TRACKING_USERNAME is set but MLFLOW_TRACKING_PASSWORD is not" in _one_line_error(err)


def test_credentials_go_to_the_ray_processes_defakenet_starts(monkeypatch):
    for k in tracking.CLIENT_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ray-train")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    login = {"MLFLOW_TRACKING_USERNAME": "ray-train", "MLFLOW_TRACKING_PASSWORD": "s3cret"}
    assert tracking.client_env() == login
    # a local Ray instance's and Serve's replicas' environment (quiet_env sets QUIET_ENV here: undone afterwards)
    for k, v in QUIET_ENV.items():
        monkeypatch.setenv(k, os.environ.get(k, v))
    env = quiet_env()
    assert {k: env[k] for k in login} == login and env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    # a Ray process without them (the Train controller, a Tune trial) takes the driver's; its own stay
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "own")
    tracking.use_client_env({**login, "PATH": "/nowhere"})
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "own" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3cret"
    assert os.environ["PATH"] != "/nowhere"

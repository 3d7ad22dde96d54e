"""A real `mlflow server` on loopback for tests: SQLite backend and proxied artifacts in a temp folder, or the
backend store of your choice (a throw-away PostgreSQL cluster from `start_postgres`) and basic auth.

Not a conftest: import `mlflow_server_fixture` and register it as a session fixture where it is needed
(pytest puts `tests/` on sys.path, as there is no `tests/__init__.py`):

    from mlflow_server import mlflow_server_fixture
    mlflow_server = pytest.fixture(scope="session")(mlflow_server_fixture)

The fixture yields the server's `http://127.0.0.1:PORT` URI and stops the server at the end of the session.
`start_mlflow_server(tmp, backend_store_uri=…, app_name="basic-auth", env=…)` starts others.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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


def start_mlflow_server(tmp_dir: str | Path, timeout_s: float = 90.0, *, backend_store_uri: str | None = None,
                        app_name: str | None = None, env: dict[str, str] | None = None, port: int | None = None,
                        ) -> tuple[str, subprocess.Popen]:
    """Start `mlflow server` (1 worker) on a free loopback port, or `port`; return (uri, process) once /health answers.

    Store: `backend_store_uri`, default `tmp_dir/mlflow.db` (SQLite); artifacts: `tmp_dir/mlartifacts`, served
    through the server (`--serve-artifacts`), so clients upload over HTTP as remote Ray workers would. `app_name`:
    `--app-name` (e.g. "basic-auth", configured through `env`: MLFLOW_AUTH_CONFIG_PATH, see `basic_auth_env`).
    `env`: more variables for the server. Output goes to `tmp_dir/server.log`, whose tail is in the error when the
    server exits early or does not answer within `timeout_s`. The same `tmp_dir` and `port` again restart a stopped
    server on the same store, at the same URI.
    """
    tmp = Path(tmp_dir).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = tmp / "server.log"
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend_store_uri or f"sqlite:///{tmp / 'mlflow.db'}",
           "--serve-artifacts", "--artifacts-destination", str(tmp / "mlartifacts")]
    if app_name:
        cmd += ["--app-name", app_name]
    env = {**os.environ, **SERVER_ENV, **(env or {})}
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        env.pop(k, None)
    with open(log_path, "ab") as log:
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


# ---- basic auth


def basic_auth_env(tmp_dir: str | Path, admin_password: str, admin_username: str = "admin") -> dict[str, str]:
    """The environment of a `--app-name basic-auth` server: its config file (written to `tmp_dir/basic_auth.ini`:
    users in their own SQLite database `tmp_dir/basic_auth.db`, READ for every user by default) and the admin
    user the server creates on its first start, plus the Flask secret key basic-auth requires."""
    tmp = Path(tmp_dir).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    ini = tmp / "basic_auth.ini"
    ini.write_text("[mlflow]\n"
                   "default_permission = READ\n"
                   f"database_uri = sqlite:///{tmp / 'basic_auth.db'}\n"
                   f"admin_username = {admin_username}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}


# ---- a throw-away PostgreSQL cluster

PG_PROGRAMS = ("initdb", "postgres")


def postgres_bindir() -> tuple[Path | None, str]:
    """The folder holding PostgreSQL's `initdb` and `postgres` ($PG_BINDIR, Debian's newest
    /usr/lib/postgresql/N/bin, or $PATH), or (None, what is missing)."""
    candidates = [Path(os.environ["PG_BINDIR"])] if os.environ.get("PG_BINDIR") else []
    debian = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    candidates += sorted(debian, key=lambda p: int(p.parent.name), reverse=True)
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    for d in candidates:
        if all(os.access(d / prog, os.X_OK) for prog in PG_PROGRAMS):
            return d, ""
    where = ", ".join(str(d) for d in candidates) or "$PG_BINDIR, /usr/lib/postgresql/*/bin or $PATH"
    return None, (f"PostgreSQL's {' and '.join(PG_PROGRAMS)} missing (looked in {where}; "
                  "apt-get install postgresql, or set PG_BINDIR)")


class Postgres:
    """A PostgreSQL server of its own (initdb'd into a temp folder) on 127.0.0.1 and a free port, with a database
    `mlflow` owned by the password-protected superuser `mlflow`; `uri` is what `mlflow server` takes.

    PostgreSQL refuses to run as root: when the tests do, the cluster's folder is given to the `postgres` user
    (Debian's package makes it) or else `nobody`, and initdb and postgres run as that user. The folder is then
    under the system temp dir (pytest's own temp folders are private to root)."""

    def __init__(self, bindir: Path, timeout_s: float = 60.0):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="defakenet-pg-"))
        self.password = secrets.token_hex(12)
        self.port = free_port()
        self.user_ids: dict = {}
        if os.geteuid() == 0:
            account = next((n for n in ("postgres", "nobody") if _account(n)), None)
            if account is None:
                raise RuntimeError("tests run as root and there is neither a postgres nor a nobody user to run "
                                   "PostgreSQL as (initdb refuses root)")
            pw = pwd.getpwnam(account)
            self.user_ids = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        (self.root / "pwfile").write_text(self.password + "\n")
        if self.user_ids:
            os.chown(self.root / "pwfile", self.user_ids["user"], self.user_ids["group"])
        self.log_path = self.root / "postgres.log"
        self._run([str(bindir / "initdb"), "-D", str(self.root / "data"), "-U", "mlflow",
                   f"--pwfile={self.root / 'pwfile'}", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C",
                   "--no-sync"])
        with open(self.log_path, "ab") as log:
            # a test cluster: durability off (no fsync), so the study's many small commits don't wait on the disk
            self.proc = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(self.root / "data"), "-k", str(self.root),
                 "-h", "127.0.0.1", "-p", str(self.port), "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=100"],
                cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=_pg_env(),
                **self.user_ids)
        try:
            self._create_database("mlflow", timeout_s)
        except BaseException:
            self.stop()
            raise
        self.uri = f"postgresql+psycopg2://mlflow:{self.password}@127.0.0.1:{self.port}/mlflow"

    def _run(self, cmd: list[str]) -> None:
        with open(self.log_path, "ab") as log:
            r = subprocess.run(cmd, check=False, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=_pg_env(),
                               **self.user_ids)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited with status {r.returncode}:\n{_tail(self.log_path)}")

    def _create_database(self, name: str, timeout_s: float) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with status {self.proc.returncode}:\n{_tail(self.log_path)}")
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="mlflow", password=self.password,
                                        dbname="postgres", connect_timeout=2)
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not accept connections on 127.0.0.1:{self.port} within "
                                       f"{timeout_s:.0f}s:\n{_tail(self.log_path)}") from None
                time.sleep(0.25)
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name}")
        finally:
            conn.close()

    def query(self, sql: str) -> list[tuple]:
        """Rows of `sql` run in the `mlflow` database: what the server stored, read past the server."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="mlflow", password=self.password,
                                dbname="mlflow")
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            conn.close()

    def stop(self, timeout_s: float = 20.0) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, close connections), SIGKILL if it hangs; the
        cluster's folder goes with it."""
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _account(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _pg_env() -> dict[str, str]:
    # no PG* variables of the caller's (PGDATA, PGPORT …) leak into the test cluster
    return {k: v for k, v in os.environ.items() if not re.match(r"PG[A-Z]", k)} | {"LC_ALL": "C"}


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no server log)"

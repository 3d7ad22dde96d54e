"""MLflow: experiment runs, the logged model, the model registry. The only module that imports mlflow.

- Where runs go: `resolve_tracking_uri` (explicit ← `$MLFLOW_TRACKING_URI` ← `sqlite:///{home}/mlflow.db`, artifacts
  under `{home}/mlartifacts`). Every other function takes `tracking_uri=None`, meaning "what mlflow is set to".
- Reaching a server: `check_reachable` (it answers; it accepts the credentials mlflow reads from
  `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD` or `MLFLOW_TRACKING_TOKEN`); `client_env` is what of
  those the Ray processes defakenet starts need, `use_client_env` sets them there. Any backend store the server
  runs on (SQLite, PostgreSQL) looks the same to defakenet. A server that goes away: `quick_http` (mlflow's
  requests give up in seconds, not minutes), `wait_for_server` (a bounded wait), `log_missing_metrics` (log what a
  run lacks, each metric and step once).
- A run: `Tracker` (rank 0 only) starts or resumes the run named `run_name`, logs the config as `section.key`
  params that `--set` accepts back, metrics, system facts as tags, artifacts and the model.
- The model: a defakenet model directory (safetensors + JSON, see `artifact.py`) logged as an MLflow pyfunc
  "from code" — no pickle anywhere. `resolve_model` turns `models:/NAME/VERSION`, `models:/NAME@ALIAS`,
  `runs:/RUN_ID/model` or a local folder back into that directory, which `artifact.load_model` reads.
- The registry: `set_alias`, `delete_alias`, `get_version_by_alias`, `list_versions`, `set_version_tags`,
  `set_version_description`, `get_model_tags`, `set_model_tags` (the promotion rules are in `registry.py`).

mlflow is imported on first use, after telemetry is switched off (mlflow reads the switch when it is imported);
nothing happens when this module is imported.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from defakenet.config import Config
from defakenet.errors import TrackingServerDown, UserError, first_line

DEFAULT_HOME = ".defakenet"
DB_FILE, ARTIFACTS_DIR = "mlflow.db", "mlartifacts"
# a longer param value is cut (mlflow rejects it); the full config is also logged as config.yaml
MAX_PARAM_LENGTH = 6000
# "known" unreachable quickly: the CLI should say so in seconds, not after mlflow's 7 retries with backoff
REACHABILITY_TIMEOUT_S = 10.0
_TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
# the defakenet model directory inside a logged MLflow model: artifacts/defakenet_model/
MODEL_ARTIFACT = "defakenet_model"
_FORMATS_HINT = "a model directory, models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/model"


def telemetry_off() -> dict[str, str]:
    """Switch MLflow telemetry off in this process (unless the user set the variables) and return the env vars
    to pass to child processes (servers, Ray runtime_env)."""
    for k, v in _TELEMETRY_OFF.items():
        os.environ.setdefault(k, v)
    return dict(_TELEMETRY_OFF)


def _mlflow():
    telemetry_off()
    import mlflow

    # mlflow decides at import time; drop a client made by an import that came before the switch
    from mlflow.telemetry import get_telemetry_client, set_telemetry_client
    from mlflow.telemetry.utils import is_telemetry_disabled

    if get_telemetry_client() is not None and is_telemetry_disabled():
        set_telemetry_client()
    return mlflow


def client(tracking_uri: str | None = None):
    """An `mlflow.MlflowClient` for `tracking_uri` (None: mlflow's current URI), after a reachability check."""
    mlflow = _mlflow()
    uri = tracking_uri or mlflow.get_tracking_uri()
    check_reachable(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


_client = client


# ---- where runs go


def resolve_tracking_uri(cfg_tracking_uri: str, home: str | Path) -> str:
    """The tracking URI: `cfg_tracking_uri` if set, else `$MLFLOW_TRACKING_URI`, else SQLite under `home`.

    Only the SQLite default touches the disk: it creates `home` (runs' artifacts then go under
    `{home}/mlartifacts`, see `default_artifact_location`).
    """
    if cfg_tracking_uri:
        return cfg_tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(home or DEFAULT_HOME).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / DB_FILE}"


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifact location for a new experiment in a local SQLite store: `{db folder}/mlartifacts/{experiment}`.

    A SQLite store would otherwise put artifacts in `./mlruns` of whatever directory the process runs in.
    None for servers (they decide) and other stores.
    """
    if not tracking_uri.startswith("sqlite:///") or ":memory:" in tracking_uri:
        return None
    db = Path(tracking_uri[len("sqlite:///"):])
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("_") or "experiment"
    return (db.parent / ARTIFACTS_DIR / slug).resolve().as_uri()


def check_reachable(tracking_uri: str) -> None:
    """For an http(s) tracking URI, fail fast with a UserError naming it when nothing answers there, or when the
    server refuses this process's credentials (`check_credentials`).

    Any other HTTP answer counts as reachable (a 404: paths are mlflow's business), and so does a TLS error (the
    server is there; mlflow's own TLS settings may differ from the defaults used here).
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    failed = _probe(tracking_uri, REACHABILITY_TIMEOUT_S)
    if failed:
        raise UserError(
            f"MLflow tracking server {_redact(tracking_uri)} is unreachable ({failed}). "
            "Start one with mlflow/start-local.sh, or point --tracking-uri / MLFLOW_TRACKING_URI elsewhere.")
    check_credentials(tracking_uri)


def _probe(tracking_uri: str, timeout_s: float) -> str | None:
    """None when the http(s) server at `tracking_uri` gives any HTTP answer to /health (a TLS error counts as one:
    the server is there; mlflow's own TLS settings may differ from the defaults used here), else the name of the
    error (ConnectionError, Timeout)."""
    import requests

    try:
        requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s)
    except requests.exceptions.SSLError:
        return None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
        return type(e).__name__
    return None


# mlflow's HTTP requests under `quick_http`: one try of at most 10 s, instead of 7 retries with backoff (minutes) of
# 120 s each; the variables are mlflow's (mlflow.environment_variables), read at every request
QUICK_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@contextlib.contextmanager
def quick_http():
    """Within the block, mlflow's HTTP requests in this process give up within seconds (QUICK_HTTP_ENV): for
    calls that must not hold anything up (the epoch logger on the Train controller, ending a run whose server is
    gone). The previous values come back afterwards."""
    saved = {k: os.environ.get(k) for k in QUICK_HTTP_ENV}
    os.environ.update(QUICK_HTTP_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def server_answers(tracking_uri: str, timeout_s: float = 5.0) -> bool:
    """Whether the http(s) server at `tracking_uri` gives any HTTP answer to /health (a TLS error counts as one,
    as in `check_reachable`); True for other tracking URIs (a SQLite file is always there)."""
    return not tracking_uri.startswith(("http://", "https://")) or _probe(tracking_uri, timeout_s) is None


def wait_for_server(tracking_uri: str, timeout_s: float, *, what: str, log=print, poll_s: float = 2.0) -> bool:
    """True as soon as the tracking server answers (`server_answers`), False if it has not within `timeout_s`.

    When the first probe fails, one line says so: "mlflow: SERVER not answering; waiting up to 120 s {what}";
    another when it answers again."""
    if server_answers(tracking_uri):
        return True
    server = _redact(tracking_uri)
    log(f"mlflow: {server} not answering; waiting up to {timeout_s:g} s {what}")
    start = time.monotonic()
    deadline = start + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(poll_s, left))
        if server_answers(tracking_uri, timeout_s=max(0.5, min(5.0, deadline - time.monotonic()))):
            log(f"mlflow: {server} answers again after {time.monotonic() - start:.0f} s")
            return True
    return False


def failure_reason(e: BaseException) -> str:
    """A few words for why an MLflow call failed: "connection refused", "timed out", else the error's first line
    (mlflow's own messages run on: the URL, the retry policy, the urllib3 chain)."""
    text = str(e)
    for needle, words in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                          ("Name or service not known", "unknown host"), ("RemoteDisconnected", "connection closed"),
                          ("Connection broken", "connection broken"), ("Connection reset", "connection reset")):
        if needle in text:
            return words
    line = first_line(e, type(e).__name__)
    return line if len(line) <= 160 else line[:157] + "..."


# the variables mlflow's client reads to authenticate to a tracking server and to trust its TLS certificate: what a
# process defakenet starts (a Tune trial, the Train controller, a Serve replica) needs to reach the driver's server
CLIENT_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
              "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_CLIENT_CERT_PATH", "MLFLOW_TRACKING_INSECURE_TLS")
_CREDENTIALS_HINT = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
                     "to an account of that server")
# (tracking URI, user, hash of the secret) that a server accepted: checked once per process
_ACCEPTED: set[tuple[str, str, int]] = set()


def client_env(environ=os.environ) -> dict[str, str]:
    """The CLIENT_ENV variables set in `environ`, for the environment of the processes defakenet starts."""
    return {k: environ[k] for k in CLIENT_ENV if environ.get(k)}


def use_client_env(env: dict[str, str]) -> None:
    """In a process defakenet started on Ray (the Train controller's epoch logger, a Tune trial): the driver's
    `client_env()`, for those of its variables this process lacks (on a cluster the driver connected to, or a Ray
    instance started before they were set, nothing else brings them). Call before making a client."""
    for k, v in env.items():
        if k in CLIENT_ENV:
            os.environ.setdefault(k, v)


def check_credentials(tracking_uri: str) -> None:
    """UserError when the http(s) server at `tracking_uri` answers 401 or 403 to the credentials mlflow's client
    would send (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD as basic auth, or MLFLOW_TRACKING_TOKEN as a
    bearer token), or to none. The message names the server, the user and the variables to set; never the secret.

    One read request (search one experiment), which any user of a basic-auth server may make; an accepted login is
    remembered for the rest of the process. A server without auth answers 200.
    """
    import requests

    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME", ""), os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN", "")
    key = (tracking_uri, user, hash((password, token)))
    if key in _ACCEPTED:
        return
    kwargs: dict[str, Any] = {}
    if user and password:  # mlflow sends basic auth only when both are set
        kwargs["auth"] = (user, password)
    elif token:
        kwargs["headers"] = {"Authorization": f"Bearer {token}"}
    try:
        r = requests.get(f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
                         params={"max_results": 1}, timeout=REACHABILITY_TIMEOUT_S, **kwargs)
    except requests.exceptions.RequestException:
        return  # /health answered; let mlflow's own retries and TLS settings deal with the rest
    if r.status_code not in (401, 403):
        _ACCEPTED.add(key)
        return
    status = f"{r.status_code} {'Unauthorized' if r.status_code == 401 else 'Forbidden'}"
    server = _redact(tracking_uri)
    if "auth" in kwargs:
        raise UserError(f"MLflow tracking server {server} refused the credentials of user {user!r} ({status}): "
                        f"check MLFLOW_TRACKING_PASSWORD, or {_CREDENTIALS_HINT}")
    if "headers" in kwargs:
        raise UserError(f"MLflow tracking server {server} refused the token in MLFLOW_TRACKING_TOKEN ({status}): "
                        f"{_CREDENTIALS_HINT}")
    half = ("MLFLOW_TRACKING_USERNAME is set but MLFLOW_TRACKING_PASSWORD is not" if user else
            "MLFLOW_TRACKING_PASSWORD is set but MLFLOW_TRACKING_USERNAME is not" if password else
            "none are set")
    raise UserError(f"MLflow tracking server {server} requires credentials ({status}; {half}): {_CREDENTIALS_HINT}")


# ---- runs


class Tracker:
    """One MLflow run of a training / tuning / evaluation driver. Use it on rank 0 only.

        tracker = Tracker(resolve_tracking_uri(cfg.tracking.tracking_uri, home))
        with tracker.start(cfg.tracking.experiment, cfg.tracking.run_name, tags={...}):
            tracker.log_config(cfg)
            tracker.log_metrics({"val/auc": 0.97}, step=epoch)
            tracker.log_model(model_dir, registered_model_name=cfg.tracking.register or None)

    Leaving the `with` block ends the run FINISHED, FAILED on an exception, KILLED on Ctrl-C.
    """

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self.run_id: str | None = None
        self.resumed = False

    def start(self, experiment: str, run_name: str = "", tags: dict[str, Any] | None = None) -> Tracker:
        """Start a run in `experiment` (created if missing), or resume the newest run called `run_name` there
        unless it is FINISHED, so that rerunning the same command continues where it stopped."""
        mlflow = _mlflow()
        client = _client(self.tracking_uri)
        mlflow.set_tracking_uri(self.tracking_uri)
        if mlflow.active_run() is not None:
            raise RuntimeError(f"an MLflow run ({mlflow.active_run().info.run_id}) is already active in this process")
        exp_id = _experiment_id(client, experiment, self.tracking_uri)
        previous = _resumable_run(client, exp_id, run_name) if run_name else None
        str_tags = {k: str(v) for k, v in (tags or {}).items()}
        if previous is not None:
            run = mlflow.start_run(run_id=previous)
            if str_tags:
                mlflow.set_tags(str_tags)
        else:
            run = mlflow.start_run(experiment_id=exp_id, run_name=run_name or None, tags=str_tags or None)
        self.run_id, self.resumed = run.info.run_id, previous is not None
        return self

    def log_config(self, cfg: Config) -> None:
        """Log `cfg.flat()` as params (`section.key` → a string `--set` parses back to the same value) and the
        full config as `config.yaml`. A resumed run must have the same config: mlflow params are write-once."""
        mlflow = _mlflow()
        client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        params = config_params(cfg)
        logged = client.get_run(self._id()).data.params
        changed = [f"{k}: {logged[k]!r} -> {v!r}" for k, v in params.items() if k in logged and logged[k] != v]
        if changed:
            raise UserError(
                f"run {self._id()} was started with a different config ({'; '.join(changed[:5])}); "
                "choose another tracking.run_name to start a new run"
            )
        from mlflow.entities import Param

        todo = [Param(k, v) for k, v in params.items() if k not in logged]
        for i in range(0, len(todo), 100):  # mlflow's log_batch takes at most 100 params
            client.log_batch(self._id(), params=todo[i : i + 100])
        mlflow.log_dict(cfg.to_dict(), "config.yaml")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log the numeric entries of `metrics` (numpy / torch scalars too; others are skipped) at `step`."""
        self._ensure_active()
        _mlflow().log_metrics({k: float(v) for k, v in metrics.items() if _is_number(v)}, step=step)

    def log_system_info(self, info: dict[str, Any]) -> None:
        """Log facts about where the run ran (Ray/torch versions, workers, GPUs, hostname) as `system.*` tags.

        Tags, not params: a resumed run may run on another host or with another Ray version."""
        self._ensure_active()
        _mlflow().set_tags({f"system.{k}": _param_str(v)[:MAX_PARAM_LENGTH] for k, v in info.items()})

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Tags on this run (values stringified)."""
        self._ensure_active()
        _mlflow().set_tags({k: _param_str(v)[:MAX_PARAM_LENGTH] for k, v in tags.items()})

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        """Upload the files under `local_dir` to the run's artifacts (under `artifact_path`)."""
        self._ensure_active()
        _mlflow().log_artifacts(str(local_dir), artifact_path)

    def log_model(self, model_dir: str | Path, *, name: str = "model", registered_model_name: str | None = None,
                  metadata: dict | None = None) -> dict:
        """`log_model` into this run."""
        self._ensure_active()
        return log_model(model_dir, name=name, registered_model_name=registered_model_name, metadata=metadata)

    def end(self, status: str = "FINISHED") -> None:
        """End the run: FINISHED, FAILED or KILLED (a FAILED or KILLED run is resumed by the next start)."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"Invalid run status {status!r}. Only FINISHED, FAILED and KILLED are supported.")
        mlflow = _mlflow()
        if mlflow.active_run() is not None and mlflow.active_run().info.run_id == self.run_id:
            mlflow.end_run(status)

    def __enter__(self) -> Tracker:
        self._id()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end("FINISHED")
            return
        try:
            with quick_http():  # the server may be what failed: seconds, not mlflow's minutes of retries
                self.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
        except Exception as e:  # keep the original error in front
            if not issubclass(exc_type, TrackingServerDown):  # its message says the run was not finished
                print(f"warning: could not mark MLflow run {self.run_id} as ended: {failure_reason(e)}",
                      file=sys.stderr)

    def _id(self) -> str:
        if self.run_id is None:
            raise RuntimeError("Tracker.start() has not been called")
        return self.run_id

    def _ensure_active(self) -> None:
        active = _mlflow().active_run()
        if active is None or active.info.run_id != self._id():
            raise RuntimeError(f"run {self.run_id} is not the active MLflow run (ended already?)")


def record_run(tracking_uri: str, experiment: str, run_name: str, *, tags: dict[str, Any], params: dict[str, Any],
               metrics: dict[str, float], artifacts: str | Path | None = None, artifact_path: str | None = None) -> str:
    """Log a whole, FINISHED run in one call through the client (an evaluation that is done when it is logged);
    the process's active run, e.g. the training run whose version a suite gates, is left alone. Returns its id."""
    from mlflow.entities import Param

    c = _client(tracking_uri)
    exp_id = _experiment_id(c, experiment, tracking_uri)
    run = c.create_run(exp_id, run_name=run_name, tags={k: _param_str(v)[:MAX_PARAM_LENGTH] for k, v in tags.items()})
    run_id = run.info.run_id
    try:
        todo = [Param(k, _param_str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for i in range(0, len(todo), 100):
            c.log_batch(run_id, params=todo[i : i + 100])
        log_metrics_to(c, run_id, metrics)
        if artifacts is not None:
            c.log_artifacts(run_id, str(artifacts), artifact_path)
    except BaseException:
        c.set_terminated(run_id, "FAILED")
        raise
    c.set_terminated(run_id, "FINISHED")
    return run_id


def metrics_client(tracking_uri: str):
    """A client for logging into an existing run from another process (the rank-0 Ray Train worker).

    Pair it with `log_metrics_to`: it needs no active run, so the driver's `Tracker` keeps owning the run."""
    return client(tracking_uri)


def log_metrics_to(client, run_id: str, metrics: dict[str, Any], step: int | None = None) -> None:
    """Log the numeric entries of `metrics` (numpy / torch scalars too; others are skipped) into `run_id`."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if _is_number(v)]
    for i in range(0, len(batch), 1000):  # mlflow's log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=batch[i : i + 1000])


def log_missing_metrics(client, run_id: str, rows: list[dict[str, Any]], step_key: str = "epoch") -> list[int]:
    """Log into `run_id` the numeric entries of `rows` (one dict of metrics per step, its step under `step_key`)
    that the run lacks at that step, so that however often this runs, and whatever an earlier try got through
    before it failed, each metric is logged once per step. One history request per metric name; returns the steps
    that got any metric."""
    from mlflow.entities import Metric

    keys = sorted({k for r in rows for k, v in r.items() if k != step_key and _is_number(v)})
    have = {k: {m.step for m in client.get_metric_history(run_id, k)} for k in keys}
    ts = int(time.time() * 1000)
    batch, steps = [], []
    for r in rows:
        step = int(r[step_key])
        new = [Metric(k, float(v), ts, step) for k, v in r.items() if k in have and step not in have[k]]
        if new:
            batch += new
            steps.append(step)
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i : i + 1000])
    return steps


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return getattr(v, "ndim", 0) == 0 and not isinstance(v, str)


def config_params(cfg: Config) -> dict[str, str]:
    """`cfg.flat()` as strings that `Config.from_sources(None, [f"{k}={v}"])` parses back to the same values."""
    out = {}
    for k, v in cfg.flat().items():
        s = _param_str(v)
        out[k] = s if len(s) <= MAX_PARAM_LENGTH else s[: MAX_PARAM_LENGTH - 3] + "..."
    return out


def _param_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (int, type(None))):
        return json.dumps(v)
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    # strings as they are: `--set` keeps a string key's text verbatim (config.SetText)
    return str(v)


def _experiment_id(client, name: str, tracking_uri: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri, name))
        except MlflowException as e:
            exp = client.get_experiment_by_name(name)  # created meanwhile by a concurrent trial
            if exp is None:
                raise UserError(f"cannot create MLflow experiment {name!r} at {_redact(tracking_uri)}: "
                                f"{first_line(e.message, 'error')}") from None
    if exp.lifecycle_stage == "deleted":
        raise UserError(f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore "
                        f"--experiment-id {exp.experiment_id}) or choose another tracking.experiment")
    return exp.experiment_id


def run_finished(tracking_uri: str, experiment: str, run_name: str) -> bool:
    """Whether the newest run called `run_name` in `experiment` has FINISHED (False if there is none)."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return False
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = {_quote(run_name)}",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return bool(runs) and runs[0].info.status == "FINISHED"


def close_run(tracking_uri: str, experiment: str, run_name: str, status: str, tags: dict[str, Any]) -> str | None:
    """End the newest run called `run_name` with `status` and `tags` (for runs whose process Ray Tune stopped
    before it could end them); returns its run id, None if there is no such run."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = {_quote(run_name)}",
                              order_by=["attributes.start_time DESC"], max_results=1) if exp else []
    if not runs:
        return None
    run_id = runs[0].info.run_id
    for k, v in tags.items():
        client.set_tag(run_id, k, _param_str(v))
    client.set_terminated(run_id, status)
    return run_id


def _resumable_run(client, exp_id: str, run_name: str) -> str | None:
    runs = client.search_runs([exp_id], filter_string=f"attributes.run_name = {_quote(run_name)}",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if runs and runs[0].info.status != "FINISHED":
        return runs[0].info.run_id
    return None


# ---- the model


# the pyfunc's code: a file of the package, logged by path (models from code)
PYFUNC_CODE = Path(__file__).with_name("pyfunc.py")


def log_model(model_dir: str | Path, *, name: str = "model", registered_model_name: str | None = None,
              metadata: dict | None = None) -> dict:
    """Log a defakenet model directory into the active run as an MLflow pyfunc model; optionally register it.

    Format: `mlflow.pyfunc` "models from code" (defakenet/pyfunc.py, executed at load, imports defakenet —
    nothing is pickled) with the directory as the artifact `model_dir` (its ONNX graphs too, model.onnx exported
    here when missing and the config's export.onnx is on); signature float32 (-1, 3, S, S) → float32 (-1,)
    p(fake); a one-zero-image input example; `metadata` = the directory's meta.json updated with `metadata`, and
    onnx.json under "onnx". Returns {run_id, model_uri, model_id, name, version, registered_model_uri}; version and
    registered_model_uri are None without `registered_model_name`.
    """
    mlflow = _mlflow()
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from defakenet import __version__
    from defakenet.artifact import CONFIG_FILE, META_FILE, WEIGHTS_FILE

    model_dir = find_model_dir(Path(model_dir), str(model_dir))
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_model needs an active MLflow run (Tracker.start)")
    meta = json.loads((model_dir / META_FILE).read_text())
    meta = json.loads(json.dumps({**meta, **(metadata or {})}, default=float))
    pre = meta.get("preprocessing", {})
    size = int(pre.get("input_size") or pre.get("image_size") or Config.from_dict(
        json.loads((model_dir / CONFIG_FILE).read_text())).data.input_size)
    # unnamed tensors: pyfunc hands predict a plain ndarray and returns one
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, size, size))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,))]))
    requirements = [f"defakenet=={__version__}", f"mlflow=={mlflow.__version__}",
                    f"torch=={torch.__version__.split('+')[0]}"]
    from defakenet.export import EXPORT_FILE, RUNTIME_FILES, export_model

    with tempfile.TemporaryDirectory(prefix="defakenet-pyfunc-") as tmp:
        # exactly the model files (a checkpoint folder also holds optimizer state), under a fixed name: the weights,
        # config and meta, and the ONNX graphs when the directory has them
        staged = Path(tmp) / MODEL_ARTIFACT
        staged.mkdir()
        extras = [f for f in (*RUNTIME_FILES.values(), EXPORT_FILE) if (model_dir / f).is_file()]
        for f in (WEIGHTS_FILE, CONFIG_FILE, *extras):
            try:
                if f == EXPORT_FILE:  # rewritten in place by an export below: never a link to the source's
                    raise OSError
                os.link(model_dir / f, staged / f)
            except OSError:
                shutil.copy2(model_dir / f, staged / f)
        (staged / META_FILE).write_text(json.dumps(meta, indent=2))  # with `metadata` merged in
        if RUNTIME_FILES["onnx"] not in extras and Config.from_dict(
                json.loads((model_dir / CONFIG_FILE).read_text())).export.onnx:
            export_model(staged, log=lambda _: None)  # a version carries its ONNX graph (export.onnx)
        if (staged / EXPORT_FILE).is_file():  # the MLflow model's metadata says which graphs it carries
            meta["onnx"] = json.loads((staged / EXPORT_FILE).read_text())
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(PYFUNC_CODE),
            artifacts={"model_dir": str(staged)},
            signature=signature,
            input_example=np.zeros((1, 3, size, size), dtype=np.float32),
            pip_requirements=requirements,  # explicit: inferring them would load the model in a subprocess
            metadata=meta,
            registered_model_name=registered_model_name,
        )
    version = getattr(info, "registered_model_version", None)
    version = int(version) if version is not None and registered_model_name else None
    return {
        "run_id": run.info.run_id,
        "model_uri": info.model_uri,
        "model_id": getattr(info, "model_id", None),
        "name": registered_model_name,
        "version": version,
        "registered_model_uri": f"models:/{registered_model_name}/{version}" if version is not None else None,
    }


def resolve_model(uri: str, dst: str | Path | None = None, *, tracking_uri: str | None = None) -> Path:
    """The local defakenet model directory behind `uri`, downloading it into `dst` if needed.

    Without `dst`, remote artifacts go to a new temp folder and a local store's files are returned in place
    (treat the result as read-only then); serving replicas should pass a `dst` they own.

    `uri`: a local folder (a defakenet model directory, or an MLflow model folder holding one),
    `models:/NAME/VERSION`, `models:/NAME@ALIAS`, `models:/NAME/latest`, `runs:/RUN_ID/model`, or any artifact URI
    mlflow downloads (s3://…, mlflow-artifacts:/…). The result is what `artifact.load_model` reads.
    UserError for an unknown model, version, alias or run, an unreachable tracking server, or a folder that is
    not a defakenet model.
    """
    local = Path(uri).expanduser()
    if not re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", uri):  # no scheme (models:/, runs:/, s3://, …): a local folder
        if not local.exists():
            raise UserError(f"model {uri} does not exist; expected {_FORMATS_HINT}")
        return find_model_dir(local, uri)
    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException

    turi = tracking_uri or mlflow.get_tracking_uri()
    source = uri
    if uri.startswith("models:/") and not uri.startswith("models:/m-"):
        client = _client(turi)
        name, version = _registered_version(client, uri)
        source = client.get_model_version_download_uri(name, str(version))
    elif uri.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        check_reachable(turi)
    try:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=None if dst is None else str(dst), tracking_uri=turi))
    except MlflowException as e:
        raise UserError(f"model {uri}: {first_line(e.message, 'error')} (tracking URI {_redact(turi)})") from None
    except OSError as e:  # the artifact store itself: a missing local path, an unreachable bucket
        raise UserError(f"model {uri}: cannot download {source}: {e}") from None
    return find_model_dir(local, uri)


def find_model_dir(root: Path, what: str) -> Path:
    """`root` if it is a defakenet model directory, else the one inside an MLflow model folder at `root`."""
    from defakenet.artifact import CONFIG_FILE, META_FILE, WEIGHTS_FILE

    def is_model(d: Path) -> bool:
        return all((d / f).is_file() for f in (WEIGHTS_FILE, CONFIG_FILE, META_FILE))

    if is_model(root):
        return root
    if (root / "MLmodel").is_file():
        flavor = (yaml.safe_load((root / "MLmodel").read_text()) or {}).get("flavors", {}).get("python_function", {})
        rel = flavor.get("artifacts", {}).get("model_dir", {}).get("path")
        if rel and is_model(root / rel):
            return root / rel
    found = sorted({p.parent for p in root.rglob(META_FILE) if is_model(p.parent)}) if root.is_dir() else []
    if len(found) == 1:
        return found[0]
    raise UserError(f"model {what} is not a defakenet model: {root} holds "
                    f"{'several model directories' if found else f'no {WEIGHTS_FILE} + {CONFIG_FILE} + {META_FILE}'}"
                    f"; expected {_FORMATS_HINT}")


# ---- the registry


def set_alias(name: str, alias: str, version: int, *, tracking_uri: str | None = None) -> None:
    """Point `alias` (e.g. "champion") of registered model `name` at `version`, moving it if it pointed elsewhere."""
    client = _client(tracking_uri)
    _check_version(client, name, version)
    client.set_registered_model_alias(name, alias, str(version))


def get_version_by_alias(name: str, alias: str, *, tracking_uri: str | None = None) -> int | None:
    """The version `alias` points at, None if the alias is not set; UserError if there is no model `name`."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    model = _registered_model(client, name)
    if alias not in (model.aliases or {}):
        return None
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def list_versions(name: str, *, tracking_uri: str | None = None) -> list[dict]:
    """Versions of `name`, oldest first: {version, aliases, run_id, status, created, source, description, tags,
    metrics}; `created` is mlflow's creation timestamp in milliseconds.

    `metrics` holds the test metrics of the version's run (keys starting with "test"), or the version's tags
    starting with "test" when the run is gone.
    """
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    # search results leave ModelVersion.aliases empty; the registered model has the alias → version map
    aliases: dict[int, list[str]] = {}
    for alias, v in (_registered_model(client, name).aliases or {}).items():
        aliases.setdefault(int(v), []).append(alias)
    out = []
    for mv in client.search_model_versions(f"name = {_quote(name)}"):
        metrics: dict[str, float] = {}
        if mv.run_id:
            try:
                metrics = {k: v for k, v in client.get_run(mv.run_id).data.metrics.items() if k.startswith("test")}
            except MlflowException:
                pass
        if not metrics:
            metrics = {k: _float(v) for k, v in (mv.tags or {}).items() if k.startswith("test")}
        version = int(mv.version)
        out.append({"version": version, "aliases": sorted(aliases.get(version, [])), "run_id": mv.run_id,
                    "status": mv.status, "created": mv.creation_timestamp, "source": mv.source,
                    "description": mv.description or "", "tags": dict(mv.tags or {}), "metrics": metrics})
    return sorted(out, key=lambda d: d["version"])


def set_version_tags(name: str, version: int, tags: dict[str, Any], *, tracking_uri: str | None = None) -> None:
    """Set tags (values stringified) on one version of `name`."""
    client = _client(tracking_uri)
    _check_version(client, name, version)
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, _param_str(v) if not isinstance(v, str) else v)


def set_version_description(name: str, version: int, description: str, *, tracking_uri: str | None = None) -> None:
    """Replace the description of one version of `name`."""
    client = _client(tracking_uri)
    _check_version(client, name, version)
    client.update_model_version(name, str(version), description=description)


def delete_alias(name: str, alias: str, *, tracking_uri: str | None = None) -> None:
    """Remove `alias` from registered model `name`; nothing happens if it is not set."""
    client = _client(tracking_uri)
    if alias in (_registered_model(client, name).aliases or {}):
        client.delete_registered_model_alias(name, alias)


def get_model_tags(name: str, *, tracking_uri: str | None = None) -> dict[str, str]:
    """The tags of registered model `name` (not of its versions); UserError if there is no model `name`."""
    return dict(_registered_model(_client(tracking_uri), name).tags or {})


def set_model_tags(name: str, tags: dict[str, Any], *, tracking_uri: str | None = None) -> None:
    """Set tags (values stringified) on registered model `name` itself."""
    client = _client(tracking_uri)
    _registered_model(client, name)
    for k, v in tags.items():
        client.set_registered_model_tag(name, k, _param_str(v) if not isinstance(v, str) else v)


def registered_version(uri: str, *, tracking_uri: str | None = None) -> tuple[str, int]:
    """models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS → (NAME, version the URI means now)."""
    return _registered_version(_client(tracking_uri), uri)


def _registered_version(client, uri: str) -> tuple[str, int]:
    """models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS → (NAME, version), with clear errors."""
    rest = uri[len("models:/"):].rstrip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        model = _registered_model(client, name)
        aliases = dict(model.aliases or {})
        if alias not in aliases:
            known = ", ".join(f"{a}→v{v}" for a, v in sorted(aliases.items())) or "none"
            raise UserError(f"model {uri}: {name} has no alias {alias!r} (aliases: {known})")
        return name, int(aliases[alias])
    name, _, version = rest.rpartition("/")
    if not name or not (version.isdigit() or version == "latest"):
        raise UserError(f"model URI {uri} is malformed; expected {_FORMATS_HINT}")
    _registered_model(client, name)
    versions = sorted(int(mv.version) for mv in client.search_model_versions(f"name = {_quote(name)}"))
    if version == "latest":
        if not versions:
            raise UserError(f"model {uri}: {name} has no versions")
        return name, versions[-1]
    if int(version) not in versions:
        raise UserError(f"model {uri}: {name} has no version {version} (versions: "
                        f"{', '.join(map(str, versions)) or 'none'})")
    return name, int(version)


def _registered_model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise UserError(f"registered model {name!r}: {first_line(e.message, 'error')}") from None
    try:
        known = ", ".join(m.name for m in client.search_registered_models(max_results=20)) or "none"
    except MlflowException:
        known = "?"
    raise UserError(f"no registered model {name!r} at {_redact(client.tracking_uri)} (registered models: {known})")


def _check_version(client, name: str, version: int) -> None:
    versions = [int(mv.version) for mv in client.search_model_versions(f"name = {_quote(name)}")]
    if not versions:
        _registered_model(client, name)
    if int(version) not in versions:
        raise UserError(f"registered model {name!r} has no version {version} "
                        f"(versions: {', '.join(map(str, sorted(versions))) or 'none'})")


# ---- small helpers


def _quote(s: str) -> str:
    """A string literal for mlflow's filter syntax."""
    if "'" not in s:
        return f"'{s}'"
    if '"' not in s:
        return f'"{s}"'
    raise UserError(f"name {s!r} contains both quote characters; MLflow search cannot express it")


def _redact(uri: str) -> str:
    """The URI without a password (postgresql://user:secret@host → postgresql://user:***@host)."""
    return re.sub(r"(://[^/:@]+):[^/@]+@", r"\1:***@", uri)


def _float(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return math.nan

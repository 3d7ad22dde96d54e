"""defakenet.tracking against a real `mlflow server` on loopback: runs, params, the logged model, the registry."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from mlflow_server import free_port, store_dir

from defakenet import tracking
from defakenet.artifact import load_model, save_model
from defakenet.config import Config
from defakenet.errors import UserError
from defakenet.model import DeFakeNet

MODEL = "tracking-test-model"  # not test_train.py's name: both share the session server
THRESHOLD = 0.37

# `mlflow_server` (a real server on loopback, one per session) comes from conftest.py


@pytest.fixture(scope="module", autouse=True)
def _quiet_mlflow():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        yield
    import mlflow

    mlflow.set_tracking_uri(None)  # Tracker.start set it (and $MLFLOW_TRACKING_URI) for this process


@pytest.fixture(scope="module")
def cfg() -> Config:
    # values that a naive str() would not round-trip: a YAML bool word, a float YAML reads as a string, a tuple
    return Config.from_dict({"data": {"image_size": 32, "root": "yes", "split": (0.8, 0.1, 0.1)},
                             "optim": {"lr": 3e-05}, "model": {"freeze_depth": 2}, "train": {"amp": "off"}})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, cfg):
    torch.manual_seed(0)
    model = DeFakeNet(dropout=cfg.model.dropout, freeze_depth=cfg.model.freeze_depth)
    meta = {"threshold": THRESHOLD, "val": {"roc_auc": 0.9}, "test": {"roc_auc": 0.8, "accuracy": 0.75}}
    return save_model(tmp_path_factory.mktemp("model") / "best", model, cfg, meta)


@pytest.fixture(scope="module")
def logged(mlflow_server, model_dir, cfg, tmp_path_factory):
    """One finished run with config, metrics, system tags, a report folder and the registered model."""
    report = tmp_path_factory.mktemp("report")
    (report / "summary.json").write_text('{"ok": true}')
    tracker = tracking.Tracker(mlflow_server)
    with tracker.start("tracking-test", "main", tags={"purpose": "test"}):
        tracker.log_config(cfg)
        for step in range(3):
            tracker.log_metrics({"val/roc_auc": 0.5 + 0.1 * step, "train/loss": np.float32(1.0 / (step + 1))}, step)
        tracker.log_metrics({"test/roc_auc": 0.8, "test/confusion": [[1, 0], [0, 1]]})
        # what the rank-0 Ray Train worker does: log into the driver's run by id, from its own client
        tracking.log_metrics_to(tracking.metrics_client(mlflow_server), tracker.run_id,
                                {"train/epoch_time": np.float64(1.5), "epoch": 1, "note": "skipped"}, step=1)
        tracker.log_system_info({"hostname": "node-0", "workers": 2, "gpus": 0, "torch": torch.__version__})
        tracker.log_artifacts(report, "report")
        info = tracker.log_model(model_dir, registered_model_name=MODEL)
    return info


def _client(uri):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def test_run_holds_config_metrics_tags_and_artifacts(mlflow_server, logged, cfg):
    run = _client(mlflow_server).get_run(logged["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "main"
    # the params are the `--set` strings that rebuild the same config
    assert set(run.data.params) == set(cfg.flat())
    assert Config.from_sources(None, [f"{k}={v}" for k, v in run.data.params.items()]) == cfg
    assert run.data.metrics["val/roc_auc"] == pytest.approx(0.7)
    assert run.data.metrics["train/epoch_time"] == 1.5 and run.data.metrics["epoch"] == 1
    assert "note" not in run.data.metrics and "test/confusion" not in run.data.metrics
    history = _client(mlflow_server).get_metric_history(run.info.run_id, "val/roc_auc")
    assert [m.step for m in history] == [0, 1, 2]
    assert run.data.tags["system.hostname"] == "node-0" and run.data.tags["system.workers"] == "2"
    assert run.data.tags["purpose"] == "test"
    paths = {a.path for a in _client(mlflow_server).list_artifacts(run.info.run_id)}
    assert {"report", "config.yaml"} <= paths


def test_registered_model_resolves_by_version_alias_and_run(mlflow_server, logged, model_dir, tmp_path):
    assert logged["version"] == 1 and logged["registered_model_uri"] == f"models:/{MODEL}/1"
    original = load_model(model_dir)

    v1_dir = tracking.resolve_model(f"models:/{MODEL}/1", tmp_path / "v1", tracking_uri=mlflow_server)
    assert v1_dir.name == tracking.MODEL_ARTIFACT and (v1_dir.parent.parent / "MLmodel").is_file()
    assert not list((tmp_path / "v1").rglob("*.pkl")), "nothing of the logged model may be pickled"
    saved = load_model(v1_dir)
    assert saved.threshold == THRESHOLD and saved.config == original.config
    assert saved.meta["test"] == {"roc_auc": 0.8, "accuracy": 0.75}
    ref = original.model.state_dict()
    assert saved.model.state_dict().keys() == ref.keys()
    assert all(torch.equal(v, ref[k]) for k, v in saved.model.state_dict().items())

    def check(path):  # the same three files as the version loaded above (building a model per check is slow)
        for name in ("model.safetensors", "config.json", "meta.json"):
            assert (path / name).read_bytes() == (v1_dir / name).read_bytes()

    tracking.set_alias(MODEL, "champion", 1, tracking_uri=mlflow_server)
    assert tracking.get_version_by_alias(MODEL, "champion", tracking_uri=mlflow_server) == 1
    assert tracking.get_version_by_alias(MODEL, "challenger", tracking_uri=mlflow_server) is None
    check(tracking.resolve_model(f"models:/{MODEL}@champion", tmp_path / "alias", tracking_uri=mlflow_server))
    check(tracking.resolve_model(f"runs:/{logged['run_id']}/model", tmp_path / "run", tracking_uri=mlflow_server))
    # a local directory is returned as it is
    assert tracking.resolve_model(str(model_dir)) == model_dir

    tracking.set_version_tags(MODEL, 1, {"validated": True, "dataset": "synth"}, tracking_uri=mlflow_server)
    (v1,) = tracking.list_versions(MODEL, tracking_uri=mlflow_server)
    assert v1["version"] == 1 and v1["aliases"] == ["champion"] and v1["run_id"] == logged["run_id"]
    assert v1["metrics"] == {"test/roc_auc": 0.8}
    assert v1["tags"]["validated"] == "true" and v1["tags"]["dataset"] == "synth"


def test_pyfunc_predicts_p_fake_without_defakenet_helpers(mlflow_server, logged, model_dir, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}/1", dst_path=str(tmp_path))
    assert pyfunc.metadata.metadata["threshold"] == THRESHOLD
    assert pyfunc.metadata.metadata["preprocessing"]["image_size"] == 32
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    p = pyfunc.predict(x)
    assert p.shape == (2,) and p.dtype == np.float32 and np.all((p >= 0) & (p <= 1))
    with torch.inference_mode():
        expected = torch.sigmoid(load_model(model_dir).model(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-6)


def test_rerunning_a_run_name_resumes_it_unless_finished(mlflow_server, cfg):
    first = tracking.Tracker(mlflow_server).start("tracking-test", "resume-me")
    first.log_config(cfg)
    first.log_metrics({"val/roc_auc": 0.6}, step=0)
    first.end("FAILED")

    again = tracking.Tracker(mlflow_server).start("tracking-test", "resume-me")
    assert again.resumed and again.run_id == first.run_id
    again.log_config(cfg)  # same config: fine
    with pytest.raises(UserError, match="optim.lr"):
        again.log_config(cfg.replace(optim__lr=0.5))
    again.end("FINISHED")

    fresh = tracking.Tracker(mlflow_server).start("tracking-test", "resume-me")
    assert not fresh.resumed and fresh.run_id != first.run_id
    fresh.end()


def test_unknown_models_are_user_errors(mlflow_server, logged, tmp_path):
    with pytest.raises(UserError, match="no registered model 'no-such-model'"):
        tracking.resolve_model("models:/no-such-model/1", tracking_uri=mlflow_server)
    with pytest.raises(UserError, match="has no version 7"):
        tracking.resolve_model(f"models:/{MODEL}/7", tracking_uri=mlflow_server)
    with pytest.raises(UserError, match="has no alias 'ghost'"):
        tracking.resolve_model(f"models:/{MODEL}@ghost", tracking_uri=mlflow_server)
    with pytest.raises(UserError, match="no-such-model"):
        tracking.list_versions("no-such-model", tracking_uri=mlflow_server)
    with pytest.raises(UserError, match="does not exist"):
        tracking.resolve_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a defakenet model"):
        tracking.resolve_model(str(tmp_path / "empty"))


def test_unreachable_tracking_server_fails_fast(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(UserError, match=f"{uri} is unreachable"):
        tracking.resolve_model(f"models:/{MODEL}@champion", tracking_uri=uri)
    with pytest.raises(UserError, match="unreachable"):
        tracking.Tracker(uri).start("x", "y")
    assert time.monotonic() - t0 < 10


def test_default_store_is_sqlite_with_artifacts_under_home(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri("http://mlflow:5000", tmp_path / "x") == "http://mlflow:5000"
    assert not (tmp_path / "x").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    assert tracking.resolve_tracking_uri("", tmp_path / "x") == "http://from-env:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    uri = tracking.resolve_tracking_uri("", tmp_path / "new")
    assert uri == f"sqlite:///{(tmp_path / 'new').resolve()}/mlflow.db" and (tmp_path / "new").is_dir()

    # the server's home: the same SQLite file used directly, as on a laptop that also runs mlflow/start-local.sh
    # (and a store whose tables exist already: creating them takes seconds)
    home = store_dir(mlflow_server)
    uri = tracking.resolve_tracking_uri("", home)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "a.txt").write_text("a")
    with tracking.Tracker(uri).start("local exp", "r") as tracker:
        tracker.log_artifacts(tmp_path / "rep", "rep")
    assert list(home.glob(f"mlartifacts/local_exp/{tracker.run_id}/artifacts/rep/a.txt"))
    assert not (tmp_path / "mlruns").exists()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_import_does_nothing():
    code = "import sys, defakenet.tracking; assert 'mlflow' not in sys.modules, 'mlflow imported at import time'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

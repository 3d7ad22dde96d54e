"""Ray Tune for real: a study of Ray Train trials on the session's Ray instance, ASHA stopping the weak ones early,
the winner tested, logged to a real `mlflow server` and registered; an interrupted study resumes without
rerunning its finished trials."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from defakenet import tracking
from defakenet.config import Config
from defakenet.errors import ConfigError, DataError
from defakenet.tune import concurrency, param_space, run_study

pytestmark = pytest.mark.slow

SPACE = "{optim: {lr: {choice: [3.0e-3, 1.0e-7]}}, model: {freeze_depth: {choice: [3, 5]}}}"
SETTINGS = {"data.image_size": 32, "train.batch_size": 8, "train.max_steps": 3, "train.epochs": 3,
            "resources.workers": 1, "tune.num_samples": 4, "tune.grace_period": 1, "tune.reduction_factor": 2,
            "tune.search": "random", "train.seed": 1}


def _cfg(root, home, uri, name, **extra) -> Config:
    cfg = Config.from_sources(None, [f"tune.space={SPACE}"])
    return cfg.replace(**SETTINGS, **{"data.root": str(root), "tracking.home": str(home),
                                      "tracking.tracking_uri": uri, "tracking.experiment": "tune-test",
                                      "tracking.run_name": name}, **extra)


@pytest.fixture(scope="module")
def study(ray_session, mlflow_server, synth_small, tmp_path_factory):
    home = tmp_path_factory.mktemp("tune_home")
    model = f"tuned-{uuid.uuid4().hex[:8]}"
    cfg = _cfg(synth_small, home, mlflow_server, "study-a",
               **{"tune.max_concurrent": 2, "tracking.register": model})
    return run_study(cfg, log=lambda _: None), model


def test_study_stops_weak_trials_early_and_records_each_trial(study, mlflow_server):
    summary, _ = study
    table = summary["trials"]
    assert len(table) == 4 and set(table["model.freeze_depth"]) == {3, 5}
    assert (table["status"] == "STOPPED_EARLY").sum() >= 1, table[["trial_id", "status", "epochs"]]
    assert (table.loc[table["status"] == "STOPPED_EARLY", "epochs"] < 3).all()
    params = table.groupby("model.freeze_depth")["trainable_parameters"].agg(set).to_dict()
    assert params == {3: {22_075_393}, 5: {2_049}}
    client = tracking._client(mlflow_server)
    children = [client.get_run(r) for r in table["mlflow_run_id"]]
    parent = client.get_run(summary["mlflow_run_id"])
    for child, row in zip(children, table.itertuples(), strict=True):
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED" and child.data.tags["tune.status"] == row.status
        # each epoch logged once; a stopped trial may log the epoch it was in when ASHA's decision reached it
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_roc_auc"))
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= row.epochs
        assert child.data.params["optim.lr"] == repr(float(row._2))


def test_study_parent_run_holds_results_and_registers_the_winner(study, mlflow_server, tmp_path):
    summary, model = study
    client = tracking._client(mlflow_server)
    parent = client.get_run(summary["mlflow_run_id"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/trials.csv", "study/val_auc_vs_lr.png", "study/best_so_far.png"} <= artifacts
    assert parent.data.metrics["trials"] == 4 and "test_roc_auc" in parent.data.metrics
    best = summary["trials"].set_index("trial_id").loc[summary["best_trial"]]
    assert best["best_val_roc_auc"] == summary["trials"]["best_val_roc_auc"].max()
    assert parent.data.tags["best_trial"] == summary["best_trial"]
    assert tracking.get_version_by_alias(model, "champion", tracking_uri=mlflow_server) == 1
    saved = tracking.resolve_model(f"models:/{model}@champion", tmp_path, tracking_uri=mlflow_server)
    assert (saved / "model.safetensors").stat().st_size > 1_000_000


def test_interrupted_study_resumes_and_finishes_only_the_rest(ray_session, mlflow_server, synth_small, tmp_path):
    """A study whose driver is another process on the session's cluster is interrupted (SIGINT) once its third
    trial has started; resuming it here runs the remaining trials and leaves the two finished ones untouched."""
    name = "study-r"
    # one Ray instance on the machine: Ray Train's placement-group cleaner finds "its" cluster only then
    address = ray_session.get_runtime_context().gcs_address
    argv = [sys.executable, "-m", "defakenet", "tune", "--address", address, "--data", str(synth_small),
            "--home", str(tmp_path),
            "--tracking-uri", mlflow_server, "--experiment", "tune-test", "--run-name", name,
            "--max-concurrent", "1", "--set", f"tune.space={SPACE}"]
    for k, v in SETTINGS.items():
        argv += ["--set", f"{k}={v}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = open(tmp_path / "first.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    client = tracking._client(mlflow_server)

    def trial_runs():
        exp = client.get_experiment_by_name("tune-test")
        return client.search_runs([exp.experiment_id], f"attributes.run_name LIKE '{name}-%'") if exp else []

    deadline = time.monotonic() + 420
    while len(trial_runs()) < 3:
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the study did not reach its third trial"
        time.sleep(1)
    first_two = sorted(trial_runs(), key=lambda r: r.info.start_time)[:2]
    logged = {r.info.run_id: {(m.step, m.timestamp) for m in client.get_metric_history(r.info.run_id, "val_roc_auc")}
              for r in first_two}
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=180) != 0
    out = (tmp_path / "first.log").read_text()
    assert f"--resume --run-name {name}" in out, out[-3000:]

    cfg = _cfg(synth_small, tmp_path, mlflow_server, name, **{"tune.max_concurrent": 1})
    summary = run_study(cfg, resume=True, log=lambda _: None)
    table = summary["trials"]
    assert len(table) == 4 and table["status"].isin(["TERMINATED", "STOPPED_EARLY"]).all()
    assert len(trial_runs()) == 4  # the interrupted trial continued in its own run; one new trial
    for run_id, before in logged.items():  # the trials finished before the interruption were not run again
        assert before and {(m.step, m.timestamp) for m in client.get_metric_history(run_id, "val_roc_auc")} == before
    for run in trial_runs():  # every epoch of every trial logged once
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_roc_auc")]
        assert sorted(steps) == list(range(1, len(steps) + 1)), run.info.run_name


def test_study_whose_trials_meet_a_bad_image_stops_naming_it(ray_session, mlflow_server, synth_bad, tmp_path):
    cfg = _cfg(synth_bad, tmp_path, mlflow_server, "study-bad").replace(
        **{"tune.num_samples": 1, "train.epochs": 1, "resources.max_failures": 0})
    with pytest.raises(DataError) as e:
        run_study(cfg, log=lambda _: None)
    assert re.fullmatch(rf"study study-bad: no trial reported a validation score: training stopped: "
                        rf"{re.escape(str(synth_bad))}/(real|fake)/\d+\.png: not an image \(expected JPEG, PNG, "
                        r"WebP, BMP or TIFF\) \(`defakenet data inspect ROOT` lists every unreadable image\)",
                        str(e.value)), str(e.value)


def test_space_and_concurrency_are_checked():
    cfg = Config.from_sources(None, [f"tune.space={SPACE}"])
    assert set(param_space(cfg)) == {"optim.lr", "model.freeze_depth"}
    gpu = cfg.replace(**{"resources.use_gpu": True, "resources.workers": 2, "tune.num_samples": 16})
    assert concurrency(gpu, {"CPU": 64, "GPU": 8}) == 4
    cpu = cfg.replace(**{"resources.workers": 2, "tune.num_samples": 16})
    assert concurrency(cpu, {"CPU": 13}) == 4  # 2 workers + 1 decode CPU + 0.25 driver per trial
    with pytest.raises(ConfigError, match="tune.space names optim.lrr"):
        Config.from_sources(None, ["tune.space={optim: {lrr: {uniform: [0, 1]}}}"])
    with pytest.raises(ConfigError, match="loguniform expects"):
        Config.from_sources(None, ["tune.space={optim: {lr: {loguniform: [0, 1]}}}"])

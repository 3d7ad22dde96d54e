"""End to end on the session's Ray instance: 2-worker DDP training learns the synthetic fakes, logs to a real
`mlflow server`, registers a version, and `defakenet evaluate` of that version reproduces the logged test metrics."""

import json
import re
import tempfile

import pytest
from output import own_output

from defakenet import tracking
from defakenet.artifact import load_model
from defakenet.cli import main
from defakenet.demo import DEMO_SETTINGS
from defakenet.report import REPORT_FILES

pytestmark = pytest.mark.slow
MODEL_NAME = "defakenet-test"


@pytest.fixture(scope="module")
def trained(ray_session, mlflow_server, synth_64, tmp_path_factory):
    """`defakenet train --data SYNTH --workers 2 --register …` at 64 px, 4 epochs; returns (home, run name)."""
    home = tmp_path_factory.mktemp("train_home")
    sets = [f"{k}={v}" for k, v in DEMO_SETTINGS.items()]
    argv = ["train", "--data", str(synth_64), "--workers", "2", "--home", str(home), "--run-name", "ray-e2e",
            "--tracking-uri", mlflow_server, "--register", MODEL_NAME, "--experiment", "e2e"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    return home, "ray-e2e"


def _run(uri, name):
    client = tracking._client(uri)
    exp = client.get_experiment_by_name("e2e")
    (run,) = client.search_runs([exp.experiment_id], f"tags.mlflow.runName = '{name}'")
    return client, run


def test_two_workers_learn_and_log_every_epoch_once(trained, mlflow_server):
    client, run = _run(mlflow_server, trained[1])
    history = client.get_metric_history(run.info.run_id, "val_roc_auc")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert max(m.value for m in history) >= 0.9
    assert run.data.params["resources.workers"] == "2" and run.data.params["data.image_size"] == "64"
    assert run.data.tags["system.workers"] == "2"
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_roc_auc"] >= 0.9


def test_run_folder_and_registered_version(trained, mlflow_server, tmp_path):
    home, name = trained
    for f in REPORT_FILES.values():
        assert (home / "runs" / name / "report" / f).stat().st_size > 0
    saved = load_model(tracking.resolve_model(f"models:/{MODEL_NAME}/1", tmp_path, tracking_uri=mlflow_server))
    local = load_model(home / "runs" / name / "model")
    assert saved.threshold == local.threshold and 0 < saved.threshold < 1
    assert saved.meta["preprocessing"]["image_size"] == 64


def test_evaluate_registered_version_reproduces_logged_test_metrics(trained, mlflow_server, synth_64, tmp_path,
                                                                   monkeypatch):
    _, run = _run(mlflow_server, trained[1])
    out, temp = tmp_path / "eval", tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert main(["evaluate", "--model", f"models:/{MODEL_NAME}/1", "--tracking-uri", mlflow_server,
                 "--data", str(synth_64), "--output", str(out)]) == 0
    assert not list(temp.rglob("model.safetensors")), "the downloaded model was left in the temp folder"
    doc = json.loads((out / "metrics.json").read_text())
    (cell,) = doc["cells"]
    assert (cell["set"], cell["degradation"]) == (synth_64.name, "none")
    assert doc["info"]["suite"]["sets"][synth_64.name]["split"] == "test"
    for key in ("accuracy", "roc_auc", "average_precision"):
        assert cell[key] == pytest.approx(run.data.metrics[f"test_{key}"], abs=1e-6), key


def test_staged_unfreezing_rebuilds_ddp_and_trains_every_layer(ray_session, mlflow_server, synth_small, tmp_path):
    """freeze_depth 5 (head only) for epoch 1, then model.unfreeze_epoch=2 unfreezes the backbone under DDP."""
    from defakenet.config import Config
    from defakenet.train import fit

    cfg = Config().replace(**{
        "data.root": str(synth_small), "data.image_size": 32, "train.batch_size": 8, "train.max_steps": 2,
        "train.epochs": 3, "resources.workers": 2, "model.freeze_depth": 5, "model.unfreeze_epoch": 2,
        "tracking.home": str(tmp_path), "tracking.tracking_uri": mlflow_server, "tracking.experiment": "unfreeze",
        "tracking.run_name": "staged"})
    summary = fit(cfg, log=lambda _: None)
    client = tracking._client(mlflow_server)
    run = client.get_run(summary["mlflow_run_id"])
    history = sorted(client.get_metric_history(run.info.run_id, "trainable_parameters"), key=lambda m: m.step)
    assert [(m.step, int(m.value)) for m in history] == [(1, 2_049), (2, 23_521_409), (3, 23_521_409)]
    assert run.info.status == "FINISHED"


def test_failure_line_says_what_failed_and_what_happens_next():
    from defakenet.train import failure_line

    died = RuntimeError("\n  The actor died unexpectedly before finishing this task.\n  class_name: RayTrainWorker\n")
    assert failure_line({1: died}, 1, 2) == (
        "training worker(s) rank 1 failed (RuntimeError: The actor died unexpectedly before finishing this task.); "
        "restarting the workers from the latest checkpoint (failure 1, 2 allowed)")
    assert failure_line({3: ValueError("x" * 500), 0: KeyError()}, 3, 2) == (
        "training worker(s) rank 0, 3 failed (KeyError); giving up: failure 3, 2 allowed (resources.max_failures)")
    assert failure_line({0: OSError("disk full")}, 7, -1).endswith("(failure 7, no limit)")
    assert f"(ValueError: {'x' * 200}); " in failure_line({0: ValueError("x" * 500)}, 1, 1)  # its first 200 characters


def test_quiet_train_loggers_reaches_the_loggers_named_by_file_path():
    """Ray 2.60 logs every report's metrics from a logger named by its file, outside `ray.train`, so
    LoggingConfig(log_level) does not reach it; the worker sets its level itself."""
    import logging

    import ray.train.v2._internal.execution.context as train_context

    from defakenet.train import quiet_train_loggers

    named = logging.getLogger(train_context.__file__)
    before = named.level
    try:
        assert train_context.__file__ in quiet_train_loggers("WARNING")
        assert not named.isEnabledFor(logging.INFO) and named.isEnabledFor(logging.WARNING)
    finally:
        named.setLevel(before)


@pytest.mark.slow
def test_bad_image_met_in_training_stops_the_run_with_one_line(ray_session, synth_bad, tmp_path, capsys):
    """A file that is not an image, found by a decode task mid-epoch: the CLI says which file in one line and exits
    2, and the MLflow run is FAILED."""
    data, uri = synth_bad, f"sqlite:///{tmp_path / 'mlflow.db'}"  # its own store, whatever the session has set
    code = main(["train", "--data", str(data), "--epochs", "1", "--image-size", "32", "--batch-size", "8",
                 "--home", str(tmp_path / "home"), "--tracking-uri", uri, "--run-name", "bad",
                 "--set", "resources.max_failures=0"])
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"defakenet: error: training stopped: {re.escape(str(data))}/(real|fake)/\d+\.png: not an "
                        r"image \(expected JPEG, PNG, WebP, BMP or TIFF\) \(`defakenet data inspect ROOT` lists every "
                        r"unreadable image\)", line), line
    client = tracking.client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("defakenet").experiment_id])
    assert run.info.run_name == "bad" and run.info.status == "FAILED"


def test_a_batch_bigger_than_the_split_is_one_line_before_training(ray_session, synth_small, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["train", "--data", str(synth_small), "--image-size", "32", "--batch-size", "64", "--workers", "2",
                 "--home", str(tmp_path / "home"), "--tracking-uri", uri])
    err = own_output(capsys.readouterr().err).strip().splitlines()
    assert code == 2 and err[-1] == ("defakenet: error: train split of 56 images is too small for 2 workers x batch "
                                     "64; lower train.batch_size or resources.workers")
    assert not (tmp_path / "home" / "ray_results").exists()


def test_sweep_removes_checkpoint_folders_of_dead_processes_only(tmp_path):
    """A worker killed between writing a checkpoint and Ray Train copying it leaves its staging folder; the next
    rank 0 removes it, and leaves folders of live processes and anything else alone."""
    import os
    import subprocess

    from defakenet.train import CKPT_PREFIX, sweep_checkpoint_dirs

    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = tmp_path / f"{CKPT_PREFIX}{gone.pid}-x1"
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "model.safetensors").write_bytes(b"0" * 1024)
    live = tmp_path / f"{CKPT_PREFIX}{os.getpid()}-x2"
    live.mkdir()
    other = tmp_path / f"{CKPT_PREFIX}abc_12"  # not ours to judge: no PID in the name
    other.mkdir()
    assert sweep_checkpoint_dirs(str(tmp_path)) == [dead]
    assert not dead.exists() and live.is_dir() and other.is_dir()

"""An MLflow server killed during training (SIGKILL, a real `mlflow server` on loopback): training goes on, the
epochs it could not log are logged later, each once, and the model is logged and registered once the server is
back. A server still away at the end leaves the saved model and one line saying so (exit 2); rerunning the command
once the server is back logs and registers it without training again. The epoch logger on its own, called as Ray
Train's controller calls it, shows the retry path step by step."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from mlflow_server import start_mlflow_server, stop_mlflow_server
from output import own_output

from defakenet import tracking
from defakenet.cli import main

MODEL_NAME = "defakenet-outage"
# a one-stage backbone at 32 px, one worker, 2 steps an epoch: seconds per epoch on a CPU
SETTINGS = {"model.stages": 1, "train.max_steps": 2, "resources.workers": 1, "export.onnx": "false"}


class Server:
    """A `mlflow server` on a SQLite store in `folder`, killed and restarted on the same port (the same URI)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.uri, self.proc = start_mlflow_server(folder)
        self.port = int(self.uri.rsplit(":", 1)[1])

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # the CLI's whole process group: the uvicorn worker too
        self.proc.wait()

    def restart(self) -> None:
        uri, self.proc = start_mlflow_server(self.folder, port=self.port)
        assert uri == self.uri

    def stop(self) -> None:
        stop_mlflow_server(self.proc)

    def epochs_logged(self) -> int:
        """Epochs with a val_roc_auc in the store, read past the server (which may be dead)."""
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.folder / 'mlflow.db'}?mode=ro", uri=True,
                                                    timeout=1)) as db:
                return db.execute("SELECT COUNT(DISTINCT step) FROM metrics WHERE key = 'val_roc_auc'").fetchone()[0]
        except sqlite3.Error:  # not made yet, or locked by a write
            return 0


class Killer(threading.Thread):
    """Kills `server` as soon as its store holds epoch 1, and restarts it `restart_after_s` later (None: never)."""

    def __init__(self, server: Server, restart_after_s: float | None):
        super().__init__(daemon=True)
        self.server, self.restart_after_s = server, restart_after_s
        self.killed = self.restarted = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 300
            while self.server.epochs_logged() < 1:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)
            time.sleep(0.1)  # the answer to the request that logged it goes out first
            self.server.kill()
            self.killed = True
            if self.restart_after_s is not None:
                time.sleep(self.restart_after_s)
                self.server.restart()
                self.restarted = True
        except BaseException as e:  # noqa: BLE001 - the test reports it
            self.error = e


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "mlflow")
    yield s
    s.stop()


def _argv(data, home, server, run_name, epochs, *extra_sets):
    argv = ["train", "--data", str(data), "--image-size", "32", "--batch-size", "8", "--epochs", str(epochs),
            "--home", str(home), "--tracking-uri", server.uri, "--experiment", "outage", "--run-name", run_name,
            "--register", MODEL_NAME]
    for k, v in [*SETTINGS.items(), *(s.split("=", 1) for s in extra_sets)]:
        argv += ["--set", f"{k}={v}"]
    return argv


def _check_run(server, run_name, epochs):
    """The one run called `run_name` is FINISHED, holds every epoch once and has registered version 1."""
    client = tracking.client(server.uri)
    exp = client.get_experiment_by_name("outage")
    (run,) = client.search_runs([exp.experiment_id], f"attributes.run_name = '{run_name}'")
    for key in ("val_roc_auc", "train_loss", "lr"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(1, epochs + 1)), (key, steps)
    assert run.info.status == "FINISHED"
    assert "test_roc_auc" in run.data.metrics
    (version,) = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert version.run_id == run.info.run_id and version.status == "READY"


def test_epoch_logger_keeps_what_it_cannot_log_and_logs_it_once_when_the_server_is_back(server, capsys):
    from defakenet.train import epoch_logger

    client = tracking.client(server.uri)
    run_id = client.create_run(client.create_experiment("logger")).info.run_id
    logger = epoch_logger(server.uri, run_id)

    def report(epoch):
        t0 = time.monotonic()
        logger.after_report(None, [{"epoch": epoch, "val_roc_auc": 0.5 + epoch / 100, "train_loss": 1.0 / epoch}], None)
        return time.monotonic() - t0

    report(1)
    server.kill()
    assert report(2) < 5 and report(3) < 5  # a refused connection costs no retries with backoff
    lines = capsys.readouterr().out.splitlines()
    assert lines == [(f"mlflow: could not log epoch 2 to {server.uri} (connection refused); keeping it and retrying "
                      "at the next epoch")]  # once, not at every epoch
    server.restart()
    client = tracking.client(server.uri)
    client.log_metric(run_id, "val_roc_auc", 0.52, step=2)  # as if a try that failed had got through
    report(4)
    assert capsys.readouterr().out.splitlines() == [
        f"mlflow: {server.uri} answers again; logged epochs 2-4, kept since epoch 2"]
    for key in ("val_roc_auc", "train_loss"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [1, 2, 3, 4], key
    report(5)
    assert capsys.readouterr().out == ""
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_server_killed_during_training_comes_back_and_the_run_is_complete(ray_session, synth_small, tmp_path,
                                                                          server, capfd):
    epochs = 3
    killer = Killer(server, restart_after_s=2)
    killer.start()
    code = main(_argv(synth_small, tmp_path / "home", server, "outage", epochs))
    killer.join(timeout=120)
    out = capfd.readouterr()
    assert killer.error is None, killer.error
    assert killer.killed and killer.restarted
    assert code == 0, out.err[-3000:]
    _check_run(server, "outage", epochs)
    text = out.out + out.err  # the controller's lines come through Ray's log forwarding
    # epoch 2, unless it was logged before the kill
    assert re.search(rf"mlflow: could not log epoch [23] to {re.escape(server.uri)} \(connection refused\); keeping it "
                     "and retrying at the next epoch", text), text[-3000:]
    # the epochs it kept were logged by the epoch logger once the server was back, or by the driver at the end
    lines = [line for line in text.splitlines() if "mlflow: " in line]
    assert any(f"mlflow: {server.uri} answers again" in line or "which the run lacked" in line for line in lines), lines


@pytest.mark.slow
def test_server_away_at_the_end_keeps_the_model_and_a_rerun_logs_it(ray_session, synth_small, tmp_path, server,
                                                                   capfd):
    epochs, home = 3, tmp_path / "home"
    argv = _argv(synth_small, home, server, "away", epochs, "tracking.wait_for_server_s=1")
    killer = Killer(server, restart_after_s=None)
    killer.start()
    code = main(argv)
    killer.join(timeout=30)
    err = own_output(capfd.readouterr().err)
    assert killer.error is None and killer.killed
    assert code == 2, err[-3000:]
    model_dir = home / "runs" / "away" / "model"
    assert err.strip().splitlines()[-1] == (
        f"defakenet: error: mlflow: {server.uri} did not answer within 1 s: the model is saved in {model_dir} but was "
        "NOT logged or registered; once the server is back, rerun the same command with --run-name away: it resumes "
        "from the saved checkpoints without training again and logs and registers the model")
    assert "Traceback" not in err
    assert (model_dir / "model.safetensors").is_file()

    server.restart()
    code = main(argv)
    out = capfd.readouterr()
    assert code == 0, out.err[-3000:]
    _check_run(server, "away", epochs)
    assert re.search(r"^mlflow: logged epoch\(s\) (2, )?3, which the run lacked$", out.out, re.MULTILINE), out.out[-3000:]
    assert f"epoch {epochs}/{epochs}" not in out.out + out.err  # resumed past the last epoch: nothing trained again

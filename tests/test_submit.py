"""Job submission for real: a Ray head on loopback with token authentication receives `defakenet submit` of the
train job, which succeeds and leaves an MLflow run; a wrong token is refused with a clear message."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow_server import free_port

from defakenet import tracking
from defakenet.cli import main
from defakenet.submit import build_entrypoint, load_job

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def test_job_files_load_and_entrypoints_exist():
    for name in ("train.yaml", "evaluate.yaml", "tune.yaml"):
        job = load_job(REPO / "jobs" / name)
        assert job["entrypoint"].startswith("python -m defakenet ")
        assert Path(job["runtime_env"]["working_dir"]).is_absolute()
        cmd = job["entrypoint"].split()[3]
        with pytest.raises(SystemExit) as e:  # the subcommand exists and parses --help
            main([cmd, "--help"])
        assert e.value.code == 0
    job = load_job(REPO / "jobs" / "train.yaml")
    assert build_entrypoint(job, ["optim.lr=0.01"], ["--epochs", "2"]).endswith("--set optim.lr=0.01 --epochs 2")


def test_relative_paths_given_to_a_job_are_named():
    from defakenet.submit import relative_paths

    assert relative_paths(["data.root=.defakenet/demo/synthetic", "train.epochs=2", "tracking.storage=s3://b/r"],
                          ["--data", "faces", "--model=models:/defakenet@champion", "--home=/mnt/shared",
                           "--weights=w.safetensors", "--config", "jobs/configs/train-cpu-small.yaml"]) == [
        "data.root=.defakenet/demo/synthetic", "--data faces", "--weights w.safetensors"]
    assert relative_paths(["data.root=/mnt/data/faces"], ["--data", "gs://b/faces", "--storage", "~/runs"]) == []


def test_bad_job_files(tmp_path, capsys):
    assert main(["submit", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("entrypoint: x\nentrypont_num_cpus: 1\n")
    assert main(["submit", str(bad)]) == 2
    assert "unknown key entrypont_num_cpus; valid keys: name, entrypoint" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --block` on 127.0.0.1 with RAY_AUTH_MODE=token, in its own process group."""
    tmp = tmp_path_factory.mktemp("head")
    token = uuid.uuid4().hex
    dash = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp / "head.log", "wb")
    proc = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(free_port()), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
         "--num-cpus", "5", "--object-store-memory", str(200 * 1024**2), "--temp-dir", str(tmp / "ray"),
         "--disable-usage-stats", "--include-dashboard", "true",
         # the session's own Ray instance holds the default agent ports (52365, …): take free ones
         "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
         "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port())],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp,
    )
    address = f"http://127.0.0.1:{dash}"
    import requests

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp / "head.log").read_text()[-3000:]
        try:
            if requests.get(f"{address}/api/version", timeout=2,
                            headers={"Authorization": f"Bearer {token}"}).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    else:
        raise RuntimeError("ray head did not come up:\n" + (tmp / "head.log").read_text()[-3000:])
    yield address, token
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.mark.slow
def test_submit_train_job_with_token(ray_head, mlflow_server, synth_small, tmp_path, capsys, monkeypatch):
    address, token = ray_head
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    # a wrong token: refused, one clear line, no traceback
    code = main(["submit", "jobs/train.yaml", "--address", address, "--token", "wrong-token"])
    err = capsys.readouterr().err
    assert code == 2 and "auth" in err.lower() and "Traceback" not in err
    home = tmp_path / "home"
    code = main([
        "submit", "jobs/train.yaml", "--address", address, "--token", token, "--follow",
        "--set", f"data.root={synth_small}", "--set", "data.image_size=32", "--set", "train.epochs=1",
        "--set", "train.batch_size=8", "--set", "resources.use_gpu=false", "--set", "resources.workers=2",
        "--set", "model.weights=", "--set", f"tracking.tracking_uri={mlflow_server}",
        "--set", f"tracking.home={home}", "--set", f"tracking.storage={home / 'ray_results'}",
        "--set", "tracking.experiment=submitted", "--set", "tracking.run_name=job-run",
        "--set", "resources.cpus_per_worker=1",
    ])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err[-2000:] + out[-3000:]
    assert "SUCCEEDED" in out and out.count("epoch 1/1  train_loss") == 1, out[-3000:]  # once, not on stdout and stderr
    client = tracking.client(mlflow_server)
    exp = client.get_experiment_by_name("submitted")
    (run,) = client.search_runs([exp.experiment_id], "tags.mlflow.runName = 'job-run'")
    assert run.info.status == "FINISHED" and "test_roc_auc" in run.data.metrics


@pytest.mark.slow
def test_plain_ray_job_submit_runs_train(ray_head, mlflow_server, synth_small, tmp_path):
    """`ray job submit --working-dir . -- python -m defakenet train …`, Ray's own CLI, with the cluster's token."""
    address, token = ray_head
    home = tmp_path / "home"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--",
           "python", "-m", "defakenet", "train", "--data", str(synth_small), "--workers", "2", "--epochs", "1",
           "--image-size", "32", "--batch-size", "8", "--home", str(home), "--tracking-uri", mlflow_server,
           "--experiment", "plain-submit", "--run-name", "plain-job", "--set", "train.max_steps=1"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in out.lower(), out[-3000:]
    assert out.count("epoch 1/1  train_loss") == 1, out[-3000:]
    # Ray's chatter stays in its log files: no per-report metrics dicts (train.log_level WARNING), no Ray Data plans
    assert "Reporting training result" not in out and "Execution plan of Dataset" not in out, out[-3000:]
    client = tracking.client(mlflow_server)
    exp = client.get_experiment_by_name("plain-submit")
    (run,) = client.search_runs([exp.experiment_id], "tags.mlflow.runName = 'plain-job'")
    assert run.info.status == "FINISHED" and "test_roc_auc" in run.data.metrics

"""Ray set-up (defakenet.runtime): the GPU check, the lean local instance, the training workers' environment."""

import json
import os

import pytest
from output import own_output


def test_gpu_request_without_gpus(ray_session, capsys):
    from defakenet.errors import UserError
    from defakenet.runtime import check_gpus

    assert ray_session.cluster_resources().get("GPU", 0) == 0  # this machine: no GPU
    check_gpus(0, local=True)  # nothing asked, nothing said
    with pytest.raises(UserError, match=r"^--gpu: 2 GPU\(s\) needed, this Ray instance has 0 \(no CUDA device"):
        check_gpus(2, local=True)
    # a cluster may still add GPU nodes: a note, not an error
    check_gpus(0.5, local=False)
    assert own_output(capsys.readouterr().out) == (
        "defakenet: --gpu: 0.5 GPU(s) needed, this Ray cluster has 0 now; waiting for the cluster to add GPU nodes\n")


def test_local_ray_runs_lean_unless_the_environment_says_otherwise(tmp_path):
    """A local instance started by defakenet runs its workers at the driver's priority and turns Ray's background
    work down; every key is one Ray 2.60 accepts (an unknown one would stop the raylet) and reaches the workers,
    and a RAY_<key> the user set wins."""
    import subprocess
    import sys

    from defakenet.runtime import LOCAL_RAY_SYSTEM_CONFIG, local_ray_system_config

    assert local_ray_system_config({}) == LOCAL_RAY_SYSTEM_CONFIG
    kept = local_ray_system_config({"RAY_enable_metrics_collection": "1", "RAY_EVENT_STATS": "1"})
    assert "enable_metrics_collection" not in kept and kept["event_stats"] is False

    script = tmp_path / "lean.py"
    script.write_text(
        "import os\n"
        "import ray\n"
        "from defakenet.runtime import local_ray_system_config\n"
        "ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,"
        " _system_config=local_ray_system_config())\n"
        "print(ray.get(ray.remote(lambda: (os.nice(0), ray._config.metrics_report_interval_ms())).remote()))\n"
        "ray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # workers at the daemons' priority (Ray's default puts them at nice 15), metrics reported once a minute
    assert proc.stdout.strip().splitlines()[-1] == f"({os.nice(0)}, 60000)", proc.stdout


def test_cpu_training_workers_start_with_the_malloc_settings(ray_session, tmp_path):
    """On CPU, Ray Train workers are started (exec'd) with CPU_MALLOC_ENV in their environment, where glibc reads
    it once (whole: Ray cut a GLIBC_TUNABLES value at its first ":"); GPU runs and a GLIBC_TUNABLES the user set
    are left alone. docs/benchmarks.md has what the settings buy (page faults per step, images/s). Every worker
    gets WORKER_ENV (Ray Train's print patch off: it printed each epoch line twice)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from defakenet.config import Config
    from defakenet.runtime import CPU_MALLOC_ENV, WORKER_ENV, training_worker_env

    cfg = Config()
    assert training_worker_env(cfg, {}) == {**WORKER_ENV, **CPU_MALLOC_ENV}
    assert training_worker_env(cfg.replace(**{"resources.use_gpu": True}), {}) == WORKER_ENV
    assert training_worker_env(cfg, {"GLIBC_TUNABLES": ""}) == training_worker_env(cfg, {"MALLOC_ARENA_MAX": ""}) \
        == WORKER_ENV
    assert training_worker_env(cfg, {"RAY_TRAIN_ENABLE_PRINT_PATCH": "1"}) == CPU_MALLOC_ENV

    def exec_environment(config):
        # /proc/self/environ is the environment the process was exec'd with, the one glibc read
        with open("/proc/self/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        with open(config["out"], "w") as f:
            json.dump({k: env.get(k.encode(), b"<unset>").decode() for k in config["keys"]}, f)

    out = tmp_path / "malloc.json"
    TorchTrainer(
        exec_environment, train_loop_config={"out": str(out), "keys": [*WORKER_ENV, *CPU_MALLOC_ENV]},
        scaling_config=ray.train.ScalingConfig(num_workers=1),
        run_config=ray.train.RunConfig(name="malloc", storage_path=str(tmp_path),
                                       worker_runtime_env={"env_vars": training_worker_env(cfg, {})}),
    ).fit()
    assert json.loads(out.read_text()) == {**WORKER_ENV, **CPU_MALLOC_ENV}

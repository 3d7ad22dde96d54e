"""Ray set-up: how defakenet connects to a cluster or starts a local instance, the environment of the processes
it starts, and where runs keep their files (the home folder, Ray's storage path).

Training, tuning, evaluation and serving all start Ray through here, so a local instance is the same whichever
command starts it, and no command imports another one's driver to get it.
"""

from __future__ import annotations

import os
from pathlib import Path

from defakenet.config import Config
from defakenet.errors import UserError

# telemetry off; Ray Data's per-operator and MLflow's artifact progress bars off (one line per epoch is the progress);
# Ray Serve's components (controller, proxies, replicas: access logs, deployment events, defakenet's per-request JSON
# lines) log to their files under the Ray session's logs/serve/ only, not to stderr, which Ray forwards to the
# console of the command that started them. `--verbose` (VERBOSE_ENV) brings both back.
# Ray Data's processes (split coordinators, decode tasks) read RAY_DATA_LOGGING_CONFIG: Ray Data's own config with
# its console handler at WARNING, so its per-dataset "execution finished" lines stay in ray-data.log.
RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "NO_ALBUMENTATIONS_UPDATE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
             "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
             "RAY_SERVE_LOG_TO_STDERR": "0", "RAY_DATA_LOGGING_CONFIG": str(RAY_DATA_LOGGING),
             # Tune's new console output prints the experiment folder and a TensorBoard hint even at verbose=0;
             # defakenet's study prints its own lines
             "RAY_AIR_NEW_OUTPUT": "0"}
VERBOSE_ENV = "DEFAKENET_VERBOSE"


def set_verbose() -> None:
    """`--verbose`: Serve's logs and Ray Data's execution plans on the console again (set before Ray starts)."""
    os.environ[VERBOSE_ENV] = "1"
    os.environ["RAY_SERVE_LOG_TO_STDERR"] = "1"
    os.environ.pop("RAY_DATA_LOGGING_CONFIG", None)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def quiet_env() -> dict[str, str]:
    """The environment of the Ray processes defakenet starts (a local instance's, Serve's replicas'): QUIET_ENV with
    what the environment already sets (the user's, or --verbose's) winning, set here too; plus the MLflow client's
    credentials and TLS variables set here (`tracking.client_env`), so that a Tune trial, the Train controller that
    logs the epochs and a replica that loads models:/NAME@champion reach the server the driver reaches."""
    from defakenet.tracking import client_env

    skip = {"RAY_DATA_LOGGING_CONFIG"} if verbose() else set()
    return {**{k: os.environ.setdefault(k, v) for k, v in QUIET_ENV.items() if k not in skip}, **client_env()}


def quiet_loggers() -> None:
    """This process's share of the quiet console (unless --verbose): Ray Data's console handler (configured when
    ray.data was imported, before QUIET_ENV was set) and Tune's INFO lines at WARNING, and Serve's client lines
    ("Started Serve …") too while Serve's components keep to their files."""
    import logging

    if verbose():
        return
    for h in logging.getLogger("ray.data").handlers:
        if type(h).__name__ == "PlainRayHandler":
            h.setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    if os.environ.get("RAY_SERVE_LOG_TO_STDERR") == "0":
        logging.getLogger("ray.serve").setLevel(logging.WARNING)


def default_home(cfg: Config) -> Path:
    """The one data folder for embedded defaults (runs, MLflow store, Ray results)."""
    return Path(cfg.tracking.home or ".defakenet").expanduser().resolve()


def storage_path(cfg: Config) -> str:
    """Where Ray Train writes checkpoints: tracking.storage (local, NFS or s3://) or HOME/ray_results."""
    return cfg.tracking.storage or str(default_home(cfg) / "ray_results")


# How defakenet starts a local Ray instance (a throwaway one on the driver's machine, which only this run uses).
# worker_niceness 0: Ray starts its workers at nice 15, below its own daemons (raylet, GCS, dashboard and runtime-env
# agents, log monitor) at 0; on a machine whose cores the model's threads fill, every daemon wake-up then preempts
# one of torch's OpenMP threads and the other waits at the next barrier. At 0 the training worker gets the share a
# plain PyTorch process gets. The rest turns Ray's background work down: no metrics export (nothing scrapes this
# instance), no per-event stats, no workers prestarted to sit idle. docs/benchmarks.md has the measurements. A
# cluster keeps its own settings; a RAY_<key> variable set in the environment wins over these.
LOCAL_RAY_SYSTEM_CONFIG = {"worker_niceness": 0, "enable_metrics_collection": False, "event_stats": False,
                           "metrics_report_interval_ms": 60_000, "enable_worker_prestart": False}


# CPU training workers keep the memory torch frees (glibc malloc: no mmap, no trimming, one arena, so the training
# thread Ray Train runs the loop in allocates from the main heap too) instead of handing it back to the kernel and
# faulting it in again on the next step. With glibc's defaults a ResNet50V2 step at 224 px, batch 32 unmaps and
# re-faults ~5 GB (1.3 M page faults per step; 20-90 k with these), and the step runs ~25 % slower on 2 cores
# (docs/benchmarks.md). glibc's single-variable aliases of its tunables, not GLIBC_TUNABLES: Ray's worker start-up
# cuts an env value at its first ":". Any of these or GLIBC_TUNABLES set in the environment: left alone (set
# MALLOC_ARENA_MAX= empty for glibc's defaults); other C libraries ignore them.
CPU_MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "17179869184", "MALLOC_ARENA_MAX": "1"}


# Every training worker: print() as Python has it. Ray Train V2 (Ray 2.60) replaces print() in its workers with one
# that logs through Train's logger and, as sys.stdout is not sys.__stdout__ in a Ray worker, also prints the line
# itself: every epoch line reached the driver twice, once on stdout and once on stderr. Set in the environment: wins.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def training_worker_env(cfg: Config, environ=os.environ) -> dict:
    """Environment variables for the Ray Train workers (RunConfig.worker_runtime_env): WORKER_ENV, plus
    CPU_MALLOC_ENV on CPU; a variable the environment already sets is left to it."""
    env = {k: v for k, v in WORKER_ENV.items() if k not in environ}
    if not cfg.resources.use_gpu and not any(k in environ for k in ("GLIBC_TUNABLES", *CPU_MALLOC_ENV)):
        env.update(CPU_MALLOC_ENV)
    return env


def local_ray_system_config(environ=os.environ) -> dict:
    """LOCAL_RAY_SYSTEM_CONFIG less the keys the environment sets (RAY_<key>), for ray.init(_system_config=...)."""
    return {k: v for k, v in LOCAL_RAY_SYSTEM_CONFIG.items() if f"RAY_{k}" not in environ}


def init_ray(cfg: Config, address: str | None = None, cpus: int = 0) -> None:
    """Connect to a cluster (`address`, $RAY_ADDRESS) or start a local instance of at least `cpus` logical CPUs
    (default: sized for one training run + decoding); then `check_gpus` for resources.use_gpu."""
    import ray
    from ray.data import DataContext

    # the datasets carry the driver's DataContext to every coordinator and task: no per-operator progress bars, no
    # execution plan printed per dataset and epoch (Ray Data's log files under the session folder keep them)
    DataContext.get_current().enable_progress_bars = False
    DataContext.get_current().print_on_execution_start = verbose()
    quiet_loggers()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": quiet_env()}
    if address:
        # a cluster (or a Ray Job, which sets RAY_ADDRESS): the job's runtime_env applies, don't replace it
        ray.init(address=address, log_to_driver=True)
    else:
        # logical CPUs: the training workers plus room for the decode actors, even on a 2-core laptop
        need = cpus or int(cfg.resources.workers * cfg.resources.cpus_per_worker) + 2
        # the dashboard serves the state API, which Ray Train's placement-group cleaner polls: keep it, on loopback
        ray.init(num_cpus=max(os.cpu_count() or 1, need), runtime_env=env, include_dashboard=True,
                 dashboard_host="127.0.0.1", log_to_driver=True, _system_config=local_ray_system_config())
    check_gpus(cfg.resources.workers if cfg.resources.use_gpu else 0, local=not address)


def assigned_cpus() -> int:
    """The CPUs Ray reserved for this actor or task (at least 1); outside Ray, this process's torch threads: the
    intra-op threads an ONNX Runtime session should use, so that replicas and actors do not oversubscribe."""
    try:
        import ray

        if ray.is_initialized():
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if cpus:
                return max(1, int(round(cpus)))
    except Exception:  # noqa: BLE001 - not in a worker: fall through to the process's own setting
        pass
    import torch

    return max(1, torch.get_num_threads())


def check_gpus(needed: float, *, local: bool) -> None:
    """UserError when a Ray instance started here has fewer than `needed` GPUs (Ray would wait for them forever);
    on a cluster, a note: an autoscaler may still add GPU nodes."""
    import ray

    have = ray.cluster_resources().get("GPU", 0)
    if needed <= 0 or have >= needed:
        return
    msg = f"--gpu: {needed:g} GPU(s) needed, this Ray {'instance' if local else 'cluster'} has {have:g}"
    if local:
        raise UserError(msg + " (no CUDA device visible here; drop --gpu to run on the CPU)")
    print(f"defakenet: {msg} now; waiting for the cluster to add GPU nodes", flush=True)

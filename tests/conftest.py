"""Shared fixtures: small synthetic datasets made once per session, in a temp folder."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest  # noqa: E402
from mlflow_server import free_port, mlflow_server_fixture  # noqa: E402

from defakenet.data.synth import make_dataset  # noqa: E402

# one real `mlflow server` on 127.0.0.1 for the whole session
mlflow_server = pytest.fixture(scope="session")(mlflow_server_fixture)


@pytest.fixture(scope="session")
def ray_session():
    """The session's one local Ray instance (4 logical CPUs: 2 training workers + decode/inference actors)."""
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        # the dashboard (on loopback) serves the state API that Ray Train's placement-group cleaner polls: without
        # it the placement groups of trials that Tune kills are never removed
        ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(),
                 log_to_driver=True,
                 runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "NO_ALBUMENTATIONS_UPDATE": "1",
                                           "MLFLOW_DISABLE_TELEMETRY": "true"}})
    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory):
    """40 real + 40 fake 32 px faces, flat layout: for fast pipeline and CLI tests."""
    return make_dataset(tmp_path_factory.mktemp("synth_small"), n=40, size=32, seed=1)


@pytest.fixture(scope="session")
def synth_bad(synth_small, tmp_path_factory):
    """synth_small with every 4th file not an image (so every split holds some): for runs that must stop on one."""
    import shutil

    data = tmp_path_factory.mktemp("synth_bad") / "data"
    shutil.copytree(synth_small, data)
    for png in sorted(data.rglob("*.png"))[::4]:
        png.write_text("not an image")
    return data


@pytest.fixture(scope="session")
def synth_64(tmp_path_factory):
    """160 real + 160 fake 64 px faces: enough for the model to learn the fake traces in a few epochs."""
    return make_dataset(tmp_path_factory.mktemp("synth_64"), n=160, size=64, seed=0)

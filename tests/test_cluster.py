"""Ray Train V2 as a cluster sees it, for real: a training worker killed mid-run, a rerun of a finished run, and
workers spread over the nodes of a two-node `ray.cluster_utils.Cluster`.

Evidence comes from outside the product: the MLflow metric history (one `val_roc_auc` entry per epoch, stamped
with the time it was logged), Ray's GCS actor table (each `RayTrainWorker`'s pid, node, start and death) and its
placement group table, read from the GCS (`ray._private.state.actors()`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from defakenet import tracking
from defakenet.config import Config
from defakenet.train import SCORE, fit

pytestmark = pytest.mark.slow

EXPERIMENT = "cluster"
EPOCHS = 4
# synth_small: 32 px, 56 train images (3 steps of 8 per worker and epoch); one step per epoch is enough here
SETTINGS = {"data.image_size": 32, "train.batch_size": 8, "train.max_steps": 1, "resources.workers": 2}


def ray_actors(class_name: str) -> list[dict]:
    """Every actor of `class_name` this Ray instance has known (alive or dead), from the GCS actor table."""
    import ray._private.state

    return [a for a in ray._private.state.actors().values() if a["ActorClassName"] == class_name]


def _train_workers() -> list[dict]:
    return ray_actors("RayTrainWorker")


def _runs(client, name: str) -> list:
    """The MLflow runs named `name` in EXPERIMENT, oldest first."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'",
                              order_by=["attributes.start_time ASC"])


class _Killer(threading.Thread):
    """Waits until the run has committed a first epoch (its metrics reach MLflow only then), then SIGKILLs one of
    its training worker processes."""

    def __init__(self, uri: str, run_name: str, known: set[str], timeout_s: float = 300.0):
        super().__init__(daemon=True)
        self.uri, self.run_name, self.known, self.timeout_s = uri, run_name, known, timeout_s
        self.victim: dict | None = None
        self.killed_at_ms = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            client = tracking.client(self.uri)
            deadline = time.monotonic() + self.timeout_s
            while not self._committed(client):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"run {self.run_name} logged no epoch within {self.timeout_s:.0f}s")
                time.sleep(0.2)
            alive = [a for a in _train_workers() if a["State"] == "ALIVE" and a["ActorID"] not in self.known]
            assert len(alive) == 2, alive
            self.victim = min(alive, key=lambda a: a["Pid"])
            self.killed_at_ms = int(time.time() * 1000)
            os.kill(self.victim["Pid"], signal.SIGKILL)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def _committed(self, client) -> bool:
        runs = _runs(client, self.run_name)
        return bool(runs) and bool(client.get_metric_history(runs[-1].info.run_id, SCORE))


def _log_matches(pattern: str, pids) -> list[str]:
    """The first group of every match of regex `pattern` in the session's worker log files of processes `pids`."""
    import re

    import ray._private.worker

    logs = ray._private.worker._global_node.get_logs_dir_path()
    found = []
    for pid in pids:
        for name in os.listdir(logs):
            if name.startswith("worker-") and name.endswith((f"-{pid}.out", f"-{pid}.err")):
                with open(os.path.join(logs, name), errors="replace") as f:
                    found += re.findall(pattern, f.read())
    return found


def _wait_for_pattern(pattern: str, pids, timeout_s: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while not (found := _log_matches(pattern, pids)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


@pytest.fixture(scope="module")
def killed_run(ray_session, mlflow_server, synth_small, tmp_path_factory):
    """A 2-worker, EPOCHS-epoch run with max_failures 1 whose worker is SIGKILLed once epoch 1 is committed."""
    home = tmp_path_factory.mktemp("ft_home")
    cfg = Config().replace(**SETTINGS, **{
        "data.root": str(synth_small), "train.epochs": EPOCHS, "resources.max_failures": 1,
        "tracking.home": str(home), "tracking.run_name": "ft", "tracking.tracking_uri": mlflow_server,
        "tracking.experiment": EXPERIMENT,
    })
    known = {a["ActorID"] for a in _train_workers()}
    killer = _Killer(mlflow_server, "ft", known)
    killer.start()
    t0 = time.monotonic()
    summary = fit(cfg)
    print(f"\nfit with a killed worker: {time.monotonic() - t0:.1f}s")
    killer.join(timeout=10)
    if killer.error is not None:
        raise killer.error
    assert killer.victim is not None, "the run ended before a worker was killed"
    return cfg, summary, killer, known


def test_killed_worker_resumes_from_last_checkpoint_and_trains_each_epoch_once(killed_run, mlflow_server):
    cfg, summary, killer, known = killed_run
    client = tracking.client(mlflow_server)
    runs = _runs(client, "ft")
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert summary["mlflow_run_id"] == runs[0].info.run_id

    # the killed process's actor died; exactly one new worker group (2 workers) started after the kill
    actors = {a["ActorID"]: a for a in _train_workers()}
    assert actors[killer.victim["ActorID"]]["State"] == "DEAD"
    restarted = [a for a in actors.values() if a["ActorID"] not in known and a["StartTime"] >= killer.killed_at_ms]
    assert len(restarted) == 2, restarted
    # ... and its rank 0 loaded the last committed epoch's checkpoint (K): training went on at K + 1, not at 1
    resumed = _wait_for_pattern(r"resumed from epoch (\d+) checkpoint", [a["Pid"] for a in restarted])
    assert len(set(resumed)) == 1, resumed  # rank 0 says it (a line may reach both its .out and .err log)
    k = int(resumed[0])
    assert 1 <= k < EPOCHS, k
    # the driver was told, in one line from the Train controller, which worker failed and that the run goes on
    controllers = [a["Pid"] for a in ray_actors("TrainController") if a["StartTime"] <= killer.killed_at_ms]
    told = _wait_for_pattern(r"training worker\(s\) rank ([\d, ]+) failed \(.*\); restarting the workers from the "
                             r"latest checkpoint \(failure 1, 1 allowed\)", controllers)
    assert len(set(told)) == 1, told

    # epochs reach MLflow when Ray commits their report (checkpoint recorded as the latest): each epoch once, none
    # missing. Epochs logged before the kill were committed, so K covers them; epoch K itself may be committed (and
    # logged) just after the kill, when both workers had reported it before one died. Epochs after K were trained
    # by the restarted workers, so they were logged after the kill.
    history = sorted(client.get_metric_history(runs[0].info.run_id, SCORE), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, EPOCHS + 1))
    before = [m.step for m in history if m.timestamp <= killer.killed_at_ms]
    assert before == list(range(1, len(before) + 1)) and len(before) <= k, (before, k, killer.killed_at_ms)
    assert all(m.timestamp > killer.killed_at_ms for m in history[k:]), (history, killer.killed_at_ms)


def test_rerun_of_finished_run_trains_only_the_added_epoch(killed_run, mlflow_server):
    cfg, first, _, _ = killed_run
    known = {a["ActorID"] for a in _train_workers()}
    t0 = time.monotonic()
    summary = fit(cfg.replace(**{"train.epochs": EPOCHS + 1}))
    print(f"\nrerun with one more epoch: {time.monotonic() - t0:.1f}s")

    # Ray Train restores the run's latest checkpoint (epoch EPOCHS) from its storage folder; the finished MLflow
    # run is left as it was, and a new run of the same name holds the one epoch trained now
    client = tracking.client(mlflow_server)
    runs = _runs(client, "ft")
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert runs[0].info.run_id == first["mlflow_run_id"] and runs[1].info.run_id == summary["mlflow_run_id"]
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, SCORE)) == list(range(1, EPOCHS + 1))
    assert [m.step for m in client.get_metric_history(runs[1].info.run_id, SCORE)] == [EPOCHS + 1]
    assert summary["storage"] == first["storage"]
    workers = [a for a in _train_workers() if a["ActorID"] not in known]
    assert len(workers) == 2
    resumed = _wait_for_pattern(r"resumed from epoch (\d+) checkpoint", [a["Pid"] for a in workers])
    assert set(resumed) == {str(EPOCHS)}, resumed


# ---- two nodes

CLUSTER_SCRIPT = r'''
"""Two Ray nodes on this machine, 2 CPUs each; a STRICT_SPREAD 2-worker run; JSON evidence on the last line."""
import json
import sys

import ray
import ray._private.state
from ray.cluster_utils import Cluster

from defakenet.config import Config
from defakenet.train import fit

data, home = sys.argv[1], sys.argv[2]
node_args = {"num_cpus": 2, "object_store_memory": 100 * 2**20}
cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
cluster.add_node(**node_args)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
try:
    cfg = Config().replace(**json.loads(sys.argv[3]), **{
        "data.root": data, "tracking.home": home, "tracking.run_name": "spread", "train.epochs": 1,
        "resources.placement_strategy": "STRICT_SPREAD"})
    summary = fit(cfg, log=lambda m: print(m, file=sys.stderr))
    out = {
        "nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]],
        "workers": [{"node": a["Address"]["NodeID"], "pid": a["Pid"]}
                    for a in ray._private.state.actors().values() if a["ActorClassName"] == "RayTrainWorker"],
        "placement_groups": [{"strategy": pg["strategy"], "bundles": list(pg["bundles"].values()),
                              "nodes": list(pg["bundles_to_node_id"].values())}
                             for pg in ray.util.placement_group_table().values()],
        "best_epoch": summary["best_epoch"],
    }
finally:
    ray.shutdown()
    cluster.shutdown()
print("RESULT " + json.dumps(out))
'''


def test_strict_spread_places_workers_on_different_nodes(synth_small, tmp_path):
    script = tmp_path / "two_nodes.py"
    script.write_text(CLUSTER_SCRIPT)
    # the cluster's own temp dir: its sessions and the ray_current_cluster file stay out of /tmp/ray (and away
    # from the session instance); short, for Ray's unix socket paths
    ray_tmp = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0", "NO_ALBUMENTATIONS_UPDATE": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, str(script), str(synth_small), str(tmp_path / "home"),
                               json.dumps(SETTINGS)], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(f"\ntwo-node run: {time.monotonic() - t0:.1f}s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    out = json.loads(lines[-1][len("RESULT "):])

    assert len(out["nodes"]) == 2
    # one worker per node: the two RayTrainWorker actors ran on the two different nodes
    assert len(out["workers"]) == 2
    assert sorted(w["node"] for w in out["workers"]) == sorted(out["nodes"])
    # ... because the workers' placement group was STRICT_SPREAD, one 1-CPU bundle per node
    (pg,) = [pg for pg in out["placement_groups"] if pg["strategy"] == "STRICT_SPREAD"]
    assert pg["bundles"] == [{"CPU": 1.0}, {"CPU": 1.0}] and sorted(pg["nodes"]) == sorted(out["nodes"])
    assert out["best_epoch"] == 1

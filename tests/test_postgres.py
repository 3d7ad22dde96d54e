"""MLflow as production runs it (mlflow/production.md): `mlflow server --backend-store-uri postgresql+psycopg2://…`
on a throw-away PostgreSQL cluster of this module's own (127.0.0.1, a free port). The registry tests run again
against it; a Ray Tune study whose two trials log at once runs against a second server on the same database with
`--app-name basic-auth`, defakenet logging in with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (the
session's Ray instance started before they were set, so only what defakenet hands its trials and Train
controllers brings them there); what the servers stored is read back from PostgreSQL itself. tests/test_auth.py
has the refused-login cases.

PostgreSQL missing (Debian: `apt-get install postgresql`; .ci/run installs it): skipped, naming what is missing;
under CI=true that fails instead.
"""

from __future__ import annotations

import os
import secrets
import uuid

import pytest
from mlflow_server import Postgres, basic_auth_env, postgres_bindir, start_mlflow_server, stop_mlflow_server

# the registry's own tests, collected here too: they take `mlflow_server`, which this module's fixture below
# replaces with the PostgreSQL-backed server
from test_registry import (  # noqa: F401
    test_accuracy_drop_and_auc_margin_block_promotion,
    test_first_version_is_champion_worse_one_challenger_better_one_champion,
    test_list_and_show_print_versions_aliases_metrics_and_the_decision,
    test_promote_and_rollback_walk_the_history_back,
    test_rollback_returns_to_a_champion_set_outside_defakenet,
    test_rollback_without_champion_or_history_exits_2,
    test_unknown_model_or_version_exits_2_naming_what_exists,
    test_version_without_test_metrics_is_a_clear_user_error,
)

from defakenet import tracking
from defakenet.config import Config
from defakenet.tune import run_study


@pytest.fixture(scope="module")
def postgres():
    bindir, why = postgres_bindir()
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        why = "psycopg2 missing (pip install -e '.[test]', or psycopg2-binary)"
        bindir = None
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    pg = Postgres(bindir)
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """This module's server: PostgreSQL for runs and the registry, proxied artifacts in a temp folder."""
    uri, proc = start_mlflow_server(tmp_path_factory.mktemp("mlflow_pg"), backend_store_uri=postgres.uri)
    yield uri
    stop_mlflow_server(proc)


@pytest.fixture(scope="module")
def production_server(postgres, tmp_path_factory):
    """(uri, admin password) of a second server on the same database, as production.md runs it: PostgreSQL and
    basic auth. Only the Tune study uses it: basic auth hashes the password on every request (~0.1 s of CPU
    here), which the registry tests' hundreds of requests need not pay."""
    tmp = tmp_path_factory.mktemp("mlflow_pg_auth")
    password = secrets.token_urlsafe(12)
    uri, proc = start_mlflow_server(tmp, backend_store_uri=postgres.uri, app_name="basic-auth",
                                    env=basic_auth_env(tmp, password, "admin"))
    yield uri, password
    stop_mlflow_server(proc)


def test_server_stores_runs_and_registry_in_postgres(postgres, mlflow_server):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    name = f"pg-test-{uuid.uuid4().hex[:8]}"
    exp_id = client.create_experiment(name)
    run_id = client.create_run(exp_id, run_name="pg-run").info.run_id
    client.log_metric(run_id, "test_roc_auc", 0.93)
    client.create_registered_model(name)
    client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id, await_creation_for=0)
    tracking.set_alias(name, "champion", 1, tracking_uri=mlflow_server)
    # read past the server: the rows are in PostgreSQL
    assert postgres.query(f"SELECT name FROM runs WHERE run_uuid = '{run_id}'") == [("pg-run",)]
    assert postgres.query(f"SELECT value FROM latest_metrics WHERE run_uuid = '{run_id}' AND key = 'test_roc_auc'") \
        == [(0.93,)]
    assert postgres.query(f"SELECT alias, version FROM registered_model_aliases WHERE name = '{name}'") \
        == [("champion", 1)]
    # the password of the store is not in what defakenet prints about it
    shown = tracking._redact(postgres.uri)
    assert postgres.password not in shown and "mlflow:***@127.0.0.1" in shown


@pytest.mark.slow
def test_tune_study_with_concurrent_trials_logs_to_postgres(ray_session, postgres, production_server, synth_small,
                                                           tmp_path, monkeypatch):
    """Two trials at once, each its own MLflow run written while the other writes, through basic auth; the winner
    registered. The session's Ray instance started before the credentials were set: only what defakenet hands
    its trials and their Train controllers brings them there."""
    mlflow_server, password = production_server
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    model = f"pg-tuned-{uuid.uuid4().hex[:8]}"
    cfg = Config.from_sources(None, ["tune.space={optim: {lr: {choice: [3.0e-3, 1.0e-4]}}}"]).replace(**{
        "data.image_size": 32, "train.batch_size": 8, "train.max_steps": 3, "train.epochs": 2,
        "model.freeze_depth": 5, "resources.workers": 1, "tune.num_samples": 2, "tune.max_concurrent": 2,
        "tune.grace_period": 2, "tune.search": "random", "train.seed": 1,
        "data.root": str(synth_small), "tracking.home": str(tmp_path), "tracking.tracking_uri": mlflow_server,
        "tracking.experiment": "pg-tune", "tracking.run_name": "pg-study", "tracking.register": model})
    summary = run_study(cfg, log=lambda _: None)
    table = summary["trials"]
    assert len(table) == 2 and table["status"].isin(["TERMINATED", "STOPPED_EARLY"]).all()

    client = tracking._client(mlflow_server)
    trials = [client.get_run(r) for r in table["mlflow_run_id"]]
    assert all(t.info.status == "FINISHED" for t in trials)
    # the two trials ran at once: each started before the other ended
    a, b = (t.info for t in trials)
    assert a.start_time < b.end_time and b.start_time < a.end_time, (a, b)
    for t in trials:
        steps = sorted(m.step for m in client.get_metric_history(t.info.run_id, "val_roc_auc"))
        assert steps == list(range(1, len(steps) + 1)) and steps, t.info.run_name
    # in PostgreSQL: the study's parent run, its two trials, their epochs' metrics, the registered winner
    parent = summary["mlflow_run_id"]
    children = postgres.query(f"SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId' AND value = '{parent}'")
    assert sorted(r for (r,) in children) == sorted(table["mlflow_run_id"])
    assert postgres.query(f"SELECT status FROM runs WHERE run_uuid = '{parent}'") == [("FINISHED",)]
    epochs = postgres.query("SELECT count(*) FROM metrics WHERE key = 'val_roc_auc' AND run_uuid IN "
                            f"({', '.join(repr(r) for r in table['mlflow_run_id'])})")[0][0]
    assert epochs == sum(len(client.get_metric_history(t.info.run_id, "val_roc_auc")) for t in trials)
    assert postgres.query(f"SELECT alias, version FROM registered_model_aliases WHERE name = '{model}'") \
        == [("champion", 1)]
    assert tracking.get_version_by_alias(model, "champion", tracking_uri=mlflow_server) == 1

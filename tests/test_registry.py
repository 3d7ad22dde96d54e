"""defakenet.registry and `defakenet registry …` against a real `mlflow server` on loopback: the promotion gate,
manual promotion, rollback through the champion history, and what list / show print.

Versions are registered cheaply: a run holding only test metrics, and a model version whose source is that run's
`runs:/RUN_ID/model` (no model files are needed to move aliases around). Each test uses its own model name.
"""

from __future__ import annotations

import json
import uuid

import pytest
from output import own_output

from defakenet import registry, tracking
from defakenet.cli import build_parser, main
from defakenet.errors import UserError

# `mlflow_server` (a real server on loopback, one per session) comes from conftest.py
GATE = {"auc_margin": 0.0, "max_accuracy_drop": 0.01}


def _name() -> str:
    return f"registry-test-{uuid.uuid4().hex[:8]}"


def _register(uri: str, name: str, auc: float | None, acc: float | None) -> int:
    """A finished run with test_roc_auc / test_accuracy (None: not logged) registered as a new version of `name`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("registry-test")
    exp_id = exp.experiment_id if exp else client.create_experiment("registry-test")
    run_id = client.create_run(exp_id).info.run_id
    for key, value in (("test_roc_auc", auc), ("test_accuracy", acc)):
        if value is not None:
            client.log_metric(run_id, key, value)
    client.log_metric(run_id, "best_val_roc_auc", 0.99)  # not a test metric: never compared
    client.set_terminated(run_id)
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # exists already
    return int(client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id,
                                           await_creation_for=0).version)  # READY at once: no files


def _gate(uri, name, auc, acc, **kw):
    version = _register(uri, name, auc, acc)
    return registry.gate(name, version, tracking_uri=uri, **{**GATE, **kw})


def _aliases(uri, name) -> dict[int, list[str]]:
    return {v["version"]: v["aliases"] for v in tracking.list_versions(name, tracking_uri=uri)}


def _cli(capsys, *argv):
    capsys.readouterr()  # drop what came before (mlflow's own log lines)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, own_output(err)


def _one_line_error(err: str) -> str:
    assert err.startswith("defakenet: error:") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


# ---- the gate


def test_first_version_is_champion_worse_one_challenger_better_one_champion(mlflow_server):
    name = _name()
    first = _gate(mlflow_server, name, 0.90, 0.85)
    assert first["decision"] == "champion" and first["champion"] is None
    assert "No champion yet, so v1" in first["reason"]
    assert _aliases(mlflow_server, name) == {1: ["champion"]}

    worse = _gate(mlflow_server, name, 0.88, 0.86)
    assert worse["decision"] == "challenger"
    assert worse["new"] == {"test_roc_auc": 0.88, "test_accuracy": 0.86}
    assert worse["champion"] == {"version": 1, "test_roc_auc": 0.90, "test_accuracy": 0.85}
    assert worse["line"].startswith(f"{name} v2 → challenger: ")
    assert _aliases(mlflow_server, name) == {1: ["champion"], 2: ["challenger"]}
    v2 = tracking.list_versions(name, tracking_uri=mlflow_server)[1]
    tags = v2["tags"]
    assert tags["gate.decision"] == "challenger" and tags["gate.champion_version"] == "1"
    assert float(tags["gate.test_roc_auc"]) == 0.88 and float(tags["gate.test_accuracy"]) == 0.86
    assert float(tags["gate.champion_test_roc_auc"]) == 0.90 and float(tags["gate.champion_test_accuracy"]) == 0.85
    assert float(tags["gate.auc_margin"]) == 0.0 and float(tags["gate.max_accuracy_drop"]) == 0.01
    # one human sentence with both sets of numbers, in the tag and in the description
    for text in (tags["gate.reason"], v2["description"]):
        assert all(n in text for n in ("0.8800", "0.9000", "0.8600", "0.8500", "v1")), text
    assert v2["description"].startswith("gate: challenger.")

    better = _gate(mlflow_server, name, 0.95, 0.86)
    assert better["decision"] == "champion"
    assert "v3's test ROC-AUC 0.9500 beats champion v1's 0.9000" in better["reason"]
    assert _aliases(mlflow_server, name) == {1: [], 2: ["challenger"], 3: ["champion"]}
    v3 = tracking.list_versions(name, tracking_uri=mlflow_server)[2]
    assert v3["tags"]["promoted_by"] == "gate" and v3["tags"]["previous_champion"] == "1"
    assert registry.history_of(name, tracking_uri=mlflow_server) == [1, 3]


def test_accuracy_drop_and_auc_margin_block_promotion(mlflow_server):
    name = _name()
    _gate(mlflow_server, name, 0.90, 0.90)
    # higher AUC, but accuracy falls by 0.05 > 0.01
    blocked = _gate(mlflow_server, name, 0.97, 0.85)
    assert blocked["decision"] == "challenger"
    assert "accuracy 0.8500 is 0.0500 below the champion's 0.9000, more than the allowed 0.0100" in blocked["reason"]
    assert "beats champion v1's 0.9000" in blocked["reason"]
    # a drop of exactly max_accuracy_drop is allowed
    allowed = _gate(mlflow_server, name, 0.91, 0.89)
    assert allowed["decision"] == "champion", allowed["reason"]
    # higher AUC, but not by more than the margin
    small = _gate(mlflow_server, name, 0.915, 0.95, auc_margin=0.01)
    assert small["decision"] == "challenger" and "does not beat champion v3's 0.9100" in small["reason"]
    assert _aliases(mlflow_server, name)[3] == ["champion"] and _aliases(mlflow_server, name)[4] == ["challenger"]


def test_version_without_test_metrics_is_a_clear_user_error(mlflow_server):
    name = _name()
    version = _register(mlflow_server, name, None, 0.9)
    with pytest.raises(UserError, match=rf"{name} v{version} has no test metrics test_roc_auc") as e:
        registry.gate(name, version, tracking_uri=mlflow_server, **GATE)
    assert "registry promote" in str(e.value)
    with pytest.raises(UserError, match="has no version 7 \\(versions: 1\\)"):
        registry.gate(name, 7, tracking_uri=mlflow_server, **GATE)


# ---- promote and rollback


def test_promote_and_rollback_walk_the_history_back(mlflow_server, capsys):
    name = _name()
    for auc in (0.90, 0.80, 0.95):  # v1 champion, v2 challenger, v3 champion
        _gate(mlflow_server, name, auc, 0.9)
    uri = ["--name", name, "--tracking-uri", mlflow_server]

    code, out, _ = _cli(capsys, "registry", "promote", "2", *uri)
    assert code == 0 and f"{name} v2 is now champion (was v3" in out
    assert _aliases(mlflow_server, name) == {1: [], 2: ["champion"], 3: []}  # challenger went with the promotion
    v2 = tracking.list_versions(name, tracking_uri=mlflow_server)[1]
    assert v2["tags"]["promoted_by"] == "manual" and v2["tags"]["previous_champion"] == "3"
    code, out, _ = _cli(capsys, "registry", "promote", "v2", *uri)
    assert code == 0 and "already champion" in out
    assert registry.history_of(name, tracking_uri=mlflow_server) == [1, 3, 2]

    code, out, _ = _cli(capsys, "registry", "rollback", *uri)
    assert code == 0 and "v3 is champion again (rolled back from v2)" in out
    assert _aliases(mlflow_server, name)[3] == ["champion"]
    # the rolled-back version left the history: a second rollback goes further back, not back to v2
    code, out, _ = _cli(capsys, "registry", "rollback", *uri)
    assert code == 0 and "v1 is champion again (rolled back from v3)" in out
    v1 = tracking.list_versions(name, tracking_uri=mlflow_server)[0]
    assert v1["tags"]["promoted_by"] == "rollback" and v1["tags"]["previous_champion"] == "3"
    code, _, err = _cli(capsys, "registry", "rollback", *uri)
    assert code == 2 and f"champion v1 of {name!r} has no previous champion to roll back to" in _one_line_error(err)
    assert _aliases(mlflow_server, name)[1] == ["champion"]


def test_rollback_returns_to_a_champion_set_outside_defakenet(mlflow_server):
    name = _name()
    _gate(mlflow_server, name, 0.90, 0.9)
    _register(mlflow_server, name, 0.91, 0.9)
    _register(mlflow_server, name, 0.92, 0.9)
    tracking.set_alias(name, "champion", 2, tracking_uri=mlflow_server)  # e.g. moved in the MLflow UI
    assert registry.promote(name, 3, tracking_uri=mlflow_server) == \
        {"name": name, "previous": 2, "champion": 3, "changed": True}
    assert registry.rollback(name, tracking_uri=mlflow_server)["champion"] == 2
    assert registry.rollback(name, tracking_uri=mlflow_server)["champion"] == 1


def test_rollback_without_champion_or_history_exits_2(mlflow_server, capsys):
    name = _name()
    _register(mlflow_server, name, 0.9, 0.9)
    uri = ["--name", name, "--tracking-uri", mlflow_server]
    code, _, err = _cli(capsys, "registry", "rollback", *uri)
    assert code == 2 and f"registered model {name!r} has no champion to roll back from" in _one_line_error(err)
    code, _, _ = _cli(capsys, "registry", "promote", "1", *uri)
    assert code == 0
    code, _, err = _cli(capsys, "registry", "rollback", *uri)
    assert code == 2 and "no previous champion to roll back to" in _one_line_error(err)


# ---- list and show


def test_list_and_show_print_versions_aliases_metrics_and_the_decision(mlflow_server, capsys):
    name = _name()
    _gate(mlflow_server, name, 0.9123, 0.8765)
    _gate(mlflow_server, name, 0.85, 0.80)
    uri = ["--name", name, "--tracking-uri", mlflow_server]

    code, out, _ = _cli(capsys, "registry", "list", *uri)
    assert code == 0
    head, row1, row2 = out.strip().splitlines()
    assert head.split()[:4] == ["version", "aliases", "test_roc_auc", "test_accuracy"] and "run id" in head
    assert row1.split()[:4] == ["1", "champion", "0.9123", "0.8765"]
    assert row2.split()[:4] == ["2", "challenger", "0.8500", "0.8000"]

    code, out, _ = _cli(capsys, "registry", "list", "--json", *uri)
    rows = json.loads(out)
    assert [r["version"] for r in rows] == [1, 2] and rows[0]["aliases"] == ["champion"]
    assert rows[1]["test_roc_auc"] == 0.85 and rows[1]["run_id"] and rows[1]["created"]

    code, out, _ = _cli(capsys, "registry", "show", "2", *uri)
    assert code == 0
    assert out.startswith(f"{name} v2  aliases: challenger")
    assert "gate:     challenger: v2's test ROC-AUC 0.8500 does not beat champion v1's 0.9123" in out
    assert "0.8500" in out and "0.9123" in out  # both sets of numbers
    assert "test_roc_auc 0.8500" in out and "runs:/" in out and "gate.champion_version" in out
    assert f"champion history of {name}: v1" in out

    code, out, _ = _cli(capsys, "registry", "show", "1", "--json", *uri)
    info = json.loads(out)
    assert info["gate"]["decision"] == "champion" and info["metrics"]["test_accuracy"] == 0.8765


def test_unknown_model_or_version_exits_2_naming_what_exists(mlflow_server, capsys):
    name = _name()
    _register(mlflow_server, name, 0.9, 0.9)
    _register(mlflow_server, name, 0.9, 0.9)
    uri = ["--tracking-uri", mlflow_server]
    code, _, err = _cli(capsys, "registry", "promote", "9", "--name", name, *uri)
    assert code == 2 and f"{name!r} has no version 9 (versions: 1, 2)" in _one_line_error(err)
    code, _, err = _cli(capsys, "registry", "show", "9", "--name", name, *uri)
    assert code == 2 and "has no version 9 (versions: 1, 2)" in _one_line_error(err)
    code, _, err = _cli(capsys, "registry", "list", "--name", "no-such-model-xyz", *uri)
    assert code == 2 and "no registered model 'no-such-model-xyz'" in _one_line_error(err)


def test_default_store_is_the_one_training_uses(tmp_path, monkeypatch, capsys):
    # no --tracking-uri, no $MLFLOW_TRACKING_URI: the SQLite store under --home, as `defakenet train --home` uses
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = _cli(capsys, "registry", "list", "--home", str(tmp_path))
    err = err.strip().splitlines()[-1]  # mlflow logs that it creates the store's tables first
    assert code == 2 and "no registered model 'defakenet'" in _one_line_error(err)
    assert f"sqlite:///{tmp_path.resolve() / tracking.DB_FILE}" in err


@pytest.mark.parametrize("action", ["list", "show", "promote", "rollback"])
def test_registry_commands_have_help(action, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["registry", action, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--tracking-uri" in out and "--name" in out and "--home" in out


def test_bad_version_argument_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["registry", "promote", "latest"])
    assert e.value.code == 2 and "invalid version 'latest'" in capsys.readouterr().err

"""Promotion in the model registry: which version is the `champion` that serving follows.

    train ─▶ register vN ─▶ gate(vN vs champion) ─▶ alias "champion" (serving: models:/NAME@champion)
                                                 └▶ alias "challenger" (kept for comparison, promoted by hand)

- `gate`: a new version becomes champion only if its test ROC-AUC beats the champion's by more than
  `promote.auc_margin` AND its test accuracy is at most `promote.max_accuracy_drop` below the champion's; else it
  becomes challenger. The decision, a one-sentence reason and both sets of numbers are recorded on the version
  (`gate.*` tags and its description), so the registry says why each version is where it is.
- `promote` moves champion by hand; `rollback` moves it back to the champion before the current one.
- `list_table` / `show` (+ `format_table` / `format_show`) are what `defakenet registry list|show` print.

Champion history: a registered-model tag `champion_history`, the versions that champion was moved to, oldest
first ("1,3,4": v4 is champion, v3 was before it). A stack on the model, not `previous_champion` tags on versions:
one read gives the whole order, a deleted version does not break a chain (rollback skips versions that are gone),
and rollback is a pop. The alias is the truth, the tag only its past: before each move the current champion is
pushed if it is not on top (champion moved outside defakenet, e.g. in the MLflow UI), so rollback still returns to
it. `rollback` pops the current champion and moves the alias to the new top, so the rolled-back version is gone from
the history: rolling back twice goes two steps back ("1,3,4" → v3 → v1), then says there is nothing to roll back to;
it never swings between two versions. The read-modify-write is not atomic: two moves at the same instant may lose one
history entry (the alias itself stays right). The history keeps the last `MAX_HISTORY` moves.

Version tags written here: `gate.decision`, `gate.reason`, `gate.test_roc_auc`, `gate.test_accuracy`,
`gate.champion_version`, `gate.champion_test_roc_auc`, `gate.champion_test_accuracy`, `gate.auc_margin`,
`gate.max_accuracy_drop`, `gate.at`; on each new champion `promoted_by` (gate, manual or rollback), `promoted_at`
and `previous_champion`; on a rolled-back version `rolled_back_at`.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from defakenet import tracking
from defakenet.errors import UserError

DEFAULT_MODEL_NAME = "defakenet"
CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "champion_history"
MAX_HISTORY = 200  # comma-separated versions stay far below mlflow's tag value limit
# the test metrics of a version's run that the gate compares (logged by train.finish)
AUC, ACCURACY = "test_roc_auc", "test_accuracy"
_EPS = 1e-12  # float noise: an accuracy drop of exactly max_accuracy_drop passes


# ---- the gate


def gate(name: str, version: int, *, tracking_uri: str | None = None, auc_margin: float,
         max_accuracy_drop: float, suite=None, max_set_auc_drop: float = 0.0, use_gpu: bool = False,
         log=print) -> dict[str, Any]:
    """Give `version` of `name` the alias champion or challenger by comparing its test metrics with the champion's.

    Champion if there is no champion yet, or if test ROC-AUC > champion's + `auc_margin` and test accuracy >=
    champion's - `max_accuracy_drop`; challenger otherwise (also when the champion has no test metrics to compare
    with: promote by hand then). With a `suite` (defakenet.suite.Suite) the new version is scored on it (a suite
    run, `suite.*` tags on the version), and so is the champion unless its tags hold this suite's numbers; a version
    whose ROC-AUC on any suite cell (set × degradation) is more than `max_set_auc_drop` below the champion's stays
    challenger, and the reason names that set. The decision is recorded as `gate.*` tags and in the description.

    Returns {name, version, decision, reason, line, new: {test_roc_auc, test_accuracy}, champion: {version,
    test_roc_auc, test_accuracy} or None}; `line` is "NAME vN → decision: reason" for logs.
    UserError if the model or version does not exist or the version's run has no test ROC-AUC / accuracy.
    """
    versions = tracking.list_versions(name, tracking_uri=tracking_uri)
    row = _find(name, versions, version)
    new = _test_metrics(row)
    missing = [k for k, v in new.items() if v is None]
    if missing:
        logged = ", ".join(sorted(row["metrics"])) or "no test metrics"
        raise UserError(f"{name} v{version} has no test metrics {' and '.join(missing)} (its run "
                        f"{row['run_id'] or '(none)'} logged {logged}); "
                        f"the promotion gate compares the test metrics of a version's run (training logs them when "
                        f"data has a test split); promote it by hand with `defakenet registry promote {version}`")
    champ_row = next((v for v in versions if CHAMPION in v["aliases"]), None)
    champ = None if champ_row is None else {"version": champ_row["version"], **_test_metrics(champ_row)}
    decision, reason = _decide(int(version), new, champ, auc_margin, max_accuracy_drop)
    suite_tags: dict[str, Any] = {}
    if suite is not None:
        ok, sentence = _suite_rule(name, int(version), champ_row, suite, max_set_auc_drop, tracking_uri, use_gpu, log)
        if decision == CHAMPION and not ok:
            decision, reason = CHALLENGER, f"{reason[:-1]}, but {sentence}."
        else:
            reason = f"{reason[:-1]}; {sentence}."
        suite_tags = {"gate.suite_digest": suite.digest(), "gate.max_set_auc_drop": float(max_set_auc_drop),
                      "gate.suite_passed": ok}

    tags = {**suite_tags, "gate.decision": decision, "gate.reason": reason, "gate.test_roc_auc": new[AUC],
            "gate.test_accuracy": new[ACCURACY], "gate.auc_margin": float(auc_margin),
            "gate.max_accuracy_drop": float(max_accuracy_drop), "gate.at": _now(),
            "gate.champion_version": champ["version"] if champ else "none",
            "gate.champion_test_roc_auc": _tag_number(champ and champ[AUC]),
            "gate.champion_test_accuracy": _tag_number(champ and champ[ACCURACY])}
    tracking.set_version_tags(name, version, tags, tracking_uri=tracking_uri)
    text = f"gate: {decision}. {reason}"
    old = row.get("description", "")
    tracking.set_version_description(name, version, f"{old}\n\n{text}" if old else text, tracking_uri=tracking_uri)
    if decision == CHAMPION:
        if champ is None or champ["version"] != int(version):
            _move_champion(name, int(version), champ and champ["version"], "gate", tracking_uri)
        if CHALLENGER in row["aliases"]:  # a challenger gated again, e.g. after a rollback
            tracking.delete_alias(name, CHALLENGER, tracking_uri=tracking_uri)
    else:
        tracking.set_alias(name, CHALLENGER, version, tracking_uri=tracking_uri)
    return {"name": name, "version": int(version), "decision": decision, "reason": reason,
            "line": f"{name} v{version} → {decision}: {reason}",
            "new": new, "champion": champ}


def _decide(version: int, new: dict, champ: dict | None, auc_margin: float,
            max_drop: float) -> tuple[str, str]:
    """(decision, one sentence with both sets of numbers)."""
    mine = f"test ROC-AUC {new[AUC]:.4f}, accuracy {new[ACCURACY]:.4f}"
    if champ is None:
        return CHAMPION, f"No champion yet, so v{version} ({mine}) becomes champion."
    cv = champ["version"]
    if cv == version:
        return CHAMPION, f"v{version} is already the champion ({mine})."
    if champ[AUC] is None or champ[ACCURACY] is None:
        return CHALLENGER, (f"Champion v{cv} has no test metrics to compare with v{version} ({mine}); "
                            f"promote by hand if v{version} should serve.")
    auc_ok = new[AUC] > champ[AUC] + auc_margin
    auc = (f"test ROC-AUC {new[AUC]:.4f} {'beats' if auc_ok else 'does not beat'} champion v{cv}'s "
           f"{champ[AUC]:.4f} by more than the margin {auc_margin:.4f}")
    drop = champ[ACCURACY] - new[ACCURACY]
    acc_ok = drop <= max_drop + _EPS
    acc = f"test accuracy {new[ACCURACY]:.4f} is "
    if drop <= 0:
        acc += f"not below the champion's {champ[ACCURACY]:.4f}"
    else:
        acc += (f"{drop:.4f} below the champion's {champ[ACCURACY]:.4f}, "
                f"{'within' if acc_ok else 'more than'} the allowed {max_drop:.4f}")
    if auc_ok and acc_ok:
        return CHAMPION, f"v{version}'s {auc}, and its {acc}."
    if auc_ok:
        return CHALLENGER, f"v{version}'s {auc}, but its {acc}."
    if acc_ok:
        return CHALLENGER, f"v{version}'s {auc} (its {acc})."
    return CHALLENGER, f"v{version}'s {auc}, and its {acc}."


def _suite_rule(name: str, version: int, champ_row: dict | None, suite, max_drop: float, tracking_uri: str | None,
                use_gpu: bool, log) -> tuple[bool, str]:
    """Score `version` (and the champion, unless its tags already hold this suite) on `suite`; (passes, sentence)."""
    from defakenet.suite import cell_auc_map, cell_aucs_from_tags, compare_cells, run_suite

    def scored(v: int) -> dict:
        log(f"registry: scoring {name} v{v} on the promotion suite ({suite.source})")
        return cell_auc_map(run_suite(f"models:/{name}/{v}", suite, tracking_uri=tracking_uri, use_gpu=use_gpu,
                                      log=log))

    new = scored(version)
    if champ_row is None or champ_row["version"] == version:
        return True, f"the promotion suite was recorded for v{version} (no other champion to compare with)"
    champ = cell_aucs_from_tags(champ_row["tags"], suite) or scored(champ_row["version"])
    return compare_cells(new, champ, max_drop)


# ---- moving the champion by hand


def promote(name: str, version: int, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """Make `version` of `name` the champion by hand; returns {name, previous, champion, changed}.

    The previous champion goes on the history (see the module docstring), so `rollback` undoes this. A version that
    was challenger loses that alias. UserError for an unknown model or version (the message lists the versions).
    """
    versions = tracking.list_versions(name, tracking_uri=tracking_uri)
    row = _find(name, versions, version)
    current = next((v["version"] for v in versions if CHAMPION in v["aliases"]), None)
    if current == int(version):
        return {"name": name, "previous": current, "champion": current, "changed": False}
    _move_champion(name, int(version), current, "manual", tracking_uri)
    if CHALLENGER in row["aliases"]:
        tracking.delete_alias(name, CHALLENGER, tracking_uri=tracking_uri)
    return {"name": name, "previous": current, "champion": int(version), "changed": True}


def rollback(name: str, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """Move champion of `name` back to the champion before the current one; returns {name, previous, champion}.

    `previous` is the version that was champion and is rolled back (it leaves the history, so a second rollback
    goes one step further back). Versions deleted since skip. UserError if `name` has no champion, or no earlier
    champion that still exists.
    """
    versions = tracking.list_versions(name, tracking_uri=tracking_uri)
    current = next((v["version"] for v in versions if CHAMPION in v["aliases"]), None)
    if current is None:
        raise UserError(f"registered model {name!r} has no champion to roll back from; choose one with "
                        f"`defakenet registry promote VERSION` (versions: {_version_list(versions)})")
    history = history_of(name, tracking_uri=tracking_uri)
    existing = {v["version"] for v in versions}
    while history and (history[-1] == current or history[-1] not in existing):
        history.pop()
    if not history:
        raise UserError(f"champion v{current} of {name!r} has no previous champion to roll back to; choose one "
                        f"with `defakenet registry promote VERSION` (versions: {_version_list(versions)})")
    target = history[-1]
    tracking.set_alias(name, CHAMPION, target, tracking_uri=tracking_uri)
    tracking.set_model_tags(name, {HISTORY_TAG: _history_str(history)}, tracking_uri=tracking_uri)
    now = _now()
    tracking.set_version_tags(name, target, {"promoted_by": "rollback", "promoted_at": now,
                                             "previous_champion": current}, tracking_uri=tracking_uri)
    tracking.set_version_tags(name, current, {"rolled_back_at": now}, tracking_uri=tracking_uri)
    return {"name": name, "previous": current, "champion": target}


def history_of(name: str, *, tracking_uri: str | None = None) -> list[int]:
    """The versions champion of `name` was moved to, oldest first (parsed from the `champion_history` tag)."""
    raw = tracking.get_model_tags(name, tracking_uri=tracking_uri).get(HISTORY_TAG, "")
    return [int(x) for x in raw.split(",") if x.strip().isdigit()]


def _move_champion(name: str, version: int, current: int | None, how: str, tracking_uri: str | None) -> None:
    history = history_of(name, tracking_uri=tracking_uri)
    if current is not None and (not history or history[-1] != current):
        history.append(current)  # champion was set outside defakenet: keep it so that rollback can return to it
    history.append(version)
    # alias first: it is what serving follows; a failed tag write is repaired by the next move (see above)
    tracking.set_alias(name, CHAMPION, version, tracking_uri=tracking_uri)
    tracking.set_model_tags(name, {HISTORY_TAG: _history_str(history)}, tracking_uri=tracking_uri)
    tracking.set_version_tags(name, version, {"promoted_by": how, "promoted_at": _now(),
                                              "previous_champion": current if current is not None else "none"},
                              tracking_uri=tracking_uri)


# ---- what the CLI prints


def list_table(name: str, *, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """One row per version of `name`, oldest first: {version, aliases, test_roc_auc, test_accuracy, created,
    run_id}; metrics are None where the run has none, `created` is local time "YYYY-MM-DD HH:MM:SS"."""
    return [{"version": v["version"], "aliases": v["aliases"], **_test_metrics(v), "created": _time(v["created"]),
             "run_id": v["run_id"]} for v in tracking.list_versions(name, tracking_uri=tracking_uri)]


def format_table(rows: list[dict[str, Any]]) -> str:
    """`list_table` rows as an aligned text table."""
    head = ("version", "aliases", "test_roc_auc", "test_accuracy", "created", "run id")
    body = [(str(r["version"]), ",".join(r["aliases"]) or "-", _num(r[AUC]), _num(r[ACCURACY]), r["created"],
             r["run_id"] or "-") for r in rows]
    widths = [max(len(c[i]) for c in (head, *body)) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in (head, *body))


def show(name: str, version: int, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """Everything about one version: {name, version, aliases, status, created, run_id, source, description,
    metrics, tags, gate: {decision, reason} or None, champion_history}."""
    versions = tracking.list_versions(name, tracking_uri=tracking_uri)
    row = _find(name, versions, version)
    tags = row["tags"]
    decision = {"decision": tags["gate.decision"], "reason": tags.get("gate.reason", "")} \
        if "gate.decision" in tags else None
    return {"name": name, "version": row["version"], "aliases": row["aliases"], "status": row["status"],
            "created": _time(row["created"]), "run_id": row["run_id"], "source": row["source"],
            "description": row.get("description", ""), "metrics": row["metrics"], "tags": tags, "gate": decision,
            "champion_history": history_of(name, tracking_uri=tracking_uri)}


def format_show(d: dict[str, Any]) -> str:
    """`show`'s dict as the text `defakenet registry show` prints."""
    lines = [f"{d['name']} v{d['version']}  aliases: {', '.join(d['aliases']) or '-'}"]
    if d["gate"]:
        lines.append(f"gate:     {d['gate']['decision']}: {d['gate']['reason']}")
    t = d["tags"]
    if "suite.worst_set" in t:  # left by the latest suite run on this version (defakenet evaluate, the gate)
        lines.append(f"suite:    worst set {t['suite.worst_set']} ROC-AUC {float(t['suite.worst_set_auc']):.4f}, worst "
                     f"cell {t.get('suite.worst_cell', '?')} {float(t.get('suite.worst_cell_auc', 'nan')):.4f} "
                     f"(sets {t.get('suite.sets', '?')}; suite {t.get('suite.digest', '?')}, run "
                     f"{t.get('suite.run_id', '?')}, {t.get('suite.at', '?')})")
    lines += [f"status:   {d['status']}", f"created:  {d['created']}", f"run:      {d['run_id'] or '-'}",
              f"source:   {d['source']}"]
    lines.append("metrics:  " + (", ".join(f"{k} {_num(v)}" for k, v in sorted(d["metrics"].items())) or "none"))
    if d["description"]:
        lines.append("description:")
        lines += [f"  {ln}" for ln in d["description"].splitlines()]
    lines.append("tags:" if d["tags"] else "tags:     none")
    width = max((len(k) for k in d["tags"]), default=0)
    lines += [f"  {k.ljust(width)}  {v}" for k, v in sorted(d["tags"].items())]
    history = d["champion_history"]
    lines.append(f"champion history of {d['name']}: {' → '.join(f'v{v}' for v in history) or 'none'}")
    return "\n".join(lines)


# ---- small helpers


def _find(name: str, versions: list[dict], version: int) -> dict:
    for v in versions:
        if v["version"] == int(version):
            return v
    raise UserError(f"registered model {name!r} has no version {version} (versions: {_version_list(versions)})")


def _version_list(versions: list[dict]) -> str:
    return ", ".join(str(v["version"]) for v in versions) or "none"


def _test_metrics(row: dict) -> dict[str, float | None]:
    """{test_roc_auc, test_accuracy} of a `tracking.list_versions` row; None where missing or not finite."""
    out = {}
    for k in (AUC, ACCURACY):
        v = row["metrics"].get(k)
        out[k] = float(v) if v is not None and math.isfinite(float(v)) else None
    return out


def _history_str(history: list[int]) -> str:
    return ",".join(str(v) for v in history[-MAX_HISTORY:])


def _tag_number(v: float | None) -> Any:
    return "none" if v is None else float(v)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _time(ms: int | None) -> str:
    return "-" if not ms else datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")

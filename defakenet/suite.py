"""The evaluation suite: one model on several named datasets under several degradations, in one report.

    sets (--data NAME=ROOT …, or a suite file) ─▶ each set's manifest, checked before anything is scored
      ─▶ rows × degradations in one Ray Data pass: read → decode → degrade (deterministic) → the model's own
         preprocessing → forward (evaluate.score_rows)
      ─▶ per cell (set × degradation): ROC-AUC [95 % bootstrap CI], AP, EER, accuracy / TPR / FPR at the model's
         threshold, ECE, Brier (metrics.cell_metrics)
      ─▶ report folder (suite_report) ─▶ one MLflow run (kind=suite) ─▶ summary tags on the registered version

A suite file, versioned with the project, says the same as the flags:

    # suite.yaml: roots relative to this file; ${VAR} and ~ are expanded
    sets:
      sample: {root: ../datasets/faces-140k-sample, split: test}
      photoshop: {root: ../datasets/photoshop-faces, split: all, degradations: [none]}
    degradations: [none, jpeg:75, jpeg:50, blur:1, resize:0.5]
    resamples: 1000   # bootstrap resamples per interval
    seed: 0

A set's `split` is cut with the shares and seed stored with the model, so `test` means the files it meant in
training; `all` takes every image (a set the model never trained on). A set may name its own degradations; the
others get the suite's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from defakenet.config import load_file
from defakenet.errors import ConfigError, DataError, UserError

SPLITS = ("train", "valid", "test", "all")
DEFAULT_RESAMPLES = 1000
# set names become MLflow metric keys and file names
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SUITE_KEYS = ("sets", "degradations", "resamples", "seed")
_SET_KEYS = ("root", "split", "degradations")
# the tags a suite run leaves on a registered version (registry show prints them, the gate reads them)
TAG_PREFIX = "suite."


@dataclass(frozen=True)
class SuiteSet:
    """One named dataset of a suite: its root (folder or URI), the split scored, its degradations (empty: the
    suite's)."""

    name: str
    root: str
    split: str = "test"
    degradations: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suite:
    sets: tuple[SuiteSet, ...]
    degradations: tuple[str, ...] = ("none",)
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    source: str = field(default="command line", compare=False)

    def cells(self) -> list[tuple[SuiteSet, str]]:
        """(set, degradation) pairs in report order: sets as given, each set's degradations as given."""
        return [(s, d) for s in self.sets for d in (s.degradations or self.degradations)]

    def to_dict(self) -> dict:
        """The suite as data (what is logged and hashed); roots as resolved."""
        return {"sets": {s.name: {"root": s.root, "split": s.split,
                                  **({"degradations": list(s.degradations)} if s.degradations else {})}
                         for s in self.sets},
                "degradations": list(self.degradations), "resamples": self.resamples, "seed": self.seed}

    def digest(self) -> str:
        """A short hash of what the suite scores (sets, splits, degradations, bootstrap): two runs with the same
        digest give comparable numbers."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


# ---- building a suite


def parse_data_arg(text: str) -> tuple[str, str]:
    """`NAME=ROOT` or a bare `ROOT` (named after its last path segment) → (name, root)."""
    name, sep, root = text.partition("=")
    if sep and _NAME.match(name) and "/" not in name:
        return name, root
    root = text
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.rstrip("/").rsplit("/", 1)[-1]).strip("_.-")
    return base or "data", root


def suite_from_args(data: list[str], *, split: str = "test", degrade: str | None = None,
                    suite_file: str | None = None, resamples: int | None = None) -> Suite:
    """The suite `defakenet evaluate` runs: the suite file's sets (if any) plus one set per `--data`, scored on
    `split`; `degrade` ("none,jpeg:75") replaces the file's degradations; `resamples` its bootstrap count."""
    from defakenet.data.degrade import parse_degradations

    base = load_suite(suite_file) if suite_file else Suite(sets=())
    if split not in SPLITS:
        raise DataError(f"Invalid split {split!r}. Only {', '.join(SPLITS)} are supported.")
    sets = list(base.sets)
    for item in data:
        name, root = parse_data_arg(item)
        if not root:
            raise UserError(f"--data {item!r}: expected NAME=ROOT or ROOT")
        sets.append(SuiteSet(name, root, split))
    if not sets:
        raise UserError("nothing to evaluate: pass --data [NAME=]ROOT (repeatable) or --suite FILE")
    _check_names(sets, "--data / --suite")
    degradations = tuple(parse_degradations(degrade)) if degrade else base.degradations
    if resamples is not None and resamples < 100:
        raise UserError(f"--bootstrap {resamples}: expected at least 100 resamples (1000 is the default)")
    return Suite(tuple(sets), degradations, base.resamples if resamples is None else resamples, base.seed,
                 source=base.source if suite_file and not data else "command line")


def load_suite(path: str | Path) -> Suite:
    """Read a suite file (YAML, see the module docstring); every error names the file and the key."""
    p = Path(path).expanduser()
    d = load_file(p, what="suite file")
    where = f"suite file {p}"
    unknown = sorted(set(d) - set(_SUITE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(_SUITE_KEYS)}")
    raw_sets = d.get("sets")
    if not isinstance(raw_sets, dict) or not raw_sets:
        raise ConfigError(f"{where}: 'sets' must map set names to {{root: …, split: …}}, e.g. "
                          "sets: {sample: {root: data/faces, split: test}}")
    sets = []
    for name, spec in raw_sets.items():
        name = str(name)
        if isinstance(spec, str):
            spec = {"root": spec}
        if not isinstance(spec, dict) or not spec.get("root"):
            raise ConfigError(f"{where}: set {name!r} needs a root, e.g. {name}: {{root: data/faces, split: test}}")
        bad = sorted(set(spec) - set(_SET_KEYS))
        if bad:
            raise ConfigError(f"{where}: set {name!r} has unknown key {bad[0]!r}; valid keys: {', '.join(_SET_KEYS)}")
        split = str(spec.get("split", "test"))
        if split not in SPLITS:
            raise ConfigError(f"{where}: set {name!r} has split {split!r}; expected one of {', '.join(SPLITS)}")
        own = spec.get("degradations")
        own = _degradations(own, f"{where}: set {name!r}") if own else ()
        sets.append(SuiteSet(name, _resolve_root(str(spec["root"]), p.parent), split, own))
    _check_names(sets, where)
    degradations = _degradations(d.get("degradations", ["none"]), where)
    resamples, seed = d.get("resamples", DEFAULT_RESAMPLES), d.get("seed", 0)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ConfigError(f"{where}: resamples must be an integer >= 100, got {resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{where}: seed must be an integer, got {seed!r}")
    return Suite(tuple(sets), degradations, resamples, seed, source=str(p))


def _degradations(v: Any, where: str) -> tuple[str, ...]:
    from defakenet.data.degrade import parse_degradations

    try:
        return tuple(parse_degradations(",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _resolve_root(root: str, base: Path) -> str:
    root = os.path.expanduser(os.path.expandvars(root))
    if "://" in root or os.path.isabs(root):
        return root
    return str((base / root).resolve())


def _check_names(sets: list[SuiteSet], where: str) -> None:
    seen: set[str] = set()
    for s in sets:
        if not _NAME.match(s.name):
            raise ConfigError(f"{where}: set name {s.name!r} must be letters, digits, '_', '.' or '-' (it names "
                              "metrics and files)")
        if s.name in seen:
            raise ConfigError(f"{where}: two sets are named {s.name!r}; give each --data its own NAME=ROOT")
        seen.add(s.name)


# ---- running it


def suite_rows(suite: Suite, ratios, seed: int) -> pd.DataFrame:
    """Every image a suite scores, once per degradation: manifest columns plus `set` and `degrade`, in report
    order. Each set is read and checked first; an unreadable set or one without both classes is one line
    naming it."""
    from defakenet.data.layouts import read_manifest

    frames = []
    for s in suite.sets:
        try:
            manifest = read_manifest(s.root, ratios=ratios, seed=seed)
        except DataError as e:
            raise DataError(f"suite set {s.name!r}: {e}") from None
        rows = manifest if s.split == "all" else manifest[manifest["split"] == s.split]
        n_fake = int(rows["label"].sum())
        if n_fake == 0 or n_fake == len(rows):
            raise DataError(f"suite set {s.name!r} ({s.root}): split {s.split!r} has {len(rows) - n_fake} real and "
                            f"{n_fake} fake images; a set needs both (use split 'all' for a set the model never "
                            "trained on)")
        for d in s.degradations or suite.degradations:
            frames.append(rows.assign(set=s.name, degrade=d))
    return pd.concat(frames, ignore_index=True)


def run_suite(model: str, suite: Suite, *, output: str | Path | None = None, use_gpu: bool = False,
              actors: int = 1, runtime: str = "torch", tracking_uri: str | None = None, experiment: str | None = None,
              log_run: bool = True, gallery: bool = True, log: Callable[[str], None] = print) -> dict:
    """Score `model` (a directory or models:/, runs:/ URI) on every cell of `suite`; write the report to `output`
    (a temp folder when None and logging), log one MLflow run and tag the registered version. `runtime`: torch,
    onnx or onnx-int8 (the graph stored with the model) scores the images; `gallery`: the
    report shows the most confident mistakes of each set with Grad-CAM heatmaps (explain.mistakes_gallery).

    Returns {model, version, threshold, suite, cells: [{set, degradation, **cell_metrics}], summary, report (paths)
    or None, run_id or None}. Errors in the suite (a missing set, a set with one class) come before any scoring.
    """
    from defakenet import tracking
    from defakenet.artifact import load_model
    from defakenet.evaluate import score_rows
    from defakenet.metrics import cell_metrics
    from defakenet.suite_report import write_suite_report

    if log_run or model.startswith(("models:/", "runs:/")):
        tracking_uri = tracking.resolve_tracking_uri(tracking_uri or "", tracking.DEFAULT_HOME)
    name = version = None
    source = model
    if model.startswith("models:/") and not model.startswith("models:/m-"):
        # an alias is resolved once, here: what is scored and tagged is the version it pointed at now
        name, version = tracking.registered_version(model, tracking_uri=tracking_uri)
        source = f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory(prefix="defakenet-suite-") as tmp:
        # a registry model is downloaded into a folder of our own and removed after scoring (~100 MB per call)
        model_dir = tracking.resolve_model(source, Path(tmp) / "model", tracking_uri=tracking_uri)
        saved = load_model(model_dir, runtime=runtime)  # a missing graph fails here, before any scoring
        cfg = saved.config
        rows = suite_rows(suite, cfg.data.split, cfg.data.split_seed)
        log(f"model: {model}{f' ({name} v{version})' if source != model else ''}, threshold {saved.threshold:.4f}, "
            f"input {cfg.data.input_policy} {cfg.data.input_size} px, filter {cfg.model.input_filter}, runtime {runtime}")
        log(f"suite: {len(suite.sets)} set(s), {len(suite.cells())} cell(s), {len(rows):,} images to score")
        from defakenet.runtime import init_ray

        init_ray(cfg.replace(**{"resources.workers": actors, "resources.use_gpu": use_gpu}))
        start = time.perf_counter()
        labels, scores = score_rows(model_dir, rows, use_gpu=use_gpu, actors=actors, runtime=runtime,
                                    progress=_progress_printer(len(rows), start, log))
        log(f"scored {len(rows):,} images in {time.perf_counter() - start:.0f} s")

    cells = []
    for (set_name, deg), idx in rows.groupby(["set", "degrade"], sort=False).indices.items():
        m = cell_metrics(labels[idx], scores[idx], saved.threshold, resamples=suite.resamples, seed=suite.seed)
        cells.append({"set": set_name, "degradation": deg, "labels": labels[idx], "scores": scores[idx],
                      "paths": rows["path"].iloc[idx].astype(str).tolist(), "metrics": m})
    summary = summarise(cells)
    info = {"model": model, "registered_model": name, "version": version, "threshold": saved.threshold,
            "suite_digest": suite.digest(), "suite_source": suite.source, "suite": suite.to_dict(),
            "input_policy": cfg.data.input_policy, "input_filter": cfg.model.input_filter,
            "image_size": cfg.data.image_size, "input_size": cfg.data.input_size, "runtime": runtime,
            "summary": summary}
    result: dict[str, Any] = {"model": model, "name": name, "version": version, "threshold": saved.threshold,
                              "suite": suite, "summary": summary, "report": None, "run_id": None,
                              "cells": [{"set": c["set"], "degradation": c["degradation"], **c["metrics"]}
                                        for c in cells]}
    with tempfile.TemporaryDirectory(prefix="defakenet-suite-report-") as tmp:
        out = Path(output) if output else Path(tmp)
        if output or log_run:
            result["report"] = write_suite_report(out, cells, title=f"defakenet suite: {model}", info=info)
            if gallery:
                from defakenet.explain import mistakes_gallery
                from defakenet.inference import Predictor

                section = mistakes_gallery(Predictor(saved, name=name or "model", version=version), cells, out)
                if section:
                    md = result["report"]["markdown"]
                    md.write_text(md.read_text(encoding="utf-8").rstrip() + "\n\n" + section, encoding="utf-8")
        if log_run:
            result["run_id"] = _log_run(result, out, tracking_uri, experiment or cfg.tracking.experiment)
        if output is None:
            result["report"] = None  # the temp folder is gone: the run's artifacts hold it
    if result["run_id"] and version is not None:
        tracking.set_version_tags(name, version, version_tags(result), tracking_uri=tracking_uri)
    return result


def _progress_printer(total: int, start: float, log: Callable[[str], None]) -> Callable[[int], None]:
    """A callback for score_rows: one line at every further 10 % of the images (and none for tiny suites)."""
    step = max(total // 10, 500)
    state = {"next": step}

    def report(done: int) -> None:
        if done >= state["next"] and done < total:
            log(f"scored {done:,}/{total:,} images ({100 * done / total:.0f} %), {time.perf_counter() - start:.0f} s")
            state["next"] = (done // step + 1) * step

    return report


def summarise(cells: list[dict]) -> dict:
    """The numbers a version is judged by: each set's ROC-AUC on its first degradation (normally `none`), the
    worst set, and the worst cell over every degradation."""
    per_set: dict[str, dict] = {}
    for c in cells:
        per_set.setdefault(c["set"], c)  # the first cell of a set is its first degradation
    worst_set = min(per_set.values(), key=lambda c: c["metrics"]["roc_auc"])
    worst_cell = min(cells, key=lambda c: c["metrics"]["roc_auc"])
    return {"set_auc": {s: c["metrics"]["roc_auc"] for s, c in per_set.items()},
            "set_degradation": {s: c["degradation"] for s, c in per_set.items()},
            "worst_set": worst_set["set"], "worst_set_auc": worst_set["metrics"]["roc_auc"],
            "worst_cell": f"{worst_cell['set']} ({worst_cell['degradation']})",
            "worst_cell_auc": worst_cell["metrics"]["roc_auc"]}


def metric_key(set_name: str, degradation: str, metric: str) -> str:
    """The MLflow metric (and tag) key of one cell's metric, e.g. `sample.jpeg75.roc_auc`."""
    from defakenet.data.degrade import slug

    return f"{set_name}.{slug(degradation)}.{metric}"


# numbers of each cell logged as MLflow metrics (the interval as _lo/_hi)
_CELL_METRICS = ("roc_auc", "average_precision", "eer", "accuracy", "tpr", "fpr", "ece", "brier")


def _log_run(result: dict, report_dir: Path, tracking_uri: str, experiment: str) -> str:
    from defakenet import tracking

    suite: Suite = result["suite"]
    metrics: dict[str, float] = {}
    for c in result["cells"]:
        for k in _CELL_METRICS:
            metrics[metric_key(c["set"], c["degradation"], k)] = c[k]
        lo, hi = c["roc_auc_ci"]
        metrics[metric_key(c["set"], c["degradation"], "roc_auc_lo")] = lo
        metrics[metric_key(c["set"], c["degradation"], "roc_auc_hi")] = hi
    metrics["worst_set_auc"] = result["summary"]["worst_set_auc"]
    metrics["worst_cell_auc"] = result["summary"]["worst_cell_auc"]
    version = {"model_name": result["name"], "model_version": result["version"]} if result["version"] else {}
    return tracking.record_run(
        tracking_uri, experiment, f"suite-{datetime.now():%Y%m%d-%H%M%S}",
        tags={"kind": "suite", "model_uri": result["model"], "suite.digest": suite.digest(), **version},
        params={"model_uri": result["model"], "model_version": result["version"] or "",
                "suite": json.dumps(suite.to_dict()), "suite.digest": suite.digest(), "suite.source": suite.source,
                "threshold": result["threshold"]},
        metrics=metrics, artifacts=report_dir, artifact_path="suite")


def version_tags(result: dict) -> dict[str, Any]:
    """The `suite.*` tags a suite run leaves on the registered version it scored: the summary, where the run is,
    and every cell's ROC-AUC (which the promotion gate reuses when the champion was scored on the same suite)."""
    s = result["summary"]
    tags: dict[str, Any] = {
        "suite.digest": result["suite"].digest(), "suite.run_id": result["run_id"],
        "suite.at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "suite.worst_set": s["worst_set"], "suite.worst_set_auc": round(s["worst_set_auc"], 6),
        "suite.worst_cell": s["worst_cell"], "suite.worst_cell_auc": round(s["worst_cell_auc"], 6),
        "suite.sets": ",".join(x.name for x in result["suite"].sets)}
    for c in result["cells"]:
        tags[f"suite.auc.{metric_key(c['set'], c['degradation'], 'roc_auc')[:-len('.roc_auc')]}"] = round(c["roc_auc"], 6)
    return tags


def cell_aucs_from_tags(tags: dict[str, str], suite: Suite) -> dict[tuple[str, str], float] | None:
    """The per-cell ROC-AUCs a version's tags hold for `suite` (same digest), else None."""
    from defakenet.data.degrade import slug

    if tags.get("suite.digest") != suite.digest():
        return None
    out = {}
    for s, d in suite.cells():
        v = tags.get(f"suite.auc.{s.name}.{slug(d)}")
        if v is None:
            return None
        out[(s.name, d)] = float(v)
    return out


def format_result(result: dict) -> str:
    """What `defakenet evaluate` prints: the ROC-AUC [95 % CI] matrix (sets × degradations), the worst set and
    the worst cell."""
    from defakenet.suite_report import format_suite_table

    cells = result["cells"]
    doc = {"sets": list(dict.fromkeys(c["set"] for c in cells)),
           "degradations": list(dict.fromkeys(c["degradation"] for c in cells)), "cells": cells}
    s = result["summary"]
    return "\n".join(["ROC-AUC [95 % CI]", format_suite_table(doc),
                      f"worst set: {s['worst_set']} (ROC-AUC {s['worst_set_auc']:.4f}, "
                      f"{s['set_degradation'][s['worst_set']]}); worst cell: {s['worst_cell']} "
                      f"({s['worst_cell_auc']:.4f})"])


def cell_auc_map(result: dict) -> dict[tuple[str, str], float]:
    """{(set, degradation): ROC-AUC} of a run_suite result."""
    return {(c["set"], c["degradation"]): c["roc_auc"] for c in result["cells"]}


def compare_cells(new: dict[tuple[str, str], float], champ: dict[tuple[str, str], float],
                  max_drop: float) -> tuple[bool, str]:
    """(passes, sentence): whether no cell's ROC-AUC falls more than `max_drop` below the champion's; the sentence
    names the cell that fell furthest."""
    common = [k for k in new if k in champ]
    if not common:
        return True, "the suite has no cell in common with the champion's"
    set_name, deg = max(common, key=lambda k: champ[k] - new[k])  # of equal drops, the first in report order
    drop = champ[set_name, deg] - new[set_name, deg]
    cell = f"set {set_name!r} ({deg})"
    if drop <= max_drop + 1e-12:
        how = f"falls {drop:.4f}" if drop > 0 else "does not fall"
        return True, (f"no suite cell loses more than {max_drop:.4f} ROC-AUC (the largest change: {cell} {how}, "
                      f"{champ[(set_name, deg)]:.4f} → {new[(set_name, deg)]:.4f})")
    return False, (f"on suite {cell} its ROC-AUC {new[(set_name, deg)]:.4f} is {drop:.4f} below the champion's "
                   f"{champ[(set_name, deg)]:.4f}, more than the allowed {max_drop:.4f}")

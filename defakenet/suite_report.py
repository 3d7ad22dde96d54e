"""Evaluation-suite report: one model on several sets under several degradations, each pair a "cell".

Writes metrics.json (every cell's `cell_metrics`), report.md (a sets x degradations ROC-AUC [95 % CI] matrix, then
the other metrics per set), scores.csv (every scored image, so any number can be recomputed), and three figures:
an AUC heatmap on a fixed 0.5..1.0 colour scale (two reports compare by eye), ROC curves and reliability diagrams,
one panel per set and one line per degradation.

As in report.py, figures are drawn on `matplotlib.figure.Figure` with an explicit Agg canvas, never pyplot, and
matplotlib is imported on first use.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from defakenet.errors import DataError
from defakenet.metrics import CALIBRATION_BINS, reliability_bins, roc_points
from defakenet.report import _info_text, _json_default, figure

# file written for each name returned by write_suite_report
SUITE_FILES = {
    "metrics": "metrics.json",
    "markdown": "report.md",
    "heatmap": "auc_heatmap.png",
    "roc": "roc.png",
    "reliability": "reliability.png",
    "scores": "scores.csv",
}

# per-set table columns: (key in cell_metrics output, display name)
_COLUMNS = (
    ("average_precision", "AP"),
    ("eer", "EER"),
    ("accuracy", "accuracy"),
    ("tpr", "TPR"),
    ("fpr", "FPR"),
    ("ece", "ECE"),
    ("brier", "Brier"),
)

_PLOTS = (("heatmap", "ROC-AUC heatmap"), ("roc", "ROC curves"), ("reliability", "reliability diagrams"))

_CELL_KEYS = ("set", "degradation", "labels", "scores", "metrics")
# cell_metrics keys the report reads
_METRIC_KEYS = ("n", "n_real", "n_fake", "threshold", "roc_auc", "roc_auc_ci", *(k for k, _ in _COLUMNS))
_PANEL = 4.0  # inches per ROC / reliability panel
_PANELS_PER_ROW = 3
_AUC_RANGE = (0.5, 1.0)  # fixed heatmap colour scale
_PIPE = "\\|"  # a literal pipe inside a markdown table cell


def _grid(cells: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Sets and degradations in order of first appearance; each pair at most once. A set may lack some degradations
    (a suite set with degradations of its own): its row shows "-" there."""
    if not cells:
        raise DataError("a suite report needs cells: got none (expected one per set x degradation)")
    seen: set[tuple[str, str]] = set()
    sets: list[str] = []
    degradations: list[str] = []
    for i, cell in enumerate(cells):
        if not isinstance(cell, dict) or not isinstance(cell.get("metrics"), dict):
            raise DataError(f"suite cell {i} must be a dict with a metrics dict: got {type(cell).__name__}")
        missing = [k for k in _CELL_KEYS if k not in cell]
        if missing:
            raise DataError(f"suite cell {i} lacks {', '.join(missing)}: expected keys {', '.join(_CELL_KEYS)}")
        key = (str(cell["set"]), str(cell["degradation"]))
        if key in seen:
            raise DataError(f"suite cell {i} repeats set {key[0]!r} x degradation {key[1]!r}")
        seen.add(key)
        sets += [key[0]] if key[0] not in sets else []
        degradations += [key[1]] if key[1] not in degradations else []
    return sets, degradations


def _cell_data(cell: dict[str, Any]) -> dict[str, Any]:
    """Validated arrays and plot data of one cell (DataError from metrics for unusable labels or scores)."""
    name = f"{cell['set']} x {cell['degradation']}"
    try:
        fpr, tpr, _ = roc_points(cell["labels"], cell["scores"])
        table = reliability_bins(cell["labels"], cell["scores"], bins=cell["metrics"].get("ece_bins", CALIBRATION_BINS))
    except DataError as e:
        raise DataError(f"suite cell {name}: {e}") from None
    labels = np.asarray(cell["labels"]).astype(np.int64)
    scores = np.asarray(cell["scores"], dtype=np.float64)
    lacking = [k for k in _METRIC_KEYS if k not in cell["metrics"]]
    if lacking:
        raise DataError(f"suite cell {name}: metrics lack {', '.join(lacking)} (expected cell_metrics output)")
    n = cell["metrics"]["n"]
    if n != len(labels):
        raise DataError(f"suite cell {name}: metrics were computed on {n} images but the cell has {len(labels)}")
    paths = cell.get("paths")
    if paths is not None and len(paths) != len(labels):
        raise DataError(f"suite cell {name}: {len(paths)} paths for {len(labels)} images")
    return {"labels": labels, "scores": scores, "paths": paths, "fpr": fpr, "tpr": tpr, "bins": table}


def _auc_ci(m: dict[str, Any] | None) -> str:
    if m is None:  # a degradation this set was not scored under
        return "-"
    lo, hi = m["roc_auc_ci"]
    return f"{m['roc_auc']:.3f} [{lo:.3f}, {hi:.3f}]"


def _md(text: Any) -> str:
    return str(text).replace("|", _PIPE)


def _joined(values: Any) -> str:
    """Distinct values, in order, as 'a / b' (cells normally agree, so usually one value)."""
    return " / ".join(dict.fromkeys(str(v) for v in values))


def _method_line(metrics: list[dict[str, Any]]) -> str:
    """How the interval was computed and which threshold was applied, from the cells' own records."""
    thresholds = _joined(f"{m['threshold']:.4g}" for m in metrics)
    return (
        "ROC-AUC [95 % CI]: percentile interval of a stratified bootstrap (real and fake images resampled "
        f"separately, with replacement, each to its own count), {_joined(m.get('ci_resamples') for m in metrics)} "
        f"resamples, seed {_joined(m.get('ci_seed') for m in metrics)}. Accuracy, TPR (fakes caught) and FPR "
        f"(reals called fake) use the model's own threshold {thresholds} (chosen on validation at training time; "
        "fake when score >= threshold). ECE is the binary form over "
        f"{_joined(m.get('ece_bins') for m in metrics)} equal-width bins of p(fake)."
    )


def _markdown(title: str, doc: dict[str, Any]) -> str:
    sets, degs = doc["sets"], doc["degradations"]
    by_key = {(c["set"], c["degradation"]): c for c in doc["cells"]}
    lines = [f"# {title}", "", f"{len(sets)} sets x {len(degs)} degradations = {len(doc['cells'])} cells.", "",
             "## ROC-AUC [95 % CI]", "",
             "| set | " + " | ".join(_md(d) for d in degs) + " |", "| --- |" + " --- |" * len(degs)]
    lines += [f"| {_md(s)} | " + " | ".join(_auc_ci(by_key.get((s, d))) for d in degs) + " |" for s in sets]
    lines += ["", _method_line(doc["cells"]), ""]
    for s in sets:
        lines += [f"## {s}", "", "| degradation | images (real / fake) | " + " | ".join(n for _, n in _COLUMNS) + " |",
                  "| --- | --- |" + " --- |" * len(_COLUMNS)]
        for d in (d for d in degs if (s, d) in by_key):
            m = by_key[s, d]
            values = " | ".join(f"{m[key]:.3f}" for key, _ in _COLUMNS)
            lines.append(f"| {_md(d)} | {m['n']} ({m['n_real']} / {m['n_fake']}) | {values} |")
        lines.append("")
    lines += [f"![{alt}]({SUITE_FILES[key]})" for key, alt in _PLOTS]
    info = doc["info"]
    if info:
        lines += ["", "## info", "", "| key | value |", "| --- | --- |"]
        lines += [f"| {_md(k)} | {_md(_info_text(v))} |" for k, v in info.items()]
    return "\n".join(lines) + "\n"


def _scores_csv(cells: list[dict[str, Any]], data: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["set", "degradation", "path", "label", "score"])
    for cell, d in zip(cells, data):
        paths = d["paths"] if d["paths"] is not None else [""] * len(d["labels"])
        # repr-exact floats: the file recomputes every number in metrics.json
        out.writerows([cell["set"], cell["degradation"], str(p), int(y), float(s)]
                      for p, y, s in zip(paths, d["labels"], d["scores"]))
    return buf.getvalue()


def _plot_heatmap(path: Path, doc: dict[str, Any]) -> None:
    sets, degs = doc["sets"], doc["degradations"]
    by_key = {(c["set"], c["degradation"]): c for c in doc["cells"]}
    auc = np.array([[by_key[s, d]["roc_auc"] if (s, d) in by_key else np.nan for d in degs] for s in sets])
    fig = figure(2.5 + 1.3 * len(degs), 1.6 + 0.75 * len(sets))
    ax = fig.add_subplot()
    lo, hi = _AUC_RANGE
    image = ax.imshow(auc, cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
    for i, s in enumerate(sets):
        for j, d in enumerate(degs):
            m = by_key.get((s, d))
            if m is None:
                ax.text(j, i, "-", ha="center", va="center", color="gray")
                continue
            ci_lo, ci_hi = m["roc_auc_ci"]
            # viridis is dark at the bottom of the scale
            color = "black" if auc[i, j] > lo + 0.6 * (hi - lo) else "white"
            ax.text(j, i, f"{m['roc_auc']:.3f}\n[{ci_lo:.3f}, {ci_hi:.3f}]", ha="center", va="center",
                    color=color, fontsize="small")
    ax.set_xticks(range(len(degs)), degs, rotation=30, ha="right")
    ax.set_yticks(range(len(sets)), sets)
    ax.set(xlabel="degradation", ylabel="set", title="ROC-AUC [95 % CI]")
    fig.colorbar(image, ax=ax, label="ROC-AUC (scale fixed at 0.5..1.0)")
    fig.savefig(path)


def _panels(n: int) -> tuple[Any, list[Any]]:
    cols = min(n, _PANELS_PER_ROW)
    rows = math.ceil(n / cols)
    fig = figure(_PANEL * cols, _PANEL * rows)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def _set_panels(doc: dict[str, Any], data: dict[tuple[str, str], dict[str, Any]]) -> tuple[Any, list[tuple]]:
    """A figure with one panel per set, and per panel (axes, set, [(colour, degradation, curve data, metrics)])
    for the degradations the set has (a ragged grid leaves the others out)."""
    sets, degs = doc["sets"], doc["degradations"]
    by_key = {(c["set"], c["degradation"]): c for c in doc["cells"]}
    fig, axes = _panels(len(sets))
    panels = [(ax, s, [(f"C{j % 10}", d, data[s, d], by_key[s, d]) for j, d in enumerate(degs) if (s, d) in data])
              for ax, s in zip(axes, sets)]
    return fig, panels


def _finish_panel(ax: Any, title: str, legend_loc: str, **axes_set: Any) -> None:
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1)
    ax.set(title=title, **axes_set)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend_loc, fontsize="x-small")


def _plot_roc(path: Path, doc: dict[str, Any], data: dict[tuple[str, str], dict[str, Any]]) -> None:
    fig, panels = _set_panels(doc, data)
    for ax, s, lines in panels:
        for colour, d, cell, m in lines:
            ax.plot(cell["fpr"], cell["tpr"], lw=1.5, color=colour, label=f"{d} (AUC {m['roc_auc']:.3f})")
        _finish_panel(ax, s, "lower right", xlim=(0, 1), ylim=(0, 1.01),
                      xlabel="false positive rate (real called fake)", ylabel="true positive rate (fake caught)")
    fig.savefig(path)


def _plot_reliability(path: Path, doc: dict[str, Any], data: dict[tuple[str, str], dict[str, Any]]) -> None:
    fig, panels = _set_panels(doc, data)
    for ax, s, lines in panels:
        for colour, d, cell, m in lines:
            full = [b for b in cell["bins"] if b["count"]]
            ax.plot([b["mean_score"] for b in full], [b["fake_rate"] for b in full], "o-", ms=3, lw=1.5,
                    color=colour, label=f"{d} (ECE {m['ece']:.3f})")
        _finish_panel(ax, s, "upper left", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="mean p(fake) in bin",
                      ylabel="fraction fake in bin")
    fig.savefig(path)


def write_suite_report(
    out_dir: str | Path,
    cells: list[dict[str, Any]],
    *,
    title: str = "defakenet evaluation suite",
    info: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write metrics.json, report.md, auc_heatmap.png, roc.png, reliability.png and scores.csv into `out_dir`.

    `cells` holds one dict per scored set x degradation, in report order: {set, degradation, labels,
    scores, paths (optional), metrics (the `cell_metrics` of those labels and scores)}. `info` (model, version,
    suite file, ...) is stored under "info" in metrics.json and listed in report.md. Returns the written paths by
    name (keys of SUITE_FILES). Repeated cells, and a cell whose labels/scores are unusable (one class,
    NaN, ...), raise DataError before anything is created.
    """
    sets, degs = _grid(cells)
    data = [_cell_data(c) for c in cells]
    doc = {
        "info": dict(info or {}),
        "sets": sets,
        "degradations": degs,
        "cells": [{"set": str(c["set"]), "degradation": str(c["degradation"]), **c["metrics"]} for c in cells],
    }
    # render every text file first, so bad input fails before the directory exists
    texts = {
        "metrics": json.dumps(doc, indent=2, default=_json_default) + "\n",
        "markdown": _markdown(title, doc),
        "scores": _scores_csv(doc["cells"], data),
    }
    by_key = {(c["set"], c["degradation"]): d for c, d in zip(doc["cells"], data)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / fname for name, fname in SUITE_FILES.items()}
    for name, text in texts.items():
        paths[name].write_text(text, encoding="utf-8")
    _plot_heatmap(paths["heatmap"], doc)
    _plot_roc(paths["roc"], doc, by_key)
    _plot_reliability(paths["reliability"], doc, by_key)
    return paths


def format_suite_table(doc: dict[str, Any]) -> str:
    """The ROC-AUC [95 % CI] matrix of a suite's metrics.json (as a dict), sets as rows, as aligned text."""
    sets, degs = doc["sets"], doc["degradations"]
    by_key = {(c["set"], c["degradation"]): c for c in doc["cells"]}
    rows = [["set", *degs]]
    rows += [[s, *(_auc_ci(by_key.get((s, d))) for d in degs)] for s in sets]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(f"{v:<{w}}" if i == 0 else f"{v:>{w}}" for i, (v, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    return "\n".join(lines)

"""Evaluation report: metrics.json, ROC / precision-recall / confusion plots, and a short Markdown + HTML page.

Plots are drawn on `matplotlib.figure.Figure` with an explicit Agg canvas, never pyplot: no global backend or
figure registry is touched, so reports can be written from threads and Ray workers. matplotlib is imported on
first use, so importing this module does nothing (matplotlib builds its font cache on import).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from defakenet.metrics import compute_metrics, pr_points, roc_points

# file written for each name returned by write_report
REPORT_FILES = {
    "metrics": "metrics.json",
    "roc": "roc.png",
    "pr": "pr.png",
    "confusion": "confusion.png",
    "markdown": "report.md",
    "html": "report.html",
}

# rows of the metric tables: (key in compute_metrics output, display name); one list for md, html and terminal
_TABLE = (
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("precision", "precision"),
    ("recall", "recall (TPR)"),
    ("specificity", "specificity (TNR)"),
    ("f1", "F1"),
    ("mcc", "MCC"),
    ("roc_auc", "ROC-AUC"),
    ("average_precision", "average precision"),
    ("log_loss", "log loss"),
    ("eer", "EER"),
    ("eer_threshold", "EER threshold"),
    ("threshold", "threshold"),
)

_PLOTS = (("roc", "ROC curve"), ("pr", "precision-recall curve"), ("confusion", "confusion matrix"))

# 5 x 5 in at 100 dpi: 500 x 500 px images
_FIGSIZE, _DPI = (5.0, 5.0), 100


def figure(width: float = _FIGSIZE[0], height: float = _FIGSIZE[1]) -> Any:
    """A new Figure of width x height inches on its own Agg canvas (no pyplot, no global state): every plot
    defakenet draws (reports, the suite, video timelines) starts here."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_roc(path: Path, labels: np.ndarray, scores: np.ndarray, m: dict[str, Any]) -> None:
    fpr, tpr, _ = roc_points(labels, scores)
    fig = figure()
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC = {m['roc_auc']:.4f})")
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="chance")
    eer_label = f"EER = {m['eer']:.4f} (t = {m['eer_threshold']:.3f})"
    ax.plot([m["eer"]], [1 - m["eer"]], "o", color="C3", label=eer_label)
    ax.plot([1 - m["specificity"]], [m["recall"]], "s", color="C2", label=f"threshold {m['threshold']:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (real called fake)",
           ylabel="true positive rate (fake caught)", title="ROC curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.savefig(path)


def _plot_pr(path: Path, labels: np.ndarray, scores: np.ndarray, m: dict[str, Any]) -> None:
    precision, recall, _ = pr_points(labels, scores)
    base = m["n_fake"] / m["n"]
    fig = figure()
    ax = fig.add_subplot()
    ax.step(recall, precision, where="post", lw=2, label=f"PR (AP = {m['average_precision']:.4f})")
    ax.axhline(base, ls="--", color="gray", lw=1, label=f"chance (fake rate {base:.3f})")
    ax.plot([m["recall"]], [m["precision"]], "s", color="C2", label=f"threshold {m['threshold']:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (fake caught)", ylabel="precision (flagged that are fake)",
           title="precision-recall curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    fig.savefig(path)


def _plot_confusion(path: Path, m: dict[str, Any]) -> None:
    cm = np.asarray(m["confusion_matrix"], dtype=np.float64)
    rates = cm / cm.sum(axis=1, keepdims=True)  # rows = true class, both non-empty (checked by compute_metrics)
    fig = figure()
    ax = fig.add_subplot()
    ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(2):
        for j in range(2):
            color = "white" if rates[i, j] > 0.5 else "black"
            ax.text(j, i, f"{int(cm[i, j])}\n{100 * rates[i, j]:.1f}%", ha="center", va="center", color=color,
                    fontsize="large")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["real", "fake"], yticklabels=["real", "fake"],
           xlabel="predicted", ylabel="true", title=f"confusion matrix (threshold {m['threshold']:.3f})")
    fig.savefig(path)


def _json_default(obj: Any) -> Any:
    """Make numpy values and paths in `extra` JSON-serialisable."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _info_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=_json_default)


_PIPE = "\\|"  # a literal pipe inside a markdown table cell


def _markdown(title: str, m: dict[str, Any], info: dict[str, Any]) -> str:
    lines = [f"# {title}", "", f"{m['n']} images: {m['n_real']} real, {m['n_fake']} fake.", "",
             "| metric | value |", "| --- | --- |"]
    lines += [f"| {name} | {_fmt(m[key])} |" for key, name in _TABLE]
    lines += ["", f"Confusion (rows true, columns predicted): real [{m['tn']}, {m['fp']}], "
              f"fake [{m['fn']}, {m['tp']}].", ""]
    lines += [f"![{alt}]({REPORT_FILES[key]})" for key, alt in _PLOTS]
    if info:
        lines += ["", "## info", "", "| key | value |", "| --- | --- |"]
        lines += [f"| {k} | {_info_text(v).replace('|', _PIPE)} |" for k, v in info.items()]
    return "\n".join(lines) + "\n"


def _html(title: str, m: dict[str, Any], info: dict[str, Any]) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(name)}</td><td>{_fmt(m[key])}</td></tr>" for key, name in _TABLE)
    imgs = "".join(f'<img src="{REPORT_FILES[key]}" alt="{e(alt)}" width="400">' for key, alt in _PLOTS)
    info_rows = "".join(f"<tr><td>{e(str(k))}</td><td>{e(_info_text(v))}</td></tr>" for k, v in info.items())
    info_html = f"<h2>info</h2><table>{info_rows}</table>" if info else ""
    return (
        f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:2px 12px}"
        "tr:nth-child(even){background:#f3f3f3}</style></head><body>\n"
        f"<h1>{e(title)}</h1>\n<p>{m['n']} images: {m['n_real']} real, {m['n_fake']} fake.</p>\n"
        f"<table>{rows}</table>\n<p>Confusion (rows true, columns predicted): real [{m['tn']}, {m['fp']}], "
        f"fake [{m['fn']}, {m['tp']}].</p>\n<div>{imgs}</div>\n{info_html}\n</body></html>\n"
    )


def write_report(
    out_dir: str | Path,
    labels: Any,
    scores: Any,
    threshold: float,
    *,
    title: str = "defakenet evaluation",
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write metrics.json, roc.png, pr.png, confusion.png, report.md and report.html into `out_dir`.

    `extra` (model name, split, checkpoint, ...) is stored under "info" in metrics.json and listed in the pages.
    Returns the written paths by name (keys of REPORT_FILES). Bad labels/scores raise DataError (and a bad
    threshold ConfigError) from compute_metrics before anything is created.
    """
    metrics = compute_metrics(labels, scores, threshold)
    info = dict(extra or {})
    # render every text file first, so unserialisable input fails before the directory exists
    texts = {
        "metrics": json.dumps({**metrics, "info": info}, indent=2, default=_json_default) + "\n",
        "markdown": _markdown(title, metrics, info),
        "html": _html(title, metrics, info),
    }
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / fname for name, fname in REPORT_FILES.items()}
    for name, text in texts.items():
        paths[name].write_text(text, encoding="utf-8")
    _plot_roc(paths["roc"], y, s, metrics)
    _plot_pr(paths["pr"], y, s, metrics)
    _plot_confusion(paths["confusion"], metrics)
    return paths


def format_metrics(metrics: dict[str, Any]) -> str:
    """A compact multi-line summary of `compute_metrics` output for the terminal."""
    m = metrics
    width = max(len(name) for _, name in _TABLE)
    lines = [f"{m['n']} images ({m['n_real']} real, {m['n_fake']} fake)"]
    lines += [f"  {name:<{width}}  {_fmt(m[key])}" for key, name in _TABLE]
    lines.append(f"  {'confusion':<{width}}  real [tn {m['tn']}, fp {m['fp']}]  fake [fn {m['fn']}, tp {m['tp']}]")
    return "\n".join(lines)

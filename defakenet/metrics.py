"""Binary detection metrics for real (0) vs fake (1) faces, computed with scikit-learn.

Conventions (see docs/DESIGN): label 1 = fake = the positive class, a score is p(fake) in [0, 1], and an image is
called fake when `score >= threshold`. The threshold is chosen on the validation split with `choose_threshold`
and then applied, unchanged, to test.

Every function validates its input the same way and raises `DataError` naming the problem (mismatched lengths,
empty input, labels outside {0, 1}, scores outside [0, 1] or non-finite, a single class), so no metric is ever a
silent NaN. Returned values are plain Python numbers, ready for `json.dumps`.

For the evaluation suite (small sets, one model under several degradations): calibration (`reliability_bins`,
`expected_calibration_error`, `brier_score`), a stratified bootstrap interval of the ROC-AUC, and `cell_metrics`,
the numbers of one set x degradation cell.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from sklearn import metrics as skm

from defakenet.errors import ConfigError, DataError

# ways to pick a decision threshold on validation data; the first is the default
THRESHOLD_METHODS = ("youden", "fpr", "eer")


def _as_arrays(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and scores; return them as int64 and float64 1-d arrays."""
    y = np.asarray(labels)
    try:
        s = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"scores must be numbers p(fake) in [0, 1]: {e}") from None
    if y.ndim != 1 or s.ndim != 1:
        raise DataError(f"labels and scores must be 1-d sequences: got shapes {y.shape} and {s.shape}")
    if len(y) != len(s):
        raise DataError(f"labels and scores differ in length: {len(y)} labels, {len(s)} scores")
    if len(y) == 0:
        raise DataError("metrics need images: labels and scores are empty (expected real and fake ones)")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        shown = sorted({str(v) for v in y[bad].tolist()})[:5]
        raise DataError(f"labels must be 0 (real) or 1 (fake): got {bad.sum()} other values, e.g. {shown}")
    y = y.astype(np.int64)
    finite = np.isfinite(s)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise DataError(
            f"scores must be finite p(fake) in [0, 1]: {int((~finite).sum())} are NaN or infinite "
            f"(first at index {first})"
        )
    if s.min() < 0.0 or s.max() > 1.0:
        raise DataError(
            f"scores must be p(fake) in [0, 1]: got min {s.min():.4g}, max {s.max():.4g} "
            "(logits? apply a sigmoid first)"
        )
    n_fake = int(y.sum())
    n_real = len(y) - n_fake
    if n_real == 0 or n_fake == 0:
        raise DataError(f"metrics need both classes: got {n_real} real and {n_fake} fake images")
    return y, s


def _unit_float(value: Any, name: str) -> float:
    """A config number that must lie in [0, 1] (a threshold, a target rate)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ConfigError(f"{name} must be a number in [0, 1]: got {value!r}")
    return v


def _roc(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full ROC curve (every distinct score) with sklearn's leading +inf threshold clipped to 1.0."""
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr, np.minimum(thr, 1.0)


def _eer(fpr: np.ndarray, tpr: np.ndarray, thr: np.ndarray) -> tuple[float, float]:
    """Equal error rate where FPR = FNR, linearly interpolated between the two ROC points around the crossing."""
    # fnr - fpr falls from +1 at (0, 0) to -1 at (1, 1): find the first point at or past zero
    diff = (1.0 - tpr) - fpr
    i = int(np.flatnonzero(diff <= 0.0)[0])
    if diff[i] == 0.0 or i == 0:
        return float(fpr[i]), float(thr[i])
    w = diff[i - 1] / (diff[i - 1] - diff[i])  # in (0, 1]
    eer = fpr[i - 1] + w * (fpr[i] - fpr[i - 1])
    t = thr[i - 1] + w * (thr[i] - thr[i - 1])
    return float(eer), float(t)


def equal_error_rate(labels: Any, scores: Any) -> tuple[float, float]:
    """Return (eer, threshold): the rate where false positives and false negatives are equally likely.

    Interpolated linearly on the ROC curve between the two points where FPR - FNR changes sign; the threshold is
    interpolated between their scores the same way.
    """
    return _eer(*_roc(*_as_arrays(labels, scores)))


def roc_points(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve for plotting: (fpr, tpr, thresholds), thresholds descending, the first clipped from inf to 1.0."""
    y, s = _as_arrays(labels, scores)
    fpr, tpr, thr = skm.roc_curve(y, s)
    return fpr, tpr, np.minimum(thr, 1.0)


def pr_points(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve for plotting: (precision, recall, thresholds) as sklearn returns them."""
    y, s = _as_arrays(labels, scores)
    return skm.precision_recall_curve(y, s)


def compute_metrics(labels: Any, scores: Any, threshold: float = 0.5) -> dict[str, Any]:
    """All detection metrics for one split, fake (label 1) being the positive class.

    Threshold-dependent metrics call an image fake when `score >= threshold`; ranking metrics (roc_auc,
    average_precision, log_loss, eer) use the scores alone. Precision is 0.0 when nothing is predicted fake
    (sklearn's zero_division=0), and so is MCC when a row or column of the confusion matrix is empty.
    `confusion_matrix` is [[tn, fp], [fn, tp]]: rows are the true class (real, fake), columns the prediction.

    Raises DataError for unusable labels/scores and ConfigError for a threshold outside [0, 1].
    """
    y, s = _as_arrays(labels, scores)
    t = _unit_float(threshold, "threshold")
    pred = (s >= t).astype(np.int64)
    (tn, fp), (fn, tp) = skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    eer, eer_t = _eer(*_roc(y, s))
    return {
        "n": int(len(y)),
        "n_real": int(tn + fp),
        "n_fake": int(fn + tp),
        "threshold": t,
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred)),
        "specificity": float(tn / (tn + fp)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
        "mcc": float(skm.matthews_corrcoef(y, pred)),
        "roc_auc": float(skm.roc_auc_score(y, s)),
        "average_precision": float(skm.average_precision_score(y, s)),
        "log_loss": float(skm.log_loss(y, s, labels=[0, 1])),
        "eer": eer,
        "eer_threshold": eer_t,
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def choose_threshold(labels: Any, scores: Any, method: str = "youden", target_fpr: float = 0.05) -> float:
    """Pick a decision threshold in [0, 1] from validation labels and scores.

    - "youden": maximise TPR - FPR (Youden's J); ties go to the higher threshold.
    - "fpr": the highest TPR among thresholds whose FPR <= target_fpr (fewest real faces flagged wins ties).
      If only the "flag nothing" point qualifies, 1.0 is returned.
    - "eer": the equal-error-rate threshold (see `equal_error_rate`).

    Raises ConfigError for an unknown method or a target_fpr outside [0, 1], DataError for bad data.
    """
    if method not in THRESHOLD_METHODS:
        raise ConfigError(f"unknown threshold method {method!r}: expected one of {', '.join(THRESHOLD_METHODS)}")
    y, s = _as_arrays(labels, scores)
    fpr, tpr, thr = _roc(y, s)
    if method == "eer":
        return _eer(fpr, tpr, thr)[1]
    if method == "youden":
        # argmax returns the first maximum: thresholds are descending, so the highest one
        return float(thr[int(np.argmax(tpr - fpr))])
    target = _unit_float(target_fpr, "target_fpr")
    # fpr[0] == 0, so at least the first point always qualifies
    ok_tpr = np.where(fpr <= target, tpr, -1.0)
    return float(thr[int(np.argmax(ok_tpr))])


# ---- calibration and uncertainty, for the evaluation suite ----

# defaults of cell_metrics and its parts; one place for each
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_LEVEL = 0.95
CALIBRATION_BINS = 15

# resample indices drawn per chunk (16 MiB of int64), so memory stays flat for large splits
_BOOTSTRAP_CHUNK = 1 << 21


def _count(value: Any, name: str, low: int = 1) -> int:
    """A config integer that must be >= low (a bin count, a resample count)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}: got {value!r}")
    return int(value)


def _level(value: Any) -> float:
    """A confidence level, strictly between 0 and 1."""
    v = _unit_float(value, "level")
    if v in (0.0, 1.0):
        raise ConfigError(f"level must be a number in (0, 1): got {value!r}")
    return v


def _seed(value: Any) -> int:
    """A numpy seed: an integer >= 0 (None would make the interval differ run to run)."""
    return _count(value, "seed", low=0)


def _bins(y: np.ndarray, s: np.ndarray, bins: int) -> list[dict[str, Any]]:
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin k holds edges[k] <= s < edges[k + 1]; 1.0 falls in the last bin
    k = np.minimum(np.searchsorted(edges, s, side="right") - 1, bins - 1)
    count = np.bincount(k, minlength=bins)
    score_sum = np.bincount(k, weights=s, minlength=bins)
    fake_sum = np.bincount(k, weights=y, minlength=bins)
    out = []
    for i in range(bins):
        c = int(count[i])
        out.append({
            "lo": float(edges[i]),
            "hi": float(edges[i + 1]),
            "count": c,
            "mean_score": float(score_sum[i] / c) if c else None,
            "fake_rate": float(fake_sum[i] / c) if c else None,
        })
    return out


def _ece(table: list[dict[str, Any]], n: int) -> float:
    return float(sum(b["count"] / n * abs(b["fake_rate"] - b["mean_score"]) for b in table if b["count"]))


def reliability_bins(labels: Any, scores: Any, bins: int = CALIBRATION_BINS) -> list[dict[str, Any]]:
    """Reliability table: `bins` equal-width bins of p(fake) over [0, 1], each {lo, hi, count, mean_score, fake_rate}.

    A bin holds `lo <= score < hi`, the last one also `score == 1.0`. mean_score is the mean p(fake) in the bin and
    fake_rate the fraction of fakes there (both None for an empty bin); a calibrated model has them equal.
    """
    y, s = _as_arrays(labels, scores)
    return _bins(y, s, _count(bins, "bins"))


def expected_calibration_error(labels: Any, scores: Any, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error of p(fake): sum over non-empty bins of (count / N) * |fake_rate - mean_score|.

    This is the binary, positive-class form (the reliability of p(fake) itself, bins as in `reliability_bins`), not
    the multi-class "confidence of the predicted class" form, which folds scores below 0.5 onto 1 - p.
    """
    y, s = _as_arrays(labels, scores)
    return _ece(_bins(y, s, _count(bins, "bins")), len(y))


def brier_score(labels: Any, scores: Any) -> float:
    """Brier score: the mean of (score - label) ** 2, 0 for perfect and 0.25 for a constant 0.5."""
    y, s = _as_arrays(labels, scores)
    return float(skm.brier_score_loss(y, s))


def _bootstrap_indices(
    n_real: int, n_fake: int, resamples: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (real, fake) position arrays, chunks of rows of one stratified resample each.

    Row r of `real` draws n_real positions in [0, n_real) with replacement, `fake` likewise for the fakes, so every
    resample has both classes at their original sizes. The draws depend on the seed and the split sizes only.
    """
    rng = np.random.default_rng(seed)
    rows = max(1, _BOOTSTRAP_CHUNK // (n_real + n_fake))
    for start in range(0, resamples, rows):
        r = min(rows, resamples - start)
        yield rng.integers(0, n_real, size=(r, n_real)), rng.integers(0, n_fake, size=(r, n_fake))


def _bootstrap_aucs(y: np.ndarray, s: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """ROC-AUC of every stratified resample, by the Mann-Whitney statistic on resample counts (no per-row sort)."""
    real, fake = s[y == 0], s[y == 1]
    n0, n1 = len(real), len(fake)
    order = np.argsort(real, kind="stable")
    sorted_real = real[order]
    # reals strictly below, and at or below, each fake score: positions in the sorted reals
    below = np.searchsorted(sorted_real, fake, side="left")
    upto = np.searchsorted(sorted_real, fake, side="right")
    aucs = []
    for pos0, pos1 in _bootstrap_indices(n0, n1, resamples, seed):
        r = len(pos0)
        offsets = n0 * np.arange(r)[:, None]
        counts = np.bincount((pos0 + offsets).ravel(), minlength=r * n0).reshape(r, n0)[:, order]
        cum = np.zeros((r, n0 + 1))
        np.cumsum(counts, axis=1, out=cum[:, 1:])
        # each fake wins against the reals below it and half-wins against ties
        wins = 0.5 * (cum[:, below] + cum[:, upto])
        aucs.append(np.take_along_axis(wins, pos1, axis=1).sum(axis=1) / (n0 * n1))
    return np.concatenate(aucs)


def bootstrap_auc_interval(
    labels: Any,
    scores: Any,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = BOOTSTRAP_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval (lo, hi) of the ROC-AUC at confidence `level`.

    Stratified: each resample draws the real and the fake images separately, with replacement, each to its own
    count, so every resample has both classes and the class balance of the data. Draws come from
    `numpy.random.default_rng(seed)`: the same data and seed give the same interval.
    """
    y, s = _as_arrays(labels, scores)
    return _auc_interval(y, s, _count(resamples, "resamples"), _level(level), _seed(seed))


def _auc_interval(y: np.ndarray, s: np.ndarray, resamples: int, level: float, seed: int) -> tuple[float, float]:
    aucs = _bootstrap_aucs(y, s, resamples, seed)
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(aucs, [tail, 1.0 - tail])
    return float(lo), float(hi)


def cell_metrics(
    labels: Any,
    scores: Any,
    threshold: float,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    bins: int = CALIBRATION_BINS,
) -> dict[str, Any]:
    """The metrics of one evaluation-suite cell (one set under one degradation), plain numbers ready for JSON.

    n, n_real, n_fake, threshold, roc_auc with its 95 % stratified bootstrap interval roc_auc_ci [lo, hi],
    average_precision, eer, and at `threshold` (fake when score >= threshold): accuracy, tpr (fakes caught) and
    fpr (reals called fake); then ece and brier for calibration. ci_resamples, ci_seed and ece_bins record how the
    interval and the ECE were computed.
    """
    resamples, seed, bins = _count(resamples, "resamples"), _seed(seed), _count(bins, "bins")
    m = compute_metrics(labels, scores, threshold)
    y, s = _as_arrays(labels, scores)
    return {
        "n": m["n"],
        "n_real": m["n_real"],
        "n_fake": m["n_fake"],
        "threshold": m["threshold"],
        "roc_auc": m["roc_auc"],
        "roc_auc_ci": list(_auc_interval(y, s, resamples, BOOTSTRAP_LEVEL, seed)),
        "average_precision": m["average_precision"],
        "eer": m["eer"],
        "accuracy": m["accuracy"],
        "tpr": m["tp"] / m["n_fake"],
        "fpr": m["fp"] / m["n_real"],
        "ece": _ece(_bins(y, s, bins), len(y)),
        "brier": float(skm.brier_score_loss(y, s)),
        "ci_resamples": resamples,
        "ci_seed": seed,
        "ece_bins": bins,
    }

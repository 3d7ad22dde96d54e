"""Binary detection metrics for real (0) vs fake (1) faces, computed with scikit-learn.

Conventions (see docs/DESIGN): label 1 = fake = the positive class, a score is p(fake) in [0, 1], and an image is
called fake when `score >= threshold`. The threshold is chosen on the validation split with `choose_threshold`
and then applied, unchanged, to test.

Every function validates its input the same way and raises `DataError` naming the problem (mismatched lengths,
empty input, labels outside {0, 1}, scores outside [0, 1] or non-finite, a single class), so no metric is ever a
silent NaN. Returned values are plain Python numbers, ready for `json.dumps`.
"""

from __future__ import annotations

import math
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

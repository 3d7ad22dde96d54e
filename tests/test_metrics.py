"""Metrics agree with scikit-learn, EER and threshold choice behave, bad input is a DataError."""

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from defakenet.errors import ConfigError, DataError
from defakenet.metrics import (
    THRESHOLD_METHODS,
    choose_threshold,
    compute_metrics,
    equal_error_rate,
    pr_points,
    roc_points,
)


def _random_split(seed: int = 0, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping real/fake scores, unbalanced, some ties and exact 0/1 scores."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0).round(3)
    return y, s


@pytest.mark.parametrize("threshold", [0.5, 0.37, 0.0, 1.0])
def test_agrees_with_sklearn(threshold):
    y, s = _random_split()
    m = compute_metrics(y, s, threshold)
    p = (s >= threshold).astype(int)
    expected = {
        "accuracy": skm.accuracy_score(y, p),
        "precision": skm.precision_score(y, p, zero_division=0),
        "recall": skm.recall_score(y, p),
        "f1": skm.f1_score(y, p, zero_division=0),
        "balanced_accuracy": skm.balanced_accuracy_score(y, p),
        "mcc": skm.matthews_corrcoef(y, p),
        "roc_auc": skm.roc_auc_score(y, s),
        "average_precision": skm.average_precision_score(y, s),
        "log_loss": skm.log_loss(y, s, labels=[0, 1]),
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    tn, fp, fn, tp = skm.confusion_matrix(y, p, labels=[0, 1]).ravel()
    assert m["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (tn, fp, fn, tp)
    assert m["specificity"] == pytest.approx(((p == 0) & (y == 0)).sum() / (y == 0).sum(), abs=1e-12)
    assert (m["n"], m["n_real"], m["n_fake"]) == (len(y), (y == 0).sum(), (y == 1).sum())
    assert m["threshold"] == threshold


def test_values_are_plain_python():
    y, s = _random_split(1, 50)
    m = compute_metrics(list(y), list(s))
    assert json.loads(json.dumps(m)) == m
    for key, value in m.items():
        assert type(value) in (int, float, list), key
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)


def test_no_positive_predictions_gives_zero_precision():
    m = compute_metrics([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], threshold=0.9)
    assert (m["precision"], m["recall"], m["f1"], m["mcc"]) == (0.0, 0.0, 0.0, 0.0)
    assert m["specificity"] == 1.0


def test_eer_perfectly_separable_is_zero():
    eer, t = equal_error_rate([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.8])
    assert eer == 0.0
    assert 0.3 < t <= 0.7
    m = compute_metrics([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.8], threshold=t)
    assert m["accuracy"] == 1.0


def test_eer_symmetric_case():
    # one real above one fake on each side: at t = 0.6 one of two real and one of two fake are wrong
    eer, t = equal_error_rate([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    assert (eer, t) == (0.5, 0.6)


def test_eer_interpolated():
    # roc points (1/3, 0.5) -> (1/3, 1.0): fnr - fpr goes 1/6 -> -1/3, crossing a third of the way
    y, s = [0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.25, 0.9]
    eer, t = equal_error_rate(y, s)
    assert eer == pytest.approx(1 / 3, abs=1e-12)
    assert t == pytest.approx(0.3 + (0.25 - 0.3) / 3, abs=1e-12)
    m = compute_metrics(y, s)
    assert (m["eer"], m["eer_threshold"]) == (eer, t)


def test_eer_matches_bisection_on_random_data():
    y, s = _random_split(2)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    thr = np.minimum(thr, 1.0)
    # walk the roc polyline by a continuous index u and bisect fnr(u) - fpr(u) = 0
    idx = np.arange(len(fpr))
    gap = lambda u: np.interp(u, idx, 1 - tpr) - np.interp(u, idx, fpr)  # noqa: E731
    lo, hi = 0.0, float(len(fpr) - 1)
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gap(mid) > 0 else (lo, mid)
    eer, t = equal_error_rate(y, s)
    assert eer == pytest.approx(np.interp(hi, idx, fpr), abs=1e-9)
    assert t == pytest.approx(np.interp(hi, idx, thr), abs=1e-9)


def test_choose_threshold_methods():
    y, s = _random_split(3)
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    youden = choose_threshold(y, s, "youden")
    m = compute_metrics(y, s, youden)
    assert m["recall"] - (1 - m["specificity"]) == pytest.approx(np.max(tpr - fpr), abs=1e-12)

    for target in (0.0, 0.05, 0.2):
        t = choose_threshold(y, s, "fpr", target_fpr=target)
        m = compute_metrics(y, s, t)
        assert 1 - m["specificity"] <= target
        assert m["recall"] == pytest.approx(tpr[fpr <= target].max(), abs=1e-12)

    assert choose_threshold(y, s, "eer") == compute_metrics(y, s)["eer_threshold"]
    for method in THRESHOLD_METHODS:
        t = choose_threshold(y, s, method)
        assert isinstance(t, float) and 0.0 <= t <= 1.0


def test_choose_threshold_never_returns_inf():
    # highest score is real: youden and fpr=0 both land on the "flag nothing" point, clipped to 1.0
    y, s = [1, 1, 0], [0.1, 0.2, 0.9]
    assert choose_threshold(y, s, "youden") == 1.0
    assert choose_threshold(y, s, "fpr", target_fpr=0.0) == 1.0


def test_choose_threshold_bad_config():
    y, s = _random_split(4, 20)
    with pytest.raises(ConfigError, match="youden, fpr, eer"):
        choose_threshold(y, s, "f1")
    with pytest.raises(ConfigError, match="target_fpr"):
        choose_threshold(y, s, "fpr", target_fpr=1.5)
    with pytest.raises(ConfigError, match="threshold"):
        compute_metrics(y, s, threshold=float("nan"))
    with pytest.raises(ConfigError, match="threshold must be a number in \\[0, 1\\]: got 'high'"):
        compute_metrics(y, s, threshold="high")


def test_curves():
    y, s = _random_split(5, 100)
    fpr, tpr, thr = roc_points(y, s)
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    assert np.isfinite(thr).all() and thr.max() <= 1.0
    precision, recall, _ = pr_points(y, s)
    assert len(precision) == len(recall) and recall[0] == 1.0 and recall[-1] == 0.0


@pytest.mark.parametrize(
    "labels, scores, match",
    [
        ([0] * 12, [0.5] * 12, "both classes: got 12 real and 0 fake"),
        ([1, 1], [0.5, 0.6], "got 0 real and 2 fake"),
        ([], [], "empty"),
        ([0, 1, 1], [0.1, 0.9], "3 labels, 2 scores"),
        ([0, 2, 1], [0.1, 0.5, 0.9], r"0 \(real\) or 1 \(fake\).*\['2'\]"),
        ([0, 1, 1], [0.1, float("nan"), 0.9], "NaN or infinite"),
        ([0, 1], [0.1, float("inf")], "NaN or infinite"),
        ([0, 1], [-0.5, 2.0], r"\[0, 1\].*sigmoid"),
        ([0, 1], ["a", "b"], "numbers"),
        ([[0, 1]], [[0.1, 0.9]], "1-d"),
    ],
)
def test_bad_input_is_data_error(labels, scores, match):
    with pytest.raises(DataError, match=match):
        compute_metrics(labels, scores)
    with pytest.raises(DataError):
        choose_threshold(labels, scores)

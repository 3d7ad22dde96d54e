"""Metrics agree with scikit-learn, EER and threshold choice behave, bad input is a DataError."""

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from defakenet.errors import ConfigError, DataError
from defakenet import metrics
from defakenet.metrics import (
    THRESHOLD_METHODS,
    bootstrap_auc_interval,
    brier_score,
    cell_metrics,
    choose_threshold,
    compute_metrics,
    equal_error_rate,
    expected_calibration_error,
    pr_points,
    reliability_bins,
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


# ---- calibration, bootstrap interval, suite cells ----

# 4 bins with exact edges 0, .25, .5, .75, 1:
#   [0, .25):   0.1 (real), 0.2 (real)  count 2, mean .15, fake rate 0    |gap| .15
#   [.25, .5):  0.3 (fake)              count 1, mean .3,  fake rate 1    |gap| .7
#   [.5, .75):  0.5 (real), 0.7 (fake)  count 2, mean .6,  fake rate .5   |gap| .1
#   [.75, 1]:   1.0 (fake)              count 1, mean 1.0, fake rate 1    |gap| 0
_CAL_Y = [0, 0, 1, 0, 1, 1]
_CAL_S = [0.1, 0.2, 0.3, 0.5, 0.7, 1.0]


def test_reliability_bins_by_hand():
    table = reliability_bins(_CAL_Y, _CAL_S, bins=4)
    assert [(b["lo"], b["hi"]) for b in table] == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]
    assert [b["count"] for b in table] == [2, 1, 2, 1]  # 0.5 opens bin 2, 1.0 falls in the closed last bin
    assert [b["mean_score"] for b in table] == pytest.approx([0.15, 0.3, 0.6, 1.0], abs=1e-12)
    assert [b["fake_rate"] for b in table] == [0.0, 1.0, 0.5, 1.0]
    # 8 bins of .125: nothing in [.375, .5) or [.75, .875)
    table = reliability_bins(_CAL_Y, _CAL_S, bins=8)
    assert [b["count"] for b in table] == [1, 1, 1, 0, 1, 1, 0, 1]
    assert table[3]["mean_score"] is table[3]["fake_rate"] is None
    assert table[7] == {"lo": 0.875, "hi": 1.0, "count": 1, "mean_score": 1.0, "fake_rate": 1.0}
    assert json.loads(json.dumps(table)) == table


def test_ece_and_brier_by_hand():
    # ece = (2 * .15 + 1 * .7 + 2 * .1 + 1 * 0) / 6 = 1.2 / 6
    assert expected_calibration_error(_CAL_Y, _CAL_S, bins=4) == pytest.approx(0.2, abs=1e-12)
    # one bin: mean score 2.8 / 6, fake rate 3 / 6
    assert expected_calibration_error(_CAL_Y, _CAL_S, bins=1) == pytest.approx(abs(0.5 - 2.8 / 6), abs=1e-12)
    # squared errors .01 + .04 + .49 + .25 + .09 + 0 = .88
    assert brier_score(_CAL_Y, _CAL_S) == pytest.approx(0.88 / 6, abs=1e-12)
    assert brier_score([0, 1], [0.5, 0.5]) == 0.25
    assert expected_calibration_error([0, 1, 0, 1], [0.0, 1.0, 0.0, 1.0]) == 0.0


def test_calibration_bad_input():
    with pytest.raises(DataError, match="both classes"):
        expected_calibration_error([1, 1], [0.2, 0.9])
    with pytest.raises(DataError, match="sigmoid"):
        brier_score([0, 1], [0.2, 1.5])
    with pytest.raises(DataError, match="NaN"):
        reliability_bins([0, 1], [0.2, float("nan")])
    for bad in (0, -3, 2.5, True, "15"):
        with pytest.raises(ConfigError, match="bins must be an integer >= 1"):
            reliability_bins(_CAL_Y, _CAL_S, bins=bad)


def _reference_aucs(y, s, resamples, seed):
    """One sklearn roc_auc_score per stratified resample, on the same drawn indices."""
    y, s = np.asarray(y), np.asarray(s)
    real, fake = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    out = []
    for pos0, pos1 in metrics._bootstrap_indices(len(real), len(fake), resamples, seed):
        assert pos0.shape[1] == len(real) and pos1.shape[1] == len(fake)  # each class to its own size
        for p0, p1 in zip(pos0, pos1):
            idx = np.concatenate([real[p0], fake[p1]])
            out.append(skm.roc_auc_score(y[idx], s[idx]))
    assert len(out) == resamples
    return np.array(out)


@pytest.mark.parametrize("chunk", [metrics._BOOTSTRAP_CHUNK, 100])  # 100: two resamples per chunk
def test_bootstrap_matches_sklearn_reference(monkeypatch, chunk):
    monkeypatch.setattr(metrics, "_BOOTSTRAP_CHUNK", chunk)
    y, s = _random_split(6, 45)  # rounded scores: ties inside and across classes
    s = s.round(1)
    ref = _reference_aucs(y, s, 101, seed=7)
    fast = metrics._bootstrap_aucs(np.asarray(y), np.asarray(s, dtype=float), 101, 7)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-12)
    lo, hi = bootstrap_auc_interval(y, s, resamples=101, seed=7)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(ref, [0.025, 0.975])), abs=1e-12)
    lo, hi = bootstrap_auc_interval(y, s, resamples=101, level=0.8, seed=7)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(ref, [0.1, 0.9])), abs=1e-12)


def test_bootstrap_interval_contains_estimate_and_is_seeded():
    y, s = _random_split(7)
    auc = skm.roc_auc_score(y, s)
    lo, hi = bootstrap_auc_interval(y, s)
    assert lo < auc < hi and hi - lo < 0.2
    assert bootstrap_auc_interval(y, s, seed=0) == (lo, hi)
    assert bootstrap_auc_interval(y, s, seed=1) != (lo, hi)
    lo50, hi50 = bootstrap_auc_interval(y, s, level=0.5)
    assert lo < lo50 < auc < hi50 < hi
    # perfectly separated: every resample has both classes, so every resample's auc is 1
    assert bootstrap_auc_interval([0, 0, 0, 1], [0.1, 0.2, 0.3, 0.9]) == (1.0, 1.0)


def test_bootstrap_interval_narrows_with_more_data():
    def width(n):
        rng = np.random.default_rng(n)
        y = (rng.random(n) < 0.5).astype(int)
        s = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0.0, 1.0)
        lo, hi = bootstrap_auc_interval(y, s)
        return hi - lo

    # the width shrinks like 1 / sqrt(n): 20x the data, ~4.5x narrower
    assert width(2000) < width(100) / 3


def test_bootstrap_bad_config():
    y, s = _random_split(8, 30)
    with pytest.raises(ConfigError, match="resamples must be an integer >= 1: got 0"):
        bootstrap_auc_interval(y, s, resamples=0)
    for level in (0.0, 1.0, 1.5, "high"):
        with pytest.raises(ConfigError, match="level must be a number"):
            bootstrap_auc_interval(y, s, level=level)
    with pytest.raises(ConfigError, match="seed must be an integer >= 0: got None"):
        bootstrap_auc_interval(y, s, seed=None)
    with pytest.raises(DataError, match="got 0 real and 3 fake"):
        bootstrap_auc_interval([1, 1, 1], [0.2, 0.5, 0.9])


def test_cell_metrics_by_hand():
    # threshold 0.5 (inclusive) calls 0.5, 0.6, 0.8, 0.9 fake: tp 3 (0.5, 0.8, 0.9), fn 1 (0.3), fp 1 (0.6), tn 2
    y = [0, 0, 0, 1, 1, 1, 1]
    s = [0.1, 0.4, 0.6, 0.3, 0.5, 0.8, 0.9]
    m = cell_metrics(y, s, 0.5, resamples=200, seed=3, bins=4)
    assert (m["n"], m["n_real"], m["n_fake"], m["threshold"]) == (7, 3, 4, 0.5)
    assert m["tpr"] == 3 / 4 and m["fpr"] == 1 / 3 and m["accuracy"] == pytest.approx(5 / 7, abs=1e-12)
    # fakes beat 1 + 2 + 3 + 3 of the 12 (real, fake) pairs
    assert m["roc_auc"] == 9 / 12
    assert m["roc_auc_ci"] == list(bootstrap_auc_interval(y, s, resamples=200, seed=3))
    assert m["roc_auc_ci"][0] <= m["roc_auc"] <= m["roc_auc_ci"][1]
    assert m["ece"] == expected_calibration_error(y, s, bins=4)
    assert m["brier"] == brier_score(y, s)
    full = compute_metrics(y, s, 0.5)
    assert (m["average_precision"], m["eer"]) == (full["average_precision"], full["eer"])
    assert (m["ci_resamples"], m["ci_seed"], m["ece_bins"]) == (200, 3, 4)
    assert json.loads(json.dumps(m)) == m
    assert all(type(v) in (int, float, list) for v in m.values())
    assert all(type(v) is float for v in m["roc_auc_ci"])


def test_cell_metrics_bad_input():
    with pytest.raises(DataError, match="got 2 real and 0 fake"):
        cell_metrics([0, 0], [0.1, 0.2], 0.5)
    with pytest.raises(ConfigError, match="threshold"):
        cell_metrics([0, 1], [0.1, 0.2], 1.5)
    with pytest.raises(ConfigError, match="resamples"):
        cell_metrics([0, 1], [0.1, 0.2], 0.5, resamples=-1)

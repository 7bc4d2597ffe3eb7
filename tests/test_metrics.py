"""Tests of skd2ace.metrics: agreement with scikit-learn, hand-computed cases, edge cases."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn import metrics as skm

from skd2ace import metrics
from skd2ace.metrics import (
    HIGHER_IS_BETTER,
    LOWER_IS_BETTER,
    METRIC_NAMES,
    average_precision,
    coverage,
    evaluate,
    hamming_loss,
    macro_auc,
    macro_f1,
    micro_auc,
    micro_f1,
    one_error,
    ranking_loss,
    samples_f1,
    subset_accuracy,
)


@pytest.fixture
def data():
    """(Y, P): random, every label column holding both classes."""
    rng = np.random.default_rng(0)
    n, q = 60, 7
    Y = (rng.random((n, q)) < 0.35).astype(np.int8)
    Y[0], Y[1] = 1, 0  # every column holds both classes
    Y[1, 0] = 1
    Y[0, 0] = 0
    P = np.clip(0.35 * Y + 0.65 * rng.random((n, q)), 0, 1)
    return Y, P


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ------------------------------------------------------------------ match scikit-learn


def test_scores_match_sklearn(data):
    Y, P = data
    pred = (P > 0.5).astype(int)
    assert macro_auc(Y, P) == pytest.approx(skm.roc_auc_score(Y, P, average="macro"))
    assert micro_auc(Y, P) == pytest.approx(skm.roc_auc_score(Y, P, average="micro"))
    assert ranking_loss(Y, P) == pytest.approx(skm.label_ranking_loss(Y, P))
    assert coverage(Y, P) == pytest.approx(skm.coverage_error(Y, P))
    assert average_precision(Y, P) == pytest.approx(skm.label_ranking_average_precision_score(Y, P))
    assert hamming_loss(Y, P) == pytest.approx(skm.hamming_loss(Y, pred))
    for avg, fn in [("macro", macro_f1), ("micro", micro_f1), ("samples", samples_f1)]:
        assert fn(Y, P) == pytest.approx(skm.f1_score(Y, pred, average=avg, zero_division=0))
    assert subset_accuracy(Y, P) == pytest.approx(skm.accuracy_score(Y, pred))


def test_evaluate_keys_and_values(data):
    Y, P = data
    scores = evaluate(Y, P)
    assert tuple(scores) == METRIC_NAMES
    assert all(isinstance(v, float) for v in scores.values())
    for name in METRIC_NAMES:
        assert scores[name] == pytest.approx(getattr(metrics, name)(Y, P)), name
    assert LOWER_IS_BETTER == {"ranking_loss", "coverage", "one_error", "hamming_loss"}
    assert HIGHER_IS_BETTER | LOWER_IS_BETTER == set(METRIC_NAMES)
    assert not HIGHER_IS_BETTER & LOWER_IS_BETTER


def test_evaluate_threshold(data):
    Y, P = data
    scores = evaluate(Y, P, threshold=0.7)
    assert scores["hamming_loss"] == pytest.approx(hamming_loss(Y, P, threshold=0.7))
    assert scores["micro_f1"] == pytest.approx(micro_f1(Y, P, threshold=0.7))
    # ranking metrics do not depend on the threshold
    assert scores["ranking_loss"] == evaluate(Y, P)["ranking_loss"]


def test_perfect_predictions_are_best():
    Y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    scores = evaluate(Y, Y * 0.8 + 0.1)
    assert scores["macro_auc"] == scores["micro_auc"] == 1.0
    assert scores["ranking_loss"] == scores["one_error"] == scores["hamming_loss"] == 0.0
    assert scores["average_precision"] == 1.0
    assert scores["macro_f1"] == scores["micro_f1"] == scores["samples_f1"] == 1.0
    assert scores["subset_accuracy"] == 1.0
    assert scores["coverage"] == pytest.approx(Y.sum(axis=1).mean())  # 1-based


def test_threshold_is_strict():
    Y = np.array([[1, 0], [0, 1]])
    P = np.array([[0.5, 0.5], [0.5, 0.51]])
    assert hamming_loss(Y, P) == 0.25  # 0.5 is not predicted positive
    assert subset_accuracy(Y, P) == 0.5  # row 0 misses its label at exactly 0.5


def test_accepts_sparse_and_lists(data):
    Y, P = data
    assert macro_auc(sp.csr_matrix(Y), P) == pytest.approx(macro_auc(Y, P))
    assert one_error(Y.tolist(), P.tolist()) == one_error(Y, P)


# ------------------------------------------------------------------ macro / micro AUC


def test_macro_auc_skips_one_class_columns(no_warnings):
    # column 0: positives 0.8, 0.4 vs negatives 0.3, 0.6 -> 3 of 4 pairs right -> 0.75
    # column 1 all 0, column 2 all 1: skipped
    Y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    P = np.array([[0.8, 0.9, 0.1], [0.3, 0.2, 0.9], [0.4, 0.7, 0.5], [0.6, 0.1, 0.3]])
    assert macro_auc(Y, P) == pytest.approx(0.75)
    assert macro_auc(Y, P) == pytest.approx(skm.roc_auc_score(Y[:, 0], P[:, 0]))


def test_macro_auc_mean_of_qualifying_columns(data, no_warnings):
    Y, P = data
    Y = Y.copy()
    Y[:, 2] = 0
    Y[:, 5] = 1
    keep = [0, 1, 3, 4, 6]
    per_col = [skm.roc_auc_score(Y[:, j], P[:, j]) for j in keep]
    assert macro_auc(Y, P) == pytest.approx(np.mean(per_col))


def test_macro_auc_nan_without_qualifying_column(no_warnings):
    Y = np.array([[0, 1], [0, 1], [0, 1]])
    assert np.isnan(macro_auc(Y, np.random.default_rng(0).random(Y.shape)))


def test_macro_auc_one_dimensional():
    y = np.array([0, 1, 1, 0])
    s = np.array([0.1, 0.8, 0.3, 0.4])
    assert macro_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s))


def test_micro_auc_nan_for_one_class(no_warnings):
    assert np.isnan(micro_auc(np.zeros((3, 2)), np.ones((3, 2)) * 0.3))
    assert np.isnan(micro_auc(np.ones((3, 2)), np.ones((3, 2)) * 0.3))


# ------------------------------------------------------------------ one-error


def test_one_error_hand_computed():
    Y = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    P = np.array(
        [
            [0.9, 0.5, 0.1],  # top 0, relevant
            [0.6, 0.5, 0.1],  # top 0, not relevant -> error
            [0.2, 0.9, 0.1],  # top 1, not relevant -> error
            [0.1, 0.2, 0.3],  # top 2, not relevant -> error
        ]
    )
    assert one_error(Y, P) == 0.75
    assert one_error(Y[:1], P[:1]) == 0.0


def test_one_error_ties_break_to_lowest_index():
    Y = np.array([[0, 1], [1, 0]])
    P = np.array([[0.5, 0.5], [0.5, 0.5]])
    assert one_error(Y, P) == 0.5  # argmax picks label 0 in both rows


def test_one_error_rows_without_relevant_label_count_as_correct():
    Y = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 1]])
    P = np.array([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.3, 0.2, 0.1]])
    assert one_error(Y, P) == pytest.approx(1 / 3)


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.int8, (12, 4), elements=st.integers(0, 1)),
    arrays(np.float64, (12, 4), elements=st.floats(0, 1)),
)
def test_one_error_matches_loop_reference(Y, P):
    errors = [
        0.0 if not y.any() else float(y[int(np.argmax(p))] == 0) for y, p in zip(Y, P, strict=True)
    ]
    expected = np.mean(errors)
    assert one_error(Y, P) == pytest.approx(expected)


# ------------------------------------------------------------------ degenerate rows


def test_ranking_metrics_on_rows_without_positive_label():
    """scikit-learn counts such rows as perfect and keeps them in the average."""
    Y = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0]])
    P = np.array([[0.9, 0.2, 0.1], [0.3, 0.6, 0.2], [0.7, 0.1, 0.3]])
    # row 2: its relevant label is ranked last: 2 of 2 pairs wrong, coverage 3, AP 1/3
    assert ranking_loss(Y, P) == pytest.approx((0 + 0 + 1) / 3)
    assert coverage(Y, P) == pytest.approx((1 + 0 + 3) / 3)
    assert average_precision(Y, P) == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert one_error(Y, P) == pytest.approx((0 + 0 + 1) / 3)


def test_ranking_metrics_on_rows_with_all_labels_relevant():
    Y = np.array([[1, 1, 1], [1, 0, 0]])
    P = np.array([[0.1, 0.2, 0.3], [0.9, 0.2, 0.1]])
    assert ranking_loss(Y, P) == 0.0
    assert average_precision(Y, P) == 1.0
    assert one_error(Y, P) == 0.0
    assert coverage(Y, P) == pytest.approx((3 + 1) / 2)


def test_f1_zero_division_is_zero():
    # label 1 has no true and no predicted positive: scores 0 in macro-F1
    Y = np.array([[1, 0], [0, 0]])
    P = np.array([[0.9, 0.1], [0.1, 0.1]])
    assert macro_f1(Y, P) == 0.5
    assert micro_f1(Y, P) == 1.0
    assert samples_f1(Y, P) == 0.5  # row 1: nothing true, nothing predicted -> 0


def test_evaluate_with_all_zero_label_column(no_warnings):
    Y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    P = np.array([[0.8, 0.2], [0.3, 0.1], [0.6, 0.4], [0.2, 0.3]])
    scores = evaluate(Y, P)
    assert scores["macro_auc"] == 1.0
    assert all(np.isfinite(v) for v in scores.values())


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("fn", [getattr(metrics, name) for name in METRIC_NAMES])
def test_shape_mismatch_raises(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(np.zeros((3, 2)), np.zeros((3, 3)))


def test_non_binary_truth_raises():
    with pytest.raises(ValueError, match="only 0 and 1"):
        evaluate(np.array([[2, 0], [0, 1]]), np.zeros((2, 2)))


def test_non_finite_scores_raise():
    with pytest.raises(ValueError, match="NaN"):
        one_error(np.array([[1, 0]]), np.array([[np.nan, 0.2]]))


def test_empty_raises():
    with pytest.raises(ValueError, match="no sample"):
        macro_auc(np.zeros((0, 2)), np.zeros((0, 2)))


# ------------------------------------------------------------------ a single label (q = 1)


def _brute_force(Y, S, threshold=0.5):
    """Every metric from its multi-label definition, by loops (no scikit-learn).

    Degenerate rows follow the module's conventions (ranking loss 0, coverage 0 without
    a relevant label, average precision 1); F1 with zero_division=0; AUC over the
    (positive, negative) pairs, ties counting 1/2.
    """
    Y, S = np.asarray(Y, int), np.asarray(S, float)
    P = (S > threshold).astype(int)
    q = Y.shape[1]

    def f1(tp, fp, fn):
        return 0.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)

    def auc(y, s):
        pos, neg = s[y == 1], s[y == 0]
        if not pos.size or not neg.size:
            return np.nan
        return np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])

    loss, cov, ap = [], [], []
    for y, s in zip(Y, S, strict=True):
        rel, irr = np.flatnonzero(y), np.flatnonzero(1 - y)
        pairs = [(i, j) for i in rel for j in irr]
        loss.append(np.mean([s[i] <= s[j] for i, j in pairs]) if pairs else 0.0)
        cov.append(max((s >= s[i]).sum() for i in rel) if rel.size else 0.0)
        if rel.size in (0, q):
            ap.append(1.0)
        else:
            ap.append(np.mean([(s[rel] >= s[i]).sum() / (s >= s[i]).sum() for i in rel]))
    tp, fp, fn = (Y & P).sum(0), ((1 - Y) & P).sum(0), (Y & (1 - P)).sum(0)
    aucs = [auc(Y[:, j], S[:, j]) for j in range(q)]
    return {
        "macro_auc": np.nanmean(aucs) if not np.isnan(aucs).all() else np.nan,
        "micro_auc": auc(Y.ravel(), S.ravel()),
        "ranking_loss": np.mean(loss),
        "coverage": np.mean(cov),
        "one_error": np.mean([y.any() and y[np.argmax(s)] == 0 for y, s in zip(Y, S, strict=True)]),
        "average_precision": np.mean(ap),
        "hamming_loss": np.mean(Y != P),
        "macro_f1": np.mean([f1(*c) for c in zip(tp, fp, fn, strict=True)]),
        "micro_f1": f1(tp.sum(), fp.sum(), fn.sum()),
        "samples_f1": np.mean(
            [
                f1((y & p).sum(), ((1 - y) & p).sum(), (y & (1 - p)).sum())
                for y, p in zip(Y, P, strict=True)
            ]
        ),
        "subset_accuracy": np.mean((Y == P).all(axis=1)),
    }


def test_brute_force_reference_matches_on_several_labels(data):
    """The reference of the q = 1 tests agrees with the module where scikit-learn works."""
    Y, P = data
    P = np.round(P, 1)  # ties, to exercise the tie conventions
    assert evaluate(Y, P) == pytest.approx(_brute_force(Y, P), nan_ok=True)


REVIEW_Y = np.array([[1], [0], [0], [0]])
REVIEW_S = np.array([[0.9], [0.8], [0.2], [0.1]])


@pytest.mark.parametrize(
    ("Y", "S"),
    [
        (REVIEW_Y, REVIEW_S),
        (REVIEW_Y.ravel(), REVIEW_S.ravel()),  # 1-D: one label column
        (np.array([[1], [1], [0], [1], [0]]), np.array([[0.7], [0.2], [0.6], [0.6], [0.1]])),
        (np.zeros((3, 1), int), np.array([[0.2], [0.7], [0.1]])),  # no positive at all
        (np.ones((3, 1), int), np.array([[0.2], [0.7], [0.9]])),  # every row relevant
    ],
)
def test_single_label_metrics_follow_their_definitions(Y, S, no_warnings):
    """scikit-learn reads an (n, 1) indicator matrix as binary targets; every metric must
    still be its multi-label definition with q = 1, and evaluate must work."""
    expected = _brute_force(np.reshape(Y, (-1, 1)), np.reshape(S, (-1, 1)))
    scores = evaluate(Y, S)
    assert scores == pytest.approx(expected, nan_ok=True)
    for name in METRIC_NAMES:
        assert getattr(metrics, name)(Y, S) == pytest.approx(expected[name], nan_ok=True), name


def test_single_label_equals_the_label_given_twice():
    """A label repeated adds no information: every metric but coverage (which counts
    labels) keeps its value."""
    Y, S = REVIEW_Y, REVIEW_S
    once, twice = evaluate(Y, S), evaluate(np.hstack([Y, Y]), np.hstack([S, S]))
    assert once["macro_f1"] == pytest.approx(2 / 3)  # the label's F1, not 0.733
    assert once["micro_f1"] == pytest.approx(2 / 3)  # not the accuracy 0.75
    assert once["samples_f1"] == 0.25 and once["ranking_loss"] == 0.0
    assert once["coverage"] == 0.25 and twice["coverage"] == 0.5
    del once["coverage"], twice["coverage"]
    assert once == pytest.approx(twice)

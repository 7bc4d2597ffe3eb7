"""Multi-label evaluation metrics computed from ``(Y_true, proba)``.

Every function takes the true label matrix ``y_true`` (N, q) with entries in {0, 1} and a
score matrix ``y_score`` (N, q), normally the predicted probabilities of
``predict_proba``. Ranking metrics use the scores as they are; the thresholded metrics
predict a label when ``y_score > threshold`` (0.5 by default), which is the rule
``predict`` of the estimators uses. The reported set is the one of docs/method.md §10.

scikit-learn's implementations are used wherever they exist; only ``one_error`` is
computed here. Conventions worth knowing (all from scikit-learn unless stated):

* ``macro_auc`` averages ROC-AUC over the label columns that hold both classes; columns
  with one class only are skipped (docs/method.md §10), ``nan`` if none qualifies.
* ``micro_auc`` is ROC-AUC on all (instance, label) pairs pooled; ``nan`` if the pooled
  truth holds one class only.
* Rows with no relevant label (or with all labels relevant) are *degenerate* for the
  ranking metrics. scikit-learn counts them as perfect and keeps them in the average:
  ``ranking_loss`` 0, ``average_precision`` 1, ``coverage`` 0 (a row with no relevant
  label needs no label to be covered). ``one_error`` follows the same convention
  (0 for a row with no relevant label). MULAN instead leaves such rows out of the
  average. The reference protocol drops rows without any label, so the two agree there.
* ``coverage`` is scikit-learn's ``coverage_error``: the mean number of top-ranked labels
  needed to cover all relevant ones, counted from 1 (range [1, q] for non-degenerate
  rows; ties count pessimistically). MULAN's coverage counts from 0: it is
  ``coverage - 1`` on data without degenerate rows, and some papers further divide that
  by q.
* F1 scores use ``zero_division=0``: a label (macro) or a row (samples) with neither
  true nor predicted positives scores 0.
* A single label column (shape (N, 1), or a 1-D vector) is one label, not a binary
  problem with two classes: scikit-learn reads such input as binary targets, so the
  cases it would get wrong or reject are computed here. Every metric then has its
  multi-label value with q = 1: macro and micro F1 are the F1 of that label, a row's F1
  is 1 when the label is both true and predicted (else 0), ``ranking_loss`` is 0 (a row
  holds no (relevant, irrelevant) pair), ``coverage`` is the fraction of rows where the
  label is relevant (it is covered at rank 1), ``average_precision`` is 1 and
  ``one_error`` 0. All but ``coverage`` equal their value on the column given twice.

Examples
--------
>>> import numpy as np
>>> from skd2ace.metrics import evaluate, macro_auc
>>> Y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
>>> P = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.2], [0.6, 0.4, 0.3], [0.2, 0.1, 0.4]])
>>> float(macro_auc(Y, P))  # the third column holds one class and is skipped
1.0
>>> scores = evaluate(Y, P)
>>> round(scores["hamming_loss"], 4)
0.0833
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike
from sklearn.metrics import (
    accuracy_score,
    coverage_error,
    f1_score,
    label_ranking_average_precision_score,
    label_ranking_loss,
    roc_auc_score,
)
from sklearn.metrics import hamming_loss as _sk_hamming_loss

__all__ = [
    "HIGHER_IS_BETTER",
    "LOWER_IS_BETTER",
    "METRIC_NAMES",
    "average_precision",
    "coverage",
    "evaluate",
    "hamming_loss",
    "macro_auc",
    "macro_f1",
    "micro_auc",
    "micro_f1",
    "one_error",
    "ranking_loss",
    "samples_f1",
    "subset_accuracy",
]

#: Keys of :func:`evaluate`, in a stable order.
METRIC_NAMES: tuple[str, ...] = (
    "macro_auc",
    "micro_auc",
    "ranking_loss",
    "coverage",
    "one_error",
    "average_precision",
    "hamming_loss",
    "macro_f1",
    "micro_f1",
    "samples_f1",
    "subset_accuracy",
)

#: Metrics of :func:`evaluate` for which a smaller value is better.
LOWER_IS_BETTER: frozenset[str] = frozenset(
    {"ranking_loss", "coverage", "one_error", "hamming_loss"}
)

#: Metrics of :func:`evaluate` for which a larger value is better.
HIGHER_IS_BETTER: frozenset[str] = frozenset(METRIC_NAMES) - LOWER_IS_BETTER


def _check_targets(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(Y, S)`` as 2-D arrays of one shape (1-D input is one label column)."""
    if sp.issparse(y_true):
        y_true = y_true.toarray()
    if sp.issparse(y_score):
        y_score = y_score.toarray()
    Y = np.asarray(y_true)
    S = np.asarray(y_score, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y.reshape(-1, 1)
    if S.ndim == 1:
        S = S.reshape(-1, 1)
    if Y.ndim != 2 or S.ndim != 2:
        raise ValueError(
            f"y_true and y_score must be 2-D (n_samples, n_labels); got {Y.ndim}-D and "
            f"{S.ndim}-D arrays."
        )
    if Y.shape != S.shape:
        raise ValueError(
            f"y_true and y_score must have the same shape; got {Y.shape} and {S.shape}."
        )
    if Y.shape[0] == 0:
        raise ValueError("y_true and y_score hold no sample.")
    if not np.isin(Y, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1 (a multi-label indicator matrix).")
    if not np.isfinite(S).all():
        raise ValueError("y_score contains NaN or infinity.")
    return Y.astype(np.int8, copy=False), S


def _threshold(S: np.ndarray, threshold: float) -> np.ndarray:
    return (threshold < S).astype(np.int8)


# --------------------------------------------------------------------------- scores


def macro_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Mean ROC-AUC over the label columns that hold both classes.

    Columns of ``y_true`` with one class only (no positive, or no negative) have no
    ROC-AUC; they are skipped, as in the reference protocol (docs/method.md §10), and no
    warning is issued for them.

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_labels)
        True labels in {0, 1}. A 1-D array is read as a single label column.
    y_score : array-like of shape (n_samples, n_labels)
        Scores, e.g. predicted probabilities; only their order within a column matters.

    Returns
    -------
    float
        The unweighted mean of the per-column ROC-AUCs, or ``nan`` when no column holds
        both classes.

    Examples
    --------
    >>> import numpy as np
    >>> Y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    >>> P = np.array([[0.8, 0.1], [0.3, 0.2], [0.4, 0.3], [0.6, 0.4]])
    >>> float(macro_auc(Y, P))  # column 1 holds no positive: AUC of column 0 only
    0.75
    >>> float(macro_auc(np.zeros((3, 2)), np.ones((3, 2))))
    nan
    """
    Y, S = _check_targets(y_true, y_score)
    n_pos = Y.sum(axis=0)
    valid = (n_pos > 0) & (n_pos < Y.shape[0])
    if not valid.any():
        return float("nan")
    return float(roc_auc_score(Y[:, valid], S[:, valid], average="macro"))


def micro_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """ROC-AUC on all (instance, label) pairs pooled together.

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_labels)
        True labels in {0, 1}.
    y_score : array-like of shape (n_samples, n_labels)
        Scores, e.g. predicted probabilities.

    Returns
    -------
    float
        ``roc_auc_score(y_true, y_score, average="micro")``, or ``nan`` when the pooled
        truth holds one class only.

    Examples
    --------
    >>> import numpy as np
    >>> Y = np.array([[1, 0], [0, 1]])
    >>> P = np.array([[0.9, 0.2], [0.3, 0.6]])
    >>> float(micro_auc(Y, P))
    1.0
    """
    Y, S = _check_targets(y_true, y_score)
    n_pos = int(Y.sum())
    if n_pos == 0 or n_pos == Y.size:
        return float("nan")
    return float(roc_auc_score(Y.ravel(), S.ravel()))


def ranking_loss(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Label ranking loss (scikit-learn's ``label_ranking_loss``); lower is better.

    The mean over rows of the fraction of (relevant, irrelevant) label pairs ranked in
    the wrong order (ties count as wrong). Rows with no relevant label or with all
    labels relevant contribute 0 and stay in the average.

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_labels)
        True labels in {0, 1}.
    y_score : array-like of shape (n_samples, n_labels)
        Scores, e.g. predicted probabilities.

    Returns
    -------
    float
        A value in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> float(ranking_loss([[1, 0, 0], [0, 1, 0]], [[0.9, 0.5, 0.1], [0.6, 0.5, 0.1]]))
    0.25
    """
    Y, S = _check_targets(y_true, y_score)
    if Y.shape[1] == 1:
        # No (relevant, irrelevant) pair within a row; scikit-learn rejects the (n, 1)
        # matrix as binary targets instead of returning 0.
        return 0.0
    return float(label_ranking_loss(Y, S))


def coverage(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Coverage error (scikit-learn's convention, counted from 1); lower is better.

    The mean over rows of how far one must go down the ranked labels to cover every
    relevant label, ties counted pessimistically. A row with no relevant label gives 0.
    MULAN's coverage counts from 0: on data without such rows it equals
    ``coverage(...) - 1`` (and ``(coverage(...) - 1) / n_labels`` in its normalised form).

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_labels)
        True labels in {0, 1}.
    y_score : array-like of shape (n_samples, n_labels)
        Scores, e.g. predicted probabilities.

    Returns
    -------
    float
        A value in [0, n_labels] (in [1, n_labels] without rows lacking a relevant label).

    Examples
    --------
    >>> import numpy as np
    >>> float(coverage([[1, 0, 1]], [[0.9, 0.5, 0.1]]))  # the 2nd relevant label is 3rd
    3.0
    """
    Y, S = _check_targets(y_true, y_score)
    if Y.shape[1] == 1:
        # A relevant label is covered at rank 1, a row without one needs 0 labels;
        # scikit-learn rejects the (n, 1) matrix as binary targets.
        return float(Y.mean())
    return float(coverage_error(Y, S))


def one_error(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Fraction of rows whose top-scored label is not relevant; lower is better.

    Ties for the top score are broken towards the lowest label index (``argmax``).
    A row with no relevant label counts as correct (0), the convention scikit-learn's
    ranking metrics use for such rows; MULAN leaves them out of the average instead.

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_labels)
        True labels in {0, 1}.
    y_score : array-like of shape (n_samples, n_labels)
        Scores, e.g. predicted probabilities.

    Returns
    -------
    float
        A value in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> Y = [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    >>> P = [[0.9, 0.5, 0.1], [0.6, 0.5, 0.1], [0.2, 0.9, 0.1]]
    >>> round(one_error(Y, P), 4)  # row 1 ranks label 0 first; row 2 has no relevant label
    0.3333
    """
    Y, S = _check_targets(y_true, y_score)
    top = np.argmax(S, axis=1)
    top_relevant = Y[np.arange(Y.shape[0]), top] == 1
    has_relevant = Y.any(axis=1)
    return float(np.mean(has_relevant & ~top_relevant))


def average_precision(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Label ranking average precision (scikit-learn's LRAP); higher is better.

    For each row, the mean over its relevant labels of the fraction of relevant labels
    among those ranked at or above it; averaged over rows. Rows with no relevant label
    (or all labels relevant) score 1 and stay in the average.

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_labels)
        True labels in {0, 1}.
    y_score : array-like of shape (n_samples, n_labels)
        Scores, e.g. predicted probabilities.

    Returns
    -------
    float
        A value in (0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> round(average_precision([[1, 0, 1]], [[0.9, 0.5, 0.1]]), 4)  # (1/1 + 2/3) / 2
    0.8333
    """
    Y, S = _check_targets(y_true, y_score)
    return float(label_ranking_average_precision_score(Y, S))


def hamming_loss(y_true: ArrayLike, y_score: ArrayLike, *, threshold: float = 0.5) -> float:
    """Fraction of wrong (instance, label) decisions at ``y_score > threshold``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_labels)
        True labels in {0, 1}.
    y_score : array-like of shape (n_samples, n_labels)
        Predicted probabilities (or 0/1 predictions, with the default threshold).
    threshold : float, default=0.5
        A label is predicted when its score is strictly above ``threshold``.

    Returns
    -------
    float
        A value in [0, 1]; lower is better.

    Examples
    --------
    >>> float(hamming_loss([[1, 0], [0, 1]], [[0.7, 0.6], [0.2, 0.9]]))
    0.25
    """
    Y, S = _check_targets(y_true, y_score)
    return float(_sk_hamming_loss(Y, _threshold(S, threshold)))


def _f1(y_true: ArrayLike, y_score: ArrayLike, threshold: float, average: str) -> float:
    Y, S = _check_targets(y_true, y_score)
    P = _threshold(S, threshold)
    if Y.shape[1] == 1:
        # scikit-learn reads an (n, 1) matrix as binary targets: "macro" would average
        # the F1 of classes 0 and 1, "micro" would be the accuracy, "samples" raises.
        # With one label, macro and micro F1 are that label's F1, and a row's F1 is 1
        # when the label is true and predicted, else 0 (zero_division=0 for neither).
        if average == "samples":
            return float(np.mean(Y[:, 0] & P[:, 0]))
        return float(f1_score(Y[:, 0], P[:, 0], average="binary", zero_division=0))
    return float(f1_score(Y, P, average=average, zero_division=0))


def macro_f1(y_true: ArrayLike, y_score: ArrayLike, *, threshold: float = 0.5) -> float:
    """Unweighted mean over labels of the F1 score at ``y_score > threshold``.

    A label with neither true nor predicted positives scores 0 (``zero_division=0``).

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_labels)
        True labels in {0, 1}.
    y_score : array-like of shape (n_samples, n_labels)
        Predicted probabilities.
    threshold : float, default=0.5
        A label is predicted when its score is strictly above ``threshold``.

    Returns
    -------
    float

    Examples
    --------
    >>> round(macro_f1([[1, 0], [0, 1]], [[0.7, 0.6], [0.2, 0.9]]), 4)  # (1 + 2/3) / 2
    0.8333
    """
    return _f1(y_true, y_score, threshold, "macro")


def micro_f1(y_true: ArrayLike, y_score: ArrayLike, *, threshold: float = 0.5) -> float:
    """F1 score on all (instance, label) decisions pooled, at ``y_score > threshold``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_labels)
        True labels in {0, 1}.
    y_score : array-like of shape (n_samples, n_labels)
        Predicted probabilities.
    threshold : float, default=0.5
        A label is predicted when its score is strictly above ``threshold``.

    Returns
    -------
    float

    Examples
    --------
    >>> float(micro_f1([[1, 0], [0, 1]], [[0.7, 0.6], [0.2, 0.9]]))  # 2 TP, 1 FP
    0.8
    """
    return _f1(y_true, y_score, threshold, "micro")


def samples_f1(y_true: ArrayLike, y_score: ArrayLike, *, threshold: float = 0.5) -> float:
    """Mean over rows of the per-row F1 score, at ``y_score > threshold``.

    A row with neither true nor predicted labels scores 0 (``zero_division=0``).

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_labels)
        True labels in {0, 1}.
    y_score : array-like of shape (n_samples, n_labels)
        Predicted probabilities.
    threshold : float, default=0.5
        A label is predicted when its score is strictly above ``threshold``.

    Returns
    -------
    float

    Examples
    --------
    >>> round(samples_f1([[1, 0], [0, 1]], [[0.7, 0.6], [0.2, 0.9]]), 4)  # (2/3 + 1) / 2
    0.8333
    """
    return _f1(y_true, y_score, threshold, "samples")


def subset_accuracy(y_true: ArrayLike, y_score: ArrayLike, *, threshold: float = 0.5) -> float:
    """Fraction of rows whose whole predicted label set is exactly right.

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_labels)
        True labels in {0, 1}.
    y_score : array-like of shape (n_samples, n_labels)
        Predicted probabilities.
    threshold : float, default=0.5
        A label is predicted when its score is strictly above ``threshold``.

    Returns
    -------
    float

    Examples
    --------
    >>> float(subset_accuracy([[1, 0], [0, 1]], [[0.7, 0.6], [0.2, 0.9]]))
    0.5
    """
    Y, S = _check_targets(y_true, y_score)
    return float(accuracy_score(Y, _threshold(S, threshold)))


# --------------------------------------------------------------------------- all at once


def evaluate(y_true: ArrayLike, y_score: ArrayLike, threshold: float = 0.5) -> dict[str, float]:
    """Compute every metric of this module.

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_labels)
        True labels in {0, 1}.
    y_score : array-like of shape (n_samples, n_labels)
        Predicted probabilities in [0, 1].
    threshold : float, default=0.5
        Threshold of the set-based metrics (a label is predicted when its score is
        strictly above it); ranking metrics use the scores directly.

    Returns
    -------
    dict of str to float
        Keys in the order of :data:`METRIC_NAMES`; :data:`LOWER_IS_BETTER` names those for
        which a smaller value is better.

    Examples
    --------
    >>> import numpy as np
    >>> Y = np.array([[1, 0], [0, 1], [1, 1]])
    >>> P = np.array([[0.8, 0.3], [0.4, 0.7], [0.6, 0.2]])
    >>> scores = evaluate(Y, P)
    >>> list(scores) == list(METRIC_NAMES)
    True
    >>> round(scores["subset_accuracy"], 4), scores["one_error"]
    (0.6667, 0.0)
    """
    Y, S = _check_targets(y_true, y_score)
    pred = _threshold(S, threshold)
    # Each set-based metric is given the 0/1 predictions with a threshold of 0.5.
    out = {
        "macro_auc": macro_auc(Y, S),
        "micro_auc": micro_auc(Y, S),
        "ranking_loss": ranking_loss(Y, S),
        "coverage": coverage(Y, S),
        "one_error": one_error(Y, S),
        "average_precision": average_precision(Y, S),
        "hamming_loss": hamming_loss(Y, pred),
        "macro_f1": macro_f1(Y, pred),
        "micro_f1": micro_f1(Y, pred),
        "samples_f1": samples_f1(Y, pred),
        "subset_accuracy": subset_accuracy(Y, pred),
    }
    return {name: out[name] for name in METRIC_NAMES}

"""The reference preprocessing of the D2ACE evaluation protocol (docs/method.md §10)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike

__all__ = ["preprocess_reference"]


def preprocess_reference(
    X: ArrayLike, Y: ArrayLike, *, min_positives: int = 20
) -> tuple[ArrayLike, np.ndarray, np.ndarray, np.ndarray]:
    """Drop rare labels, then the rows left without any label (docs/method.md §10).

    First the label columns with at most ``min_positives`` positive entries are
    dropped; then the rows with no positive label among the kept columns. Feature
    scaling (min-max in the reference) is left to the model pipeline.

    Parameters
    ----------
    X : array-like or sparse matrix of shape (n_samples, n_features)
        Features; sparse matrices stay sparse (rows are selected with a boolean mask).
    Y : array-like or sparse matrix of shape (n_samples, n_labels)
        Labels in {0, 1}.
    min_positives : int, default=20
        A label is kept when it has strictly more positives than this.

    Returns
    -------
    X_kept : same type as ``X``, shape (n_kept_samples, n_features)
    Y_kept : ndarray, shape (n_kept_samples, n_kept_labels)
        ``Y``'s dtype (a dense array).
    row_mask : ndarray of bool, shape (n_samples,)
        The rows kept.
    label_mask : ndarray of bool, shape (n_labels,)
        The label columns kept.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.arange(10.0).reshape(5, 2)
    >>> Y = np.array([[1, 0], [1, 0], [0, 1], [1, 0], [0, 0]])
    >>> Xk, Yk, rows, labels = preprocess_reference(X, Y, min_positives=1)
    >>> labels, rows
    (array([ True, False]), array([ True,  True, False,  True, False]))
    >>> Xk.shape, Yk.ravel()
    ((3, 2), array([1, 1, 1]))
    """
    if isinstance(min_positives, bool) or not isinstance(min_positives, (int, np.integer)):
        raise TypeError(f"min_positives must be an int, got {min_positives!r}.")
    if min_positives < 0:
        raise ValueError(f"min_positives must be >= 0, got {min_positives}.")
    Y = Y.toarray() if sp.issparse(Y) else np.asarray(Y)
    if Y.ndim != 2:
        raise ValueError(f"Y must be 2-D (n_samples, n_labels), got shape {Y.shape}.")
    n_samples = X.shape[0] if hasattr(X, "shape") else len(X)  # type: ignore[arg-type]
    if n_samples != Y.shape[0]:
        raise ValueError(f"X has {n_samples} rows but Y has {Y.shape[0]}.")

    label_mask = (Y != 0).sum(axis=0) > min_positives
    Y_kept = Y[:, label_mask]
    row_mask = (Y_kept != 0).any(axis=1)
    if sp.issparse(X):
        X_kept = X.tocsr()[row_mask] if X.format not in ("csr", "csc") else X[row_mask]
    else:
        X_kept = np.asarray(X)[row_mask]
    return X_kept, Y_kept[row_mask], row_mask, label_mask

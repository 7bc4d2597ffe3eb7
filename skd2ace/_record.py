"""What D2ACE records while a network trains (METHOD.md §1), kept up to date per batch."""

from __future__ import annotations

import math

import numpy as np

from . import selection

_LOG2 = math.log(2.0)


class TrainingRecord:
    """Per-instance, per-label statistics of the model's recent predictions.

    For every training instance ``i`` and label ``j`` the record keeps the newest
    predicted probability, the flip EMA ``f_ij``, a ring of the last ``W − 1``
    absolute probability changes (float16) with their running sum, and the two
    metrics ``E`` (uncertainty) and ``H`` (hardness) of METHOD.md §2 for the
    instance's current statistics. Updating a batch touches only that batch's
    rows, and the metrics are recomputed there with the functional core
    (:func:`skd2ace.selection.combine_uncertainty`, :func:`~skd2ace.selection.hardness`),
    so the epoch's selection never has to revisit the whole window.

    Instances never recorded count as the uninformed prediction ``p = 0.5``:
    ``E = (1 − λ)``, ``H = 0.5 · (1 − 0) = 0.5``.

    The state lives in host memory as numpy arrays: it is what the numpy
    selection reads every epoch, and it keeps GPU memory for the model.
    Memory: 28 bytes per (instance, label) at ``W = 5`` plus 4 per instance.

    Parameters
    ----------
    n_samples, n_labels : int
    history_size : int, default=5
        ``W``, predictions per window (≥ 2).
    flip_decay : float, default=0.7
        ``α`` of the flip EMA.
    lam : float, default=0.5
        ``λ``, weight of the fluctuation term in ``E``.
    """

    def __init__(
        self,
        n_samples: int,
        n_labels: int,
        history_size: int = 5,
        flip_decay: float = 0.7,
        lam: float = 0.5,
    ):
        self.n_samples, self.n_labels = n_samples, n_labels
        self.history_size, self.flip_decay, self.lam = history_size, flip_decay, lam
        shape = (n_samples, n_labels)
        self.seen = np.zeros(n_samples, dtype=np.int32)
        self.last = np.full(shape, 0.5, dtype=np.float32)
        self.flip = np.zeros(shape, dtype=np.float32)
        self.change_sum = np.zeros(shape, dtype=np.float32)
        # Ring of |Δp| laid out slot-major: row (slot · N + i) holds instance i.
        self.changes = np.zeros((max(history_size - 1, 1) * n_samples, n_labels), np.float16)
        self.uncertainty = np.full(shape, 1.0 - lam, dtype=np.float32)
        self.hardness = np.full(shape, 0.5, dtype=np.float32)

    @property
    def nbytes(self) -> int:
        """Bytes held by the record."""
        return sum(
            a.nbytes
            for a in (
                self.seen,
                self.last,
                self.flip,
                self.change_sum,
                self.changes,
                self.uncertainty,
                self.hardness,
            )
        )

    def update(self, idx: np.ndarray, proba: np.ndarray, loss: np.ndarray) -> None:
        """Record one training batch.

        Parameters
        ----------
        idx : ndarray of shape (B,)
            Distinct row indices (into the training set) of the batch.
        proba : ndarray of shape (B, q)
            Predicted probabilities of the training forward pass.
        loss : ndarray of shape (B, q)
            Elementwise loss of the same pass.
        """
        idx = np.asarray(idx, dtype=np.intp)
        proba = np.asarray(proba, dtype=np.float32)
        seen = self.seen[idx]
        change = np.abs(proba - self.last[idx])
        change *= (seen > 0)[:, None]
        flip = self.flip[idx]
        flip += self.flip_decay * (change - flip)
        slots = self.history_size - 1
        if slots > 0:
            # The change recorded now replaces the oldest one in the ring: its slot
            # is the count of changes so far (seen − 1) modulo the ring length.
            rows = (np.maximum(seen - 1, 0) % slots) * self.n_samples + idx
            change16 = change.astype(np.float16)
            total = self.change_sum[idx] + change16 - self.changes[rows]
            self.changes[rows] = change16
            pairs = np.clip(seen, 1, slots)[:, None]
            fluctuation = total / pairs
            self.change_sum[idx] = total
        else:
            fluctuation = np.zeros_like(change)
        self.uncertainty[idx] = selection.combine_uncertainty(fluctuation, proba, self.lam)
        self.hardness[idx] = selection.hardness(loss, flip)
        self.last[idx] = proba
        self.flip[idx] = flip
        self.seen[idx] = seen + 1

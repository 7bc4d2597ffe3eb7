"""What D2ACE records while a network trains (METHOD.md §1)."""

from __future__ import annotations

import math

import numpy as np

from . import selection

# |Δp| ∈ [0, 1] is stored as an integer number of 1/65535 steps: 2 bytes, an error of
# at most 7.7e-6 per change, and exact integer window sums (no drift).
_CHANGE_SCALE = 65535.0


class TrainingRecord:
    """Per-instance, per-label statistics of the model's recent predictions.

    For every training instance ``i`` and label ``j`` the record keeps the newest
    predicted probability, the flip EMA ``f_ij``, the latest elementwise loss and a
    ring of the last ``W − 1`` absolute probability changes (quantised to
    1/65535). :meth:`update` applies a training batch at once, vectorised over its
    rows (a handful of fancy-indexed numpy operations on ``B × q`` values: the
    working set stays in cache). The two metrics ``E`` (uncertainty) and ``H``
    (hardness) of METHOD.md §2 are computed from this state when read, with the
    functional core (:func:`skd2ace.selection.combine_uncertainty`,
    :func:`~skd2ace.selection.hardness`), in contiguous passes over all instances.

    Instances never recorded count as the uninformed prediction ``p = 0.5``:
    ``E = 1 − λ`` and ``H = 0.5``. A non-finite prediction (a transiently
    diverged batch) repeats the previous one; a NaN loss keeps the previous loss.

    The state lives in host memory as numpy arrays: it is what the numpy
    selection reads every epoch, and it leaves GPU memory to the model.
    Memory: ``12 + 2·(W − 1)`` bytes per (instance, label) (20 at ``W = 5``) plus
    4 bytes per instance.

    Parameters
    ----------
    n_samples, n_labels : int
    history_size : int, default=5
        ``W``, predictions per window (≥ 2).
    flip_decay : float, default=0.7
        ``α`` of the flip EMA.
    lam : float, default=0.5
        ``λ``, weight of the fluctuation term in ``E``.

    Examples
    --------
    >>> rec = TrainingRecord(3, 1, history_size=3)
    >>> for p in (0.5, 0.7, 0.6):
    ...     rec.update([0], np.array([[p]]), np.array([[0.1]]))
    >>> rec.uncertainty.round(4)      # 0.5 · (0.2 + 0.1)/2 + 0.5 · H2(0.6); rows 1, 2 unseen
    array([[0.5605],
           [0.5   ],
           [0.5   ]], dtype=float32)
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
        # The loss of the uninformed prediction p = 0.5 (so that H = 0.5).
        self.loss = np.full(shape, math.log(2.0), dtype=np.float32)
        # Ring of quantised |Δp|, slot-major: the k-th change of instance i sits in
        # changes[k mod (W − 1), i], so a window sum adds W − 1 contiguous slices.
        self.slots = max(history_size - 1, 1)
        self.changes = np.zeros((self.slots, n_samples, n_labels), dtype=np.uint16)

    @property
    def uncertainty(self) -> np.ndarray:
        """``E`` (N, q), float32."""
        pairs = np.clip(self.seen - 1, 1, self.slots).astype(np.float32)
        scale = (np.float32(1.0 / _CHANGE_SCALE) / pairs)[:, None]
        window = self.changes.sum(axis=0, dtype=np.int32)
        fluctuation = np.multiply(window, scale, dtype=np.float32)
        return selection.combine_uncertainty(fluctuation, self.last, self.lam)

    @property
    def hardness(self) -> np.ndarray:
        """``H`` (N, q), float32."""
        return selection.hardness(self.loss, self.flip)

    @property
    def nbytes(self) -> int:
        """Bytes held by the record's state."""
        return sum(a.nbytes for a in (self.seen, self.last, self.flip, self.loss, self.changes))

    def update(self, idx, proba, loss, *, distinct: bool = False) -> None:
        """Record one training batch.

        Parameters
        ----------
        idx : array-like of shape (B,)
            Row indices (into the training set) of the batch.
        proba : array-like of shape (B, q)
            Predicted probabilities of the training forward pass.
        loss : array-like of shape (B, q)
            Elementwise loss of the same pass.
        distinct : bool, default=False
            The caller guarantees that ``idx`` holds no repeats (the batch
            sampler's batches), which skips checking it. An instance repeated
            within a batch gets its rows in order, as consecutive predictions.
        """
        idx = np.asarray(idx, dtype=np.intp)
        if idx.size == 0:
            return
        proba = np.asarray(proba, dtype=np.float32)
        loss = np.asarray(loss, dtype=np.float32)
        if distinct or idx.size == 1:
            self._apply(idx, proba, loss)
            return
        order = np.argsort(idx, kind="stable")
        ranked = idx[order]
        new_group = np.r_[True, ranked[1:] != ranked[:-1]]
        if new_group.all():
            self._apply(idx, proba, loss)
            return
        # One round per occurrence rank: the repeats of an instance go in row order.
        starts = np.flatnonzero(new_group)
        rank = np.empty(idx.size, dtype=np.intp)
        rank[order] = np.arange(idx.size) - np.repeat(starts, np.diff(np.r_[starts, idx.size]))
        for r in range(rank.max() + 1):
            take = np.flatnonzero(rank == r)
            self._apply(idx[take], proba[take], loss[take])

    def _apply(self, inst: np.ndarray, proba: np.ndarray, loss: np.ndarray) -> None:
        """Record one prediction per instance (``inst`` distinct)."""
        seen = self.seen[inst]
        previous = self.last[inst]
        finite = np.isfinite(proba)
        if not finite.all():
            proba = np.where(finite, proba, previous)
        change = np.abs(proba - previous)
        fresh = seen.min() == 0
        if fresh:  # a first prediction has no predecessor: no change, no flip
            change[seen == 0] = 0.0

        # f ← α·c + (1 − α)·f, written as (1 − α)(f − c) + c: no temporary.
        flip = self.flip[inst]
        flip -= change
        flip *= np.float32(1.0 - self.flip_decay)
        flip += change
        self.flip[inst] = flip
        self.last[inst] = proba
        lost = np.isnan(loss)
        self.loss[inst] = np.where(lost, self.loss[inst], loss) if lost.any() else loss

        change *= np.float32(_CHANGE_SCALE)
        change += np.float32(0.5)  # round half up: change ≥ 0
        quantised = change.astype(np.uint16)
        slot = seen - 1
        slot %= self.slots
        if fresh:
            later = seen > 0
            self.changes[slot[later], inst[later]] = quantised[later]
        else:
            self.changes[slot, inst] = quantised
        self.seen[inst] = seen + 1

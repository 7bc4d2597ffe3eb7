"""What D2ACE records while a network trains (METHOD.md §1)."""

from __future__ import annotations

import numpy as np

from . import selection

# |Δp| ∈ [0, 1] is stored as an integer number of 1/65535 steps: 2 bytes, an error of
# at most 7.7e-6 per change, and exact integer running sums (no drift).
_CHANGE_SCALE = 65535.0


class TrainingRecord:
    """Per-instance, per-label statistics of the model's recent predictions.

    For every training instance ``i`` and label ``j`` the record keeps the newest
    predicted probability, the flip EMA ``f_ij``, a ring of the last ``W − 1``
    absolute probability changes (quantised to 1/65535) with their exact running
    sum, and the two metrics ``E`` (uncertainty) and ``H`` (hardness) of METHOD.md
    §2 for the instance's current statistics, computed with the functional core
    (:func:`skd2ace.selection.combine_uncertainty`, :func:`~skd2ace.selection.hardness`).

    :meth:`update` only queues a batch (a list append: training batches stay
    cheap); queued batches are applied in order, vectorised over many batches at
    once, when the metrics are read, when :meth:`flush` is called, or when the
    queue holds ``flush_every`` elements. An instance that occurs several times in
    the queue gets each occurrence in training order (changes, flip EMA, ring), so
    the result is that of recording batch by batch.

    Instances never recorded count as the uninformed prediction ``p = 0.5``:
    ``E = 1 − λ`` and ``H = 0.5``.

    The state lives in host memory as numpy arrays: it is what the numpy
    selection reads every epoch, and it leaves GPU memory to the model.
    Memory: ``20 + 2·(W − 1)`` bytes per (instance, label) (28 at ``W = 5``) plus
    4 bytes per instance, plus the queue (at most ``flush_every`` elements).

    Parameters
    ----------
    n_samples, n_labels : int
    history_size : int, default=5
        ``W``, predictions per window (≥ 2).
    flip_decay : float, default=0.7
        ``α`` of the flip EMA.
    lam : float, default=0.5
        ``λ``, weight of the fluctuation term in ``E``.
    flush_every : int, default=2**21
        Queue size (instances × labels) that triggers applying the queue.

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
        flush_every: int = 2**21,
    ):
        self.n_samples, self.n_labels = n_samples, n_labels
        self.history_size, self.flip_decay, self.lam = history_size, flip_decay, lam
        self.flush_every = flush_every
        shape = (n_samples, n_labels)
        self.seen = np.zeros(n_samples, dtype=np.int32)
        self.last = np.full(shape, 0.5, dtype=np.float32)
        self.flip = np.zeros(shape, dtype=np.float32)
        self.change_sum = np.zeros(shape, dtype=np.int32)
        # Ring of quantised |Δp|, slot-major: row (slot · N + i) holds instance i.
        self.changes = np.zeros((max(history_size - 1, 1) * n_samples, n_labels), np.uint16)
        self._uncertainty = np.full(shape, 1.0 - lam, dtype=np.float32)
        self._hardness = np.full(shape, 0.5, dtype=np.float32)
        self._queue: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._queued = 0

    @property
    def uncertainty(self) -> np.ndarray:
        """``E`` (N, q), float32, everything recorded so far included."""
        self.flush()
        return self._uncertainty

    @property
    def hardness(self) -> np.ndarray:
        """``H`` (N, q), float32, everything recorded so far included."""
        self.flush()
        return self._hardness

    @property
    def nbytes(self) -> int:
        """Bytes held by the record's state (the queue excluded)."""
        arrays = (self.seen, self.last, self.flip, self.change_sum, self.changes)
        return sum(a.nbytes for a in arrays) + self._uncertainty.nbytes + self._hardness.nbytes

    def update(self, idx, proba, loss) -> None:
        """Queue one training batch.

        Parameters
        ----------
        idx : array-like of shape (B,)
            Distinct row indices (into the training set) of the batch.
        proba : array-like of shape (B, q)
            Predicted probabilities of the training forward pass.
        loss : array-like of shape (B, q)
            Elementwise loss of the same pass.
        """
        idx = np.asarray(idx, dtype=np.intp)
        if idx.size == 0:
            return
        self._queue.append(
            (idx, np.asarray(proba, dtype=np.float32), np.asarray(loss, dtype=np.float32))
        )
        self._queued += idx.size * self.n_labels
        if self._queued >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Apply the queued batches, in training order."""
        if not self._queue:
            return
        idx = np.concatenate([item[0] for item in self._queue])
        proba = np.concatenate([item[1] for item in self._queue])
        loss = np.concatenate([item[2] for item in self._queue])
        self._queue, self._queued = [], 0

        # Rows grouped by instance, each group in training order: every occurrence's
        # predecessor is the previous row of its group (or the stored newest
        # prediction for the first), so the whole queue is applied in one pass.
        order = np.argsort(idx, kind="stable")
        inst = idx[order]
        proba = proba[order]
        starts = np.flatnonzero(np.r_[True, inst[1:] != inst[:-1]])
        sizes = np.diff(np.r_[starts, inst.size])
        group_size = np.repeat(sizes, sizes)
        touched = inst[starts]
        rank = np.arange(inst.size) - np.repeat(starts, sizes)
        before = self.seen[inst] + rank  # predictions recorded before this one

        previous = np.empty_like(proba)
        bad = ~np.isfinite(proba)
        while True:
            previous[1:] = proba[:-1]
            previous[starts] = self.last[touched]
            if not bad.any():
                break
            # A non-finite prediction (a transiently diverged batch) carries no
            # information: it repeats the previous one (filled forward along runs).
            np.copyto(proba, previous, where=bad)
            bad = ~np.isfinite(proba)
        change = np.abs(proba - previous)
        change[before == 0] = 0.0

        # Flip EMA after n updates: (1−α)^n f0 + Σ_k α (1−α)^(n−k) c_k.
        keep = np.float32(1.0 - self.flip_decay)
        decay = keep ** (group_size - 1 - rank).astype(np.float32)
        weighted = change * (np.float32(self.flip_decay) * decay)[:, None]
        flip = self.flip[touched] * (keep ** sizes.astype(np.float32))[:, None]
        self.flip[touched] = flip + np.add.reduceat(weighted, starts, axis=0)

        slots = self.history_size - 1
        if slots > 0:
            # Only each instance's newest `slots` changes survive in the ring; their
            # slots, (changes so far) mod (ring length), are distinct.
            write = (rank >= group_size - slots) & (before >= 1)
            rows = ((before[write] - 1) % slots) * self.n_samples + inst[write]
            self.changes[rows] = np.rint(change[write] * _CHANGE_SCALE).astype(np.uint16)
            total = np.zeros((touched.size, self.n_labels), dtype=np.int32)
            for slot in range(slots):  # W − 1 vectorised gathers
                total += self.changes[slot * self.n_samples + touched]
            self.change_sum[touched] = total

        newest = starts + sizes - 1
        self.last[touched] = proba[newest]
        self.seen[touched] += sizes.astype(np.int32)
        self._refresh_metrics(touched, loss[order[newest]])

    def _refresh_metrics(self, inst: np.ndarray, loss: np.ndarray) -> None:
        pairs = np.minimum(np.maximum(self.seen[inst] - 1, 1), max(self.history_size - 1, 1))
        scale = (np.float32(1.0 / _CHANGE_SCALE) / pairs.astype(np.float32))[:, None]
        fluctuation = self.change_sum[inst].astype(np.float32) * scale
        self._uncertainty[inst] = selection.combine_uncertainty(
            fluctuation, self.last[inst], self.lam
        )
        hardness = selection.hardness(loss, self.flip[inst])
        # ...and a NaN loss leaves the previous hardness in place.
        self._hardness[inst] = np.where(np.isnan(hardness), self._hardness[inst], hardness)

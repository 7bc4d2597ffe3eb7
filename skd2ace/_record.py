"""What D2ACE records while a network trains (METHOD.md §1)."""

from __future__ import annotations

import itertools
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
    1/65535). The two metrics ``E`` (uncertainty) and ``H`` (hardness) of
    METHOD.md §2 are computed from this state when read, with the functional core
    (:func:`skd2ace.selection.combine_uncertainty`,
    :func:`~skd2ace.selection.hardness`), block by block into two buffers that the
    next read overwrites.

    :meth:`update` only copies a batch into a preallocated queue (training
    batches stay cheap; recording each batch at once cost ~3× more inside a fit,
    where every state row it touches is out of cache); queued batches are applied
    when the metrics are read, when :meth:`flush` is called, or before the queue
    would exceed ``flush_every`` values.
    Applying them is vectorised in rounds: every instance's first occurrence in the
    queue, then every second one, and so on (training order per instance, so the
    result is that of recording batch by batch), each round sorted by instance so
    that the cold state arrays are swept in address order.

    Instances never recorded count as the uninformed prediction ``p = 0.5``:
    ``E = 1 − λ`` and ``H = 0.5``. A non-finite prediction (a transiently
    diverged batch) repeats the previous one; a NaN loss keeps the previous loss.

    The state lives in host memory as numpy arrays: it is what the numpy
    selection reads every epoch, and it leaves GPU memory to the model.
    Memory: ``20 + 2·(W − 1)`` bytes per (instance, label) (28 at ``W = 5``: 20 of
    state, 8 of metric buffers) plus 4 bytes per instance, and the queue with its
    scratch arrays (about 27 bytes per queued value: 7 MiB at the default size;
    never pickled).

    Parameters
    ----------
    n_samples, n_labels : int
    history_size : int, default=5
        ``W``, predictions per window (≥ 2).
    flip_decay : float, default=0.7
        ``α`` of the flip EMA.
    lam : float, default=0.5
        ``λ``, weight of the fluctuation term in ``E``.
    flush_every : int, default=2**18
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
        flush_every: int = 2**18,
    ):
        self.n_samples, self.n_labels = n_samples, n_labels
        self.history_size, self.flip_decay, self.lam = history_size, flip_decay, lam
        self.flush_every = flush_every
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
        # E and H are written here, block by block, at every read.
        self._uncertainty = np.empty(shape, dtype=np.float32)
        self._hardness = np.empty(shape, dtype=np.float32)
        # Batches are copied into a preallocated queue and applied with preallocated
        # scratch arrays: fresh multi-megabyte temporaries would cost page faults.
        self._filled = 0
        self._work: dict[str, np.ndarray] = {}

    @property
    def uncertainty(self) -> np.ndarray:
        """``E`` (N, q), float32, everything recorded so far included."""
        self.flush()
        out = self._uncertainty
        pairs = np.clip(self.seen - 1, 1, self.slots).astype(np.float32)
        scale = (np.float32(1.0 / _CHANGE_SCALE) / pairs)[:, None]
        for rows in selection._row_blocks(self.n_samples, self.n_labels):
            window = self.changes[0, rows].astype(np.int32)
            for slot in range(1, self.slots):
                window += self.changes[slot, rows]
            fluctuation = np.multiply(window, scale[rows], dtype=np.float32)
            out[rows] = selection.combine_uncertainty(fluctuation, self.last[rows], self.lam)
        return out

    @property
    def hardness(self) -> np.ndarray:
        """``H`` (N, q), float32, everything recorded so far included."""
        self.flush()
        out = self._hardness
        for rows in selection._row_blocks(self.n_samples, self.n_labels):
            out[rows] = selection.hardness(self.loss[rows], self.flip[rows])
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the record's state and metric buffers (the queue excluded)."""
        arrays = (self.seen, self.last, self.flip, self.loss, self.changes)
        return sum(a.nbytes for a in (*arrays, self._uncertainty, self._hardness))

    def update(self, idx, proba, loss) -> None:
        """Queue one training batch.

        Parameters
        ----------
        idx : array-like of shape (B,)
            Row indices (into the training set) of the batch. An instance repeated
            within the batch gets its rows in order, as consecutive predictions.
        proba : array-like of shape (B, q)
            Predicted probabilities of the training forward pass.
        loss : array-like of shape (B, q)
            Elementwise loss of the same pass.
        """
        idx = np.asarray(idx, dtype=np.intp).ravel()
        rows = idx.size
        expected = (rows, self.n_labels)
        if np.shape(proba) != expected or np.shape(loss) != expected:
            raise ValueError(
                f"a batch of {rows} rows needs probabilities and losses of shape {expected}, "
                f"got {np.shape(proba)} and {np.shape(loss)}"
            )
        if rows == 0:
            return
        capacity = max(1, self.flush_every // max(self.n_labels, 1), rows)
        if self._filled + rows > capacity:
            self.flush()
        queue = self._scratch(capacity)
        end = self._filled + rows
        queue["idx"][self._filled : end] = idx
        queue["proba"][self._filled : end] = proba
        queue["loss"][self._filled : end] = loss
        self._filled = end

    def flush(self) -> None:
        """Apply the queued batches, in training order."""
        n = self._filled
        if n == 0:
            return
        self._filled = 0
        work = self._work
        idx = work["idx"][:n]
        # Sorted by instance (stable: training order within an instance), the
        # gathers and scatters below sweep the state in address order: after a
        # training step it is out of cache, and random rows cost a miss each.
        order = np.argsort(idx, kind="stable")
        inst = idx[order]
        new = np.empty(n, dtype=bool)
        new[0] = True
        np.not_equal(inst[1:], inst[:-1], out=new[1:])
        if new.all():
            bounds = [0, n]
        else:
            # Round r applies every instance's r-th occurrence in the queue.
            starts = np.flatnonzero(new)
            rank = np.arange(n) - np.repeat(starts, np.diff(np.append(starts, n)))
            order = order[np.argsort(rank, kind="stable")]
            inst = idx[order]
            bounds = [0, *np.cumsum(np.bincount(rank)).tolist()]
        proba = np.take(work["proba"][:n], order, axis=0, out=work["p"][:n])
        loss = np.take(work["loss"][:n], order, axis=0, out=work["l"][:n])
        # Checked once for the whole queue; rounds only repair when needed.
        checks = {"repair": not np.isfinite(proba).all(), "lost": np.isnan(loss).any()}
        for r, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            # Only the first round can hold an instance's first prediction.
            self._apply(inst[lo:hi], proba[lo:hi], loss[lo:hi], first=r == 0, **checks)

    def _apply(
        self,
        inst: np.ndarray,
        proba: np.ndarray,
        loss: np.ndarray,
        first: bool = True,
        repair: bool = True,
        lost: bool = True,
    ) -> None:
        """Record one prediction per instance (``inst`` distinct); ``proba`` and
        ``loss`` are scratch rows, modified in place. ``first``, ``repair`` and
        ``lost``: whether first predictions, non-finite probabilities and NaN
        losses may occur."""
        m = inst.size
        work = self._work
        seen = self.seen[inst]
        previous = np.take(self.last, inst, axis=0, out=work["previous"][:m])
        if repair:
            bad = np.isfinite(proba, out=work["mask"][:m])
            np.logical_not(bad, out=bad)
            np.copyto(proba, previous, where=bad)
        change = np.subtract(proba, previous, out=work["change"][:m])
        np.abs(change, out=change)
        fresh = first and seen.min() == 0
        if fresh:  # a first prediction has no predecessor: no change, no flip
            change[seen == 0] = 0.0

        # f ← α·c + (1 − α)·f, written as (1 − α)(f − c) + c: no temporary.
        flip = np.take(self.flip, inst, axis=0, out=previous)
        flip -= change
        flip *= np.float32(1.0 - self.flip_decay)
        flip += change
        self.flip[inst] = flip
        self.last[inst] = proba
        if lost:
            np.copyto(loss, self.loss[inst], where=np.isnan(loss, out=work["mask"][:m]))
        self.loss[inst] = loss

        change *= np.float32(_CHANGE_SCALE)
        change += np.float32(0.5)  # round half up: change ≥ 0
        quantised = work["quantised"][:m]
        np.copyto(quantised, change, casting="unsafe")
        # Row (slot · N + i) of the ring holds instance i's change in that slot.
        ring = self.changes.reshape(-1, self.n_labels)
        rows = (seen - 1) % self.slots * self.n_samples + inst
        if fresh:
            later = seen > 0
            ring[rows[later]] = quantised[later]
        else:
            ring[rows] = quantised
        self.seen[inst] = seen + 1

    def _scratch(self, rows: int) -> dict[str, np.ndarray]:
        """The queue and scratch arrays, grown to hold ``rows`` rows.

        Only called with an empty queue when growing: :meth:`update` flushes
        before a batch that needs more room."""
        work = self._work
        if "idx" not in work or work["idx"].size < rows:
            q = self.n_labels
            work = {"idx": np.empty(rows, dtype=np.intp)}
            for name in ("proba", "loss", "p", "l", "previous", "change"):
                work[name] = np.empty((rows, q), dtype=np.float32)
            work["mask"] = np.empty((rows, q), dtype=bool)
            work["quantised"] = np.empty((rows, q), dtype=np.uint16)
            self._work = work
        return work

    def __getstate__(self):
        # Pickles hold the state, not the queue and scratch arrays (megabytes).
        self.flush()
        state = self.__dict__.copy()
        state["_work"] = {}
        return state

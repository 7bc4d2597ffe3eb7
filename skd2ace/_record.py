"""What D2ACE records while a network trains (docs/method.md §1)."""

from __future__ import annotations

import math
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp

from . import _background, selection

# |Δp| ∈ [0, 1] is stored as an integer number of 1/65535 steps: 2 bytes, an error of
# at most 7.7e-6 per change, and exact integer window sums (no drift).
_CHANGE_SCALE = 65535.0
# A queue is also applied once it holds this many batches: tiny batches (one row, one
# label) would otherwise keep ~10⁵ small arrays alive (~100 bytes of overhead each).
_MAX_QUEUED_BATCHES = 512
# Full queues handed to the background worker before the training thread waits for it
# (delicious, 10 epochs, paired runs: d2ace/random 1.45 → 1.37 and 1.77 → 1.61 with 2 in
# place of 1; 100 000 × 100: 1.66 → 1.50; 3: no further gain).
_MAX_PENDING = 2
# E and H are computed in blocks of at most this many values (see _write_metrics).
_METRIC_BLOCK = 2**15


class TrainingRecord:
    """Per-instance, per-label statistics of the model's recent predictions.

    For every training instance ``i`` and label ``j`` the record keeps the newest
    predicted probability, the flip EMA ``f_ij``, the latest elementwise loss and a
    ring of the last ``W − 1`` absolute probability changes (quantised to
    1/65535), and the two metrics ``E`` (uncertainty) and ``H`` (hardness) of
    docs/method.md §2, recomputed with the functional core
    (:func:`skd2ace.selection.combine_uncertainty`,
    :func:`~skd2ace.selection.hardness`) for every instance whose state changes.

    :meth:`update` only queues a batch (copied, or by reference with
    ``copy=False``: training batches stay cheap; recording each batch at once cost
    ~3× more inside a fit, where every state row it touches is out of cache). A
    full queue (``flush_every`` values) is applied at once, in a worker thread with
    ``background=True`` (its numpy kernels release the GIL, so the bookkeeping
    overlaps training while the next queues fill; training waits for it only when
    two full queues are still in its hands); what is left is applied when the
    metrics are read or :meth:`flush` is called. Applying a queue is one vectorised
    pass: the rows are sorted by instance (training order within an instance, so
    the result is that of recording batch by batch), which sweeps the cold state
    arrays in address order; an instance with several rows gets them as consecutive
    predictions (changes between neighbouring rows, the flip EMA as one weighted
    segment sum).

    Instances never recorded count as the uninformed prediction ``p = 0.5``:
    ``E = 1 − λ`` and ``H = 0.5``. A non-finite prediction (a transiently
    diverged batch) repeats the previous one; a NaN loss keeps the previous loss.

    The state lives in host memory as numpy arrays: it is what the numpy
    selection reads every epoch, and it leaves GPU memory to the model (on a CUDA
    device with many labels the sampler uses ``_device_selection.DeviceRecord``).
    Memory: ``20 + 2·(W − 1)`` bytes per (instance, label) (28 at ``W = 5``: 20 of
    state, 8 of metrics) plus 4 bytes per instance, and the queued batches with
    the scratch arrays that apply them (about 38 bytes per queued value, 54 in the
    background: 9.5 and 13.5 MiB at the default size; never pickled).

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
        Queue size (instances × labels) that triggers applying the queue (so do 512
        queued batches).
    background : bool, default=False
        Apply full queues in a worker thread (the batch sampler sets it when torch
        leaves a core free). Results do not depend on it or on timing.

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

    #: The state is in host memory (``DeviceRecord`` says True).
    on_device = False

    def __init__(
        self,
        n_samples: int,
        n_labels: int,
        history_size: int = 5,
        flip_decay: float = 0.7,
        lam: float = 0.5,
        flush_every: int = 2**18,
        background: bool = False,
    ):
        self.n_samples, self.n_labels = n_samples, n_labels
        history_size = check_history_size(history_size)
        self.history_size, self.flip_decay, self.lam = history_size, flip_decay, lam
        self.flush_every = flush_every
        self.background = background
        shape = (n_samples, n_labels)
        self.seen = np.zeros(n_samples, dtype=np.int32)
        self.last = np.full(shape, 0.5, dtype=np.float32)
        self.flip = np.zeros(shape, dtype=np.float32)
        # The loss of the uninformed prediction p = 0.5 (so that H = 0.5).
        self.loss = np.full(shape, math.log(2.0), dtype=np.float32)
        # Ring of quantised |Δp|, slot-major: the k-th change of instance i sits in
        # changes[k mod (W − 1), i], so a window sum adds W − 1 contiguous slices.
        self.slots = history_size - 1
        self.changes = np.zeros((self.slots, n_samples, n_labels), dtype=np.uint16)
        # E and H, kept up to date row by row as predictions are applied (an
        # instance's metrics depend on its own state only).
        self._uncertainty = np.empty(shape, dtype=np.float32)
        self._hardness = np.empty(shape, dtype=np.float32)
        # Every instance starts uninformed: the metrics of one such row, for all.
        first = np.zeros(min(n_samples, 1), dtype=np.intp)
        self._write_metrics(first, self.last[:1], self.flip[:1], self.loss[:1], self.seen[:1])
        self._uncertainty[1:] = self._uncertainty[:1]
        self._hardness[1:] = self._hardness[:1]
        # Batches are queued as they come and applied with preallocated scratch
        # arrays (fresh multi-megabyte temporaries would cost page faults); in the
        # background, by a worker thread while the next queues fill.
        self._filled = 0
        self._queue: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._work: dict[str, np.ndarray] = {}
        self._pending: list[Future] = []  # queues in the worker's hands, oldest first
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid: int | None = None  # the process whose thread it holds

    @property
    def uncertainty(self) -> np.ndarray:
        """``E`` (N, q), float32, everything recorded so far included (the live
        buffer: later updates change it, copy it to keep it)."""
        self.flush()
        return self._uncertainty

    @property
    def hardness(self) -> np.ndarray:
        """``H`` (N, q), float32, everything recorded so far included (the live
        buffer: later updates change it, copy it to keep it)."""
        self.flush()
        return self._hardness

    def _write_metrics(self, rows, last, flip, loss, seen) -> None:
        """Write ``E`` and ``H`` of the instances ``rows`` from their state (``last``,
        ``flip``, ``loss``, ``seen``: that state's rows, in the same order)."""
        # The changes' scale, 1/65535 over the pairs in the window (seen − 1, at least
        # 1, at most W − 1), looked up by min(seen, W): np.clip on the rows costs 4×.
        pairs = [min(max(k - 1, 1), self.slots) for k in range(self.slots + 2)]
        scales = np.float32(1.0 / _CHANGE_SCALE) / np.array(pairs, dtype=np.float32)
        scale = scales[np.minimum(seen, self.slots + 1)][:, None]
        # In blocks of at most 2**15 values: larger temporaries, once freed, are
        # handed back to the OS by malloc and cost page faults again at the next
        # block (10× the arithmetic on this VM).
        step = max(1, _METRIC_BLOCK // max(self.n_labels, 1))
        for start in range(0, rows.size, step):
            part, block = rows[start : start + step], slice(start, start + step)
            # One gather per slot (a fancy index on the middle axis is 5× slower).
            window = np.take(self.changes[0], part, axis=0).astype(np.int32)
            for slot in range(1, self.slots):
                window += np.take(self.changes[slot], part, axis=0)
            fluctuation = np.multiply(window, scale[block], dtype=np.float32)
            self._uncertainty[part] = selection.combine_uncertainty(
                fluctuation, last[block], self.lam
            )
            self._hardness[part] = selection.hardness(loss[block], flip[block])

    @property
    def nbytes(self) -> int:
        """Bytes held by the record's state and metric buffers (the queue excluded)."""
        arrays = (self.seen, self.last, self.flip, self.loss, self.changes)
        return sum(a.nbytes for a in (*arrays, self._uncertainty, self._hardness))

    def update(self, idx, proba, loss, *, copy: bool = True) -> None:
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
        copy : bool, default=True
            False keeps the three arrays by reference until they are applied (the
            caller must not modify them): no copy on the training thread. CPU
            torch tensors of the net's dtypes (int64 indices, float32 values, not
            requiring grad) are then kept as they are and converted when the queue
            is applied (in the background worker when there is one). Indices are
            checked when the queue is applied.
        """
        if not copy and _lazy_tensors(idx, proba, loss):
            if idx.dim() != 1:  # the net's indices are 1-D already (a view costs ~1 µs)
                idx = idx.reshape(-1)
        else:
            idx = np.array(_integers(to_host(idx)), dtype=np.intp, copy=copy or None).ravel()
            proba = np.array(to_host(proba), dtype=np.float32, copy=copy or None)
            loss = np.array(to_host(loss), dtype=np.float32, copy=copy or None)
        rows = idx.shape[0]
        expected = (rows, self.n_labels)
        if tuple(proba.shape) != expected or tuple(loss.shape) != expected:
            raise ValueError(
                f"a batch of {rows} rows needs probabilities and losses of shape {expected}, "
                f"got {tuple(proba.shape)} and {tuple(loss.shape)}"
            )
        if rows == 0:
            return
        self._queue.append((idx, proba, loss))
        self._filled += rows
        if (
            self._filled * self.n_labels >= self.flush_every
            or len(self._queue) >= _MAX_QUEUED_BATCHES
        ):
            self._dispatch()

    def flush(self) -> None:
        """Apply everything queued, in training order (waits for the background)."""
        self._wait()
        queue, self._queue, self._filled = self._queue, [], 0
        if queue:
            self._apply_queue(queue)

    def close(self, *, apply: bool = True) -> None:
        """Stop the background thread, if any, after applying everything queued
        (``apply=False``: after the queue it is applying; the rest is dropped)."""
        try:
            if apply:
                self.flush()
            else:
                self._wait()  # still raises its error
                self._queue, self._filled = [], 0
        finally:  # the thread stops also when a queue's error is raised here
            if self._executor is not None:
                self._executor.shutdown()
                self._executor = None

    def _dispatch(self) -> None:
        """Apply the full queue: in the background, or here."""
        if not self.background:
            self.flush()
            return
        # The worker applies the queues in order; the training thread only waits when
        # it is _MAX_PENDING queues ahead (a worker slowed for a moment is absorbed).
        self._wait(_MAX_PENDING - 1)
        queue, self._queue, self._filled = self._queue, [], 0
        if self._executor is None or self._executor_pid != os.getpid():
            # A forked child inherits the executor but not its thread: a new one.
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="skd2ace-record")
            self._executor_pid = os.getpid()
        self._pending.append(_background.submit(self._executor, self._apply_queue, queue))

    def _wait(self, keep: int = 0) -> None:
        """Wait until at most ``keep`` queues are still being applied in the background;
        re-raises the worker's first error (after waiting for all of them).

        Interrupted while waiting (Ctrl-C), the queue stays pending: the next call
        waits for it again, so queues are never applied out of order."""
        while len(self._pending) > keep:
            pending = self._pending[0]
            try:
                pending.result()
            except BaseException as exc:
                if not (pending.done() and pending.exception() is exc):
                    raise  # interrupted here (Ctrl-C), not an error of the worker
                self._pending.pop(0)
                # Later queues were applied after it (a queue checks its batches before
                # writing anything, so the failed one left the state as it was); their
                # own errors, if any, are not raised on top of this one.
                for later in self._pending:
                    later.exception()
                self._pending = []
                raise
            self._pending.pop(0)

    def _apply_queue(self, queue: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Apply queued batches ``(idx, proba, loss)``, in order."""
        n = sum(batch[0].shape[0] for batch in queue)
        work = self._scratch(n)
        # The batches' arrays, or CPU tensors kept by reference (converted here).
        idx, proba, loss = (
            _concatenate([batch[k] for batch in queue], work[name][:n])
            for k, name in enumerate(("idx", "proba", "loss"))
        )
        check_batch_indices(idx, self.n_samples)
        # Sorted by instance (stable: training order within an instance), the
        # gathers and scatters below sweep the state in address order: after a
        # training step it is out of cache, and random rows cost a miss each.
        order = selection._argsort_indices(idx, self.n_samples)
        inst = idx[order]
        first = work["first"][:n]
        first[0] = True
        np.not_equal(inst[1:], inst[:-1], out=first[1:])
        proba = np.take(proba, order, axis=0, out=work["p"][:n])
        loss = np.take(loss, order, axis=0, out=work["l"][:n])
        self._apply(inst, first, proba, loss)

    def _apply(self, inst: np.ndarray, first: np.ndarray, proba, loss) -> None:
        """Record ``n`` sorted predictions at once: ``inst`` (n,) sorted by instance,
        training order within an instance, ``first`` (n,) marks each instance's first
        row; ``proba`` and ``loss`` (n, q) are scratch rows, modified in place.

        An instance with ``k`` rows here gets them as ``k`` consecutive predictions:
        each row's change is taken from the row before it (the stored prediction for
        the first), the flip EMA after ``k`` steps is
        ``(1 − α)^k f + Σ_t α (1 − α)^(k − 1 − t) c_t`` over ``t = 0 … k − 1`` (one
        segment sum), and only the last ``W − 1`` changes of an instance reach the
        ring."""
        n = inst.size
        work = self._work
        starts = np.flatnonzero(first)
        distinct = starts.size == n  # every instance once (always, when drawn uniformly)
        if distinct:
            unique, group, counts, seen = inst, None, 1, self.seen[inst]
            before = seen  # predictions recorded before each row
        else:
            unique = inst[starts]
            group = np.cumsum(first) - 1  # row → its instance's position in `unique`
            counts = np.diff(np.append(starts, n))
            seen = self.seen[unique]
            position = np.arange(n) - starts[group]
            before = seen[group] + position
            remaining = counts[group] - 1 - position  # rows of the instance after this one
        m = unique.size
        stored = np.take(self.last, unique, axis=0, out=work["stored"][:m])
        # Non-finite probabilities repeat the prediction before them and NaN losses
        # keep the loss before them (a transiently diverged batch); probabilities
        # outside [0, 1] (logits passed by mistake) would wrap in the 16-bit changes:
        # an error, before anything is written. One min and max (NaN shows in both)
        # cost what an isfinite pass did.
        if not (proba.min() >= 0.0 and proba.max() <= 1.0):
            bad = ~np.isfinite(proba)
            if bad.any():
                _carry_forward(proba, bad, stored, starts, group)
            low, high = float(proba.min()), float(proba.max())
            if low < 0.0 or high > 1.0:
                outside = np.count_nonzero((proba < 0.0) | (proba > 1.0))
                raise ValueError(
                    f"recorded probabilities must lie in [0, 1]: {outside} of this queue's "
                    f"lie outside (min {low!r}, max {high!r}; logits instead of "
                    "probabilities?)"
                )
        if np.isnan(loss).any():
            _carry_forward(loss, np.isnan(loss), self.loss[unique], starts, group)

        if distinct:
            previous = stored
        else:
            previous = work["previous"][:n]
            previous[1:] = proba[:-1]
            previous[starts] = stored
        change = np.subtract(proba, previous, out=work["change"][:n])
        np.abs(change, out=change)
        fresh = before.min() == 0
        if fresh:  # an instance's very first prediction has no predecessor: no change
            change[before == 0] = 0.0

        decay = 1.0 - self.flip_decay
        keep = np.float32(decay)
        flip = np.take(self.flip, unique, axis=0, out=work["previous"][:m])
        if distinct:
            # f ← α·c + (1 − α)·f, written as (1 − α)(f − c) + c: no temporary.
            flip -= change
            flip *= keep
            flip += change
        else:
            # After k steps f = (1 − α)^k f + Σ_t α (1 − α)^(k − 1 − t) c_t: one
            # segment sum instead of one pass per occurrence rank.
            weight = (self.flip_decay * decay**remaining).astype(np.float32)
            flip *= decay ** counts.astype(np.float32)[:, None]
            # Weighted segment sums as one sparse product (np.add.reduceat along
            # rows is 3× slower).
            segments = sp.csr_array((weight, np.arange(n), np.append(starts, n)), shape=(m, n))
            flip += segments @ change
            ends = starts + counts - 1
            proba, loss = proba[ends], loss[ends]
        self.flip[unique] = flip
        self.last[unique] = proba
        self.loss[unique] = loss

        change *= np.float32(_CHANGE_SCALE)
        change += np.float32(0.5)  # round half up: change ≥ 0
        quantised = work["quantised"][:n]
        np.copyto(quantised, change, casting="unsafe")
        # Row (slot · N + i) of the ring holds instance i's change in that slot; only
        # an instance's last W − 1 changes stay in its window.
        ring = self.changes.reshape(-1, self.n_labels)
        rows = (before - 1) % self.slots * self.n_samples + inst
        write = before > 0 if fresh else None
        if not distinct and remaining.max() >= self.slots:
            late = remaining < self.slots
            write = late if write is None else write & late
        if write is None:
            ring[rows] = quantised
        else:
            ring[rows[write]] = quantised[write]
        seen = seen + counts
        self.seen[unique] = seen
        self._write_metrics(unique, proba, flip, loss, seen)

    def _scratch(self, rows: int) -> dict[str, np.ndarray]:
        """Scratch arrays for applying ``rows`` queued rows (grown when needed)."""
        work = self._work
        if "p" not in work or work["p"].shape[0] < rows:
            q = self.n_labels
            work = {"idx": np.empty(rows, dtype=np.intp), "first": np.empty(rows, dtype=bool)}
            for name in ("proba", "loss", "p", "l", "previous", "stored", "change"):
                work[name] = np.empty((rows, q), dtype=np.float32)
            work["quantised"] = np.empty((rows, q), dtype=np.uint16)
            self._work = work
        return work

    def __getstate__(self):
        # Pickles hold the state, not the queue, scratch arrays (megabytes) or thread.
        self.flush()
        state = self.__dict__.copy()
        state.update(_queue=[], _work={}, _pending=[], _executor=None, _executor_pid=None)
        return state


def check_history_size(history_size) -> int:
    """``history_size`` (W) as an int, or ``ValueError`` unless it is an integer ≥ 2:
    a window of one prediction has no change to average (docs/method.md §2), and a ring
    of ``max(W − 1, 1)`` slots would silently average one change anyway."""
    if isinstance(history_size, bool) or not isinstance(history_size, (int, np.integer)):
        raise ValueError(f"history_size must be an integer >= 2, got {history_size!r}")
    if history_size < 2:
        raise ValueError(f"history_size must be an integer >= 2, got {history_size!r}")
    return int(history_size)


def check_batch_indices(values: np.ndarray, n_samples: int) -> None:
    """Raise ``IndexError`` unless every instance index lies in ``[0, n_samples)``
    (``TypeError`` unless they are integers).

    Checked when a batch is recorded: numpy would wrap a negative index to another
    instance, an index past the end would fail later in the background worker, and
    on a CUDA device it would break the CUDA context.
    """
    if not values.size:
        return
    _integers(values)
    if values.dtype == np.int64:
        # Seen as unsigned, a negative index is huge: one reduction instead of two
        # (a recorded batch's indices are int64; ~2 µs per batch).
        bad = values.view(np.uint64).max() >= n_samples
    else:
        bad = values.min() < 0 or values.max() >= n_samples
    if bad:
        raise IndexError(
            f"instance indices must lie in [0, {n_samples}), got {values.min()}..{values.max()}"
        )


def _integers(values):
    """``values`` as an array, unless they are not integers (``TypeError``): numpy
    would truncate float indices to other instances, and read booleans as 0 and 1."""
    values = np.asarray(values)
    if values.size and values.dtype.kind not in "iu":
        raise TypeError(f"instance indices must be integers, got dtype {values.dtype}")
    return values


def _lazy_tensors(idx, proba, loss) -> bool:
    """Whether a batch is CPU torch tensors of the net's dtypes (int64 indices,
    float32 values) that numpy reads as they are, so that they can be kept until
    their queue is applied; anything else is converted when recorded."""
    torch = sys.modules.get("torch")  # tensors exist only where torch is imported
    if torch is None:
        return False
    tensor = torch.Tensor  # exact type (subclasses are converted): ~0.8 µs per batch
    return (
        type(idx) is tensor
        and type(proba) is tensor
        and type(loss) is tensor
        and idx.dtype is torch.int64
        and proba.dtype is torch.float32
        and loss.dtype is torch.float32
        and idx.is_cpu
        and proba.is_cpu
        and loss.is_cpu
        and not (idx.requires_grad or proba.requires_grad or loss.requires_grad)
        and not (idx.is_neg() or proba.is_neg() or loss.is_neg())
    )


def _concatenate(parts: list, out: np.ndarray) -> np.ndarray:
    """Concatenate a queue's arrays or CPU tensors (of ``out``'s dtype) into ``out``."""
    torch = sys.modules.get("torch")
    if torch is not None:
        # numpy views of the tensors: np.concatenate would read each through
        # __array__ (yeast's 19 batches: 19 against 29 µs). Not torch.cat (6.6 µs):
        # from the worker thread, large ones would start torch's intra-op threads.
        parts = [part.numpy() if type(part) is torch.Tensor else part for part in parts]
    return np.concatenate(parts, out=out)


def to_host(x):
    """A torch tensor as a host numpy array (detached, negation and conjugation
    resolved; no copy for a plain CPU tensor), anything else as it is."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        # detach + cpu + resolve in one call (1.6 against 2.7 µs per batch tensor).
        return x.numpy(force=True)
    return x


def _carry_forward(values, bad, stored, starts, group) -> None:
    """Replace ``bad`` entries of sorted rows in place by the last good value before
    them in the same instance's rows, else by the instance's ``stored`` value."""
    n = values.shape[0]
    rows = np.where(bad, -1, np.arange(n)[:, None])
    np.maximum.accumulate(rows, axis=0, out=rows)
    start = starts[:, None] if group is None else starts[group][:, None]
    own = rows >= start  # a good row of the same instance precedes (or is) this one
    filled = np.take_along_axis(values, np.maximum(rows, 0), axis=0)
    base = stored if group is None else stored[group]
    values[...] = np.where(own, filled, base)

"""The D2ACE batch sampler: a torch batch sampler that plans each epoch's batches."""

from __future__ import annotations

import math
import os

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import Sampler

from . import _background, _device_selection, selection
from ._record import TrainingRecord, check_batch_indices, check_history_size, to_host

__all__ = [
    "BATCH_SELECTIONS",
    "DEVICE_SELECTION_MIN_LABELS",
    "LABEL_CONTEXTS",
    "D2ACEBatchSampler",
    "device_selection_bytes",
    "use_device_selection",
]

#: Strategies understood by :class:`D2ACEBatchSampler` (``batch_selection``).
BATCH_SELECTIONS = ("d2ace", "random")
#: Label contexts: kNN neighbourhood, all labels (``Z ≡ 1``), or no enhancement.
LABEL_CONTEXTS = ("local", "global", "none")


class D2ACEBatchSampler(Sampler):
    """Batch sampler that draws each epoch's mini-batches with D2ACE (docs/method.md §8).

    Iterating the sampler (the DataLoader does it once per epoch) plans the whole
    epoch at once: during warm-up a uniform permutation cut into batches,
    afterwards ``⌈N/B⌉`` batches of distinct instances drawn from the epoch's D2ACE
    distribution, computed with :mod:`skd2ace.selection` from everything recorded
    up to the end of the previous epoch. The network reports every training batch
    to :meth:`record` with the batch's row indices, so the bookkeeping stays right
    with DataLoader worker processes and prefetching.

    Parameters
    ----------
    Y : array-like or sparse matrix of shape (N, q)
        Binary labels of the training set.
    batch_size : int
    max_epochs : int
        ``T`` of the schedules.
    strategy : {'d2ace', 'random'}, default='d2ace'
        'random' shuffles uniformly every epoch and records nothing.
    warmup_epochs, ramp_end : int or None
        ``e_w`` and ``e_m`` (docs/method.md §6–7); None gives ``round(0.1·T)`` and
        ``round(0.7·T)``.
    neighbors : ndarray of shape (N, k), Future of one, callable, or None
        Nearest other instances of each instance, for the local label context.
        A :class:`concurrent.futures.Future` (a search running in a background
        thread) is waited for at the end of the warm-up, when the context is
        first needed. A callable is called without arguments once the record is
        allocated (so a search it starts on the GPU does not count against the
        record's memory check) and returns either.
    label_context : {'local', 'global', 'none'}, default='local'
        ``Z`` from the neighbours, ``Z ≡ 1``, or no correlation enhancement.
    history_size, flip_decay, fluctuation_weight, weight_mean, weight_std,
    initial_pressure, mixture_start, mixture_end, dynamic_weights
        ``W``, ``α``, ``λ``, ``a``, ``b``, ``s0``, ``β0``, ``β1`` and whether the
        label weights are dynamic (docs/method.md §9); ``history_size ≥ 2``.
    random_state : int or numpy Generator, default=None
    device : str or torch.device, default=None
        Where the network trains (None: the CPU). On a CUDA device with many labels
        the bookkeeping runs there (see :func:`use_device_selection`); otherwise the
        recorded batches are applied on the host, in a background thread when
        training leaves a core free: on the CPU one that torch's threads leave, on a
        GPU any but the one driving it. Results do not depend on it beyond float
        rounding (a quantised rank may flip at a boundary on the device).

    Attributes
    ----------
    epoch : int
        Epochs planned so far (the schedules continue from here).
    record_ : TrainingRecord, DeviceRecord or None
        The recorded statistics (None for 'random'; a ``DeviceRecord`` of torch
        tensors when the bookkeeping runs on the CUDA device).
    epoch_info_ : dict
        The last epoch's selection record: ``selection_pressure``,
        ``mixture_weight``, ``selection_ess`` and the two label-weight vectors.

    Examples
    --------
    >>> import numpy as np
    >>> Y = np.eye(3, dtype=int).repeat(4, axis=0)        # 12 instances, 3 labels
    >>> sampler = D2ACEBatchSampler(Y, batch_size=5, max_epochs=4, warmup_epochs=1,
    ...                             ramp_end=3, random_state=0)
    >>> [len(b) for b in sampler]                          # warm-up: a permutation
    [5, 5, 2]
    >>> for b in sampler:                                  # the net records each batch
    ...     sampler.record(b, np.full((len(b), 3), 0.9), np.full((len(b), 3), 0.1))
    >>> sampler.epoch, sampler.epoch_info_["selection_pressure"]
    (2, 8.0)
    """

    def __init__(
        self,
        Y,
        *,
        batch_size: int,
        max_epochs: int,
        strategy: str = "d2ace",
        warmup_epochs: int | None = None,
        ramp_end: int | None = None,
        neighbors: np.ndarray | None = None,
        label_context: str = "local",
        history_size: int = 5,
        flip_decay: float = 0.7,
        fluctuation_weight: float = 0.5,
        weight_mean: float = 0.5,
        weight_std: float = 0.5,
        dynamic_weights: bool = True,
        initial_pressure: float = 8.0,
        mixture_start: float = 0.7,
        mixture_end: float = 0.3,
        random_state=None,
        device=None,
    ):
        if strategy not in BATCH_SELECTIONS:
            raise ValueError(f"strategy must be one of {BATCH_SELECTIONS}, got {strategy!r}")
        if label_context not in LABEL_CONTEXTS:
            raise ValueError(
                f"label_context must be one of {LABEL_CONTEXTS}, got {label_context!r}"
            )
        history_size = check_history_size(history_size)
        self.labels = sp.csr_matrix((sp.csr_matrix(Y) != 0).astype(np.int8))
        self.n_samples, self.n_labels = self.labels.shape
        if selection.dense_products(self.n_samples, self.n_labels):
            # Small problems take the dense masked products: keep Y dense (1 byte per
            # entry) rather than densifying it in every epoch.
            self.labels = self.labels.toarray()
        self.batch_size = int(batch_size)
        self.max_epochs = int(max_epochs)
        self.strategy = strategy
        # Defaults of docs/method.md §9: 10% and 70% of the epochs.
        self.warmup_epochs = (
            round(0.1 * max_epochs) if warmup_epochs is None else int(warmup_epochs)
        )
        self.ramp_end = round(0.7 * max_epochs) if ramp_end is None else int(ramp_end)
        self.label_context = label_context
        self.dynamic_weights = dynamic_weights
        self.weight_mean, self.weight_std = weight_mean, weight_std
        self.initial_pressure = float(initial_pressure)
        self.mixture_start, self.mixture_end = mixture_start, mixture_end
        self.rng = np.random.default_rng(random_state)
        self.epoch = 0
        self.epoch_info_: dict = {}
        self.record_ = None
        self.context_ = None
        self._pending_neighbors = None
        self._device_labels = self._device_context = None
        if strategy == "d2ace" and use_device_selection(
            device, self.n_samples, self.n_labels, history_size
        ):
            # Many labels on a GPU: the host's per-batch copies and single bookkeeping
            # thread would set the pace, so state and distribution stay on the device.
            self.record_ = _device_selection.DeviceRecord(
                self.n_samples,
                self.n_labels,
                history_size,
                flip_decay,
                fluctuation_weight,
                device=device,
            )
        elif strategy == "d2ace":
            # Full queues of recorded batches are applied in a background thread when
            # training leaves a core free: the bookkeeping then overlaps training.
            self.record_ = TrainingRecord(
                self.n_samples,
                self.n_labels,
                history_size,
                flip_decay,
                fluctuation_weight,
                background=_background.free_cores(device) > 0,
            )
        if strategy == "d2ace":
            if label_context == "local":
                if callable(neighbors):
                    neighbors = neighbors()
                if neighbors is None:
                    neighbors = np.empty((self.n_samples, 0), dtype=np.intp)
                if hasattr(neighbors, "result"):
                    # Still being searched (a Future): the context is first needed
                    # when the warm-up ends.
                    self._pending_neighbors = neighbors
                else:
                    self.context_ = selection.local_label_context(self.labels, neighbors)
            elif label_context == "global":
                self.context_ = np.ones((self.n_samples, self.n_labels), dtype=np.int8)

    def __len__(self) -> int:
        return math.ceil(self.n_samples / self.batch_size)

    def __iter__(self):
        yield from self.plan_epoch()

    def plan_epoch(self) -> list[np.ndarray]:
        """The batches of the next epoch (advances :attr:`epoch`)."""
        n_batches = len(self)
        e = self.epoch
        self.epoch += 1
        if self.strategy == "random":
            self.epoch_info_ = {"selection_pressure": 1.0, "selection_ess": 1.0}
            return self._shuffled()
        pressure = selection.selection_pressure(
            e, self.max_epochs, self.warmup_epochs, self.initial_pressure
        )
        mixture = selection.mixture_weight(
            e, self.warmup_epochs, self.ramp_end, self.mixture_start, self.mixture_end
        )
        info = {"selection_pressure": pressure, "mixture_weight": mixture}
        if self.record_.on_device:
            return self._plan_on_device(e, n_batches, info)
        if e < self.warmup_epochs:
            record = self.record_
            for name, metric in (
                ("uncertainty", record.uncertainty),
                ("hardness", record.hardness),
            ):
                info[f"label_weights_{name}"] = self._weights(metric)
            info["selection_ess"] = 1.0
            batches = self._shuffled()
        else:
            self._resolve_context()
            P, extra = selection.d2ace_distribution(
                self.record_.uncertainty,
                self.record_.hardness,
                self.labels,
                self.context_,
                pressure=pressure,
                mixture=mixture,
                a=self.weight_mean,
                b=self.weight_std,
                dynamic_weights=self.dynamic_weights,
                correlation=self.label_context != "none",
            )
            info.update(
                label_weights_uncertainty=extra["label_weights_uncertainty"].tolist(),
                label_weights_hardness=extra["label_weights_hardness"].tolist(),
                selection_ess=extra["ess"],
            )
            batches = selection.draw_batches(P, n_batches, self.batch_size, self.rng)
        self.epoch_info_ = info
        return batches

    def _plan_on_device(self, e: int, n_batches: int, info: dict) -> list[np.ndarray]:
        """:meth:`plan_epoch` with a :class:`~skd2ace._device_selection.DeviceRecord`."""
        E, H = self.record_.metrics()
        if e < self.warmup_epochs:
            for name, metric in (("uncertainty", E), ("hardness", H)):
                info[f"label_weights_{name}"] = _device_selection.label_weights(
                    metric, self.weight_mean, self.weight_std, self.dynamic_weights
                ).tolist()
            info["selection_ess"] = 1.0
            self.epoch_info_ = info
            return self._shuffled()
        self._resolve_context()
        correlation = self.label_context != "none"
        if correlation and self._device_labels is None:
            device = E.device
            self._device_labels = _device_selection.as_device_matrix(self.labels, device)
            self._device_context = _device_selection.as_device_matrix(self.context_, device)
        P, extra = _device_selection.d2ace_distribution(
            E,
            H,
            self._device_labels,
            self._device_context,
            pressure=info["selection_pressure"],
            mixture=info["mixture_weight"],
            a=self.weight_mean,
            b=self.weight_std,
            dynamic_weights=self.dynamic_weights,
            correlation=correlation,
        )
        info.update(
            label_weights_uncertainty=extra["label_weights_uncertainty"].tolist(),
            label_weights_hardness=extra["label_weights_hardness"].tolist(),
            selection_ess=extra["ess"],
        )
        self.epoch_info_ = info
        return selection.draw_batches(P, n_batches, self.batch_size, self.rng)

    def record(self, idx, proba, loss, *, copy: bool = True) -> None:
        """Record a training batch: row indices, probabilities and elementwise loss.

        Accepts numpy arrays or torch tensors (moved to host memory, or to the
        device when the bookkeeping runs there). Probabilities must lie in
        [0, 1] (the estimator passes sigmoids): on the host, values outside raise
        ``ValueError`` when the batch's queue is applied (the epoch's end, or a
        later batch), before any of that queue is recorded; on the device they
        are not checked (a check would wait for the GPU at every batch).
        An instance repeated within the batch gets its rows as consecutive
        predictions. With ``copy=False`` the record keeps them by reference until
        it applies them (the caller must not modify them afterwards), and their
        indices are checked only then (an ``IndexError`` comes from that batch's
        epoch end, a later batch, or pickling the sampler); CPU tensors of the net's
        dtypes (int64 indices, float32 values) are also converted only then.
        """
        if self.record_ is None:
            return
        if self.record_.on_device:
            self.record_.update(idx, proba, loss)  # tensors stay where they are
            return
        if not copy:
            # The record keeps the net's tensors as they are (converted and checked
            # when applied: ~8 ms less per yeast fit) and converts anything else.
            self.record_.update(idx, proba, loss, copy=False)
            return
        idx = np.asarray(to_host(idx))
        check_batch_indices(idx, self.n_samples)
        self.record_.update(idx, proba, loss)  # tensors moved to host memory there

    def release(self) -> None:
        """Drop the recorded state (O(N·q) memory) once training is over."""
        try:
            if self.record_ is not None:
                # What is still queued would be dropped anyway; a background queue's
                # error is still raised, after everything is released.
                self.record_.close(apply=False)
        finally:
            self.record_ = None
            self.context_ = None
            self._pending_neighbors = None
            self.labels = None
            self._device_labels = self._device_context = None

    def _resolve_context(self) -> None:
        """Wait for a neighbour search still running in the background, if any."""
        if self._pending_neighbors is not None:
            neighbors = self._pending_neighbors.result()  # re-raises the search's error
            self._pending_neighbors = None
            self.context_ = selection.local_label_context(self.labels, neighbors)

    def __getstate__(self):
        # A Future does not pickle: wait for its neighbours.
        if self._pending_neighbors is not None and self.labels is not None:
            self._resolve_context()
        state = self.__dict__.copy()
        # Device copies of labels and context are rebuilt from the host ones when needed.
        state.update(_pending_neighbors=None, _device_labels=None, _device_context=None)
        return state

    def _weights(self, metric: np.ndarray) -> list[float]:
        # The weights d2ace_distribution would use (warm-up epochs only record them).
        return selection._pool_weights(
            metric, self.weight_mean, self.weight_std, self.dynamic_weights
        ).tolist()

    def _shuffled(self) -> list[np.ndarray]:
        order = self.rng.permutation(self.n_samples)
        step = self.batch_size
        return [order[start : start + step] for start in range(0, order.size, step)]


#: Fewest labels for which :func:`use_device_selection` keeps D2ACE's bookkeeping on a
#: CUDA device by default. Measured on an H200 (docs/performance.md): at q = 14 the device
#: path took 1.43x the host path's fit time (kernel launches per batch cost more than the
#: host's tiny updates), at q = 100 1.03x (even), at q = 983 0.53x.
DEVICE_SELECTION_MIN_LABELS = 256


def device_selection_bytes(n_samples: int, n_labels: int, history_size: int = 5) -> int:
    """Device memory D2ACE's bookkeeping takes on a CUDA device, state and planning.

    Per (instance, label): the record (3 float32 + ``max(W − 1, 1)`` int32 changes:
    28 bytes at the default ``W = 5``), the dense labels and context (float32 each)
    and planning's peak (E, H and the masked products: 16 bytes measured, 24
    allowed); per label pair, planning's q × q correlation matrices (15.5 bytes
    measured, 24 allowed).
    """
    per_value = 4 * (3 + max(history_size - 1, 1)) + 8 + 24
    return n_samples * n_labels * per_value + 24 * n_labels * n_labels


def use_device_selection(device, n_samples: int, n_labels: int, history_size: int = 5) -> bool:
    """Whether D2ACE's bookkeeping runs on the network's ``device`` instead of the host.

    Only for CUDA devices. ``SKD2ACE_DEVICE_SELECTION`` decides: ``auto`` (the default)
    when CUDA is available, there are at least :data:`DEVICE_SELECTION_MIN_LABELS`
    labels and :func:`device_selection_bytes` fits in half of the device's free
    memory (this process's cached blocks counted as free); ``1`` always on CUDA (a
    ``ValueError`` when CUDA or that device is not available); ``0`` never.
    """
    choice = os.environ.get("SKD2ACE_DEVICE_SELECTION", "auto").strip().lower()
    if choice not in ("auto", "0", "1"):
        raise ValueError(f"SKD2ACE_DEVICE_SELECTION must be 'auto', '1' or '0', got {choice!r}")
    if device is None or choice == "0" or torch.device(device).type != "cuda":
        return False
    device = torch.device(device)
    problem = _device_selection.cuda_problem(device)
    if problem is not None:
        if choice == "1":
            raise ValueError(
                f"SKD2ACE_DEVICE_SELECTION=1 asks for the bookkeeping on device={device!r}, "
                f"but {problem}"
            )
        return False
    if choice == "1":
        return True
    if n_labels < DEVICE_SELECTION_MIN_LABELS:
        return False
    free, _ = torch.cuda.mem_get_info(device)
    # Blocks torch's allocator caches for this process are free for the record too.
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return device_selection_bytes(n_samples, n_labels, history_size) <= free // 2

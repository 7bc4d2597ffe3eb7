"""D2ACE's bookkeeping on the network's device: the record and the distribution in torch.

Chosen by :func:`skd2ace.sampler.use_device_selection` (CUDA, many labels). On a GPU the
numpy path copies every batch's probabilities and losses to the host and applies them in
one CPU thread, which at delicious size sets the pace of a GPU fit (d2ace/random 2.68 on an
H200, 1.45 with this module; docs/performance.md). With few labels the host path is faster
(yeast: this module's per-batch kernels cost 1.43x the host path's fit time). Here the
state lives in device memory, each batch is applied by a few dozen elementwise kernels
that queue behind the training step, and the epoch's correlation-enhanced scores are
computed there too; only the scores (N floats per pool) come back to the host, where
:func:`skd2ace.selection.rank_probabilities` ranks them and
:func:`skd2ace.selection.draw_batches` draws the batches.

The formulas are those of :mod:`skd2ace.selection` and :class:`skd2ace._record.TrainingRecord`
(same quantised changes, same operation order where it matters); results agree with the
numpy path up to float rounding (a quantised rank may flip at a boundary).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.sparse as sp
import torch

from ._record import check_batch_indices, check_history_size
from .selection import _argsort_indices, effective_sample_size, rank_probabilities

_CHANGE_SCALE = 65535.0
_P_CLIP = 1e-7


class DeviceRecord:
    """:class:`~skd2ace._record.TrainingRecord`'s state as torch tensors on ``device``.

    A batch of distinct instances (the D2ACE sampler's always are) is applied at once
    by scatters; one that repeats instances in rounds of distinct ones. E and H are
    computed for all rows when read. State per (instance, label): newest probability,
    flip EMA, latest loss (float32 each) and ``W − 1`` quantised changes
    (int32: uint16 lacks device kernels).
    """

    on_device = True

    def __init__(self, n_samples, n_labels, history_size=5, flip_decay=0.7, lam=0.5, *, device):
        self.n_samples, self.n_labels = n_samples, n_labels
        history_size = check_history_size(history_size)
        self.history_size, self.flip_decay, self.lam = history_size, flip_decay, lam
        self.slots = history_size - 1
        self.device = torch.device(device)
        shape = (n_samples, n_labels)
        kw = {"device": self.device}
        self.seen = torch.zeros(n_samples, dtype=torch.int32, **kw)
        self.last = torch.full(shape, 0.5, dtype=torch.float32, **kw)
        self.flip = torch.zeros(shape, dtype=torch.float32, **kw)
        self.loss = torch.full(shape, math.log(2.0), dtype=torch.float32, **kw)
        self.changes = torch.zeros((self.slots, *shape), dtype=torch.int32, **kw)

    @property
    def nbytes(self) -> int:
        tensors = (self.seen, self.last, self.flip, self.loss, self.changes)
        return sum(t.element_size() * t.numel() for t in tensors)

    def update(self, idx, proba, loss, *, copy: bool = True) -> None:
        """Apply one batch (``copy`` is ignored: nothing is kept).

        An instance with several rows in the batch gets them as consecutive
        predictions, as in :class:`~skd2ace._record.TrainingRecord`: the batch is
        then applied in rounds of distinct instances (the sampler's batches never
        repeat one, so this costs one host-side check per batch).
        """
        idx, proba, loss = _tensor(idx).reshape(-1), _tensor(proba), _tensor(loss)
        expected = (idx.numel(), self.n_labels)
        if tuple(proba.shape) != expected or tuple(loss.shape) != expected:
            raise ValueError(
                f"a batch of {expected[0]} rows needs probabilities and losses of shape "
                f"{expected}, got {tuple(proba.shape)} and {tuple(loss.shape)}"
            )
        if idx.numel() == 0:
            return
        dev = self.device
        rounds = _rounds_of_distinct(idx, self.n_samples)
        idx = idx.to(dev, torch.long, non_blocking=True)
        proba, loss = proba.to(dev, torch.float32), loss.to(dev, torch.float32)
        if rounds is None:
            self._apply(idx, proba, loss)
            return
        for rows in rounds:
            rows = torch.from_numpy(rows).to(dev)
            self._apply(idx[rows], proba[rows], loss[rows])

    def _apply(self, idx, proba, loss) -> None:
        """Apply rows of distinct instances by scatters (tensors on the device)."""
        before = self.seen[idx]
        stored = self.last[idx]
        # A non-finite probability repeats the previous one, a NaN loss keeps the previous.
        proba = torch.where(torch.isfinite(proba), proba, stored)
        loss = torch.where(torch.isnan(loss), self.loss[idx], loss)
        change = (proba - stored).abs_()
        change *= (before > 0).unsqueeze(1)  # a first prediction has no predecessor
        flip = self.flip[idx]
        # f ← α·c + (1 − α)·f, in TrainingRecord's operation order.
        flip -= change
        flip *= 1.0 - self.flip_decay
        flip += change
        self.flip[idx] = flip
        self.last[idx] = proba
        self.loss[idx] = loss
        quantised = (change * _CHANGE_SCALE + 0.5).to(torch.int32)
        # An instance seen for the first time writes a zero change into a slot that is
        # still zero (nothing was ever written to its ring): no mask, no device sync.
        slot = torch.remainder(before.long() - 1, self.slots)
        self.changes[slot, idx] = quantised
        self.seen[idx] = before + 1

    _TENSORS = ("seen", "last", "flip", "loss", "changes")

    def __getstate__(self):
        # Host tensors in the pickle: it then loads on a machine without this device.
        state = self.__dict__.copy()
        state.update({name: getattr(self, name).cpu() for name in self._TENSORS})
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if not _available(self.device):
            warnings.warn(
                f"the D2ACE record was saved on {self.device}, which is not available "
                "here; it is loaded on the CPU",
                UserWarning,
                stacklevel=2,
            )
            self.device = torch.device("cpu")
        for name in self._TENSORS:
            setattr(self, name, getattr(self, name).to(self.device))

    def flush(self) -> None:
        """Nothing is queued (for :class:`~skd2ace._record.TrainingRecord`'s interface)."""

    def close(self, *, apply: bool = True) -> None:
        """Nothing runs in the background (the interface of the numpy record)."""

    def metrics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``E`` and ``H`` (N, q) float32 on the device (fresh tensors).

        Computed in place where the operation order allows: planning's peak device
        memory is part of :func:`skd2ace.sampler.device_selection_bytes`.
        """
        pairs = (self.seen - 1).clamp(1, self.slots).to(torch.float32)
        scale = (torch.tensor(1.0 / _CHANGE_SCALE, dtype=torch.float32) / pairs).unsqueeze(1)
        uncertainty = self.changes.sum(0, dtype=torch.int32).to(torch.float32)
        uncertainty *= scale
        uncertainty *= self.lam
        p = self.last.clamp(_P_CLIP, 1.0 - _P_CLIP)
        entropy = torch.log2(p)
        entropy *= p
        p.neg_().add_(1.0)  # reused for 1 − p: one N × q buffer fewer at the peak
        term = torch.log2(p)
        term *= p
        del p
        entropy += term
        del term
        entropy *= -(1.0 - self.lam)
        uncertainty += entropy
        del entropy
        hardness = torch.neg(self.loss).expm1_()
        hardness *= self.flip - 1.0
        return uncertainty, hardness

    @property
    def uncertainty(self) -> np.ndarray:
        """``E`` as a host array (for inspection; planning reads :meth:`metrics`)."""
        return self.metrics()[0].cpu().numpy()

    @property
    def hardness(self) -> np.ndarray:
        """``H`` as a host array."""
        return self.metrics()[1].cpu().numpy()


def _tensor(x) -> torch.Tensor:
    """A batch input as a tensor outside autograd (numpy arrays and lists copied)."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.from_numpy(np.array(x))


def _rounds_of_distinct(idx: torch.Tensor, n_samples: int) -> list[np.ndarray] | None:
    """Row positions in rounds of distinct instances (the k-th occurrences in round
    k), or None when every instance occurs once. Indices are range-checked here, on
    the host."""
    values = idx.cpu().numpy()
    check_batch_indices(values, n_samples)
    order = _argsort_indices(values, n_samples)
    ordered = values[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    if first.all():
        return None
    starts = np.flatnonzero(first)
    occurrence = np.empty(values.size, dtype=np.intp)
    occurrence[order] = np.arange(values.size) - starts[np.cumsum(first) - 1]
    return [np.flatnonzero(occurrence == k) for k in range(occurrence.max() + 1)]


def cuda_problem(device: torch.device) -> str | None:
    """Why tensors cannot be put on the CUDA ``device`` in this process, or None."""
    if not torch.cuda.is_available():
        return "CUDA is not available (use device='cpu')"
    if device.index is not None and device.index >= torch.cuda.device_count():
        return f"only {torch.cuda.device_count()} CUDA device(s) are available"
    return None


def _available(device: torch.device) -> bool:
    """Whether tensors can be put on ``device`` in this process."""
    if device.type != "cuda":
        return device.type == "cpu"
    return cuda_problem(device) is None


def as_device_matrix(Y, device) -> torch.Tensor:
    """A 0/1 (or context) matrix, dense float32 on ``device``."""
    Y = Y.toarray() if sp.issparse(Y) else np.asarray(Y)
    return torch.as_tensor((Y != 0).astype(np.float32)).to(device)


def label_weights(
    M: torch.Tensor, a: float, b: float, dynamic: bool, block_values: int = 2**22
) -> torch.Tensor:
    """``v = exp(a·mean + b·std)`` per label (population std, float64 sums over row
    blocks of about ``block_values`` entries: no float64 copy of ``M``)."""
    if not dynamic:
        return torch.ones(M.shape[1], dtype=torch.float64, device=M.device)
    total = torch.zeros(M.shape[1], dtype=torch.float64, device=M.device)
    squares = torch.zeros_like(total)
    rows = max(1, block_values // max(M.shape[1], 1))
    for start in range(0, M.shape[0], rows):
        part = M[start : start + rows].to(torch.float64)
        total += part.sum(0)
        squares += part.square_().sum(0)
    n = max(M.shape[0], 1)
    mean = total / n
    var = (squares / n - mean**2).clamp(min=0.0)
    return torch.exp(a * mean + b * var.sqrt())


def d2ace_distribution(
    E: torch.Tensor,
    H: torch.Tensor,
    labels: torch.Tensor | None,
    context: torch.Tensor | None,
    *,
    pressure: float,
    mixture: float,
    a: float = 0.5,
    b: float = 0.5,
    dynamic_weights: bool = True,
    correlation: bool = True,
    eps: float = 1e-8,
) -> tuple[np.ndarray, dict]:
    """:func:`skd2ace.selection.d2ace_distribution` on device tensors (dense products:
    on a GPU the masked Gram matrix and scores are cheap dense GEMMs). Returns ``P`` as
    a host float64 array and the same info dict."""
    pools, weights = [], []
    for M, share in ((E, mixture), (H, 1.0 - mixture)):
        v = label_weights(M, a, b, dynamic_weights)
        weights.append(v.cpu().numpy())
        if share == 0.0:
            continue
        v32 = v.to(torch.float32)
        scores = M @ v32
        if correlation:
            masked = M * labels
            # In place on one q × q float64 matrix (the q² part of the memory rule).
            corr = (masked.T @ masked).to(torch.float64)
            norms = corr.diagonal().clamp(min=0.0).sqrt() + eps
            corr /= norms[:, None]
            corr /= norms[None, :]
            corr /= corr.sum(1, keepdim=True) + eps
            corr *= v[:, None]
            vC = corr.to(torch.float32)
            del corr
            scores = scores + (masked @ vC).mul_(context).sum(1)
            del masked
        # The ranks of N scores are cheap anywhere and P is drawn from on the host:
        # the functional core ranks them there.
        scores = scores.to(torch.float64).cpu().numpy()
        pools.append(share * rank_probabilities(scores, pressure))
    P = np.sum(pools, axis=0)
    P /= P.sum()
    info = {
        "label_weights_uncertainty": weights[0],
        "label_weights_hardness": weights[1],
        "ess": effective_sample_size(P),
    }
    return P, info

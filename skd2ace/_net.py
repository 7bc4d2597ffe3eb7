"""The skorch network that trains with a D2ACE batch sampler (the only skorch-aware code)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, EarlyStopping, EpochScoring
from skorch.dataset import get_len, unpack_data
from skorch.utils import is_dataset, to_tensor
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from ._data import IndexedDataset, collate_batch
from .metrics import macro_auc

__all__ = [
    "D2ACENet",
    "PredefinedSplit",
    "ValidationRows",
    "net_callbacks",
    "sigmoid",
    "valid_macro_auc",
]

#: History keys written every epoch by :class:`D2ACENet`.
SELECTION_KEYS = (
    "selection_pressure",
    "mixture_weight",
    "selection_ess",
    "label_weights_uncertainty",
    "label_weights_hardness",
)


def sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """Probabilities from logits (a named function, so that nets pickle)."""
    return torch.sigmoid(logits)


def valid_macro_auc(net, X, y):
    """skorch scoring: macro-AUC of the validation set (one-class labels skipped).

    NaN when no label column holds both classes or the network diverged.
    """
    proba = net.predict_proba(X)
    if not np.all(np.isfinite(proba)):
        return float("nan")
    return macro_auc(y, proba)


def net_callbacks(*, validate: bool, patience, verbose, user_callbacks) -> dict:
    """The net's callback parameters: validation macro-AUC scoring and best-epoch
    restoring (``patience`` epochs without improvement stop training, None never),
    then the user's callbacks (named ``user_<i>_<class>`` unless given as
    ``(name, callback)``), and skorch's PrintLog only when ``verbose``."""
    callbacks = []
    if validate:
        scoring = EpochScoring(valid_macro_auc, lower_is_better=False, name="valid_macro_auc")
        best = EarlyStopping(
            monitor="valid_macro_auc",
            lower_is_better=False,
            patience=patience or sys.maxsize,
            threshold=0.0,
            threshold_mode="abs",
            load_best=True,
            sink=print if verbose else _silent,
        )
        callbacks += [("valid_macro_auc", scoring), ("best_valid_macro_auc", best)]
    for i, callback in enumerate(user_callbacks or []):
        if isinstance(callback, tuple):
            callbacks.append(callback)
        else:
            callbacks.append((f"user_{i}_{type(callback).__name__}", callback))
    params = {"callbacks": callbacks}
    # skorch's PrintLog formats a table every epoch even when nothing is printed.
    if verbose:
        params["callbacks__print_log__keys_ignored"] = list(SELECTION_KEYS[3:])
    else:
        params["callbacks__print_log"] = None
    return params


class PredefinedSplit:
    """skorch ``train_split`` returning a fixed validation dataset (picklable)."""

    def __init__(self, valid):
        self.valid = valid

    def __call__(self, dataset, y=None, **kwargs):
        return dataset, self.valid


class ValidationRows:
    """skorch ``train_split`` of a fitted net between trainings: which rows of the
    estimator's data validate, not the rows themselves (the estimator puts a
    :class:`PredefinedSplit` of them in place while it trains)."""

    def __init__(self, idx):
        self.idx = idx

    def __call__(self, dataset, y=None, **kwargs):
        raise RuntimeError(
            "this net validates on rows that D2ACEMultiLabelClassifier supplies while it "
            "trains: continue training with the estimator's fit or partial_fit"
        )


def _silent(*args, **kwargs):
    return None


def _notify(method_name, net, **kwargs):
    """``net.notify(method_name, **kwargs)`` as a batch hook."""
    net.notify(method_name, **kwargs)


class D2ACENet(NeuralNet):
    """A skorch ``NeuralNet`` whose training batches come from a batch sampler.

    The net uses an elementwise criterion (``reduction='none'``), back-propagates the
    mean loss and hands the ``(B, q)`` probabilities and losses of every training
    batch, with the batch's row indices, to ``batch_sampler.record``. At the end of
    every epoch it writes the sampler's ``epoch_info_`` (selection pressure, mixture
    weight, effective sample size, label weights) into :attr:`history`.

    Datasets are :class:`~skd2ace._data.IndexedDataset` (whole batches per fetch).
    Batches loaded in-process go through the net's own copy of skorch's batch loop
    (same history entries, same callback hooks, less per-batch work); callbacks are
    called for every hook they define, and skipped where they keep the base no-op
    (the batch hooks are looked up once per epoch; a subclass that overrides
    ``notify`` gets every call).
    Use it through :class:`skd2ace.D2ACEMultiLabelClassifier`; build it directly
    only to customise skorch further.

    Parameters
    ----------
    module, criterion, ... :
        As for :class:`skorch.NeuralNet`; ``criterion`` must return an elementwise
        loss (e.g. ``BCEWithLogitsLoss(reduction='none')``).
    batch_sampler : D2ACEBatchSampler or None
        Plans the training batches and records them; None trains on sequential
        batches.
    """

    def __init__(self, module, *args, batch_sampler=None, **kwargs):
        super().__init__(module, *args, **kwargs)
        self.batch_sampler = batch_sampler

    def get_dataset(self, X, y=None):
        if is_dataset(X):
            return X
        return IndexedDataset(X, y)

    def get_iterator(self, dataset, training=False):
        kwargs = self.get_params_for("iterator_train" if training else "iterator_valid")
        kwargs.pop("shuffle", None)
        batch_size = kwargs.pop("batch_size", self.batch_size)
        if training and self.batch_sampler is not None:
            batches = self.batch_sampler
            if len(dataset) != batches.n_samples:
                raise ValueError(
                    f"the batch sampler was built for {batches.n_samples} training rows, "
                    f"the training dataset has {len(dataset)}"
                )
        else:
            if batch_size == -1:
                batch_size = len(dataset)
            batches = BatchSampler(SequentialSampler(dataset), max(1, batch_size), False)
        if (
            set(kwargs) <= {"num_workers"}
            and not kwargs.get("num_workers")
            and hasattr(dataset, "__getitems__")
        ):
            # In-process loading of whole batches needs none of DataLoader's per-batch
            # machinery (fetcher, pinning checks, worker seeding).
            return _BatchIterator(dataset, batches)
        if "generator" not in kwargs:
            # DataLoader draws a worker base seed from the global torch RNG at every
            # iteration; an own generator keeps predict() off the global state, and
            # training (seeded from inside the estimator's fork_rng) reproducible.
            seed = int(torch.randint(2**62, ()).item()) if training else 0
            kwargs["generator"] = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=collate_batch, **kwargs)

    def notify(self, method_name, **cb_kwargs):
        # skorch calls every callback's hook three times per batch; most callbacks
        # (timer, scoring, logging) keep the base class's no-op there. Skipping those
        # calls is the same as making them (they do nothing) and saves ~20 µs per batch.
        getattr(self, method_name)(self, **cb_kwargs)
        for hook in self._callback_hooks(method_name):
            hook(self, **cb_kwargs)

    def _callback_hooks(self, method_name):
        """The callbacks' ``method_name`` hooks that are not the base no-op."""
        noop = getattr(Callback, method_name, None)
        for _, cb in self.callbacks_:
            hook = getattr(cb, method_name)
            if noop is None or getattr(hook, "__func__", hook) is not noop:
                yield hook

    def train_step(self, batch, **fit_params):
        # skorch builds the arguments of the on_grad_computed hooks (a generator over
        # the parameters, wrapped for sharing) before every optimizer step, whether or
        # not anything listens. When neither the net nor a callback does, this is
        # skorch's step without that notification.
        own = getattr(self.on_grad_computed, "__func__", None)
        if own is not NeuralNet.on_grad_computed or any(self._callback_hooks("on_grad_computed")):
            return super().train_step(batch, **fit_params)
        accumulator = self.get_train_step_accumulator()

        def step_fn():
            self._zero_grad_optimizer()
            step = self.train_step_single(batch, **fit_params)
            accumulator.store_step(step)
            return step["loss"]

        self._step_optimizer(step_fn)
        return accumulator.get_step()

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        # Batches of this process's own iterator hold its own index tensors; a
        # DataLoader's workers send theirs in shared memory (see train_step_single).
        self._own_batches = isinstance(iterator, _BatchIterator)
        if not self._own_batches:
            return super().run_single_epoch(iterator, training, prefix, step_fn, **fit_params)
        # skorch's loop, for the batches of an IndexedDataset: the batch size is that of
        # the row indices (skorch's get_len walks the batch's dict), and the two
        # per-batch history entries are written into the batch's row at once.
        loss_key, size_key = prefix + "_loss", prefix + "_batch_size"
        # The batch hooks notify would call, resolved once per epoch, and the epoch's
        # list of batch rows (skorch's History indexes through a generic path).
        begin, end = self._batch_hooks()
        rows = self.history[-1]["batches"]
        batch_count = 0
        for batch in iterator:
            for hook in begin:
                hook(self, batch=batch, training=training)
            step = step_fn(batch, **fit_params)
            row = rows[-1]
            row[loss_key] = step["loss"].item()
            row[size_key] = _batch_size(batch)
            for hook in end:
                hook(self, batch=batch, training=training, **step)
            batch_count += 1
        self.history.record(prefix + "_batch_count", batch_count)

    def _batch_hooks(self) -> tuple[list, list]:
        """What :meth:`notify` calls for ``on_batch_begin`` and ``on_batch_end``: the
        net's method and the callbacks' hooks that are not the base no-op (or the
        subclass's ``notify`` itself, when it overrides it)."""
        names = ("on_batch_begin", "on_batch_end")
        if getattr(self.notify, "__func__", None) is not D2ACENet.notify:
            # A subclass's notify sees every call, as in skorch's loop.
            return tuple([functools.partial(_notify, name)] for name in names)
        return tuple([getattr(self, name), *self._callback_hooks(name)] for name in names)

    def _set_training(self, training=True):
        # skorch switches the mode before every batch; Module.train recurses into
        # every submodule, so skip modules already in the requested mode.
        for name in self._modules + self._criteria:
            module = getattr(self, name + "_")
            if isinstance(module, torch.nn.Module) and module.training != training:
                module.train(training)

    def infer(self, x, **fit_params):
        if _indexed_batch(x):
            x = x["X"]
        if type(x) is torch.Tensor and not fit_params:
            # skorch's infer for a tensor, without to_tensor's type checks per batch.
            return self.module_(_to_tensor(x, self.device))
        return super().infer(x, **fit_params)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        return self.get_elementwise_loss(y_pred, y_true).mean()

    def get_elementwise_loss(self, y_pred, y_true):
        """The criterion's unreduced ``(B, q)`` loss."""
        return self.criterion_(y_pred, _to_tensor(y_true, self.device))

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        y_pred = self.infer(Xi, **fit_params)
        elementwise = self.get_elementwise_loss(y_pred, yi)
        loss = elementwise.mean()
        loss.backward()
        sampler = self.batch_sampler
        if sampler is not None and sampler.record_ is not None and isinstance(Xi, Mapping):
            # Detached inputs build no graph (cheaper per batch than a no_grad block).
            # The three tensors are not used again here: the record keeps them
            # uncopied until it applies them (off this thread in the background).
            idx = Xi["sample_idx"]
            if not getattr(self, "_own_batches", False):
                # A worker's tensor lives in shared memory and keeps a file descriptor
                # open while it lives: hundreds of queued batches ran out of them.
                idx = idx.clone()
            sampler.record(
                idx,
                torch.sigmoid(y_pred.detach()),
                elementwise.detach(),
                copy=False,
            )
        return {"loss": loss, "y_pred": y_pred}

    def on_epoch_end(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        super().on_epoch_end(net, dataset_train, dataset_valid, **kwargs)
        if self.batch_sampler is None:
            return
        for key, value in self.batch_sampler.epoch_info_.items():
            if isinstance(value, np.ndarray):
                value = value.tolist()
            self.history.record(key, value)


def _to_tensor(x, device):
    """skorch's ``to_tensor``, with a plain tensor moved at once (to_tensor and
    to_device check it against five types first: ~2 µs per call)."""
    if type(x) is torch.Tensor:
        return x if device is None else x.to(device)
    return to_tensor(x, device=device)


def _batch_size(batch) -> int:
    """Rows in a batch: those of its row indices, else skorch's ``get_len``."""
    xb = batch[0] if isinstance(batch, (tuple, list)) else batch
    if _indexed_batch(xb):
        return len(xb["sample_idx"])
    return get_len(xb)


def _indexed_batch(x) -> bool:
    """Whether ``x`` is a batch's inputs with their row indices (``{"X", "sample_idx"}``,
    what :class:`~skd2ace._data.IndexedDataset` serves); a plain dict skips the
    Mapping ABC check, which costs about a µs per call, twice per batch."""
    return (type(x) is dict or isinstance(x, Mapping)) and "sample_idx" in x


class _BatchIterator:
    """Batches of an :class:`IndexedDataset` in the order a batch sampler plans them
    (what a single-process DataLoader yields with whole-batch fetching)."""

    def __init__(self, dataset, batches):
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for idx in self.batches:
            yield self.dataset.__getitems__(idx)

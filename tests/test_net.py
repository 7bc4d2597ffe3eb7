"""D2ACENet: the recorded statistics belong to the rows that were in each batch."""

import os

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

from skd2ace import D2ACEBatchSampler, D2ACEMultiLabelClassifier, D2ACENet, selection


class RowLogits(torch.nn.Module):
    """Returns the first ``n_labels`` input columns as logits (plus a frozen-at-zero
    parameter so that the optimizer has something to hold)."""

    def __init__(self, n_labels):
        super().__init__()
        self.n_labels = n_labels
        self.zero = torch.nn.Parameter(torch.zeros(1))

    def forward(self, X):
        return X[:, : self.n_labels] + 0.0 * self.zero


def bookkeeping_problem(n=203, q=3, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, q)).astype(np.float32)
    X = np.hstack([logits, rng.random((n, 2), dtype=np.float32)])
    Y = (rng.random((n, q)) < 0.4).astype(np.float32)
    return X, Y, logits


def row_logits_net(sampler, n_labels, **kwargs):
    """A D2ACENet over :class:`RowLogits` with an elementwise BCE, training on all rows
    with ``sampler``'s batches, silent; ``kwargs`` add or override net parameters."""
    params = {
        "module__n_labels": n_labels,
        "criterion": torch.nn.BCEWithLogitsLoss,
        "criterion__reduction": "none",
        "train_split": None,
        "batch_sampler": sampler,
        "verbose": 0,
    }
    return D2ACENet(RowLogits, **{**params, **kwargs})


@pytest.mark.parametrize("num_workers", [0, 2])
def test_recorded_losses_belong_to_batch_rows(num_workers):
    X, Y, logits = bookkeeping_problem()
    sampler = D2ACEBatchSampler(
        Y, batch_size=16, max_epochs=4, warmup_epochs=1, ramp_end=3, random_state=0
    )
    net = row_logits_net(
        sampler,
        Y.shape[1],
        optimizer=torch.optim.SGD,
        lr=0.0,
        max_epochs=4,
        batch_size=16,
        iterator_train__num_workers=num_workers,
    )
    net.fit(X, Y)
    record = sampler.record_
    record.flush()  # the last epoch's batches are still queued
    proba = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    bce = np.logaddexp(0.0, logits) - Y * logits
    # Each row's own constant prediction was recorded for it, never another row's.
    np.testing.assert_allclose(record.last, proba, rtol=1e-6, atol=1e-6)
    assert record.seen.min() >= 1 and record.seen.sum() == 4 * len(X)
    # Constant predictions: no fluctuation, no flips; E is the entropy term only.
    np.testing.assert_allclose(record.flip, 0.0, atol=1e-7)
    np.testing.assert_allclose(
        record.hardness, selection.hardness(bce, np.zeros_like(bce)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        record.uncertainty, 0.5 * selection.binary_entropy(proba), rtol=1e-5, atol=1e-6
    )


def test_history_gets_sampler_info_and_iterator_length():
    X, Y, _ = bookkeeping_problem(n=50)
    sampler = D2ACEBatchSampler(Y, batch_size=8, max_epochs=3, warmup_epochs=1, random_state=0)
    net = row_logits_net(sampler, Y.shape[1], lr=0.0, max_epochs=3, batch_size=8)
    net.fit(X, Y)
    assert net.history[:, "train_batch_count"] == [7, 7, 7]
    assert net.history[0, "selection_ess"] == 1.0
    assert len(net.history[-1, "label_weights_hardness"]) == Y.shape[1]
    with pytest.raises(ValueError, match="batch sampler was built for 50"):
        net.partial_fit(X[:20], Y[:20])


def test_modes_switch_between_training_and_validation_batches():
    # The net switches train/eval mode only when it changes; every submodule must
    # still be in the right mode for every batch, across epochs and validation.
    from skorch.callbacks import Callback

    from skd2ace import D2ACEMultiLabelClassifier

    class Modes(Callback):
        def initialize(self):
            self.seen = []
            return self

        def on_batch_end(self, net, batch=None, training=None, **kwargs):
            modules = [*net.module_.modules(), net.criterion_]
            self.seen.append((training, {m.training for m in modules}))

    modes = Modes()
    X, Y, _ = bookkeeping_problem()
    clf = D2ACEMultiLabelClassifier(
        max_epochs=3, dropout=0.5, validation_fraction=0.2, callbacks=[modes], random_state=0
    ).fit(X, Y)
    assert {training for training, _ in modes.seen} == {True, False}
    assert all(states == {training} for training, states in modes.seen)
    # predictions run in eval mode: dropout off, so repeated calls agree
    np.testing.assert_array_equal(clf.predict_proba(X), clf.predict_proba(X))


def test_verbose_prints_one_row_per_epoch_and_silent_prints_nothing(capsys):
    from skd2ace import D2ACEMultiLabelClassifier

    X, Y, _ = bookkeeping_problem()
    D2ACEMultiLabelClassifier(max_epochs=3, verbose=1, random_state=0).fit(X, Y)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert "train_loss" in out and "selection_ess" in out and len(rows) == 3
    assert "label_weights" not in out  # per-label vectors stay out of the table
    D2ACEMultiLabelClassifier(max_epochs=3, verbose=0, random_state=0).fit(X, Y)
    assert capsys.readouterr().out == ""


HOOKS = ("on_batch_begin", "on_batch_end", "on_grad_computed", "on_epoch_end")


def counting_callback():
    """A skorch Callback whose hooks are instance attributes (not methods), counting
    their calls."""
    from skorch.callbacks import Callback

    callback = Callback()
    callback.calls = dict.fromkeys(HOOKS, 0)
    for name in HOOKS:
        setattr(
            callback,
            name,
            lambda net, _name=name, **kw: callback.calls.update({_name: callback.calls[_name] + 1}),
        )
    return callback


def test_callbacks_get_every_hook_they_define():
    # The net skips the base Callback's no-op batch hooks; hooks a callback defines
    # (its own methods, or any attribute on a duck-typed callback) are still called.
    from skorch.callbacks import Callback

    class BatchEnd(Callback):
        def __init__(self):
            self.batches, self.grads = 0, 0

        def on_batch_end(self, net, batch=None, training=None, **kwargs):
            self.batches += training

        def on_grad_computed(self, net, named_parameters, **kwargs):
            self.grads += len(list(named_parameters))

    X, Y, _ = bookkeeping_problem(n=50)
    batch_end, counting = BatchEnd(), counting_callback()
    sampler = D2ACEBatchSampler(Y, batch_size=8, max_epochs=2, warmup_epochs=1, random_state=0)
    net = row_logits_net(
        sampler,
        Y.shape[1],
        max_epochs=2,
        batch_size=8,
        callbacks=[("batch_end", batch_end), ("counting", counting)],
    )
    net.fit(X, Y)
    assert batch_end.batches == 14 and batch_end.grads == 14  # one parameter
    assert counting.calls["on_batch_begin"] == counting.calls["on_batch_end"] == 14
    assert counting.calls["on_grad_computed"] == 14
    assert counting.calls["on_epoch_end"] == 2


def test_a_subclass_notify_sees_every_batch_hook():
    # The net resolves the batch hooks once per epoch instead of calling notify per
    # batch; a subclass that overrides notify still gets every call.
    X, Y, _ = bookkeeping_problem(n=50)
    counting = counting_callback()

    class Logged(D2ACENet):
        def notify(self, method_name, **cb_kwargs):
            self.seen = [*getattr(self, "seen", []), method_name]
            super().notify(method_name, **cb_kwargs)

    sampler = D2ACEBatchSampler(Y, batch_size=8, max_epochs=2, warmup_epochs=1, random_state=0)
    net = row_logits_net(sampler, Y.shape[1], max_epochs=2, batch_size=8)
    net = Logged(**net.get_params(deep=False))
    net.set_params(callbacks=[("counting", counting)])
    net.fit(X, Y)
    assert net.seen.count("on_batch_begin") == net.seen.count("on_batch_end") == 14
    assert counting.calls["on_batch_begin"] == counting.calls["on_batch_end"] == 14
    assert [len(epoch["batches"]) for epoch in net.history] == [7, 7]


@pytest.mark.parametrize("with_sampler", [True, False])
def test_batch_history_matches_skorch_loop(with_sampler):
    # The net's own loop over in-process batches writes what skorch's loop (taken
    # with a DataLoader) writes: per-batch losses and sizes, batch counts.
    from skorch.dataset import ValidSplit

    X, Y, _ = bookkeeping_problem(n=61)

    def fit(**kwargs):
        sampler = None
        if with_sampler:
            sampler = D2ACEBatchSampler(
                Y, batch_size=8, max_epochs=3, warmup_epochs=1, random_state=0
            )
        split = None if with_sampler else ValidSplit(4)
        net = row_logits_net(sampler, Y.shape[1], max_epochs=3, batch_size=8, **kwargs)
        net.set_params(train_split=split)
        return net.fit(X, Y).history

    ours = fit()
    skorchs = fit(iterator_train__pin_memory=False, iterator_valid__pin_memory=False)
    keys = ["train_loss", "train_batch_size", "valid_loss", "valid_batch_size"]
    for mine, theirs in zip(ours, skorchs, strict=True):
        assert [{k: b[k] for k in keys if k in b} for b in mine["batches"]] == [
            {k: b[k] for k in keys if k in b} for b in theirs["batches"]
        ]
        for key in ("train_batch_count", "valid_batch_count", "train_loss", "valid_loss"):
            assert mine.get(key) == theirs.get(key)
    sizes = [b["train_batch_size"] for b in ours[0]["batches"] if "train_batch_size" in b]
    assert sum(sizes) == (61 if with_sampler else 61 - 16)
    if not with_sampler:
        assert sum(b.get("valid_batch_size", 0) for b in ours[0]["batches"]) == 16


def test_net_own_grad_hook_is_called():
    class Net(D2ACENet):
        grads = 0

        def on_grad_computed(self, net, named_parameters, **kwargs):
            Net.grads += len(list(named_parameters))

    X, Y, _ = bookkeeping_problem(n=40)
    sampler = D2ACEBatchSampler(Y, batch_size=8, max_epochs=2, warmup_epochs=1, random_state=0)
    params = row_logits_net(sampler, Y.shape[1]).get_params(deep=False)
    Net(**{**params, "max_epochs": 2, "batch_size": 8}).fit(X, Y)
    assert Net.grads == 10  # 5 batches × 2 epochs, one parameter


def test_infer_and_loss_take_tensors_arrays_and_batches_alike():
    # Tensors skip skorch's to_tensor checks; arrays, batch dicts and the loss's
    # targets give the same values as skorch's own path.
    from skorch import NeuralNet

    X, Y, _ = bookkeeping_problem(n=20)
    net = row_logits_net(None, Y.shape[1]).initialize()
    Xt = torch.from_numpy(X)
    expected = NeuralNet.infer(net, Xt)
    for x in (Xt, X, {"X": Xt, "sample_idx": torch.arange(20)}):
        torch.testing.assert_close(net.infer(x), expected, rtol=0, atol=0)
    losses = [net.get_elementwise_loss(expected, y) for y in (Y, torch.from_numpy(Y))]
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    assert losses[0].shape == Y.shape


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_batches_from_worker_processes_hold_no_file_descriptors_in_the_record():
    # A DataLoader worker's tensors live in shared memory, one open file descriptor
    # each: the record, which queues up to 512 batches, keeps copies of their indices.
    rng = np.random.default_rng(0)
    X, Y = rng.random((1200, 4)), (rng.random((1200, 3)) < 0.4).astype(int)

    class PeakDescriptors(Callback):
        peak = 0

        def on_batch_end(self, net, **kwargs):
            type(self).peak = max(type(self).peak, len(os.listdir("/proc/self/fd")))

    before = len(os.listdir("/proc/self/fd"))
    D2ACEMultiLabelClassifier(
        hidden_layer_sizes=(4,),
        max_epochs=2,
        warmup_epochs=1,
        batch_size=8,  # 150 batches an epoch, all in one queue
        validation_fraction=None,
        num_workers=1,
        random_state=0,
        callbacks=[PeakDescriptors()],
    ).fit(X, Y)
    assert PeakDescriptors.peak - before < 40  # 150+ when the record kept the tensors

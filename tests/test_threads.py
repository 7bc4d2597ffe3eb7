"""torch's intra-op threads while the estimator trains (``torch_threads``)."""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

from skd2ace import D2ACEMultiLabelClassifier, _background


class _ThreadsSeen(Callback):
    """Records torch's thread count at every epoch and whether the record works in
    the background."""

    def __init__(self):
        self.seen = []

    def on_epoch_begin(self, net, **kwargs):
        record = net.batch_sampler.record_
        self.seen.append((torch.get_num_threads(), record is not None and record.background))


@pytest.fixture
def two_threads_on_two_cores(monkeypatch):
    """torch on every core of a 2-core machine (torch's default there)."""
    monkeypatch.setattr(_background, "available_cores", lambda: 2)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _data():
    rng = np.random.default_rng(0)
    return rng.random((60, 4)), (rng.random((60, 3)) < 0.4).astype(int)


def _fit(method="fit", **params):
    spy = _ThreadsSeen()
    clf = D2ACEMultiLabelClassifier(
        max_epochs=2, hidden_layer_sizes=(4,), callbacks=[spy], random_state=0, **params
    )
    getattr(clf, method)(*_data())
    return spy.seen


@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_auto_leaves_a_core_to_the_bookkeeping_when_torch_takes_all(
    two_threads_on_two_cores, method
):
    seen = _fit(method)
    # One torch thread, so the record applies its queues on the free core.
    assert seen and all(item == (1, True) for item in seen)
    assert torch.get_num_threads() == 2  # restored


def test_auto_changes_nothing_for_random_batches_or_with_a_core_free(
    two_threads_on_two_cores,
):
    assert {t for t, _ in _fit(batch_selection="random")} == {2}
    torch.set_num_threads(1)
    seen = _fit()
    assert seen and all(item == (1, True) for item in seen)


@pytest.mark.parametrize(("setting", "expected"), [(None, 2), (1, 1), (np.int64(3), 3)])
def test_explicit_torch_threads(two_threads_on_two_cores, setting, expected):
    assert {t for t, _ in _fit(torch_threads=setting)} == {expected}
    assert torch.get_num_threads() == 2


def test_threads_restored_when_training_fails(two_threads_on_two_cores):
    class Boom(Callback):
        def on_epoch_end(self, net, **kwargs):
            raise RuntimeError("boom")

    X, Y = _data()
    clf = D2ACEMultiLabelClassifier(max_epochs=2, hidden_layer_sizes=(4,), callbacks=[Boom()])
    with pytest.raises(RuntimeError, match="boom"):
        clf.fit(X, Y)
    assert torch.get_num_threads() == 2


def test_auto_results_equal_those_of_the_same_threads_set_by_hand(two_threads_on_two_cores):
    X, Y = _data()
    auto = D2ACEMultiLabelClassifier(max_epochs=3, hidden_layer_sizes=(8,), random_state=0)
    torch.set_num_threads(1)
    by_hand = D2ACEMultiLabelClassifier(
        max_epochs=3, hidden_layer_sizes=(8,), random_state=0, torch_threads=None
    ).fit(X, Y)
    torch.set_num_threads(2)
    np.testing.assert_array_equal(auto.fit(X, Y).predict_proba(X), by_hand.predict_proba(X))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_waits_for_background_work_submitted_while_it_waited():
    # The fork hook waits for the running tasks; one submitted meanwhile (as a training
    # thread dispatches its next queue when the previous one ends) must be waited for
    # too: forking while it runs BLAS or torch kernels can deadlock.
    executor = ThreadPoolExecutor(2)
    span = {}

    def first():
        time.sleep(0.2)

    def second():
        span["start"] = time.monotonic()
        time.sleep(0.3)
        span["end"] = time.monotonic()

    def submit_second(_):
        span["future"] = _background.submit(executor, second)

    _background.submit(executor, first).add_done_callback(submit_second)
    time.sleep(0.05)
    pid = os.fork()
    if pid == 0:  # the child's copy of `span` tells whether `second` was running
        os._exit(1 if "start" in span and "end" not in span else 0)
    _, status = os.waitpid(pid, 0)
    span["future"].result()
    executor.shutdown()
    assert os.waitstatus_to_exitcode(status) == 0, "forked while a background task ran"

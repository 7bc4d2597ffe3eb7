"""Long runs: interruption, warm_start, partial_fit, pickling and skorch's save_params."""

import copy
import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_multilabel_classification
from skorch.callbacks import Callback

from skd2ace import D2ACEMultiLabelClassifier, selection

T, WARMUP, S0 = 4, 1, 8.0
FAST = {
    "max_epochs": T,
    "warmup_epochs": WARMUP,
    "selection_pressure": S0,
    "hidden_layer_sizes": (8,),
    "batch_size": 16,
}


@pytest.fixture(scope="module")
def data():
    return make_multilabel_classification(n_samples=80, n_features=6, n_classes=3, random_state=0)


def weights_of(clf):
    return {k: v.detach().clone() for k, v in clf.net_.module_.state_dict().items()}


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_schedule(history, epochs, max_epochs=T):
    pressures = history[:, "selection_pressure"]
    assert len(pressures) == len(epochs)
    for e, value in zip(epochs, pressures, strict=True):
        assert value == pytest.approx(selection.selection_pressure(e, max_epochs, WARMUP, S0))


# ---------------------------------------------------------------- interruption
class InterruptAt(Callback):
    """Keep a copy of the weights after every epoch; raise Ctrl-C after epoch ``at``."""

    def __init__(self, at):
        self.at = at

    def initialize(self):
        self.snapshots_ = []
        return self

    def on_epoch_end(self, net, **kwargs):
        self.snapshots_.append(copy.deepcopy(net.module_.state_dict()))
        if len(net.history) == self.at:
            raise KeyboardInterrupt


def test_keyboard_interrupt_leaves_a_usable_estimator(data):
    X, Y = data
    stop = InterruptAt(3)
    clf = D2ACEMultiLabelClassifier(
        **{**FAST, "max_epochs": 10},
        lr=0.05,
        validation_fraction=0.25,
        callbacks=[stop],
        random_state=0,
    ).fit(X, Y)
    history = clf.net_.history
    assert len(history) == 3
    assert clf.net_.batch_sampler.epoch == 3
    auc = history[:, "valid_macro_auc"]
    best = int(np.argmax(auc))  # EarlyStopping keeps the first of equal scores
    # The premise: the best epoch is not the last, so restoring it shows.
    assert best < 2
    assert not same_weights(weights_of(clf), stop.snapshots_[-1])
    assert same_weights(weights_of(clf), stop.snapshots_[best])
    proba = clf.predict_proba(X)
    assert proba.shape == Y.shape and np.all(np.isfinite(proba))
    assert clf.predict(X).shape == Y.shape


class InterruptAtEpochBegin(Callback):
    def __init__(self, at):
        self.at = at

    def on_epoch_begin(self, net, **kwargs):
        if len(net.history) == self.at:  # the epoch's row exists, its batches are unplanned
            raise KeyboardInterrupt


def test_an_epoch_interrupted_before_its_batches_counts_for_the_schedules(data):
    X, Y = data
    clf = D2ACEMultiLabelClassifier(
        **{**FAST, "max_epochs": 6},
        validation_fraction=None,
        warm_start=True,
        callbacks=[InterruptAtEpochBegin(3)],
        random_state=0,
    ).fit(X, Y)
    assert len(clf.net_.history) == 3
    clf.partial_fit(X, Y)
    clf.partial_fit(X, Y)
    pressures = [row.get("selection_pressure") for row in clf.net_.history]
    assert len(pressures) == 5 and pressures[2] is None  # interrupted before any batch
    for e in (0, 1, 3, 4):  # the schedule goes on where the history is, not one behind
        assert pressures[e] == pytest.approx(selection.selection_pressure(e, 6, WARMUP, S0))


class FailAt(Callback):
    def __init__(self, at):
        self.at = at

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) == self.at:
            raise RuntimeError("callback failed")


@pytest.mark.parametrize("warm_start", [False, True])
def test_an_error_during_fit_frees_the_selection_state_like_a_finished_fit(data, warm_start):
    X, Y = data
    clf = D2ACEMultiLabelClassifier(
        **FAST, callbacks=[FailAt(2)], warm_start=warm_start, random_state=0
    )
    with pytest.raises(RuntimeError, match="callback failed"):
        clf.fit(X, Y)
    sampler = clf.net_.batch_sampler
    assert (sampler.record_ is None) is not warm_start
    clf.set_params(callbacks=None, warm_start=True).partial_fit(X, Y)  # goes on either way
    assert len(clf.net_.history) == 3


# ---------------------------------------------------------------- warm_start
def test_warm_start_continues_network_schedules_and_state(data):
    X, Y = data
    clf = D2ACEMultiLabelClassifier(**FAST, warm_start=True, random_state=0).fit(X, Y)
    net = clf.net_
    assert net.batch_sampler.record_ is not None  # kept for the continuation
    clf.fit(X, Y)
    assert clf.net_ is net  # the same network, not a fresh one
    assert len(net.history) == 2 * T
    assert net.batch_sampler.epoch == 2 * T
    assert net.batch_sampler.record_ is not None
    # The schedule goes on (pressure 1.0 beyond T) instead of restarting at s0.
    assert_schedule(net.history, range(2 * T))
    assert net.history[:, "selection_pressure"][T:] == [1.0] * T
    assert [row["epoch"] for row in net.history] == list(range(1, 2 * T + 1))


def test_warm_start_is_deterministic(data):
    X, Y = data
    runs = []
    for _ in range(2):
        clf = D2ACEMultiLabelClassifier(**FAST, warm_start=True, dropout=0.1, random_state=3)
        runs.append(clf.fit(X, Y).fit(X, Y).predict_proba(X))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_warm_start_after_a_cold_fit_continues(data):
    # fit without warm_start frees the recorded state; switching warm_start on then
    # continues the network and the schedules with a fresh record (it used to
    # start over silently).
    X, Y = data
    clf = D2ACEMultiLabelClassifier(**FAST, random_state=0).fit(X, Y)
    assert clf.net_.batch_sampler.record_ is None
    net = clf.net_
    clf.set_params(warm_start=True).fit(X, Y)
    assert clf.net_ is net and len(net.history) == 2 * T
    assert clf.net_.batch_sampler.epoch == 2 * T
    assert clf.net_.batch_sampler.record_ is not None
    assert_schedule(net.history, range(2 * T))


def test_fit_without_warm_start_starts_over(data):
    X, Y = data
    clf = D2ACEMultiLabelClassifier(**FAST, random_state=0).fit(X, Y)
    first = clf.net_
    clf.fit(X, Y)
    assert clf.net_ is not first and len(clf.net_.history) == T


# ---------------------------------------------------------------- partial_fit
def test_partial_fit_trains_one_epoch_per_call_with_continuing_schedules(data):
    X, Y = data
    clf = D2ACEMultiLabelClassifier(**FAST, random_state=0)
    k = 6  # beyond max_epochs too: the schedules hold their final values
    for i in range(k):
        clf.partial_fit(X, Y)
        assert len(clf.net_.history) == i + 1
        assert clf.net_.batch_sampler.record_ is not None  # state kept after each call
    assert clf.net_.batch_sampler.epoch == k
    assert_schedule(clf.net_.history, range(k))
    assert clf.predict_proba(X).shape == Y.shape


def test_partial_fit_rejects_other_rows_and_keeps_state(data):
    X, Y = data
    clf = D2ACEMultiLabelClassifier(**FAST, random_state=0).partial_fit(X, Y)
    weights = weights_of(clf)
    with pytest.raises(ValueError, match=r"needs the data of the first fit \(80 rows"):
        clf.partial_fit(X[:50], Y[:50])
    assert len(clf.net_.history) == 1 and same_weights(weights, weights_of(clf))
    assert clf.net_.batch_sampler.record_ is not None
    clf.partial_fit(X, Y)  # still usable afterwards
    assert len(clf.net_.history) == 2


def test_partial_fit_after_fit_continues(data):
    X, Y = data
    clf = D2ACEMultiLabelClassifier(**FAST, random_state=0).fit(X, Y)
    net = clf.net_
    clf.partial_fit(X, Y)
    assert clf.net_ is net and len(net.history) == T + 1
    assert net.batch_sampler.epoch == T + 1
    assert_schedule(net.history, range(T + 1))


def test_partial_fit_is_deterministic(data):
    X, Y = data
    runs = []
    for _ in range(2):
        clf = D2ACEMultiLabelClassifier(**FAST, random_state=5)
        for _ in range(3):
            clf.partial_fit(X, Y)
        runs.append(clf.predict_proba(X))
    np.testing.assert_array_equal(runs[0], runs[1])


# ---------------------------------------------------------------- saving and loading
@pytest.fixture(scope="module")
def fitted(data):
    X, Y = data
    return D2ACEMultiLabelClassifier(**FAST, random_state=0).fit(X, Y)


@pytest.mark.parametrize("route", ["pickle", "joblib"])
def test_pickle_and_joblib_round_trip(fitted, data, route, tmp_path):
    X, _ = data
    if route == "pickle":
        restored = pickle.loads(pickle.dumps(fitted))
    else:
        joblib.dump(fitted, tmp_path / "clf.joblib")
        restored = joblib.load(tmp_path / "clf.joblib")
    np.testing.assert_array_equal(restored.predict_proba(X), fitted.predict_proba(X))
    np.testing.assert_array_equal(restored.predict(X), fitted.predict(X))
    assert len(restored.net_.history) == T


def test_pickles_made_before_the_callbacks_moved_to_the_net_module_load(data):
    # The net's validation split and callbacks lived in skd2ace._classifier until they
    # moved to skd2ace._net, and the split held the validation rows themselves:
    # pickles made before refer to the old names and hold the rows.
    from skd2ace._data import IndexedDataset
    from skd2ace._net import PredefinedSplit

    X, Y = data
    clf = D2ACEMultiLabelClassifier(**FAST, warm_start=True, random_state=0).fit(X, Y)
    expected = pickle.loads(pickle.dumps(clf)).partial_fit(X, Y).predict_proba(X)
    valid = clf._valid_idx
    clf.net_.train_split = PredefinedSplit(IndexedDataset(X[valid], Y[valid]))
    del clf._valid_idx
    stream = pickle.dumps(clf, protocol=2)  # globals as "c<module>\n<name>\n"
    for new, old in (
        (b"PredefinedSplit", b"_PredefinedSplit"),
        (b"valid_macro_auc", b"valid_macro_auc"),
        (b"_silent", b"_silent"),
    ):
        moved = b"cskd2ace._net\n" + new + b"\n"
        assert moved in stream
        stream = stream.replace(moved, b"cskd2ace._classifier\n" + old + b"\n")
    restored = pickle.loads(stream)
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(restored.partial_fit(X, Y).predict_proba(X), expected)


def test_pickles_made_before_torch_threads_existed_load_with_its_default(data):
    from sklearn.base import clone

    X, Y = data
    clf = D2ACEMultiLabelClassifier(**FAST, warm_start=True, random_state=0).fit(X, Y)
    expected = pickle.loads(pickle.dumps(clf)).partial_fit(X, Y).predict_proba(X)
    del clf.torch_threads  # as in a pickle of an earlier version
    restored = pickle.loads(pickle.dumps(clf))
    assert restored.get_params()["torch_threads"] == "auto"
    assert clone(restored).torch_threads == "auto"
    np.testing.assert_array_equal(restored.partial_fit(X, Y).predict_proba(X), expected)


def test_fitted_estimators_keep_no_validation_rows(data):
    from skd2ace._net import ValidationRows

    X, Y = data
    clf = D2ACEMultiLabelClassifier(**FAST, validation_fraction=0.25, random_state=0).fit(X, Y)
    split = clf.net_.train_split
    assert isinstance(split, ValidationRows) and vars(split).keys() == {"idx"}
    assert len(split.idx) == int(np.ceil(0.25 * len(X)))
    with pytest.raises(RuntimeError, match="partial_fit"):
        clf.net_.partial_fit(X, Y)  # the net alone has no validation rows
    # The estimator supplies them again: validation scores go on.
    clf.partial_fit(X, Y)
    assert np.isfinite(clf.net_.history[-1, "valid_macro_auc"])


def test_pickled_warm_estimator_continues_identically(data):
    # The pickle holds the whole training state (network, optimizer, selection
    # record, random streams): continuing the copy equals continuing the original.
    X, Y = data
    clf = D2ACEMultiLabelClassifier(**FAST, warm_start=True, random_state=0).fit(X, Y)
    copy_ = pickle.loads(pickle.dumps(clf))
    clf.partial_fit(X, Y)
    copy_.partial_fit(X, Y)
    np.testing.assert_array_equal(copy_.predict_proba(X), clf.predict_proba(X))


def test_save_params_load_params_into_initialized_clone(fitted, data, tmp_path):
    X, Y = data
    files = {
        "f_params": tmp_path / "params.pt",
        "f_optimizer": tmp_path / "optimizer.pt",
        "f_history": tmp_path / "history.json",
    }
    fitted.save_params(**files)
    assert all(path.exists() for path in files.values())

    restored = clone(fitted).initialize(X, Y)
    assert len(restored.net_.history) == 0
    assert not np.array_equal(restored.predict_proba(X), fitted.predict_proba(X))
    assert restored.load_params(**files) is restored
    np.testing.assert_array_equal(restored.predict_proba(X), fitted.predict_proba(X))
    assert restored.n_features_in_ == fitted.n_features_in_
    assert restored.n_labels_ == fitted.n_labels_
    assert len(restored.net_.history) == T
    # The schedules continue from the loaded history.
    assert restored.net_.batch_sampler.epoch == T
    restored.partial_fit(X, Y)
    assert len(restored.net_.history) == T + 1
    assert_schedule(restored.net_.history, range(T + 1))


def test_save_params_weights_only(fitted, data, tmp_path):
    X, Y = data
    fitted.save_params(f_params=tmp_path / "params.pt")
    restored = clone(fitted).initialize(X, Y).load_params(f_params=tmp_path / "params.pt")
    np.testing.assert_array_equal(restored.predict(X), fitted.predict(X))
    assert restored.net_.batch_sampler.epoch == 0  # no history loaded


def test_initialize_builds_without_training(data):
    X, Y = data
    clf = D2ACEMultiLabelClassifier(**FAST, random_state=0)
    assert clf.initialize(X, Y) is clf
    assert clf.n_features_in_ == X.shape[1] and clf.n_labels_ == Y.shape[1]
    assert len(clf.classes_) == Y.shape[1]
    assert len(clf.net_.history) == 0 and clf.net_.batch_sampler.epoch == 0
    # Same random_state: the same initial weights as the network fit starts from.
    other = D2ACEMultiLabelClassifier(**FAST, random_state=0).initialize(X, Y)
    assert same_weights(weights_of(clf), weights_of(other))


def _fit_in_child(X, Y, out):
    D2ACEMultiLabelClassifier(**FAST, random_state=0).fit(X, Y)
    out.put("fitted")


def test_a_child_forked_while_another_thread_fits_can_fit(data):
    # Fits in threads take turns with torch's generator through a lock; a child forked
    # while another thread holds it must not inherit it locked forever.
    import multiprocessing
    import threading

    X, Y = data
    inside, release = threading.Event(), threading.Event()
    # One torch thread: a fork while another thread is inside torch's intra-op thread
    # pool leaves the child's pool unusable (torch's own limit, not what is tested here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    class Hold(Callback):
        def on_epoch_end(self, net, **kwargs):
            inside.set()
            release.wait(30)

    clf = D2ACEMultiLabelClassifier(**FAST, callbacks=[Hold()], random_state=0)
    fitting = threading.Thread(target=clf.fit, args=(X, Y))
    fitting.start()
    try:
        assert inside.wait(30)
        context = multiprocessing.get_context("fork")
        out = context.Queue()
        child = context.Process(target=_fit_in_child, args=(X, Y, out))
        child.start()
        child.join(60)
        if child.is_alive():
            child.kill()
            child.join()
            pytest.fail("the forked child hung in fit")
        assert child.exitcode == 0 and out.get(timeout=5) == "fitted"
    finally:
        release.set()
        fitting.join()
        torch.set_num_threads(threads)

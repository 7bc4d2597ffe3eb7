"""Degenerate but valid input: no crash, no NaN, no warning storm, valid distributions.

Estimator-level cases train tiny networks for a few epochs; the batch sampler is also
driven directly with adversarial probabilities and losses (hypothesis).
"""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skorch.callbacks import Callback

from skd2ace import D2ACEMultiLabelClassifier
from skd2ace.sampler import D2ACEBatchSampler
from skd2ace.selection import NonFiniteScoresWarning

FAST = {
    "max_epochs": 4,
    "warmup_epochs": 1,
    "hidden_layer_sizes": (8,),
    "batch_size": 8,
    "random_state": 0,
}


def tiny_problem(n=30, d=4, q=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, d)), (rng.random((n, q)) < 0.4).astype(int)


# ESS = 1/(N·Σp²) ≤ 1; effective_sample_size clips the few-ulp rounding excess.
ESS_MAX = 1.0


def valid_ess(ess):
    return math.isfinite(ess) and 0 < ess <= ESS_MAX


def relevant(caught):
    """Warnings that count (dependencies' deprecation notices do not)."""
    return [w for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))]


def fit_quietly(X, Y, **params):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = D2ACEMultiLabelClassifier(**{**FAST, **params}).fit(X, Y)
        proba = clf.predict_proba(X)
        pred = clf.predict(X)
    return clf, proba, pred, relevant(caught)


def assert_valid_fit(clf, proba, pred, shape, epochs=FAST["max_epochs"]):
    assert proba.shape == shape and pred.shape == shape
    assert np.all(np.isfinite(proba))
    assert np.all((proba > 0) & (proba < 1))
    history = clf.net_.history
    assert len(history) == epochs
    assert all(np.isfinite(history[:, "train_loss"]))
    assert all(valid_ess(ess) for ess in history[:, "selection_ess"])
    for key in ("label_weights_uncertainty", "label_weights_hardness"):
        assert np.all(np.isfinite(history[:, key]))


def _q1():
    X, Y = tiny_problem()
    return X, Y[:, :1]


def _constant_columns():
    X, Y = tiny_problem()
    Y[:, 0], Y[:, 1] = 0, 1
    return X, Y


def _all_zero():
    X, Y = tiny_problem()
    return X, np.zeros_like(Y)


def _all_one():
    X, Y = tiny_problem()
    return X, np.ones_like(Y)


def _constant_features():
    _, Y = tiny_problem()
    return np.full((Y.shape[0], 4), 3.0), Y


def _duplicate_rows():
    X, Y = tiny_problem(n=5)
    return np.repeat(X, 6, axis=0), np.repeat(Y, 6, axis=0)


DEGENERATE = {
    "q=1": (_q1, {}),
    "constant-label-columns": (_constant_columns, {}),
    "all-labels-zero": (_all_zero, {}),
    "all-labels-one": (_all_one, {}),
    "N<batch_size": (lambda: tiny_problem(n=5), {"batch_size": 64}),
    "N<=n_neighbors": (lambda: tiny_problem(n=4), {"n_neighbors": 10}),
    "N=2": (lambda: tiny_problem(n=2), {}),
    "N=2-no-validation": (lambda: tiny_problem(n=2), {"validation_fraction": None}),
    "constant-features": (_constant_features, {}),
    "duplicate-rows": (_duplicate_rows, {}),
    "global-context": (_constant_columns, {"label_context": "global"}),
    "no-context": (_constant_columns, {"label_context": "none"}),
    "batch_size=1": (lambda: tiny_problem(n=6), {"batch_size": 1}),
}


@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_input_trains_cleanly(case):
    make, params = DEGENERATE[case]
    X, Y = make()
    clf, proba, pred, caught = fit_quietly(X, Y, **params)
    assert caught == []
    assert_valid_fit(clf, proba, pred, Y.shape)


def test_q1_keeps_the_column_shape():
    X, Y = _q1()
    clf, proba, pred, _ = fit_quietly(X, Y)
    assert Y.shape == (30, 1)
    assert proba.shape == (30, 1) and pred.shape == (30, 1)
    assert clf.n_labels_ == 1 and len(clf.classes_) == 1


def test_one_class_validation_columns_do_not_crash():
    # Every label column holds one class, so every validation column does too:
    # macro-AUC is undefined (NaN) each epoch; training still runs all epochs, keeps
    # the last weights and warns about nothing.
    X, Y = _constant_columns()
    Y[:, 2] = 0
    clf, proba, pred, caught = fit_quietly(X, Y, validation_fraction=0.2)
    assert caught == []
    assert_valid_fit(clf, proba, pred, Y.shape)
    assert all(np.isnan(clf.net_.history[:, "valid_macro_auc"]))


class Saturated(torch.nn.Module):
    """Logits of ±1e4: sigmoid is exactly 0 or 1 in float32."""

    def __init__(self, n_features, n_labels, sign_only=True):
        super().__init__()
        self.linear = torch.nn.Linear(n_features, n_labels)
        self.sign_only = sign_only

    def forward(self, X):
        z = self.linear(X)
        return 1e4 * (torch.sign(z) if self.sign_only else z)


@pytest.mark.parametrize("sign_only", [True, False])
def test_extreme_logits_keep_probabilities_inside_zero_one(sign_only):
    X, Y = tiny_problem()
    clf, proba, pred, caught = fit_quietly(
        X, Y, module=Saturated, module_kwargs={"sign_only": sign_only}
    )
    logits = clf.net_.forward(X.astype(np.float32)).numpy()
    assert np.abs(logits).max() >= 1e3  # the premise: saturated outputs
    assert np.any(torch.sigmoid(torch.as_tensor(logits)).numpy() == 1.0)
    assert caught == []
    assert_valid_fit(clf, proba, pred, Y.shape)
    # Bounded away from 0 and 1 in float64 as well.
    assert proba.min() >= np.finfo(np.float64).eps
    assert proba.max() <= 1 - np.finfo(np.float64).eps


def test_diverged_training_warns_once_and_never_returns_nan():
    X, Y = tiny_problem(n=40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = D2ACEMultiLabelClassifier(**{**FAST, "max_epochs": 3}, optimizer="sgd", lr=1e30).fit(
            X * 100, Y
        )
    diverged = [w for w in caught if "training diverged" in str(w.message)]
    assert len(diverged) == 1 and issubclass(diverged[0].category, RuntimeWarning)
    # The selection fell back to uniform (valid, warned) rather than emitting NaN.
    assert all(valid_ess(ess) for ess in clf.net_.history[:, "selection_ess"])
    with pytest.raises(ValueError, match="training diverged"):
        clf.predict_proba(X)


class _PoisonFrom(Callback):
    """A late divergence: NaN weights from the given epoch on."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, net, **kwargs):
        if len(net.history) == self.epoch:
            with torch.no_grad():
                for parameter in net.module_.parameters():
                    parameter.fill_(float("nan"))


def test_late_divergence_warns_that_the_best_finite_weights_were_restored():
    X, Y = tiny_problem(n=60)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = D2ACEMultiLabelClassifier(
            **{**FAST, "max_epochs": 5}, validation_fraction=0.2, callbacks=[_PoisonFrom(3)]
        ).fit(X, Y)
    diverged = [str(w.message) for w in caught if "training diverged" in str(w.message)]
    assert len(diverged) == 1
    assert "best validation epoch, finite, were restored" in diverged[0]
    assert "predictions will fail" not in diverged[0]
    assert np.isfinite(clf.predict_proba(X)).all()


# ------------------------------------------------------------- the sampler, adversarially
PROBAS = st.sampled_from([0.0, 1.0, 0.5, 1e-45, 1e-7, 1 - 1e-7, 0.3])
LOSSES = st.sampled_from([0.0, 1e-30, 0.7, 1e4, 3e38, np.inf])


def _labels(draw, n, q):
    kind = draw(st.sampled_from(["random", "zeros", "ones", "mixed"]))
    if kind == "zeros":
        return np.zeros((n, q), dtype=int)
    if kind == "ones":
        return np.ones((n, q), dtype=int)
    seed = draw(st.integers(0, 2**16))
    Y = (np.random.default_rng(seed).random((n, q)) < 0.4).astype(int)
    if kind == "mixed":
        Y[:, 0] = 0
        Y[:, -1] = 1
    return Y


def _matrix(draw, rows, q, values):
    flat = draw(st.lists(values, min_size=rows * q, max_size=rows * q))
    return np.array(flat, dtype=np.float64).reshape(rows, q)


def _assert_valid_epoch(batches, sampler, n, batch_size):
    n_batches = math.ceil(n / batch_size)
    assert len(batches) == n_batches == len(sampler)
    sizes = [len(b) for b in batches]
    assert sizes[:-1] == [batch_size] * (n_batches - 1)
    assert sizes[-1] == n - (n_batches - 1) * batch_size
    assert sum(sizes) == n
    for batch in batches:
        batch = np.asarray(batch)
        assert np.issubdtype(batch.dtype, np.integer)
        assert len(np.unique(batch)) == len(batch)  # distinct within a batch
        assert batch.min() >= 0 and batch.max() < n
    info = sampler.epoch_info_
    assert valid_ess(info["selection_ess"])
    assert math.isfinite(info["selection_pressure"]) and info["selection_pressure"] >= 1
    for key in ("label_weights_uncertainty", "label_weights_hardness"):
        if key in info:
            assert np.all(np.isfinite(info[key]))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_sampler_plans_valid_epochs_under_adversarial_records(data):
    draw = data.draw
    n = draw(st.integers(2, 25), label="N")
    q = draw(st.integers(1, 4), label="q")
    batch_size = draw(st.sampled_from([1, 2, 3, 7, 16, 64]), label="batch_size")
    epochs = draw(st.integers(2, 5), label="epochs")
    Y = _labels(draw, n, q)
    k = draw(st.integers(0, min(n - 1, 4)), label="k")
    neighbors = np.array([[(i + j + 1) % n for j in range(k)] for i in range(n)], dtype=np.intp)
    sampler = D2ACEBatchSampler(
        Y,
        batch_size=batch_size,
        max_epochs=epochs,
        warmup_epochs=draw(st.integers(0, 1), label="warmup"),
        ramp_end=draw(st.integers(0, epochs), label="ramp_end"),
        neighbors=neighbors.reshape(n, k),
        label_context=draw(st.sampled_from(["local", "global", "none"]), label="context"),
        dynamic_weights=draw(st.booleans(), label="dynamic"),
        initial_pressure=draw(st.sampled_from([1.0, 8.0, 1e6]), label="pressure"),
        mixture_start=draw(st.sampled_from([0.0, 0.7, 1.0]), label="mixture_start"),
        mixture_end=draw(st.sampled_from([0.0, 0.3, 1.0]), label="mixture_end"),
        history_size=draw(st.integers(2, 5), label="W"),
        random_state=draw(st.integers(0, 2**16), label="seed"),
    )
    with warnings.catch_warnings():
        # Finite probabilities and (possibly infinite) losses of BCE must never make
        # scores non-finite, nor trigger numpy's invalid-value warnings.
        warnings.simplefilter("error", NonFiniteScoresWarning)
        warnings.simplefilter("error", RuntimeWarning)
        for epoch in range(epochs):
            batches = list(sampler)
            assert sampler.epoch == epoch + 1
            _assert_valid_epoch(batches, sampler, n, batch_size)
            for batch in batches:
                sampler.record(
                    batch,
                    _matrix(draw, len(batch), q, PROBAS),
                    _matrix(draw, len(batch), q, LOSSES),
                )


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 20),
    batch_size=st.integers(1, 30),
    strategy=st.sampled_from(["d2ace", "random"]),
    seed=st.integers(0, 2**16),
)
def test_sampler_epoch_shape_for_any_size(n, batch_size, strategy, seed):
    Y = np.zeros((n, 1), dtype=int)
    sampler = D2ACEBatchSampler(
        Y, batch_size=batch_size, max_epochs=3, strategy=strategy, random_state=seed
    )
    for _ in range(3):
        batches = sampler.plan_epoch()
        _assert_valid_epoch(batches, sampler, n, batch_size)
        for batch in batches:
            sampler.record(batch, np.ones((len(batch), 1)), np.full((len(batch), 1), np.inf))


def test_sampler_recovers_from_one_nan_prediction():
    rng = np.random.default_rng(0)
    Y = (rng.random((9, 3)) < 0.5).astype(int)
    sampler = D2ACEBatchSampler(Y, batch_size=4, max_epochs=10, warmup_epochs=1, random_state=0)
    for epoch in range(10):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batches = list(sampler)
        if epoch >= 7:  # long after the NaN, with the window refilled
            assert relevant(caught) == []
            assert np.all(np.isfinite(sampler.epoch_info_["label_weights_hardness"]))
        for batch in batches:
            proba = rng.random((len(batch), 3))
            if epoch == 0:
                proba[0, 0] = np.nan
            sampler.record(batch, proba, rng.random((len(batch), 3)))


def test_uniform_selection_ess_is_at_most_one():
    sampler = D2ACEBatchSampler(
        np.zeros((10, 1), dtype=int), batch_size=1, max_epochs=2, random_state=0
    )
    for _ in range(2):
        sampler.plan_epoch()  # all scores equal: the uniform distribution
        assert 0 < sampler.epoch_info_["selection_ess"] <= 1

"""Tests of the training record (METHOD.md §1–§2) and the D2ACE batch sampler (§6–§8).

The record is fed random batch sequences in parallel with the loop reference
``tests/_reference.py`` (per-instance windows, flip EMA, latest loss); its metrics
must match ``selection.uncertainty`` / ``selection.hardness`` of the reference state.
"""

from __future__ import annotations

import inspect
import math

import _reference as ref
import numpy as np
import pytest
import torch

from skd2ace import selection
from skd2ace._record import TrainingRecord
from skd2ace.sampler import D2ACEBatchSampler

# The record quantises |Δp| to 1/65535 steps (E's mean change is off by at most
# λ·0.5/65535 ≈ 3.8e-6) and works in float32 (~1e-7 more).
TOL = 1e-5


def make_record(n, q, w, **kwargs) -> TrainingRecord:
    params = inspect.signature(TrainingRecord).parameters
    return TrainingRecord(n, q, w, **{k: v for k, v in kwargs.items() if k in params})


def random_proba(rng, b, q, previous=None):
    """Probabilities with saturated values, mid-range ones and exact repeats."""
    p = rng.random((b, q))
    p[rng.random((b, q)) < 0.05] = 1.0
    p[rng.random((b, q)) < 0.05] = 0.0
    if previous is not None:
        same = rng.random((b, q)) < 0.1
        p[same] = previous[same]
    return p


def feed(
    record, reference, rng, n_active, batch, q, min_updates, checkpoint_prob, lam, repeats=False
):
    """Feed random batches until each active instance has ``min_updates`` predictions.

    Compares the record to the reference at random checkpoints and at the end;
    returns the max errors. ``repeats`` draws batches with repeated instances.
    """
    counts = np.zeros(n_active, dtype=int)
    err_e = err_h = 0.0
    checks = 0
    while counts.min() < min_updates:
        idx = rng.choice(n_active, size=batch, replace=repeats)
        proba = random_proba(rng, batch, q)
        loss = rng.exponential(size=(batch, q)) * (rng.random((batch, q)) < 0.9)
        dtype = [np.float32, np.float64][int(rng.integers(2))]
        record.update(idx, proba.astype(dtype), loss.astype(dtype))
        reference.update(idx, proba.astype(dtype), loss.astype(dtype))
        counts[idx] += 1
        if rng.random() < checkpoint_prob or counts.min() >= min_updates:
            e, h = compare(record, reference, lam)
            err_e, err_h = max(err_e, e), max(err_h, h)
            checks += 1
    assert checks >= 2
    return err_e, err_h


def compare(record, reference, lam):
    want_e = selection.uncertainty(reference.history(), lam)
    want_h = selection.hardness(reference.loss, reference.flip)
    got_e, got_h = record.uncertainty, record.hardness
    assert got_e.shape == want_e.shape and got_h.shape == want_h.shape
    err_e = float(np.max(np.abs(got_e - want_e)))
    err_h = float(np.max(np.abs(got_h - want_h)))
    assert err_e <= TOL, f"uncertainty off by {err_e}"
    assert err_h <= TOL, f"hardness off by {err_h}"
    # the loop reference agrees with the functional core on the same state
    np.testing.assert_allclose(reference.uncertainty(lam), want_e, atol=1e-9)
    return err_e, err_h


@pytest.mark.parametrize("w", [2, 3, 5])
@pytest.mark.parametrize(
    ("repeats", "flush_every", "background"),
    [(False, None, False), (False, 7, False), (True, None, False), (True, 7, True)],
)
def test_record_matches_reference(w, repeats, flush_every, background):
    # repeats: instances repeated within a batch are recorded in row order;
    # flush_every=7 applies the queue every other batch or so (background: in a
    # worker thread, while the next batches queue up).
    rng = np.random.default_rng(100 + w)
    n, q, batch, never = 14, 3, 5, 2
    kwargs = {"background": background}
    if flush_every is not None:
        kwargs["flush_every"] = flush_every
    record = make_record(n, q, w, **kwargs)
    reference = ref.Recorder(n, q, w, alpha=0.7)
    err_e, err_h = feed(record, reference, rng, n - never, batch, q, 200, 0.02, 0.5, repeats)
    print(
        f"record vs reference, W={w}, repeats within batches={repeats}, "
        f"flush_every={flush_every}: "
        f"max |ΔE| = {err_e:.3g}, max |ΔH| = {err_h:.3g}"
    )
    # the never-seen instances kept the uninformed values
    np.testing.assert_array_equal(record.uncertainty[n - never :], 0.5)
    np.testing.assert_array_equal(record.hardness[n - never :], 0.5)


def test_record_no_drift_long_run():
    # ~2500 predictions per instance: the running sums of the window must not drift.
    rng = np.random.default_rng(7)
    n, q, w = 4, 2, 5
    record = make_record(n, q, w)
    reference = ref.Recorder(n, q, w)
    err_e, err_h = feed(record, reference, rng, n, 2, q, 2500, 0.01, 0.5)
    print(f"long run (2500 updates per instance): max |ΔE| = {err_e:.3g}, max |ΔH| = {err_h:.3g}")


@pytest.mark.parametrize(("alpha", "lam"), [(0.3, 0.2), (1.0, 1.0), (0.7, 0.0)])
def test_record_parameters(alpha, lam):
    rng = np.random.default_rng(3)
    n, q, w = 8, 2, 3
    record = TrainingRecord(n, q, history_size=w, flip_decay=alpha, lam=lam)
    reference = ref.Recorder(n, q, w, alpha=alpha)
    # a never-seen instance under λ: E = (1 − λ)·H2(.5) = 1 − λ
    np.testing.assert_allclose(record.uncertainty, 1.0 - lam, atol=1e-7)
    feed(record, reference, rng, n - 1, 3, q, 30, 0.2, lam)
    np.testing.assert_allclose(record.uncertainty[n - 1], 1.0 - lam, atol=1e-7)


def test_record_hand():
    # W = 3, one label, α = .7, λ = .5; instance 0 predicted .5, .7, .6, .2:
    record = TrainingRecord(2, 1, history_size=3)
    for p, loss in ((0.5, 0.1), (0.7, 0.2), (0.6, math.log(2.0)), (0.2, math.log(4.0))):
        record.update(np.array([0]), np.array([[p]]), np.array([[loss]]))
    # window [.7, .6, .2]: fluctuation (.1 + .4)/2 = .25 → E = .125 + .5·H2(.2) = .125 + .360964
    assert math.isclose(record.uncertainty[0, 0], 0.125 + 0.5 * 0.7219280948873623, abs_tol=1e-4)
    # f: .7·.2 = .14 → .7·.1 + .3·.14 = .112 → .7·.4 + .3·.112 = .3136
    # H = (1 − e^−ln4)(1 − .3136) = .75·.6864 = .5148
    assert math.isclose(record.hardness[0, 0], 0.75 * (1 - 0.3136), abs_tol=1e-4)
    # instance 1 never seen: E = 1 − λ = .5, H = .5
    assert record.uncertainty[1, 0] == 0.5 and record.hardness[1, 0] == 0.5


def test_record_never_seen_and_first_prediction():
    assert TrainingRecord(0, 3).uncertainty.shape == (0, 3)
    np.testing.assert_allclose(TrainingRecord(4, 2, lam=0.2).uncertainty, 0.8)  # E = 1 − λ
    record = TrainingRecord(5, 3, lam=0.5)
    np.testing.assert_array_equal(record.uncertainty, 0.5)  # E = 1 − λ
    np.testing.assert_array_equal(record.hardness, 0.5)  # H = (1 − e^−ln2)(1 − 0)
    record.update([1], np.array([[0.5, 0.1, 0.9]]), np.array([[0.0, 1.0, 2.0]]))
    # one prediction: no fluctuation, f stays 0 → E = .5·H2(p), H = 1 − e^−ℓ
    np.testing.assert_allclose(
        record.uncertainty[1], [0.5, 0.5 * 0.4689956, 0.5 * 0.4689956], atol=1e-6
    )
    np.testing.assert_allclose(
        record.hardness[1], [0.0, 1 - math.exp(-1), 1 - math.exp(-2)], atol=1e-6
    )
    others = [0, 2, 3, 4]
    np.testing.assert_array_equal(record.uncertainty[others], 0.5)
    np.testing.assert_array_equal(record.hardness[others], 0.5)


def test_record_empty_batch():
    record = TrainingRecord(3, 2)
    record.update(np.array([], dtype=np.intp), np.empty((0, 2)), np.empty((0, 2)))
    np.testing.assert_array_equal(record.uncertainty, 0.5)


def test_record_nbytes():
    n, q = 200, 7
    record = TrainingRecord(n, q, history_size=5)
    ratio = record.nbytes / (n * q)
    print(f"record.nbytes / (N·q) at W = 5: {ratio:.3f}")
    assert ratio <= 32
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = rng.choice(n, 16, replace=False)
        record.update(idx, rng.random((16, q)), rng.random((16, q)))
    record.uncertainty  # the state does not grow with training
    assert record.nbytes / (n * q) == ratio


# =========================================================================== sampler
def problem(n=60, q=5, seed=0):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, q)) < 0.3).astype(np.int8)
    Y[0] = 0
    X = rng.random((n, 3))
    return Y, ref.knn(X, 4)


def run_epoch(sampler, rng, q):
    batches = [np.asarray(b) for b in sampler]
    for b in batches:
        sampler.record(b, random_proba(rng, len(b), q), rng.exponential(size=(len(b), q)))
    return batches


@pytest.mark.parametrize(("n", "b"), [(60, 8), (64, 8), (5, 8), (1, 1), (10, 3)])
def test_sampler_len(n, b):
    Y = np.ones((n, 2), dtype=int)
    sampler = D2ACEBatchSampler(Y, batch_size=b, max_epochs=3, warmup_epochs=1, random_state=0)
    assert len(sampler) == math.ceil(n / b)
    for _ in range(3):
        batches = list(sampler)
        assert len(batches) == len(sampler)


@pytest.mark.parametrize("label_context", ["local", "global", "none"])
def test_sampler_epochs(label_context):
    n, q, b, T, ew, em = 60, 5, 8, 12, 3, 9
    Y, nbrs = problem(n, q)
    sampler = D2ACEBatchSampler(
        Y,
        batch_size=b,
        max_epochs=T,
        warmup_epochs=ew,
        ramp_end=em,
        neighbors=nbrs,
        label_context=label_context,
        random_state=0,
    )
    rng = np.random.default_rng(1)
    Z = {"local": ref.local_label_context(Y, nbrs), "global": np.ones((n, q)), "none": Y}
    keys = {
        "selection_pressure",
        "mixture_weight",
        "selection_ess",
        "label_weights_uncertainty",
        "label_weights_hardness",
    }
    for e in range(T):
        E = sampler.record_.uncertainty.astype(np.float64)
        H = sampler.record_.hardness.astype(np.float64)
        batches = run_epoch(sampler, rng, q)
        info = sampler.epoch_info_
        assert sampler.epoch == e + 1
        assert keys <= set(info)
        s = selection.selection_pressure(e, T, ew)
        beta = selection.mixture_weight(e, ew, em)
        assert info["selection_pressure"] == s
        assert info["mixture_weight"] == beta
        assert len(batches) == len(sampler) == math.ceil(n / b)
        assert [len(x) for x in batches] == [b] * (len(batches) - 1) + [n - (len(batches) - 1) * b]
        for x in batches:
            assert len(np.unique(x)) == len(x) and x.min() >= 0 and x.max() < n
        # the label weights of the distribution's inputs (recorded up to epoch e − 1)
        np.testing.assert_allclose(
            info["label_weights_uncertainty"], ref.label_weights(E), rtol=1e-6
        )
        np.testing.assert_allclose(info["label_weights_hardness"], ref.label_weights(H), rtol=1e-6)
        if e < ew:
            np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(n))
            assert info["selection_ess"] == 1.0
        else:
            _, want = ref.d2ace_distribution(
                E, H, Y, Z[label_context], s, beta, correlation=label_context != "none"
            )
            assert math.isclose(info["selection_ess"], want["ess"], abs_tol=1e-6)
            if s > 1.0:
                assert info["selection_ess"] < 1.0


@pytest.mark.parametrize("dynamic", [True, False])
def test_sampler_draws_from_the_epoch_distribution(drawn, dynamic):
    # Every selecting epoch's batches come from the D2ACE distribution of that epoch's
    # inputs and non-default settings (pressure, label-weight coefficients, mixture,
    # window), checked against the reference implementation.
    n, q, T, ew, em = 60, 5, 8, 2, 6
    Y, nbrs = problem(n, q)
    settings = dict(initial_pressure=5.0, weight_mean=0.3, weight_std=0.9)
    settings.update(mixture_start=0.9, mixture_end=0.1, dynamic_weights=dynamic)
    sampler = D2ACEBatchSampler(
        Y,
        batch_size=8,
        max_epochs=T,
        warmup_epochs=ew,
        ramp_end=em,
        neighbors=nbrs,
        history_size=3,
        flip_decay=0.4,
        fluctuation_weight=0.3,
        random_state=0,
        **settings,
    )
    assert (sampler.record_.history_size, sampler.record_.flip_decay) == (3, 0.4)
    assert sampler.record_.lam == 0.3
    rng = np.random.default_rng(1)
    Z = ref.local_label_context(Y, nbrs)
    for e in range(T):
        E = sampler.record_.uncertainty.astype(np.float64)
        H = sampler.record_.hardness.astype(np.float64)
        drawn.clear()
        run_epoch(sampler, rng, q)
        if e < ew:
            assert drawn == []  # warm-up: a permutation
            continue
        s = ref.selection_pressure(e, T, ew, initial=5.0)
        beta = 0.9 + (0.1 - 0.9) * min(max((e - ew) / (em - ew), 0.0), 1.0)
        want, _ = ref.d2ace_distribution(E, H, Y, Z, s, beta, a=0.3, b=0.9, dynamic_weights=dynamic)
        (got,) = drawn
        # float32 metrics against the float64 reference: a rank may flip, changing a
        # probability by a factor s^(1/N) at most.
        assert np.all(np.abs(np.log(got / want)) <= np.log(s) / n + 1e-9)
        assert np.mean(np.isclose(got, want, rtol=1e-6)) > 0.9


def test_sampler_reproducible():
    Y, nbrs = problem()

    def epochs(seed):
        sampler = D2ACEBatchSampler(
            Y, batch_size=8, max_epochs=6, warmup_epochs=2, neighbors=nbrs, random_state=seed
        )
        rng = np.random.default_rng(5)
        return [run_epoch(sampler, rng, Y.shape[1]) for _ in range(6)]

    a, b, c = epochs(0), epochs(0), epochs(1)
    flat = [np.concatenate(e) for e in a]
    assert all(
        np.array_equal(x, y) for x, y in zip(flat, [np.concatenate(e) for e in b], strict=True)
    )
    assert not all(
        np.array_equal(x, y) for x, y in zip(flat, [np.concatenate(e) for e in c], strict=True)
    )
    # the global numpy state plays no part
    np.random.seed(0)  # noqa: NPY002
    d = epochs(0)
    assert all(
        np.array_equal(np.concatenate(x), np.concatenate(y)) for x, y in zip(a, d, strict=True)
    )


def test_sampler_random_strategy():
    Y, _ = problem()
    n = Y.shape[0]
    sampler = D2ACEBatchSampler(Y, batch_size=7, max_epochs=5, strategy="random", random_state=0)
    assert sampler.record_ is None
    rng = np.random.default_rng(0)
    orders = []
    for _ in range(5):
        batches = run_epoch(sampler, rng, Y.shape[1])  # recording is a no-op
        assert len(batches) == len(sampler) == math.ceil(n / 7)
        order = np.concatenate(batches)
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
        orders.append(order)
        assert sampler.record_ is None
        assert sampler.epoch_info_["selection_ess"] == 1.0
    assert len({tuple(o) for o in orders}) == 5  # reshuffled every epoch


def test_sampler_record_accepts_torch():
    Y, _ = problem(n=20, q=3)
    a = D2ACEBatchSampler(Y, batch_size=5, max_epochs=2, random_state=0)
    b = D2ACEBatchSampler(Y, batch_size=5, max_epochs=2, random_state=0)
    rng = np.random.default_rng(0)
    for batch in a.plan_epoch():
        proba, loss = rng.random((len(batch), 3)), rng.random((len(batch), 3))
        a.record(batch, proba, loss)
        b.record(
            torch.as_tensor(batch),
            torch.as_tensor(proba, dtype=torch.float32),
            torch.as_tensor(loss, dtype=torch.float32),
        )
    np.testing.assert_allclose(a.record_.uncertainty, b.record_.uncertainty, atol=1e-6)
    np.testing.assert_allclose(a.record_.hardness, b.record_.hardness, atol=1e-6)


def test_sampler_invalid_options():
    Y, _ = problem(n=10)
    with pytest.raises(ValueError, match="strategy"):
        D2ACEBatchSampler(Y, batch_size=4, max_epochs=2, strategy="bogus")
    with pytest.raises(ValueError, match="label_context"):
        D2ACEBatchSampler(Y, batch_size=4, max_epochs=2, label_context="bogus")


def test_sampler_release():
    Y, nbrs = problem()
    sampler = D2ACEBatchSampler(Y, batch_size=8, max_epochs=3, neighbors=nbrs, random_state=0)
    run_epoch(sampler, np.random.default_rng(0), Y.shape[1])
    assert sampler.record_ is not None
    sampler.release()
    assert sampler.record_ is None
    assert getattr(sampler, "context_", None) is None
    sampler.record(np.arange(3), np.zeros((3, Y.shape[1])), np.zeros((3, Y.shape[1])))


def test_record_rejects_mismatched_batch_shapes():
    record = TrainingRecord(5, 2)
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        record.update([0, 1, 2], np.zeros((1, 2)), np.zeros((3, 2)))  # would broadcast
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        record.update([0, 1], np.zeros((2, 2)), np.zeros((2, 3)))
    np.testing.assert_array_equal(record.seen, 0)


@pytest.mark.parametrize("background", [False, True])
@pytest.mark.parametrize("flush_every", [5, 40, 2**18])
def test_record_mixed_batch_sizes_match_reference(flush_every, background):
    # Batches of 1–14 rows (repeats allowed) against queues of 5, 40 and 2**18
    # values: the queue grows or is applied early, and nothing queued is lost.
    rng = np.random.default_rng(flush_every)
    record = TrainingRecord(20, 3, 4, flush_every=flush_every, background=background)
    reference = ref.Recorder(20, 3, 4)
    counts = np.zeros(20, dtype=int)
    for _ in range(300):
        rows = int(rng.integers(1, 15))
        idx = rng.choice(20, rows, replace=True)
        proba, loss = rng.random((rows, 3)), rng.random((rows, 3))
        record.update(idx, proba, loss)
        reference.update(idx, proba, loss)
        np.add.at(counts, idx, 1)
    compare(record, reference, 0.5)
    np.testing.assert_array_equal(record.seen, counts)


class RepairingRecorder(ref.Recorder):
    """The loop reference with the record's rule for a diverged batch: a non-finite
    probability repeats the instance's previous prediction (0.5 before any), a NaN
    loss keeps its previous loss."""

    def update(self, idx, proba, loss) -> None:
        for row, i in enumerate(np.asarray(idx)):
            p, ell = np.array(proba[row], dtype=float), np.array(loss[row], dtype=float)
            for j in range(self.q):
                if not math.isfinite(p[j]):
                    window = self.windows[i][j]
                    p[j] = window[-1] if window else 0.5
                if math.isnan(ell[j]):
                    ell[j] = self.loss[i, j]
            super().update([i], p[None], ell[None])


@pytest.mark.parametrize(("flush_every", "background"), [(4, False), (60, False), (60, True)])
def test_record_non_finite_values_match_reference(flush_every, background):
    # NaN / ±inf probabilities and NaN losses, also on an instance's first
    # prediction and on several consecutive predictions of one instance in a queue.
    rng = np.random.default_rng(11 + flush_every)
    n, q, w = 12, 3, 3
    record = TrainingRecord(n, q, w, flush_every=flush_every, background=background)
    reference = RepairingRecorder(n, q, w)
    for step in range(150):
        rows = int(rng.integers(1, 9))
        idx = rng.choice(n, rows, replace=True)
        proba, loss = rng.random((rows, q)), rng.random((rows, q))
        proba[rng.random((rows, q)) < 0.15] = rng.choice([np.nan, np.inf, -np.inf])
        loss[rng.random((rows, q)) < 0.15] = np.nan
        record.update(idx, proba, loss)
        reference.update(idx, proba, loss)
        if step % 37 == 0 or step == 149:
            compare(record, reference, 0.5)
    assert np.isfinite(record.last).all() and np.isfinite(record.loss).all()


def test_record_background_error_surfaces_and_pickles_without_thread(monkeypatch):
    import pickle

    record = TrainingRecord(10, 2, flush_every=4, background=True)
    for i in range(6):  # two rows per queue: a full queue goes to the worker thread
        record.update([i % 10, (i + 3) % 10], np.full((2, 2), 0.2), np.full((2, 2), 0.3))
    clone = pickle.loads(pickle.dumps(record))  # waits for the worker, applies the rest
    assert clone._executor is None and clone._pending == []
    np.testing.assert_array_equal(clone.seen, record.seen)
    assert int(record.seen.sum()) == 12
    np.testing.assert_array_equal(clone.uncertainty, record.uncertainty)

    def broken(*args):
        raise RuntimeError("worker failed")

    monkeypatch.setattr(record, "_apply", broken)
    with pytest.raises(RuntimeError, match="worker failed"):
        for i in range(4):  # the error is raised by the next call that waits
            record.update([i], np.zeros((1, 2)), np.zeros((1, 2)))
        record.flush()
    monkeypatch.undo()
    record.close()  # applies what is still queued and stops the thread
    assert record._executor is None and record._filled == 0
    seen = record.seen.copy()
    record.update([0], np.zeros((1, 2)), np.zeros((1, 2)))
    record.close(apply=False)  # drops what is queued
    np.testing.assert_array_equal(record.seen, seen)
    assert record._filled == 0


@pytest.mark.parametrize("free", [0, 1])
def test_sampler_records_in_background_only_with_a_free_core(monkeypatch, free):
    from skd2ace import _background

    monkeypatch.setattr(_background, "free_cores", lambda device=None: free)
    Y = np.eye(3, dtype=int).repeat(4, axis=0)
    sampler = D2ACEBatchSampler(Y, batch_size=5, max_epochs=3, random_state=0)
    assert sampler.record_.background is bool(free)
    sampler.release()
    assert sampler.record_ is None


@pytest.mark.parametrize(("device", "torch_threads", "free"), [(None, 3, 3), ("cuda", 6, 5)])
def test_free_cores_on_cpu_and_gpu(monkeypatch, device, torch_threads, free):
    # CPU training takes torch's intra-op threads, GPU training the driving thread only
    # (with torch's threads on all 6 cores, the record still works in the background).
    from skd2ace import _background

    monkeypatch.setattr(_background.os, "sched_getaffinity", lambda pid: set(range(6)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: torch_threads)
    monkeypatch.setenv("SKD2ACE_DEVICE_SELECTION", "0")  # the numpy record on CUDA too
    assert _background.free_cores(device) == free
    Y = np.eye(3, dtype=int).repeat(4, axis=0)
    sampler = D2ACEBatchSampler(Y, batch_size=5, max_epochs=3, device=device)
    assert sampler.record_.background
    monkeypatch.setattr(torch, "get_num_threads", lambda: 6)
    assert _background.free_cores(device) == (5 if device == "cuda" else 0)


def test_estimator_tells_the_sampler_its_device(monkeypatch):
    from skd2ace import D2ACEMultiLabelClassifier, _background

    seen = []
    monkeypatch.setattr(_background, "free_cores", lambda device=None: seen.append(device) or 0)
    X, Y = np.random.default_rng(0).random((30, 3)), np.eye(3, dtype=int).repeat(10, axis=0)
    D2ACEMultiLabelClassifier(max_epochs=2, hidden_layer_sizes=(4,), device="cpu").fit(X, Y)
    assert "cpu" in seen


@pytest.mark.parametrize("background", [False, True])
def test_record_copies_batches_unless_told_not_to(background):
    # copy=True (the default): the caller may reuse its arrays right away;
    # copy=False (the net's fresh tensors): no copy on the training thread.
    rng = np.random.default_rng(8)
    copied = TrainingRecord(6, 2, 3, flush_every=6, background=background)
    shared = TrainingRecord(6, 2, 3, flush_every=6, background=background)
    reference = ref.Recorder(6, 2, 3)
    buffer = np.empty((2, 2), dtype=np.float32)
    for _ in range(40):
        idx = rng.choice(6, 2, replace=False)
        proba, loss = rng.random((2, 2)), rng.random((2, 2))
        buffer[...] = proba
        copied.update(idx, buffer, loss)
        shared.update(idx, proba.astype(np.float32), loss.astype(np.float32), copy=False)
        reference.update(idx, proba.astype(np.float32), loss)
        buffer[...] = np.nan  # reused by the caller before the queue is applied
    compare(copied, reference, 0.5)
    compare(shared, reference, 0.5)
    np.testing.assert_array_equal(copied.uncertainty, shared.uncertainty)


@pytest.mark.parametrize("background", [False, True])
def test_cpu_tensors_kept_by_reference_give_the_same_record(background):
    # The net's batches (CPU tensors, copy=False) are converted when their queue is
    # applied: the same state as converting each batch when recorded.
    rng = np.random.default_rng(3)
    kwargs = {"history_size": 3, "flush_every": 10, "background": background}
    lazy, eager = TrainingRecord(7, 2, **kwargs), TrainingRecord(7, 2, **kwargs)
    kept = []
    for _ in range(30):
        idx = torch.as_tensor(rng.choice(7, 3, replace=True))  # repeats within a batch
        proba = torch.rand(3, 2, generator=torch.Generator().manual_seed(int(idx.sum())))
        loss = torch.rand(3, 2)
        lazy.update(idx, proba, loss, copy=False)
        kept.append(any(batch[1] is proba for batch in lazy._queue))
        eager.update(idx.numpy(), proba.numpy(), loss.numpy())
    assert any(kept)  # the tensor itself, until its queue is applied
    for name in ("uncertainty", "hardness"):
        np.testing.assert_array_equal(getattr(lazy, name), getattr(eager, name))
    np.testing.assert_array_equal(lazy.seen, eager.seen)
    lazy.close(), eager.close()


def test_only_tensors_of_the_nets_dtypes_are_kept_by_reference():
    s = D2ACEBatchSampler(np.eye(2, dtype=int).repeat(3, axis=0), batch_size=2, max_epochs=3)
    proba, loss = torch.full((2, 2), 0.5), torch.ones(2, 2)
    s.record(torch.tensor([0, 1]), proba, loss, copy=False)
    assert s.record_._queue[-1][1] is proba
    others = [
        (torch.tensor([0, 1], dtype=torch.int32), proba, loss),
        (torch.tensor([0, 1]), proba.double(), loss),
        (torch.tensor([0, 1]), proba, torch.full((2, 2), -1.0)._neg_view()),  # lazy negation
    ]
    for idx, values, losses in others:
        s.record(idx, values, losses, copy=False)
        assert isinstance(s.record_._queue[-1][1], np.ndarray)  # converted when recorded
    s.record_.flush()
    assert s.record_.seen.tolist() == [4, 4, 0, 0, 0, 0]
    np.testing.assert_allclose(s.record_.loss[:2], 1.0)  # the negated view read as +1


def test_release_after_a_background_error_raises_it_and_still_releases():
    s = D2ACEBatchSampler(np.eye(4, dtype=int), batch_size=2, max_epochs=3)
    s.record_.background, s.record_.flush_every = True, 8
    s.record(torch.tensor([-1, 2]), torch.full((2, 4), 0.5), torch.ones(2, 4), copy=False)
    record = s.record_
    with pytest.raises(IndexError, match="must lie"):
        s.release()
    assert s.record_ is None and record._executor is None


def test_sampler_checks_the_indices_of_tensors_kept_by_reference_when_applied():
    s = D2ACEBatchSampler(np.eye(4, dtype=int), batch_size=2, max_epochs=3)
    s.record(torch.tensor([0, 1]), torch.full((2, 4), 0.5), torch.ones(2, 4), copy=False)
    s.record(torch.tensor([-1, 2]), torch.full((2, 4), 0.5), torch.ones(2, 4), copy=False)
    with pytest.raises(IndexError, match=r"instance indices must lie in \[0, 4\)"):
        s.record_.flush()
    assert int(s.record_.seen.sum()) == 0  # nothing of the queue applied
    # Tensors that require grad are converted at once (detached), checked when applied.
    logits = torch.zeros(2, 4, requires_grad=True)
    s.record(torch.tensor([4, 0]), torch.sigmoid(logits), logits * 0 + 1, copy=False)
    assert isinstance(s.record_._queue[-1][1], np.ndarray)
    with pytest.raises(IndexError, match="must lie"):
        s.record_.flush()
    s.record(torch.tensor([3, 0]), torch.sigmoid(logits), logits * 0 + 1, copy=False)
    s.record_.flush()
    assert s.record_.seen.tolist() == [1, 0, 0, 1]


@pytest.mark.parametrize("background", [False, True])
def test_probabilities_outside_the_unit_interval_raise_when_applied(background):
    record = TrainingRecord(4, 2, flush_every=4, background=background)
    record.update([0, 1], np.full((2, 2), 0.5), np.ones((2, 2)))
    record.flush()
    before = record.uncertainty.copy()
    logits = np.array([[2.5, -1.0], [0.2, np.nan]])  # NaN alone would be carried forward
    with pytest.raises(
        ValueError, match=r"\[0, 1\]: 2 of this queue's lie outside \(min -1.0, max 2.5;"
    ):
        record.update([2, 3], logits, np.ones((2, 2)))  # a full queue: applied here,
        record.flush()  # or by the worker, whose error the next wait raises
    np.testing.assert_array_equal(record.uncertainty, before)  # nothing of it recorded
    assert record.seen.tolist() == [1, 1, 0, 0]
    record.update([2], [[1.0, 0.0]], [[0.1, 0.1]])  # the bounds themselves are fine
    record.update([3], [[np.nan, 0.3]], [[0.1, 0.1]])
    record.flush()
    assert record.seen.tolist() == [1, 1, 1, 1]
    record.close()


def test_record_applies_a_queue_of_many_tiny_batches():
    # One row, one label per batch: the queue is applied every 512 batches, not
    # after 2**18 of them (each queued batch keeps three small arrays alive).
    record = TrainingRecord(50, 1, 3)
    reference = ref.Recorder(50, 1, 3)
    rng = np.random.default_rng(4)
    longest = 0
    for _ in range(1500):
        idx, proba, loss = rng.integers(50, size=1), rng.random((1, 1)), rng.random((1, 1))
        record.update(idx, proba, loss)
        reference.update(idx, proba, loss)
        longest = max(longest, len(record._queue))
    assert longest == 511
    compare(record, reference, 0.5)


def test_record_background_keeps_two_queues_in_flight(monkeypatch):
    # Training hands a second full queue to a worker still busy with the first, and
    # only waits at the third; the result is that of applying them in order.
    import threading

    from skd2ace import _record

    record = TrainingRecord(10, 2, flush_every=8, background=True)
    synchronous = TrainingRecord(10, 2, flush_every=8)
    release, apply = threading.Event(), record._apply_queue

    def blocked(queue):
        assert release.wait(30), "the test never released the worker"
        apply(queue)

    monkeypatch.setattr(record, "_apply_queue", blocked)
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 10, 2), rng.random((2, 2)), rng.random((2, 2))) for _ in range(6)]
    for batch in batches[:4]:  # two full queues of two batches each
        record.update(*batch)
        synchronous.update(*batch)
    assert len(record._pending) == _record._MAX_PENDING == 2
    assert not any(f.done() for f in record._pending)  # the worker is still blocked
    release.set()
    for batch in batches[4:]:
        record.update(*batch)
        synchronous.update(*batch)
    np.testing.assert_array_equal(record.uncertainty, synchronous.uncertainty)
    np.testing.assert_array_equal(record.hardness, synchronous.hardness)
    assert record._pending == []
    record.close()


@pytest.mark.parametrize("background", [False, True])
def test_record_metric_blocks_do_not_change_results(monkeypatch, background):
    # E and H are written block by block (one row per block, or many rows per block):
    # the same values, whether applied here or by the background worker.
    from skd2ace import _record

    rng = np.random.default_rng(5)
    batches = [
        (rng.integers(0, 30, 9), random_proba(rng, 9, 3), rng.random((9, 3))) for _ in range(25)
    ]

    def run(metric_block):
        monkeypatch.setattr(_record, "_METRIC_BLOCK", metric_block)
        record = TrainingRecord(30, 3, flush_every=40, background=background)
        for batch in batches:
            record.update(*batch)
        E, H = record.uncertainty.copy(), record.hardness.copy()
        record.close()
        return E, H

    whole, one_row = run(2**15), run(1)
    np.testing.assert_array_equal(whole[0], one_row[0])
    np.testing.assert_array_equal(whole[1], one_row[1])
    assert not np.all(whole[0] == whole[0][0, 0])  # the batches changed the metrics


@pytest.mark.parametrize("dynamic", [False, True])
def test_sampler_warmup_label_weights(dynamic):
    # Warm-up epochs shuffle, but still report the weights the distribution would use.
    Y = np.eye(3, dtype=int).repeat(4, axis=0)
    sampler = D2ACEBatchSampler(
        Y, batch_size=4, max_epochs=6, warmup_epochs=3, dynamic_weights=dynamic, random_state=0
    )
    rng = np.random.default_rng(0)
    for b in sampler:
        sampler.record(b, rng.random((len(b), 3)), rng.random((len(b), 3)))
    E, H = sampler.record_.uncertainty.copy(), sampler.record_.hardness.copy()
    sampler.plan_epoch()  # the second warm-up epoch, from what the first recorded
    info = sampler.epoch_info_
    assert info["selection_ess"] == 1.0
    if dynamic:
        np.testing.assert_allclose(info["label_weights_uncertainty"], selection.label_weights(E))
        np.testing.assert_allclose(info["label_weights_hardness"], selection.label_weights(H))
    else:
        assert info["label_weights_uncertainty"] == info["label_weights_hardness"] == [1.0] * 3


def _continue_in_child(record, out):
    for i in range(8):  # full queues: dispatched to the child's own worker
        record.update([i, i + 8], np.full((2, 2), 0.6), np.full((2, 2), 0.4))
    record.flush()
    out.put(int(record.seen.sum()))


def test_record_in_a_forked_child_gets_its_own_worker():
    # A forked child inherits the executor but not its thread: work submitted there
    # would wait forever. The fork hooks also leave the background lock usable.
    import multiprocessing

    record = TrainingRecord(20, 2, flush_every=4, background=True)
    for i in range(4):
        record.update([i, i + 1], np.full((2, 2), 0.2), np.full((2, 2), 0.3))
    record.flush()
    assert record._executor is not None  # the parent's worker thread exists
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_continue_in_child, args=(record, out))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("the forked child hung applying its record")
    assert child.exitcode == 0 and out.get(timeout=5) == 8 + 16
    _continue_in_child(record, out)  # the parent goes on with its own worker
    assert out.get(timeout=5) == 8 + 16


def test_record_interrupted_wait_keeps_the_queue_order(monkeypatch):
    # Ctrl-C while training waits for the worker must not drop the queue it waits
    # for: the next call waits again instead of applying newer batches first.
    import threading

    batches = [([i, i + 1], np.full((2, 2), 0.2 * (i + 1))) for i in range(3)]
    reference = TrainingRecord(4, 2)
    for idx, proba in batches:
        reference.update(idx, proba, 1 - proba)
    reference.flush()

    record = TrainingRecord(4, 2, flush_every=8, background=True)
    release = threading.Event()
    apply = record._apply_queue

    def slow_apply(queue):
        release.wait(10)
        apply(queue)

    monkeypatch.setattr(record, "_apply_queue", slow_apply)
    for idx, proba in batches[:2]:  # 2 batches × 2 rows × 2 labels: one full queue
        record.update(idx, proba, 1 - proba)
    worker = record._pending[0]

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(worker, "result", interrupted)
    with pytest.raises(KeyboardInterrupt):
        record._wait()
    assert record._pending == [worker]  # still to be waited for
    monkeypatch.undo()
    idx, proba = batches[2]  # instance 2 again: its predictions must stay in order
    record.update(idx, proba, 1 - proba)
    threading.Timer(0.2, release.set).start()
    record.flush()  # waits for the worker's queue, then applies the newer batch
    worker.result()
    np.testing.assert_array_equal(record.seen, reference.seen)
    np.testing.assert_array_equal(record.last, reference.last)
    np.testing.assert_array_equal(record.uncertainty, reference.uncertainty)


def test_fork_hooks_hold_the_background_lock_across_the_fork():
    # A worker thread inside _forget (holding the lock) at the moment of a fork would
    # leave it locked in the child: the hook takes it before the fork, and both sides
    # release it after.
    import os

    from skd2ace import _background

    _background._wait_for_all()  # the before-fork hook
    assert _background._RUNNING_LOCK.locked()
    _background._RUNNING_LOCK.release()
    pid = os.fork()
    if pid == 0:  # the child: the lock must be free
        os._exit(0 if _background._RUNNING_LOCK.acquire(timeout=5) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _background._RUNNING_LOCK.acquire(timeout=5)  # and free in the parent
    _background._RUNNING_LOCK.release()


@pytest.mark.parametrize("history_size", [1, 0, -3, 2.5, True, "5"])
def test_a_window_under_two_predictions_is_an_error_everywhere(history_size):
    # A window of one prediction has no change to average (METHOD.md §2): W = 1 once
    # averaged one change anyway (E = 0.70001 instead of 0 with λ = 1 for 0.2 → 0.9).
    from skd2ace._device_selection import DeviceRecord

    with pytest.raises(ValueError, match="history_size must be an integer >= 2"):
        TrainingRecord(3, 2, history_size=history_size)
    with pytest.raises(ValueError, match="history_size must be an integer >= 2"):
        DeviceRecord(3, 2, history_size, device="cpu")
    with pytest.raises(ValueError, match="history_size must be an integer >= 2"):
        D2ACEBatchSampler(np.eye(3), batch_size=2, max_epochs=3, history_size=history_size)


def test_the_smallest_window_averages_the_one_change_it_holds():
    record = TrainingRecord(1, 1, history_size=2, lam=1.0)
    for p in (0.2, 0.9, 0.5):
        record.update([0], np.array([[p]]), np.array([[0.1]]))
    assert record.uncertainty[0, 0] == pytest.approx(0.4, abs=1e-4)  # |0.5 − 0.9| only

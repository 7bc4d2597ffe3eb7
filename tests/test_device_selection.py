"""Device-side bookkeeping (skd2ace._device_selection), checked on the CPU against the
numpy record and functional core, and the rule that chooses it."""

import pickle

import numpy as np
import pytest
import torch

from skd2ace import D2ACEMultiLabelClassifier, sampler, selection
from skd2ace._device_selection import DeviceRecord, d2ace_distribution, label_weights
from skd2ace._record import TrainingRecord
from skd2ace.sampler import (
    DEVICE_SELECTION_MIN_LABELS,
    device_selection_bytes,
    use_device_selection,
)


def _batches(rng, n, q, n_batches, size):
    for _ in range(n_batches):
        idx = rng.choice(n, size, replace=False)  # distinct rows, as the sampler draws
        proba = rng.random((size, q), dtype=np.float32)
        loss = rng.random((size, q), dtype=np.float32) * 3
        yield idx, proba, loss


@pytest.mark.parametrize("history_size", [2, 3, 5])
def test_device_record_matches_the_numpy_record(history_size):
    rng = np.random.default_rng(history_size)
    n, q = 60, 7
    host = TrainingRecord(n, q, history_size=history_size, flip_decay=0.6, lam=0.4)
    device = DeviceRecord(n, q, history_size, 0.6, 0.4, device="cpu")
    for k, (idx, proba, loss) in enumerate(_batches(rng, n, q, 40, 16)):
        if k == 5:  # a transiently diverged batch: repeats / keeps the previous values
            proba[0, :3] = [np.nan, np.inf, -np.inf]
            loss[1, 2] = np.nan
        host.update(idx, proba, loss)
        device.update(torch.from_numpy(idx), torch.from_numpy(proba), torch.from_numpy(loss))
    E, H = device.metrics()
    np.testing.assert_allclose(E.numpy(), host.uncertainty, rtol=0, atol=2e-6)
    np.testing.assert_allclose(H.numpy(), host.hardness, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(device.seen.numpy(), host.seen)
    assert device.nbytes == 4 * n + (12 + 4 * (history_size - 1)) * n * q


def test_unseen_instances_are_uninformed():
    device = DeviceRecord(4, 2, device="cpu")
    device.update(torch.tensor([1]), torch.tensor([[0.9, 0.2]]), torch.tensor([[0.1, 0.2]]))
    E, H = device.metrics()
    np.testing.assert_allclose(E[[0, 2, 3]].numpy(), 0.5, atol=1e-7)  # (1 − λ)·H2(0.5)
    np.testing.assert_allclose(H[[0, 2, 3]].numpy(), 0.5, atol=1e-7)  # (1 − ½)(1 − 0)


@pytest.mark.parametrize("correlation", [True, False])
@pytest.mark.parametrize("dynamic", [True, False])
def test_device_distribution_matches_the_numpy_core(correlation, dynamic):
    rng = np.random.default_rng(0)
    n, q = 300, 9
    E = rng.random((n, q), dtype=np.float32)
    H = rng.random((n, q), dtype=np.float32)
    Y = (rng.random((n, q)) < 0.3).astype(np.int8)
    Z = selection.local_label_context(Y, rng.integers(0, n, (n, 4)))
    kwargs = dict(pressure=5.0, mixture=0.6, dynamic_weights=dynamic, correlation=correlation)
    want, info = selection.d2ace_distribution(E, H, Y, Z, **kwargs)
    as_t = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    got, got_info = d2ace_distribution(as_t(E), as_t(H), as_t(Y), as_t(Z), **kwargs)
    # Equal up to float rounding; a score on a rank boundary may move by one rank,
    # which changes its probability by a factor s^(1/N) at most.
    ratio = got / want
    assert np.all(np.abs(np.log(ratio)) <= np.log(5.0) / n + 1e-9)
    assert np.mean(np.isclose(got, want, rtol=1e-9)) > 0.97
    np.testing.assert_allclose(got.sum(), 1.0)
    for key in ("label_weights_uncertainty", "label_weights_hardness"):
        np.testing.assert_allclose(got_info[key], info[key], rtol=1e-9)
    np.testing.assert_allclose(
        label_weights(as_t(E), 0.5, 0.5, dynamic).numpy(),
        info["label_weights_uncertainty"],
        rtol=1e-9,
    )


def test_non_finite_scores_give_uniform_sampling():
    E = torch.rand(20, 3)
    E[4, 1] = float("nan")
    with pytest.warns(selection.NonFiniteScoresWarning):
        P, _ = d2ace_distribution(
            E, torch.rand(20, 3), torch.ones(20, 3), torch.ones(20, 3), pressure=4.0, mixture=1.0
        )
    np.testing.assert_allclose(P, 1 / 20)


@pytest.fixture
def on_cpu(monkeypatch):
    # The device path is only chosen for CUDA devices; force it on the CPU.
    monkeypatch.setattr(sampler, "use_device_selection", lambda device, *shape: device is not None)


def test_sampler_plans_like_the_numpy_sampler(on_cpu, drawn):
    rng = np.random.default_rng(1)
    Y = (rng.random((80, 5)) < 0.4).astype(int)
    neighbors = rng.integers(0, 80, (80, 3))
    kw = dict(batch_size=16, max_epochs=6, warmup_epochs=2, neighbors=neighbors, random_state=3)
    dev = sampler.D2ACEBatchSampler(Y, device="cpu", **kw)
    host = sampler.D2ACEBatchSampler(Y, **kw)
    assert isinstance(dev.record_, DeviceRecord) and isinstance(host.record_, TrainingRecord)
    for epoch in range(5):
        drawn.clear()
        batches = dev.plan_epoch()
        host.plan_epoch()
        rows = np.sort(np.concatenate(batches))
        assert len(batches) == 5 and rows.size == 80
        if epoch < 2:  # warm-up: a permutation
            np.testing.assert_array_equal(rows, np.arange(80))
        for key in ("selection_pressure", "mixture_weight"):
            assert dev.epoch_info_[key] == host.epoch_info_[key]
        for key in ("label_weights_uncertainty", "label_weights_hardness"):
            np.testing.assert_allclose(dev.epoch_info_[key], host.epoch_info_[key], rtol=1e-6)
        if epoch >= 2:  # selecting epochs: the same distribution up to rank flips
            got, want = drawn
            pressure = dev.epoch_info_["selection_pressure"]
            assert np.all(np.abs(np.log(got / want)) <= np.log(pressure) / 80 + 1e-9)
        # Both records get the same batches (the device sampler's).
        for batch in batches:
            proba = rng.random((len(batch), 5), dtype=np.float32)
            loss = rng.random((len(batch), 5), dtype=np.float32)
            dev.record(torch.from_numpy(batch), torch.from_numpy(proba), torch.from_numpy(loss))
            host.record(batch, proba, loss)
    np.testing.assert_allclose(dev.record_.uncertainty, host.record_.uncertainty, atol=2e-6)
    again = pickle.loads(pickle.dumps(dev))
    np.testing.assert_array_equal(again.record_.last.numpy(), dev.record_.last.numpy())


def test_estimator_fits_with_device_selection(on_cpu):
    rng = np.random.default_rng(0)
    X = rng.random((120, 6))
    Y = (X[:, :3] + 0.3 * rng.random((120, 3)) > 0.7).astype(int)
    clf = D2ACEMultiLabelClassifier(
        max_epochs=5,
        warmup_epochs=1,
        hidden_layer_sizes=(8,),
        batch_size=16,
        warm_start=True,
        random_state=0,
    ).fit(X, Y)
    record = clf.net_.batch_sampler.record_
    assert isinstance(record, DeviceRecord)
    assert int(record.seen.sum()) == 5 * len(clf._train_idx)
    ess = clf.net_.history[:, "selection_ess"]
    assert ess[0] == 1.0 and all(0 < v < 1 for v in ess[1:])
    assert clf.predict_proba(X).shape == Y.shape


def test_repeated_instances_in_a_batch_are_consecutive_predictions():
    rng = np.random.default_rng(11)
    n, q = 8, 3
    host = TrainingRecord(n, q, history_size=3)
    device = DeviceRecord(n, q, 3, device="cpu")
    for idx in ([0, 1, 2], [0, 0, 0, 1, 3, 0], [3, 3, 2], [5]):
        proba = rng.random((len(idx), q), dtype=np.float32)
        loss = rng.random((len(idx), q), dtype=np.float32)
        host.update(np.array(idx), proba, loss)
        device.update(np.array(idx), proba, loss)
    host.flush()
    np.testing.assert_array_equal(device.seen.numpy(), [5, 2, 2, 3, 0, 1, 0, 0])
    np.testing.assert_array_equal(device.last.numpy(), host.last)
    np.testing.assert_allclose(device.uncertainty, host.uncertainty, atol=2e-6)
    np.testing.assert_allclose(device.hardness, host.hardness, atol=2e-6)


def test_batch_inputs_outside_autograd_and_any_array_layout():
    record = DeviceRecord(6, 2, device="cpu")
    logits = torch.zeros(3, 2, requires_grad=True)
    record.update(torch.tensor([0, 1, 2]), torch.sigmoid(logits), logits * 0 + 1)
    assert not record.last.requires_grad and not record.loss.requires_grad
    proba = np.linspace(0.1, 0.9, 6, dtype=np.float32).reshape(3, 2)[::-1]  # negative strides
    proba.flags.writeable = False
    record.update([3, 4, 5], proba, [[1.0, 1.0]] * 3)  # lists too
    np.testing.assert_array_equal(record.last.numpy()[3:], proba)
    record.metrics()


@pytest.mark.parametrize("copy", [True, False])
@pytest.mark.parametrize("on_device", [False, True])
def test_non_integer_indices_raise_when_recorded(monkeypatch, on_device, copy):
    # numpy would truncate 1.7 to instance 1 (and the device record's repeat check
    # would miss 1.2 and 1.7 as one instance); booleans would read as 0 and 1.
    monkeypatch.setattr(sampler, "use_device_selection", lambda *a: on_device)
    s = sampler.D2ACEBatchSampler(np.eye(5, dtype=int), batch_size=2, max_epochs=3, device="cpu")
    proba, loss = np.full((2, 5), 0.5, np.float32), np.ones((2, 5), np.float32)
    for idx in (np.array([1.7, 1.2]), torch.tensor([1.0, 2.0]), np.array([True, False])):
        with pytest.raises(TypeError, match="instance indices must be integers"):
            s.record(idx, proba, loss, copy=copy)
    s.record([], np.zeros((0, 5)), np.zeros((0, 5)), copy=copy)  # an empty list is fine
    s.record_.flush()
    assert int(np.asarray(s.record_.seen).sum()) == 0


@pytest.mark.parametrize("on_device", [False, True])
def test_indices_out_of_range_raise_when_recorded(monkeypatch, on_device):
    # numpy would wrap -1 to the last instance; on a CUDA device 5 breaks the context.
    monkeypatch.setattr(sampler, "use_device_selection", lambda *a: on_device)
    s = sampler.D2ACEBatchSampler(np.eye(5, dtype=int), batch_size=2, max_epochs=3, device="cpu")
    cases = [(idx, dtype) for idx in ([0, 5], [-1, 2]) for dtype in (np.int64, np.int32, np.int8)]
    for idx, dtype in [*cases, ([0, 5], np.uint16)]:
        with pytest.raises(IndexError, match=r"instance indices must lie in \[0, 5\)"):
            s.record(
                np.array(idx, dtype=dtype),
                np.full((2, 5), 0.5, np.float32),
                np.ones((2, 5), np.float32),
            )
    with pytest.raises(IndexError, match="must lie"):  # a torch tensor, as the net passes
        s.record(torch.tensor([-1, 0]), torch.full((2, 5), 0.5), torch.ones(2, 5))
    s.record_.flush()
    assert int(np.asarray(s.record_.seen).sum()) == 0


def test_record_saved_on_a_missing_device_loads_on_the_cpu(monkeypatch):
    record = DeviceRecord(10, 3, device="cpu")
    record.update(torch.arange(4), torch.rand(4, 3), torch.rand(4, 3))
    record.device = torch.device("cuda:7")  # as if saved on a machine with 8 GPUs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    blob = pickle.dumps(record)
    with pytest.warns(UserWarning, match="saved on cuda:7, which is not available here"):
        again = pickle.loads(blob)
    assert again.device == torch.device("cpu")
    for name in DeviceRecord._TENSORS:
        torch.testing.assert_close(getattr(again, name), getattr(record, name))
    for got, want in zip(again.metrics(), record.metrics(), strict=True):
        torch.testing.assert_close(got, want)


def test_warm_started_estimator_pickles_and_continues(on_cpu):
    rng = np.random.default_rng(2)
    X = rng.random((100, 5)).astype(np.float32)
    Y = (X[:, :3] + 0.3 * rng.random((100, 3)) > 0.7).astype(int)
    kw = dict(max_epochs=4, warmup_epochs=1, hidden_layer_sizes=(8,), batch_size=16)
    clf = D2ACEMultiLabelClassifier(warm_start=True, random_state=0, **kw).fit(X, Y)
    sampler_ = clf.net_.batch_sampler
    assert sampler_._device_labels is not None  # cached for planning
    again = pickle.loads(pickle.dumps(clf))
    assert again.net_.batch_sampler._device_labels is None  # rebuilt when needed
    seen = int(again.net_.batch_sampler.record_.seen.sum())
    again.partial_fit(X, Y)
    clf.partial_fit(X, Y)
    assert int(again.net_.batch_sampler.record_.seen.sum()) > seen
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))


@pytest.fixture
def free_gpu_memory(monkeypatch):
    """A pretend machine with 2 GPUs: free memory, and this process's cached blocks."""
    free = {"bytes": 80 * 2**30, "cached": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 2**40))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 2**30 + free["cached"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2**30)
    return free


def test_device_selection_auto_needs_cuda_many_labels_and_memory(monkeypatch, free_gpu_memory):
    Q = DEVICE_SELECTION_MIN_LABELS
    monkeypatch.delenv("SKD2ACE_DEVICE_SELECTION", raising=False)
    assert not use_device_selection(None, 16105, 983) and not use_device_selection("cpu", 10, Q)
    assert use_device_selection("cuda", 16105, 983)  # delicious
    assert use_device_selection(torch.device("cuda:1"), 100, Q)
    assert not use_device_selection("cuda", 2417, 14)  # yeast: the host path is faster
    assert not use_device_selection("cuda", 100_000, Q - 1)
    need = device_selection_bytes(10**6, 1000)
    # 28 B of state, 8 of labels/context, 24 of planning; 24 B per label pair.
    assert need == 10**6 * 1000 * 60 + 24 * 1000**2
    assert device_selection_bytes(1000, 8000) == 1000 * 8000 * 60 + 24 * 8000**2
    free_gpu_memory["bytes"] = 2 * need
    assert use_device_selection("cuda", 10**6, 1000)
    free_gpu_memory["bytes"] = 2 * need - 1  # the model keeps at least half of what is free
    assert not use_device_selection("cuda", 10**6, 1000)
    free_gpu_memory["cached"] = 1  # blocks torch caches for this process count as free
    assert use_device_selection("cuda", 10**6, 1000)


@pytest.mark.parametrize(
    "value, cuda_few_labels, cuda_many, cpu",
    [
        ("auto", False, True, False),
        (" AUTO ", False, True, False),
        ("1", True, True, False),
        ("0", False, False, False),
    ],
)
def test_device_selection_environment_variable(
    monkeypatch, free_gpu_memory, value, cuda_few_labels, cuda_many, cpu
):
    monkeypatch.setenv("SKD2ACE_DEVICE_SELECTION", value)
    assert use_device_selection("cuda", 2417, 14) is cuda_few_labels
    assert use_device_selection("cuda", 16105, 983) is cuda_many
    assert use_device_selection("cpu", 16105, 983) is cpu


def test_device_selection_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("SKD2ACE_DEVICE_SELECTION", "auto")
    assert not use_device_selection("cuda", 16105, 983)  # the host path, as before
    monkeypatch.setenv("SKD2ACE_DEVICE_SELECTION", "1")
    with pytest.raises(ValueError, match=r"SKD2ACE_DEVICE_SELECTION=1 .* CUDA is not available"):
        use_device_selection("cuda", 10, 3)
    monkeypatch.setenv("SKD2ACE_DEVICE_SELECTION", "0")
    assert not use_device_selection("cuda", 16105, 983)


def test_device_selection_on_a_missing_cuda_index(monkeypatch, free_gpu_memory):
    monkeypatch.setenv("SKD2ACE_DEVICE_SELECTION", "auto")
    assert not use_device_selection("cuda:5", 16105, 983)  # the host path
    monkeypatch.setenv("SKD2ACE_DEVICE_SELECTION", "1")
    with pytest.raises(ValueError, match=r"only 2 CUDA device\(s\) are available"):
        use_device_selection("cuda:5", 10, 3)


def test_device_selection_environment_variable_is_checked(monkeypatch):
    monkeypatch.setenv("SKD2ACE_DEVICE_SELECTION", "yes")
    with pytest.raises(ValueError, match="SKD2ACE_DEVICE_SELECTION must be 'auto', '1' or '0'"):
        use_device_selection("cuda", 10, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_record_on_cuda_matches_the_numpy_record():
    rng = np.random.default_rng(7)
    n, q = 500, 20
    host = TrainingRecord(n, q)
    device = DeviceRecord(n, q, device="cuda")
    for idx, proba, loss in _batches(rng, n, q, 60, 64):
        host.update(idx, proba, loss)
        proba_t, loss_t = torch.from_numpy(proba).cuda(), torch.from_numpy(loss).cuda()
        device.update(torch.from_numpy(idx), proba_t, loss_t)
    E, H = device.metrics()
    np.testing.assert_allclose(E.cpu().numpy(), host.uncertainty, rtol=0, atol=2e-6)
    np.testing.assert_allclose(H.cpu().numpy(), host.hardness, rtol=0, atol=2e-6)


def test_neighbour_search_starts_after_the_record_is_placed(monkeypatch):
    import skd2ace._classifier as module

    order = []
    monkeypatch.setattr(sampler, "use_device_selection", lambda *a: order.append("record") or False)
    original = module.nearest_neighbors_in_background
    monkeypatch.setattr(
        module,
        "nearest_neighbors_in_background",
        lambda *a, **k: order.append("search") or original(*a, **k),
    )
    rng = np.random.default_rng(0)
    X, Y = rng.random((50, 4)), (rng.random((50, 3)) < 0.4).astype(int)
    D2ACEMultiLabelClassifier(max_epochs=2, hidden_layer_sizes=(4,), random_state=0).fit(X, Y)
    assert order == ["record", "search"]

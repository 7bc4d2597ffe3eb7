"""The ``device`` parameter: CPU always, CUDA when present, a clear error otherwise."""

import numpy as np
import pytest
import torch

from skd2ace import D2ACEMultiLabelClassifier

FAST = {"max_epochs": 3, "warmup_epochs": 1, "hidden_layer_sizes": (8,), "batch_size": 16}
HAS_CUDA = torch.cuda.is_available()


def tiny_problem(n=40, d=4, q=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, d)), (rng.random((n, q)) < 0.4).astype(int)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_cpu_always_works(device):
    X, Y = tiny_problem()
    clf = D2ACEMultiLabelClassifier(**FAST, device=device, random_state=0).fit(X, Y)
    assert all(p.device.type == "cpu" for p in clf.net_.module_.parameters())
    proba = clf.predict_proba(X)
    assert proba.shape == Y.shape and np.all(np.isfinite(proba))


@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
@pytest.mark.parametrize("method", ["fit", "partial_fit", "initialize"])
def test_cuda_without_cuda_is_a_clear_error(monkeypatch, device, method):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    X, Y = tiny_problem()
    clf = D2ACEMultiLabelClassifier(**FAST, device=device)
    with pytest.raises(ValueError, match=r"device=.*cuda.* CUDA is not available"):
        getattr(clf, method)(X, Y)
    assert not hasattr(clf, "net_")


def test_missing_cuda_index_is_a_clear_error(monkeypatch):
    # Checked before anything touches the (here pretended) GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    X, Y = tiny_problem()
    clf = D2ACEMultiLabelClassifier(**FAST, device="cuda:3")
    with pytest.raises(ValueError, match=r"device='cuda:3'.*only 1 CUDA device"):
        clf.fit(X, Y)
    assert not hasattr(clf, "net_")


@pytest.mark.parametrize(
    ("device", "error", "message"),
    [
        ("gpu", ValueError, "device='gpu' is not a torch device"),
        ("", ValueError, "device='' is not a torch device"),
        (None, TypeError, "device must be a string"),
        (1, TypeError, "device must be a string"),
    ],
)
def test_unknown_device_is_a_clear_error(device, error, message):
    X, Y = tiny_problem()
    clf = D2ACEMultiLabelClassifier(**FAST, device=device)  # accepted by __init__
    assert clf.get_params()["device"] is device
    with pytest.raises(error, match=message):
        clf.fit(X, Y)
    assert not hasattr(clf, "net_")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_real_cuda_fit_predict_and_pickle():
    import pickle

    X, Y = tiny_problem(n=60)
    clf = D2ACEMultiLabelClassifier(**FAST, device="cuda", warm_start=True, random_state=0).fit(
        X, Y
    )
    assert all(p.device.type == "cuda" for p in clf.net_.module_.parameters())
    # With few labels the recorded selection state lives in host memory (numpy).
    record = clf.net_.batch_sampler.record_
    assert isinstance(record.uncertainty, np.ndarray)
    proba = clf.predict_proba(X)
    assert proba.shape == Y.shape and np.all((proba > 0) & (proba < 1))
    ess = clf.net_.history[:, "selection_ess"]
    assert all(np.isfinite(ess)) and all(0 < e <= 1 + 1e-12 for e in ess)
    clf.partial_fit(X, Y)  # continuing on the GPU
    assert len(clf.net_.history) == FAST["max_epochs"] + 1
    again = D2ACEMultiLabelClassifier(**FAST, device="cuda", warm_start=True, random_state=0).fit(
        X, Y
    )
    again.partial_fit(X, Y)
    # Same seed, same GPU: reproducible up to non-deterministic CUDA kernels.
    np.testing.assert_allclose(again.predict_proba(X), clf.predict_proba(X), atol=1e-5)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(restored.predict_proba(X), clf.predict_proba(X))


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_real_cuda_fit_with_many_labels_keeps_the_record_on_the_gpu(monkeypatch):
    import pickle

    from skd2ace._device_selection import DeviceRecord
    from skd2ace.sampler import DEVICE_SELECTION_MIN_LABELS

    monkeypatch.delenv("SKD2ACE_DEVICE_SELECTION", raising=False)
    X, Y = tiny_problem(n=200, d=10, q=DEVICE_SELECTION_MIN_LABELS)
    kw = dict(FAST, max_epochs=4, device="cuda", warm_start=True, random_state=0)
    clf = D2ACEMultiLabelClassifier(**kw).fit(X, Y)
    record = clf.net_.batch_sampler.record_
    assert isinstance(record, DeviceRecord) and record.last.device.type == "cuda"
    assert int(record.seen.sum()) == 4 * len(clf._train_idx)
    ess = clf.net_.history[:, "selection_ess"]
    assert ess[0] == 1.0 and all(0 < e < 1 for e in ess[1:])
    clf.partial_fit(X, Y)
    restored = pickle.loads(pickle.dumps(clf))
    assert restored.net_.batch_sampler.record_.last.device.type == "cuda"
    np.testing.assert_allclose(restored.predict_proba(X), clf.predict_proba(X))
    monkeypatch.setenv("SKD2ACE_DEVICE_SELECTION", "0")
    host = D2ACEMultiLabelClassifier(**kw).fit(X, Y)
    assert isinstance(host.net_.batch_sampler.record_.uncertainty, np.ndarray)

"""Nearest neighbours of the local label context: exact below a size, partitioned above."""

import threading

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.datasets import make_blobs
from sklearn.neighbors import NearestNeighbors

import skd2ace.neighbors as nb
from skd2ace import D2ACEMultiLabelClassifier
from skd2ace.neighbors import _drop_self, nearest_neighbors


def test_exact_below_the_threshold_matches_sklearn():
    X = np.random.default_rng(0).random((300, 4))
    expected = NearestNeighbors(n_neighbors=5).fit(X).kneighbors(return_distance=False)
    np.testing.assert_array_equal(nearest_neighbors(X, 5), expected)
    np.testing.assert_array_equal(nearest_neighbors(sp.csr_matrix(X), 5), expected)


@pytest.mark.parametrize("n", [300, 1500])  # 1500: several 16 MiB blocks when forced
def test_exact_matrix_product_path_matches_sklearn(n, monkeypatch):
    # 64 features take the float32 matrix-product + top-k path.
    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, 64))
    X[7] = X[3]  # a duplicate row: each is the other's nearest, at distance 0
    if n == 1500:
        import skd2ace.neighbors as nb

        original = nb._exact
        monkeypatch.setattr(nb, "_exact", lambda X, k: original(X, k, block_bytes=4 * n * 100))
    got = nearest_neighbors(X, 5)
    expected = NearestNeighbors(n_neighbors=5).fit(X).kneighbors(return_distance=False)
    assert not (got == np.arange(n)[:, None]).any()
    assert all(len(set(row)) == 5 for row in got)
    # The same neighbours up to float32 near-ties: equal distances, row by row.
    dist = np.linalg.norm(X[got] - X[:, None], axis=2)
    want = np.linalg.norm(X[expected] - X[:, None], axis=2)
    np.testing.assert_allclose(dist, want, rtol=1e-5)
    assert (got == expected).mean() > 0.99
    assert got[3, 0] == 7 and got[7, 0] == 3


@pytest.mark.parametrize("d", [4, 64])  # scikit-learn's search, the matrix-product path
def test_exact_search_with_a_large_common_offset(d):
    # Raw (unscaled) features far from the origin: in float32, ‖y‖² − 2 x·y would
    # cancel and scramble the ranking (recall 0.01 at an offset of 1000 before the
    # features were centred). Distances are translation invariant.
    X = 1000.0 + np.random.default_rng(d).random((800, d))
    got = nearest_neighbors(X, 6)
    kth = np.sort(np.linalg.norm(X[:, None] - X[None], axis=2), axis=1)[:, 6]  # [:, 0]: self
    found = np.linalg.norm(X[got] - X[:, None], axis=2)
    assert (found <= kth[:, None] * (1 + 1e-6)).all()
    np.testing.assert_array_equal(got, nearest_neighbors(X - 1000.0, 6))


def test_partitioned_search_is_valid_and_mostly_right():
    X, _ = make_blobs(n_samples=6000, centers=30, n_features=8, random_state=0)
    approx = nearest_neighbors(X, 6, exact_max=500, random_state=0)
    n = X.shape[0]
    assert approx.shape == (n, 6)
    assert approx.min() >= 0 and approx.max() < n
    assert not (approx == np.arange(n)[:, None]).any()
    assert all(len(set(row)) == 6 for row in approx[:200])
    exact = nearest_neighbors(X, 6)
    kth = np.linalg.norm(X[exact] - X[:, None], axis=2).max(axis=1)
    found = np.linalg.norm(X[approx] - X[:, None], axis=2)
    recall = (found <= kth[:, None] + 1e-9).mean()
    assert recall > 0.8, recall
    np.testing.assert_array_equal(approx, nearest_neighbors(X, 6, exact_max=500, random_state=0))


def test_drop_self_keeps_k_other_indices():
    found = np.array([[3, 1, 2], [0, 4, 1], [5, 6, 7]])
    members = np.array([3, 4, 9])  # 9 is not among its own results (duplicates)
    np.testing.assert_array_equal(_drop_self(found, members, 2), [[1, 2], [0, 1], [5, 6]])


def test_k_out_of_range():
    with pytest.raises(ValueError, match="k must be in"):
        nearest_neighbors(np.zeros((3, 2)), 3)


def _small_problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 5)).astype(np.float32)
    Y = (rng.random((80, 3)) < 0.4).astype(int)
    return X, Y


def test_background_search_error_surfaces_in_fit(monkeypatch):
    import skd2ace.neighbors as module
    from skd2ace import D2ACEMultiLabelClassifier

    def broken(*args, **kwargs):
        raise MemoryError("no room for the neighbours")

    monkeypatch.setattr(module, "nearest_neighbors", broken)
    X, Y = _small_problem()
    clf = D2ACEMultiLabelClassifier(max_epochs=3, warmup_epochs=1, random_state=0)
    with pytest.raises(MemoryError, match="no room"):
        clf.fit(X, Y)


def test_background_search_gives_the_synchronous_context():
    import pickle

    from skd2ace import D2ACEMultiLabelClassifier

    X, Y = _small_problem()
    clf = D2ACEMultiLabelClassifier(
        max_epochs=4, warmup_epochs=2, warm_start=True, random_state=0
    ).fit(X, Y)
    sampler = clf.net_.batch_sampler
    assert sampler._pending_neighbors is None  # waited for when the warm-up ended
    from skd2ace.selection import local_label_context

    train = clf._train_idx
    expected = local_label_context(Y[train], nearest_neighbors(X[train], clf.n_neighbors))
    np.testing.assert_array_equal(sampler.context_, expected)

    # A sampler still waiting for its neighbours pickles (it waits for them first).
    fresh = D2ACEMultiLabelClassifier(max_epochs=4, warmup_epochs=2, random_state=0)
    fresh.initialize(X, Y)
    pending = fresh.net_.batch_sampler
    restored = pickle.loads(pickle.dumps(pending))
    np.testing.assert_array_equal(restored.context_, expected)


def test_background_search_limits_its_own_openmp_threads_only(monkeypatch):

    from threadpoolctl import threadpool_info

    import skd2ace.neighbors as module

    def openmp_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"]

    seen = {}
    original = module.nearest_neighbors

    def spy(*args, **kwargs):
        seen["threads"] = openmp_threads()
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "nearest_neighbors", spy)
    # What a new thread gets without a limit (OMP_NUM_THREADS, else the cores): the
    # free cores are made to differ from it, so that the search's own limit shows.
    default = []
    thread = threading.Thread(target=lambda: default.extend(openmp_threads()))
    thread.start()
    thread.join()
    free = default[0] + 1
    monkeypatch.setattr(module._background, "free_cores", lambda device=None: free)
    before = openmp_threads()
    X = np.random.default_rng(0).random((50, 3))
    got = module.nearest_neighbors_in_background(X, 4, random_state=0).result()
    np.testing.assert_array_equal(got, original(X, 4))
    assert before and seen["threads"] == [free] * len(before)  # inside: the free cores
    assert openmp_threads() == before  # the calling thread keeps its own limit


def _blas_threads():
    from threadpoolctl import threadpool_info

    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_background_search_limits_blas_to_the_free_cores_while_it_runs(monkeypatch):
    import skd2ace.neighbors as module
    from skd2ace import _background

    seen = {}
    original = module.nearest_neighbors

    def spy(*args, **kwargs):
        seen["threads"] = _blas_threads()
        return original(*args, **kwargs)

    before = _blas_threads()
    assert before  # numpy's OpenBLAS
    free = 1 if max(before) > 1 else 2  # a limit that differs from the current one
    monkeypatch.setattr(module, "nearest_neighbors", spy)
    monkeypatch.setattr(_background, "free_cores", lambda device=None: free)
    X = np.random.default_rng(0).random((50, 3))
    got = module.nearest_neighbors_in_background(X, 4, random_state=0).result()
    assert seen["threads"] == [free] * len(before)
    assert _blas_threads() == before  # restored when the search ends
    np.testing.assert_array_equal(got, original(X, 4))


def test_overlapping_background_searches_restore_the_blas_limit(monkeypatch):
    import time

    import skd2ace.neighbors as module
    from skd2ace import _background

    before = _blas_threads()
    free = 1 if max(before) > 1 else 2
    monkeypatch.setattr(_background, "free_cores", lambda device=None: free)
    seen = []

    def slow(X, k, **kwargs):
        seen.append(_blas_threads())
        time.sleep(0.2)  # the second search starts while the first runs

    monkeypatch.setattr(module, "nearest_neighbors", slow)
    first = module.nearest_neighbors_in_background(np.zeros((5, 2)), 2)
    time.sleep(0.05)
    second = module.nearest_neighbors_in_background(np.zeros((5, 2)), 2)
    first.result(), second.result()
    assert seen == [[free] * len(before)] * 2
    assert _blas_threads() == before  # not the first search's limit, for good


def test_background_search_counts_the_cores_its_training_device_leaves_free(monkeypatch):
    from skd2ace import _background

    seen = []
    monkeypatch.setattr(_background, "free_cores", lambda device=None: seen.append(device) or 1)
    monkeypatch.setattr(nb, "nearest_neighbors", lambda X, k, **kw: None)
    for device in ("cpu", "cuda:0"):  # on a GPU, all cores but the one driving it
        nb.nearest_neighbors_in_background(np.zeros((5, 2)), 2, device=device).result()
    assert seen == ["cpu", "cuda:0"]


_FORKING_FITS = """
import numpy as np
from skd2ace import D2ACEMultiLabelClassifier
rng = np.random.default_rng(1)
X = rng.normal(size=(6000, 80)).astype(np.float32)  # >= 48 features: BLAS + torch top-k
Y = (rng.random((6000, 4)) < 0.3).astype(int)
for seed in range(3):
    clf = D2ACEMultiLabelClassifier(max_epochs=2, warmup_epochs=1, num_workers=2,
                                    random_state=seed).fit(X, Y)
    assert np.isfinite(clf.predict_proba(X[:10])).all()
# 120 labels: a queue fills every ~2200 rows, so the record's background thread (on
# when torch leaves a core free) is applying one when the next epoch forks its workers.
import torch
torch.set_num_threads(1)
Y = (rng.random((6000, 120)) < 0.05).astype(int)
clf = D2ACEMultiLabelClassifier(max_epochs=3, warmup_epochs=1, num_workers=2,
                                random_state=0).fit(X, Y)
assert np.isfinite(clf.predict_proba(X[:10])).all()
print("ok")
"""


def test_dataloader_workers_with_the_background_search():
    # DataLoader worker processes are forked at the start of the first epoch, while
    # the neighbour search runs in its thread. Without waiting for the search
    # before the fork, the second fit of this script deadlocked in os.fork. Run in
    # a subprocess: a regression must fail on the timeout, not hang the suite.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _FORKING_FITS], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize("block_rows", [None, 7])
def test_device_search_matches_the_cpu_search(block_rows):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 20)).astype(np.float32)
    block = None if block_rows is None else 4 * 300 * block_rows
    kwargs = {} if block is None else {"block_bytes": block}
    # The torch code, run on the CPU here (a CUDA device is not needed to check it).
    got = nb._exact_on_device(X, 5, torch.device("cpu"), **kwargs)
    expected = NearestNeighbors(n_neighbors=5).fit(X).kneighbors(return_distance=False)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.intp


def _device_route(monkeypatch):
    """Send nearest_neighbors' device branch to the CPU; record which search ran."""
    calls = []
    original = nb._exact_on_device

    def on_device(X, k, device, **kwargs):
        calls.append(X.shape)
        return original(X, k, device, **kwargs)

    monkeypatch.setattr(nb, "_cuda", lambda device: None if device is None else torch.device("cpu"))
    monkeypatch.setattr(nb, "_exact_on_device", on_device)
    return calls


def test_device_search_is_exact_to_larger_n_and_takes_sparse_input(monkeypatch):
    calls = _device_route(monkeypatch)
    rng = np.random.default_rng(4)
    X = rng.normal(size=(400, 6))
    expected = nearest_neighbors(X, 4)
    np.testing.assert_array_equal(nearest_neighbors(X, 4, device="cuda"), expected)
    np.testing.assert_array_equal(nearest_neighbors(sp.csr_matrix(X), 4, device="cuda"), expected)
    assert calls == [(400, 6), (400, 6)]
    assert nb.DEVICE_EXACT_MAX_SAMPLES > nb.EXACT_MAX_SAMPLES
    # Beyond exact_max the cells are searched on the device too.
    calls.clear()
    approx = nearest_neighbors(X, 4, exact_max=100, random_state=0, device="cuda")
    assert len(calls) >= 1 and sum(shape[0] for shape in calls) <= 400
    np.testing.assert_array_equal(approx, nearest_neighbors(X, 4, exact_max=100, random_state=0))


def test_cpu_device_keeps_the_cpu_search(monkeypatch):
    calls = []
    monkeypatch.setattr(nb, "_exact_on_device", lambda *a, **k: calls.append(a))
    X = np.random.default_rng(5).normal(size=(80, 50))
    np.testing.assert_array_equal(nearest_neighbors(X, 3, device="cpu"), nearest_neighbors(X, 3))
    assert calls == []


def test_estimator_searches_neighbors_on_its_device(monkeypatch):
    import skd2ace._classifier as module

    seen = {}
    original = module.nearest_neighbors_in_background

    def spy(X, k, **kwargs):
        seen.update(kwargs)
        return original(X, k, **kwargs)

    monkeypatch.setattr(module, "nearest_neighbors_in_background", spy)
    rng = np.random.default_rng(6)
    X, Y = rng.random((60, 4)), (rng.random((60, 3)) < 0.4).astype(int)
    D2ACEMultiLabelClassifier(max_epochs=2, hidden_layer_sizes=(4,), random_state=0).fit(X, Y)
    assert seen["device"] == "cpu"


def test_device_search_centres_a_large_common_offset(monkeypatch):
    _device_route(monkeypatch)
    X = np.random.default_rng(8).normal(size=(300, 16))
    expected = nearest_neighbors(X, 5)
    np.testing.assert_array_equal(nearest_neighbors(X + 1000.0, 5, device="cuda"), expected)
    np.testing.assert_array_equal(
        nb._exact_on_device(X + 1000.0, 5, torch.device("cpu"), block_bytes=8 * 16 * 7), expected
    )


def test_sparse_input_too_large_to_densify_stays_on_the_cpu(monkeypatch):
    calls = _device_route(monkeypatch)
    monkeypatch.setattr(nb, "_DEVICE_DENSE_MAX_VALUES", 100)
    monkeypatch.setattr(nb, "EXACT_MAX_SAMPLES", 100)
    monkeypatch.setattr(nb, "_CELL_SIZE", 100)
    searched = []
    original = nb._search
    monkeypatch.setattr(
        nb,
        "_search",
        lambda X, k, device=None: searched.append(X.shape[0]) or original(X, k, device),
    )
    X = sp.random(400, 6, density=0.5, format="csr", random_state=0)
    got = nearest_neighbors(X, 4, random_state=0, device="cuda")
    # The CPU's search and the CPU's limits: partitioned, as without a device.
    assert calls == [] and len(searched) > 1 and max(searched) < 400
    np.testing.assert_array_equal(got, nearest_neighbors(X, 4, random_state=0))


def test_background_search_uses_the_callers_cuda_device(monkeypatch):
    seen = {}
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(nb, "nearest_neighbors", lambda X, k, **kw: seen.update(kw))
    nb.nearest_neighbors_in_background(np.zeros((5, 2)), 2, device="cuda").result()
    assert seen["device"] == torch.device("cuda", 1)
    nb.nearest_neighbors_in_background(np.zeros((5, 2)), 2, device="cuda:0").result()
    assert seen["device"] == torch.device("cuda", 0)
    nb.nearest_neighbors_in_background(np.zeros((5, 2)), 2, device="cpu").result()
    assert seen["device"] is None


def test_device_search_stays_exact_beyond_the_cpu_limits(monkeypatch):
    calls = _device_route(monkeypatch)
    monkeypatch.setattr(nb, "EXACT_MAX_SAMPLES", 100)
    monkeypatch.setattr(nb, "EXACT_MAX_WORK", 1)
    monkeypatch.setattr(nb, "_CELL_SIZE", 100)
    X = np.random.default_rng(9).normal(size=(400, 6))
    got = nearest_neighbors(X, 4, device="cuda")
    assert calls == [(400, 6)]  # one exact search of all rows, on the device
    expected = NearestNeighbors(n_neighbors=4).fit(X).kneighbors(return_distance=False)
    np.testing.assert_array_equal(got, expected)
    calls.clear()
    nearest_neighbors(X, 4, random_state=0)  # the CPU: partitioned under these limits
    assert calls == []


def test_device_search_takes_read_only_input_without_a_warning(recwarn):
    X = np.random.default_rng(10).normal(size=(50, 4))
    X.flags.writeable = False
    got = nb._exact_on_device(X, 3, torch.device("cpu"))
    assert not [w for w in recwarn if "not writable" in str(w.message)]
    np.testing.assert_array_equal(got, nearest_neighbors(X, 3))


def test_a_cell_of_at_most_k_rows_finds_its_neighbours_among_all_rows(monkeypatch):
    # The partitioned search puts a far-away group of 3 rows in a cell of its own;
    # with k = 4 they are searched among all rows: no row is its own neighbour, and
    # the nearest ones (the other two of the group) come first.
    import skd2ace.neighbors as module

    monkeypatch.setattr(module, "_CELL_SIZE", 50)
    rng = np.random.default_rng(0)
    X = np.r_[rng.random((197, 2)), 100 + rng.random((3, 2))]
    got = nearest_neighbors(X, 4, exact_max=10, random_state=0)
    group = np.arange(197, 200)
    for row in group:
        assert row not in got[row]
        assert set(got[row, :2]) == set(group) - {row}
    assert len(set(map(tuple, np.sort(got, axis=1)))) > 1 and (got != np.arange(200)[:, None]).all()

"""Nearest neighbours for the local label context: exact when small, partitioned when large."""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.cluster import MiniBatchKMeans
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from . import _background
from .selection import _argsort_indices

__all__ = [
    "DEVICE_EXACT_MAX_SAMPLES",
    "DEVICE_EXACT_MAX_WORK",
    "EXACT_MAX_SAMPLES",
    "EXACT_MAX_WORK",
    "nearest_neighbors",
    "nearest_neighbors_in_background",
]

#: Up to this many instances the search is exact...
EXACT_MAX_SAMPLES = 20000
#: ...unless it would cost more than this many N²·d distance terms (delicious, 16 105 × 500,
#: takes ~15 s single-threaded exactly, ~2 s partitioned).
EXACT_MAX_WORK = 2**34
# Background searches run one at a time: each sets the process-wide BLAS limit and
# restores what it found, which an overlapping search would have found lowered (and
# restored to 1 for good). They would compete for the same free cores anyway.
_BACKGROUND_SEARCH = threading.Lock()
# Partition cells hold about this many instances: each exact search inside a cell
# costs cell² distances, the whole search about N·cell.
_CELL_SIZE = 2048
# From this many features on, one float32 matrix product plus torch's top-k beats
# scikit-learn's chunked search (measured, 1 thread: 2417 × 103 in 32 ms instead of 45;
# 2048 × 20 in 29 ms instead of 17, where the top-k dominates).
_GEMM_MIN_FEATURES = 48
# Rows sampled per cell to place the cells' centres.
_SAMPLE_PER_CELL = 64
# On a CUDA device the exact search's matrix products and top-k take milliseconds where
# the CPU takes seconds, so it stays exact to far larger N (N = 10⁵: 10¹⁰ distances).
DEVICE_EXACT_MAX_SAMPLES = 100_000
DEVICE_EXACT_MAX_WORK = 2**44
# A sparse X is densified (float32) for the device search up to this many values (1 GiB).
_DEVICE_DENSE_MAX_VALUES = 2**28


def nearest_neighbors(
    X, k: int, *, exact_max: int | None = None, random_state=None, device=None
) -> np.ndarray:
    """Indices of the ``k`` nearest other instances of every instance (Euclidean).

    Up to ``exact_max`` instances (and ``N²·d ≤ 2**34``) the search is exact, an
    instance never its own neighbour: for dense ``X`` with 48 features or more,
    blocks of squared distances from one float32 matrix product each
    (``‖x‖² − 2 x·y + ‖y‖²``, at most 16 MiB at a time) and a top-k selection per
    row; otherwise scikit-learn's :class:`~sklearn.neighbors.NearestNeighbors`.
    Beyond, an exact
    search over all pairs grows as N², so the instances are first partitioned into
    cells of about 2048 by mini-batch k-means and the neighbours are searched
    exactly inside each cell: about ``N · 2048`` distances, memory
    ``O(N·k + 2048²)``, never an N × N matrix. Instances near a cell's border may
    get a neighbour that is not among their true ``k`` nearest (see
    ``docs/performance.md`` for the measured recall).

    With a CUDA ``device`` the exact searches (all pairs, or each cell's) run there
    as float32 matrix products and top-k, for dense ``X`` and for sparse ``X`` of
    up to 2²⁸ values (a larger sparse ``X`` is searched on the CPU); the search is
    then exact up to 100 000 instances
    (``N²·d ≤ 2**44``). Ties between equally distant neighbours may be broken
    differently than on the CPU.

    Parameters
    ----------
    X : {ndarray, sparse matrix} of shape (N, d)
    k : int
        Neighbours per instance, ``1 ≤ k < N``.
    exact_max : int, default=None
        Most instances searched exactly (None: 20 000, 100 000 on a CUDA device).
    random_state : int, Generator or None
        Seeds the partition (large N only).
    device : str or torch.device, default=None
        Where the exact searches run; only a CUDA device changes anything.

    Returns
    -------
    neighbors : ndarray of shape (N, k), int

    Examples
    --------
    >>> X = np.array([[0.0], [1.0], [3.0], [7.0]])
    >>> nearest_neighbors(X, 1).ravel().tolist()
    [1, 0, 1, 2]
    """
    n = X.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} instances, got {k}")
    device = _cuda(device)
    if device is not None and sp.issparse(X) and n * X.shape[1] > _DEVICE_DENSE_MAX_VALUES:
        device = None  # too large to densify: the CPU's sparse search, with its limits
    if exact_max is None:
        exact_max = EXACT_MAX_SAMPLES if device is None else DEVICE_EXACT_MAX_SAMPLES
    max_work = EXACT_MAX_WORK if device is None else DEVICE_EXACT_MAX_WORK
    if n <= exact_max and n * n * X.shape[1] <= max_work:
        return _search(X, k, device)
    n_cells = math.ceil(n / _CELL_SIZE)
    rng = np.random.default_rng(random_state)
    seed = rng.integers(2**31 - 1)
    # The cells' centres are fitted on a sample (k-means passes over all N rows
    # were most of the search at 10⁶ rows); every row then goes to its nearest centre.
    sample = rng.choice(n, min(n, max(_SAMPLE_PER_CELL * n_cells, 20000)), replace=False)
    kmeans = MiniBatchKMeans(
        n_clusters=n_cells, n_init=1, max_iter=20, batch_size=4096, random_state=seed
    ).fit(X[np.sort(sample)])
    cells = kmeans.predict(X)
    order = _argsort_indices(cells, n_cells)
    bounds = np.r_[0, np.cumsum(np.bincount(cells, minlength=n_cells))]
    neighbors = np.empty((n, k), dtype=np.intp)
    for cell in range(n_cells):  # one exact search per cell (≈ N / 2048 of them)
        members = order[bounds[cell] : bounds[cell + 1]]
        if members.size > k:
            neighbors[members] = members[_search(X[members], k, device)]
        elif members.size:  # a tiny cell: search its members among all instances
            found = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X[members])[1]
            neighbors[members] = _drop_self(found, members, k)
    return neighbors


def nearest_neighbors_in_background(X, k: int, *, random_state=None, device=None) -> Future:
    """:func:`nearest_neighbors` in a background thread; returns its Future.

    The search's BLAS and OpenMP kernels and torch's top-k release the GIL, so it
    runs while the caller trains. Its OpenMP kernels (scikit-learn's) and, while
    it runs, the process's BLAS are limited to the cores training leaves free, at
    least one (unless another thread holds a threadpoolctl BLAS limit, which
    then wins): an OpenMP team spinning on the core that trains slowed both by
    2–3× on a 2-core machine. Background searches run one at a time. A fork of
    the process (DataLoader worker processes) waits for running searches first. The result
    does not depend on timing. With a CUDA ``device`` the search runs there (see
    :func:`nearest_neighbors`); a bare ``'cuda'`` means the caller's current CUDA
    device, not the search thread's.

    Examples
    --------
    >>> X = np.array([[0.0], [1.0], [3.0], [7.0]])
    >>> nearest_neighbors_in_background(X, 1).result().ravel().tolist()
    [1, 0, 1, 2]
    """
    free = max(1, _background.free_cores(device))
    device = _cuda(device)
    if device is not None and device.index is None:
        # The current CUDA device is per thread: the search uses the caller's.
        device = torch.device("cuda", torch.cuda.current_device())

    def search():
        # OpenMP limits are per calling thread (the trainer keeps its own). OpenBLAS's
        # is process-wide (threadpoolctl lets one thread at a time set it, so a limit
        # another thread holds wins) and matters as much: its threads spin after each
        # call, and on a 2-core machine with torch's default 2 threads a 2-thread BLAS
        # search made yeast d2ace fits ~60 ms (10%) longer.
        with _BACKGROUND_SEARCH, threadpool_limits(limits=free):
            return nearest_neighbors(X, k, random_state=random_state, device=device)

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skd2ace-neighbors")
    try:
        return _background.submit(executor, search)
    finally:
        executor.shutdown(wait=False)


def _cuda(device) -> torch.device | None:
    """``device`` as a torch device if it is a CUDA one, else None (the CPU search)."""
    if device is None:
        return None
    device = torch.device(device)
    return device if device.type == "cuda" else None


def _search(X, k: int, device: torch.device | None = None) -> np.ndarray:
    """Exact kNN among the rows of ``X`` (each row's own index excluded)."""
    if device is not None:
        if sp.issparse(X):
            X = X.astype(np.float32).toarray()
        return _exact_on_device(X, k, device)
    if not sp.issparse(X):
        # Centred (in float64) before the cast to float32, which halves the distance
        # computations' memory traffic: distances do not change, but a large common
        # offset would cancel in float32 (‖y‖² − 2 x·y) and scramble the ranking.
        X = np.asarray(X)
        X = (X - X.mean(axis=0, dtype=np.float64)).astype(np.float32)
        if X.shape[1] >= _GEMM_MIN_FEATURES:
            return _exact(X, k)
    elif X.dtype == np.float64:
        X = X.astype(np.float32)
    return NearestNeighbors(n_neighbors=k).fit(X).kneighbors(return_distance=False)


def _exact(X, k: int, block_bytes: int = 2**24) -> np.ndarray:
    """Exact kNN of dense ``X`` among its own rows (the row itself excluded)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    n = X.shape[0]
    squared = np.einsum("ij,ij->i", X, X)
    neighbors = np.empty((n, k), dtype=np.int64)
    rows = max(1, min(n, block_bytes // (4 * n)))
    block = np.empty((rows, n), dtype=np.float32)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        # ‖x_i‖² is the same along a row: it cannot change the row's ranking.
        dist = np.matmul(X[start:stop], X.T, out=block[: stop - start])
        dist *= -2.0
        dist += squared
        dist[np.arange(stop - start), np.arange(start, stop)] = np.inf
        # torch's top-k is several times faster than a row-wise argpartition.
        found = torch.topk(torch.from_numpy(dist), k, dim=1, largest=False).indices
        neighbors[start:stop] = found.numpy()
    return neighbors.astype(np.intp, copy=False)


def _exact_on_device(X, k: int, device, block_bytes: int = 2**28) -> np.ndarray:
    """:func:`_exact` with torch on ``device`` (blocks of at most 256 MiB of distances).

    ``X`` (dense, any real dtype) is copied to the device as it is and centred there
    in float64 blocks, then kept as float32 (as :func:`_search` does on the host).
    """
    # A read-only or strided X is copied (torch.from_numpy warns on read-only arrays).
    source = torch.from_numpy(np.require(X, requirements=["C", "W"])).to(device)
    n, d = source.shape
    mean = source.sum(0, dtype=torch.float64) / n
    X = torch.empty((n, d), dtype=torch.float32, device=source.device)
    rows = max(1, min(n, block_bytes // (8 * max(d, 1))))
    for start in range(0, n, rows):
        X[start : start + rows] = source[start : start + rows].to(torch.float64) - mean
    del source
    squared = torch.einsum("ij,ij->i", X, X)
    neighbors = torch.empty((n, k), dtype=torch.int64, device=X.device)
    rows = max(1, min(n, block_bytes // (4 * n)))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        dist = torch.addmm(squared, X[start:stop], X.T, alpha=-2.0)
        diagonal = torch.arange(stop - start, device=X.device)
        dist[diagonal, diagonal + start] = torch.inf
        neighbors[start:stop] = torch.topk(dist, k, dim=1, largest=False).indices
    return neighbors.cpu().numpy().astype(np.intp, copy=False)


def _drop_self(found: np.ndarray, members: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` of each row of ``found`` that are not the query itself."""
    others = found != members[:, None]
    # Rows where the query was not found (duplicates) keep their first k.
    others[others.all(axis=1), -1] = False
    return found[others].reshape(-1, k)

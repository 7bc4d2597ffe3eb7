"""A deliberately naive reference implementation of METHOD.md §1–§8.

Written straight from ``/work/shared/METHOD.md`` with explicit Python loops over
instances and labels, for clarity, not speed. It does not import
``skd2ace.selection``: the tests compare the package against it.

Conventions: ``N`` instances, ``q`` labels, ``W`` predictions per window; label
matrices may be dense arrays or scipy sparse matrices (any non-zero is a positive).
"""

from __future__ import annotations

import itertools
import math
from collections import deque

import numpy as np
import scipy.sparse as sp

EPS = 1e-8
P_CLIP = 1e-7


def dense_labels(Y) -> np.ndarray:
    """``Y`` as a dense (N, q) array of 0/1 Python-friendly ints."""
    if sp.issparse(Y):
        Y = Y.toarray()
    Y = np.asarray(Y)
    out = np.zeros(Y.shape, dtype=np.int64)
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            out[i, j] = 1 if Y[i, j] != 0 else 0
    return out


# --------------------------------------------------------------------------- §2
def binary_entropy(p: float) -> float:
    """H2(p) in bits with p clipped to [1e-7, 1 − 1e-7]."""
    p = min(max(float(p), P_CLIP), 1.0 - P_CLIP)
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def uncertainty(history, lam: float = 0.5) -> np.ndarray:
    """E_ij = λ·mean_t |p^(t) − p^(t−1)| + (1 − λ)·H2(p^(last)).

    ``history`` is (N, W, q), oldest to newest, NaN where fewer than W
    predictions exist. No prediction at all counts as p = 0.5.
    """
    history = np.asarray(history, dtype=np.float64)
    n, w, q = history.shape
    E = np.zeros((n, q))
    for i in range(n):
        for j in range(q):
            preds = [float(history[i, t, j]) for t in range(w)]
            preds = [x for x in preds if not math.isnan(x)]
            if len(preds) >= 2:
                changes = [abs(preds[t] - preds[t - 1]) for t in range(1, len(preds))]
                fluctuation = sum(changes) / len(changes)
            else:
                fluctuation = 0.0
            last = preds[-1] if preds else 0.5
            E[i, j] = lam * fluctuation + (1.0 - lam) * binary_entropy(last)
    return E


def hardness(loss, flip_ema) -> np.ndarray:
    """H_ij = (1 − exp(−ℓ_ij))·(1 − f_ij)."""
    loss = np.asarray(loss, dtype=np.float64)
    flip_ema = np.asarray(flip_ema, dtype=np.float64)
    n, q = loss.shape
    H = np.zeros((n, q))
    for i in range(n):
        for j in range(q):
            H[i, j] = (1.0 - math.exp(-float(loss[i, j]))) * (1.0 - float(flip_ema[i, j]))
    return H


# --------------------------------------------------------------------------- §3
def label_weights(metric, a: float = 0.5, b: float = 0.5) -> np.ndarray:
    """v_j = exp(a·mean_i M_ij + b·std_i M_ij), population std."""
    metric = np.asarray(metric, dtype=np.float64)
    n, q = metric.shape
    v = np.zeros(q)
    for j in range(q):
        column = [float(metric[i, j]) for i in range(n)]
        mean = sum(column) / n
        var = sum((x - mean) ** 2 for x in column) / n
        v[j] = math.exp(a * mean + b * math.sqrt(var))
    return v


# --------------------------------------------------------------------------- §4
def knn(X, k: int) -> np.ndarray:
    """Indices of the k nearest *other* instances (Euclidean, brute force)."""
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    out = np.zeros((n, k), dtype=np.intp)
    for i in range(n):
        dist = []
        for m in range(n):
            if m != i:
                squared = sum((X[i, f] - X[m, f]) ** 2 for f in range(X.shape[1]))
                dist.append((math.sqrt(squared), m))
        dist.sort()
        out[i] = [m for _, m in dist[:k]]
    return out


def local_label_context(Y, neighbors) -> np.ndarray:
    """Z_ij = 1 if any member of {i} ∪ neighbours(i) has label j."""
    Y = dense_labels(Y)
    n, q = Y.shape
    neighbors = np.asarray(neighbors).reshape(n, -1)
    Z = np.zeros((n, q), dtype=np.int64)
    for i in range(n):
        members = [i] + [int(m) for m in neighbors[i]]
        for j in range(q):
            Z[i, j] = 1 if any(Y[m, j] == 1 for m in members) else 0
    return Z


def label_correlation(metric, Y, eps: float = EPS) -> np.ndarray:
    """Row-normalised cosine similarity of the columns of M̃ = M ⊙ Y."""
    metric = np.asarray(metric, dtype=np.float64)
    Y = dense_labels(Y)
    n, q = metric.shape
    masked = [[float(metric[i, j]) * Y[i, j] for j in range(q)] for i in range(n)]
    norms = [math.sqrt(sum(masked[i][j] ** 2 for i in range(n))) for j in range(q)]
    C = np.zeros((q, q))
    for j in range(q):
        for k in range(q):
            dot = sum(masked[i][j] * masked[i][k] for i in range(n))
            C[j, k] = dot / ((norms[j] + eps) * (norms[k] + eps))
    for j in range(q):
        row_sum = sum(C[j, k] for k in range(q))
        for k in range(q):
            C[j, k] = C[j, k] / (row_sum + eps)
    return C


def correlation_factor(Z, correlation) -> np.ndarray:
    """S = Z · C̄ᵀ, i.e. S_ij = Σ_k Z_ik C̄_jk, materialised explicitly."""
    Z = dense_labels(Z)
    C = np.asarray(correlation, dtype=np.float64)
    n, q = Z.shape
    S = np.zeros((n, q))
    for i in range(n):
        for j in range(q):
            S[i, j] = sum(Z[i, k] * C[j, k] for k in range(q))
    return S


# --------------------------------------------------------------------------- §5
def instance_scores(metric, Y, Z, weights, correlation) -> np.ndarray:
    """score_i = Σ_j v_j·M_ij·(1 + y_ij·S_ij) with S = Z·C̄ᵀ."""
    metric = np.asarray(metric, dtype=np.float64)
    Y = dense_labels(Y)
    S = correlation_factor(Z, correlation)
    v = np.asarray(weights, dtype=np.float64)
    n, q = metric.shape
    scores = np.zeros(n)
    for i in range(n):
        scores[i] = sum(v[j] * metric[i, j] * (1.0 + Y[i, j] * S[i, j]) for j in range(q))
    return scores


# --------------------------------------------------------------------------- §6
def rank_probabilities(scores, pressure: float) -> np.ndarray:
    """π_i ∝ s^(−κ_i/N), κ_i = clip(⌈N(1 − â_i)⌉, 1, N); uniform if not finite."""
    scores = [float(x) for x in np.asarray(scores, dtype=np.float64).ravel()]
    n = len(scores)
    if not all(math.isfinite(x) for x in scores):
        return np.full(n, 1.0 / n)
    low, high = min(scores), max(scores)
    weights = []
    for x in scores:
        a_hat = (x - low) / (high - low) if high > low else 0.0
        kappa = min(max(math.ceil(n * (1.0 - a_hat)), 1), n)
        weights.append(pressure ** (-kappa / n))
    total = sum(weights)
    return np.array([w / total for w in weights])


def selection_pressure(epoch: int, max_epochs: int, warmup_epochs: int, initial: float = 8.0):
    """s_e = s0 during warm-up, then max(1, s0^(1 − (e − e_w)/(T − e_w)))."""
    if epoch < warmup_epochs:
        return float(initial)
    return max(1.0, initial ** (1.0 - (epoch - warmup_epochs) / (max_epochs - warmup_epochs)))


# --------------------------------------------------------------------------- §7
def mixture_weight(epoch, warmup_epochs, ramp_end, start=0.7, end=0.3) -> float:
    """β_e = β0 + (β1 − β0)·clip((e − e_w)/(e_m − e_w), 0, 1)."""
    t = (epoch - warmup_epochs) / (ramp_end - warmup_epochs)
    return start + (end - start) * min(max(t, 0.0), 1.0)


def effective_sample_size(p) -> float:
    """1 / (N·Σ p_i²), as a fraction of N."""
    p = [float(x) for x in np.asarray(p).ravel()]
    return 1.0 / (len(p) * sum(x * x for x in p))


def d2ace_distribution(
    E, H, Y, Z, pressure, mixture, a=0.5, b=0.5, dynamic_weights=True, correlation=True
):
    """P = β·π(u, s) + (1 − β)·π(h, s) with u, h the scores of §5; returns (P, info)."""
    q = np.shape(E)[1]
    pools = {}
    info = {}
    for name, metric in (("uncertainty", E), ("hardness", H)):
        v = label_weights(metric, a, b) if dynamic_weights else np.ones(q)
        C = label_correlation(metric, Y) if correlation else np.zeros((q, q))
        info[f"label_weights_{name}"] = v
        pools[name] = rank_probabilities(instance_scores(metric, Y, Z, v, C), pressure)
    P = [
        mixture * u + (1.0 - mixture) * h
        for u, h in zip(pools["uncertainty"], pools["hardness"], strict=True)
    ]
    total = sum(P)
    P = np.array([x / total for x in P])
    info["ess"] = effective_sample_size(P)
    return P, info


# --------------------------------------------------------------------------- §8
def successive_sampling_sets(p, size: int) -> dict[frozenset, float]:
    """Exact law of the *set* drawn by successive sampling of ``size`` items from p.

    Enumerates every ordered sequence of distinct items: the t-th item is drawn
    with probability p_i / (1 − Σ p of the items already drawn). Tiny N only.
    """
    p = [float(x) for x in np.asarray(p, dtype=np.float64)]
    total = sum(p)
    p = [x / total for x in p]
    law: dict[frozenset, float] = {}
    for sequence in itertools.permutations(range(len(p)), size):
        prob, used = 1.0, 0.0
        for i in sequence:
            remaining = 1.0 - used
            if p[i] == 0.0 or remaining <= 0.0:
                prob = 0.0
                break
            prob *= p[i] / remaining
            used += p[i]
        if prob > 0.0:
            key = frozenset(sequence)
            law[key] = law.get(key, 0.0) + prob
    return law


def inclusion_probabilities(p, size: int) -> np.ndarray:
    """Exact probability of each item being in a successive sample of ``size``."""
    out = np.zeros(len(p))
    for subset, prob in successive_sampling_sets(p, size).items():
        for i in subset:
            out[i] += prob
    return out


# --------------------------------------------------------------------------- §1
class Recorder:
    """What METHOD.md §1 records, kept per instance and label with Python loops.

    A window (deque of the last W predictions), the flip EMA (updated only when
    the window already held a prediction) and the latest loss. An instance never
    recorded has an empty window, f = 0 and the loss of the uninformed
    prediction p = 0.5, i.e. ln 2 (so that H = 0.5).
    """

    def __init__(self, n_samples: int, n_labels: int, history_size: int = 5, alpha=0.7):
        self.n, self.q, self.w, self.alpha = n_samples, n_labels, history_size, alpha
        self.windows = [
            [deque(maxlen=history_size) for _ in range(n_labels)] for _ in range(n_samples)
        ]
        self.flip = np.zeros((n_samples, n_labels))
        self.loss = np.full((n_samples, n_labels), math.log(2.0))

    def update(self, idx, proba, loss) -> None:
        for row, i in enumerate(np.asarray(idx)):
            for j in range(self.q):
                p_new = float(proba[row][j])
                window = self.windows[i][j]
                if window:
                    p_prev = window[-1]
                    self.flip[i, j] = (
                        self.alpha * abs(p_new - p_prev) + (1.0 - self.alpha) * self.flip[i, j]
                    )
                window.append(p_new)
                self.loss[i, j] = float(loss[row][j])

    def history(self) -> np.ndarray:
        """(N, W, q), oldest to newest, NaN-padded at the oldest end."""
        out = np.full((self.n, self.w, self.q), np.nan)
        for i in range(self.n):
            for j in range(self.q):
                window = list(self.windows[i][j])
                for t, p in enumerate(window):
                    out[i, self.w - len(window) + t, j] = p
        return out

    def uncertainty(self, lam: float = 0.5) -> np.ndarray:
        return uncertainty(self.history(), lam)

    def hardness(self) -> np.ndarray:
        return hardness(self.loss, self.flip)

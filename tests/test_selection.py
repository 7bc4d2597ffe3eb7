"""Tests of the functional core :mod:`skd2ace.selection` (METHOD.md §2–§8).

Three layers: small cases worked out on paper (the arithmetic sits next to each
expected number), agreement with the naive loop reference ``tests/_reference.py``
on random inputs, and hypothesis properties. ``draw_batches`` is checked against
the exact law of successive sampling and against numpy's ``Generator.choice``.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter

import _reference as ref
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from skd2ace import selection

# H2(0.6) = H2(0.4) = 0.6·log2(1/0.6) + 0.4·log2(1/0.4) = 0.442179 + 0.528771
H2_06 = 0.9709505944546686
H2_01 = 0.4689955935892812  # H2(0.1) = 0.1·3.321928 + 0.9·0.152003
H2_025 = 0.8112781244591328  # H2(0.25) = 0.25·2 + 0.75·0.415037
H2_CLIP = 2.4696191632206375e-06  # H2(1e-7) = 1e-7·log2(1e7) + (1 − 1e-7)·(−log2(1 − 1e-7))

# The 3-instance, 2-label example used by several hand-worked cases.
Y3 = np.array([[1, 0], [1, 1], [0, 1]])
M3 = np.array([[0.3, 0.5], [0.4, 0.6], [0.1, 0.8]])
# M̃ = M ⊙ Y = [[0.3, 0], [0.4, 0.6], [0, 0.8]]; ‖M̃_·0‖ = sqrt(.09+.16) = 0.5,
# ‖M̃_·1‖ = sqrt(.36+.64) = 1, ⟨M̃_·0, M̃_·1⟩ = 0.4·0.6 = 0.24.
# C = [[0.25/0.25, 0.24/(0.5·1)], [0.48, 1/1]] = [[1, 0.48], [0.48, 1]] (ε ≈ 0),
# each row divided by its sum 1.48:
C3 = np.array([[1 / 1.48, 0.48 / 1.48], [0.48 / 1.48, 1 / 1.48]])  # [[.675676, .324324], ...]


def assert_distribution(p, n):
    p = np.asarray(p)
    assert p.shape == (n,)
    assert np.all(np.isfinite(p))
    assert np.all(p >= 0)
    assert math.isclose(p.sum(), 1.0, rel_tol=0, abs_tol=1e-9)


def close(got, want, atol=1e-6):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=atol)


# =========================================================================== hand-worked cases
def test_binary_entropy_hand():
    p = np.array([0.5, 0.25, 0.75, 0.0, 1.0, 0.6])
    # H2(.5) = 1; H2(.25) = H2(.75) = .811278; 0 and 1 are clipped to 1e-7 / 1 − 1e-7.
    close(selection.binary_entropy(p), [1.0, H2_025, H2_025, H2_CLIP, H2_CLIP, H2_06], atol=1e-9)
    # float32 stays float32 (the sampler's fast path) and is within 1e-6 of float64.
    got32 = selection.binary_entropy(p.astype(np.float32))
    assert got32.dtype == np.float32
    close(got32, [1.0, H2_025, H2_025, H2_CLIP, H2_CLIP, H2_06])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_metric_formulas_exactly_as_written(dtype):
    # The metric functions update their own temporaries in place (speed); their results
    # are the formulas' as written, to the bit, and scalars stay scalars.
    rng = np.random.default_rng(3)
    p, fl, loss, flip = (rng.random((40, 3)).astype(dtype) for _ in range(4))
    p[0] = [0.0, 1.0, 0.5]
    c = np.clip(p, 1e-7, 1 - 1e-7)
    h2 = -(c * np.log2(c) + (1.0 - c) * np.log2(1.0 - c))
    np.testing.assert_array_equal(selection.binary_entropy(p), h2)
    np.testing.assert_array_equal(
        selection.combine_uncertainty(fl, p, 0.3), 0.3 * fl + (1.0 - 0.3) * h2
    )
    want = -np.expm1(-loss) * (1.0 - flip)
    np.testing.assert_array_equal(selection.hardness(loss, flip), want)
    broadcast = selection.hardness(loss[:1], flip)
    np.testing.assert_array_equal(broadcast, -np.expm1(-loss[:1]) * (1.0 - flip))
    for scalar in (dtype(0.25), 0.25):
        assert np.ndim(selection.binary_entropy(scalar)) == 0
        assert np.ndim(selection.hardness(scalar, scalar)) == 0


def test_combine_uncertainty_hand():
    got = selection.combine_uncertainty(np.array([[0.2, 0.4]]), np.array([[0.5, 0.25]]))
    # λ = .5: .5·.2 + .5·H2(.5) = .1 + .5 = .6 ;  .5·.4 + .5·H2(.25) = .2 + .405639 = .605639
    close(got, [[0.6, 0.2 + 0.5 * H2_025]])
    got = selection.combine_uncertainty(np.array([0.4]), np.array([0.25]), lam=0.25)
    close(got, [0.25 * 0.4 + 0.75 * H2_025])  # .1 + .75·.811278 = .708459


def test_uncertainty_hand():
    nan = np.nan
    history = np.array(
        [
            [[0.5, 0.1], [0.7, 0.1], [0.6, 0.1]],  # full window
            [[nan, nan], [0.2, 0.9], [0.4, 0.5]],  # two predictions
            [[nan, nan], [nan, nan], [0.5, 1.0]],  # one prediction
            [[nan, nan], [nan, nan], [nan, nan]],  # never predicted → p = 0.5
        ]
    )
    want = [
        # |.7−.5| = .2, |.6−.7| = .1 → mean .15; .5·.15 + .5·H2(.6) = .075 + .485475
        # constant .1 → fluctuation 0; .5·H2(.1) = .234498
        [0.5 * 0.15 + 0.5 * H2_06, 0.5 * H2_01],
        # one pair |.4−.2| = .2 → .1 + .5·H2(.4); one pair |.5−.9| = .4 → .2 + .5·1
        [0.1 + 0.5 * H2_06, 0.7],
        # fewer than two predictions → no fluctuation: .5·H2(.5) = .5; .5·H2(1 − 1e-7)
        [0.5, 0.5 * H2_CLIP],
        # no prediction: p = 0.5 → .5·1
        [0.5, 0.5],
    ]
    close(selection.uncertainty(history), want)
    # λ = 1: only the fluctuation: [.15, 0], [.2, .4], [0, 0], [0, 0]
    close(selection.uncertainty(history, lam=1.0), [[0.15, 0], [0.2, 0.4], [0, 0], [0, 0]])
    with pytest.raises(ValueError):
        selection.uncertainty(np.zeros((3, 2)))


def test_hardness_hand():
    loss = np.array([[math.log(2.0), 0.0], [math.log(4.0), 5.0]])
    flip = np.array([[0.5, 0.3], [0.0, 1.0]])
    # (1 − e^−ln2)(1 − .5) = .5·.5 = .25 ; (1 − 1)(.7) = 0
    # (1 − e^−ln4)(1 − 0) = 1 − .25 = .75 ; anything·(1 − 1) = 0
    close(selection.hardness(loss, flip), [[0.25, 0.0], [0.75, 0.0]])
    # float32 stays float32
    assert selection.hardness(loss.astype(np.float32), flip.astype(np.float32)).dtype == np.float32


def test_label_weights_hand():
    M = np.array([[0.1, 0.6], [0.3, 0.6], [0.5, 0.6]])
    # column 0: mean .3, population var (.04 + 0 + .04)/3 → std sqrt(.08/3) = .163299
    #   v0 = exp(.5·.3 + .5·.163299) = exp(.231650) = 1.260678
    # column 1: mean .6, std 0 → v1 = exp(.3) = 1.349859
    close(selection.label_weights(M), [1.2606779831228243, 1.3498588075760032])
    # a = 1, b = 0: exp(mean) = [e^.3, e^.6]
    close(selection.label_weights(M, a=1.0, b=0.0), [math.exp(0.3), math.exp(0.6)])
    # a = 0, b = 2: exp(2·std) = [exp(.326599), 1]
    close(selection.label_weights(M, a=0.0, b=2.0), [math.exp(2 * math.sqrt(0.08 / 3)), 1.0])


@pytest.mark.parametrize("sparse", [False, True])
def test_local_label_context_hand(sparse):
    Y = np.array([[1, 0], [0, 0], [0, 1]])
    Ys = sp.csr_matrix(Y) if sparse else Y
    # k = 1, neighbours 0→1, 1→2, 2→1:
    # Z0 = Y0|Y1 = [1,0]; Z1 = Y1|Y2 = [0,1]; Z2 = Y2|Y1 = [0,1]
    Z = selection.local_label_context(Ys, np.array([[1], [2], [1]]))
    np.testing.assert_array_equal(Z, [[1, 0], [0, 1], [0, 1]])
    assert set(np.unique(Z)) <= {0, 1}
    # k = 2: every instance sees both other instances → [1,1] everywhere
    Z = selection.local_label_context(Ys, np.array([[1, 2], [0, 2], [0, 1]]))
    np.testing.assert_array_equal(Z, np.ones((3, 2)))
    # k = 0 → Z = Y
    Z = selection.local_label_context(Ys, np.empty((3, 0), dtype=np.intp))
    np.testing.assert_array_equal(Z, Y)


@pytest.mark.parametrize("sparse", [False, True])
def test_label_correlation_hand(sparse):
    Y = sp.csr_matrix(Y3) if sparse else Y3
    close(selection.label_correlation(M3, Y), C3)  # worked out at the top of the file
    # A label without positives: its column of M̃ is zero → C_1· = 0 and C_01 = 0, so
    # row 0 = [.25/(.5+ε)², 0] / (sum + ε) = [1, 0] and row 1 stays all zero.
    Y0 = np.array([[1, 0], [1, 0], [0, 0]])
    close(selection.label_correlation(M3, Y0), [[1.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize("sparse", [False, True])
def test_instance_scores_hand(sparse):
    Z = np.array([[1, 0], [0, 1], [1, 1]])
    v = np.array([2.0, 1.0])
    # S = Z·C̄ᵀ: row 0 (Z=[1,0]) S = [C̄00, C̄10] = [1/1.48, .48/1.48];
    #           row 1 (Z=[0,1]) S = [C̄01, C̄11] = [.48/1.48, 1/1.48];
    #           row 2 (Z=[1,1]) S = row sums of C̄ = [1, 1].
    # u0 = 2·.3·(1 + 1/1.48) + 1·.5·(1 + 0)          = .6·2.48/1.48 + .5   = 1.505405
    # u1 = 2·.4·(1 + .48/1.48) + 1·.6·(1 + 1/1.48)   = 1.059459 + 1.005405 = 2.064865
    # u2 = 2·.1·(1 + 0) + 1·.8·(1 + 1)               = .2 + 1.6            = 1.8
    want = [0.6 * 2.48 / 1.48 + 0.5, 0.8 * (1 + 0.48 / 1.48) + 0.6 * 2.48 / 1.48, 1.8]
    Ys, Zs = (sp.csr_matrix(Y3), sp.csr_matrix(Z)) if sparse else (Y3, Z)
    close(selection.instance_scores(M3, Ys, Zs, v, C3), want)
    # No correlation (C = 0) → Σ_j v_j M_ij = [2·.3 + .5, 2·.4 + .6, 2·.1 + .8]
    close(selection.instance_scores(M3, Ys, Zs, v, np.zeros((2, 2))), [1.1, 1.4, 1.0])


def test_rank_probabilities_hand():
    # N = 3, s = 8: â = [0, .5, 1]; κ = ⌈3·[1, .5, 0]⌉ clipped = [3, 2, 1]
    # π ∝ 8^(−1), 8^(−2/3), 8^(−1/3) = 1/8, 1/4, 1/2 → /(7/8) = [1/7, 2/7, 4/7]
    close(selection.rank_probabilities(np.array([0.0, 1.0, 2.0]), 8.0), [1 / 7, 2 / 7, 4 / 7])
    # N = 4, s = 16: scores [5, 1, 3, 3] → â = [1, 0, .5, .5]; κ = [1, 4, 2, 2]
    # π ∝ [16^(−1/4), 16^(−1), 16^(−1/2), 16^(−1/2)] = [1/2, 1/16, 1/4, 1/4] = [8, 1, 4, 4]/16
    close(
        selection.rank_probabilities(np.array([5.0, 1.0, 3.0, 3.0]), 16.0),
        np.array([8, 1, 4, 4]) / 17,
    )
    # s = 1 → uniform; constant scores → uniform
    close(selection.rank_probabilities(np.array([0.0, 1.0, 2.0]), 1.0), [1 / 3] * 3)
    close(selection.rank_probabilities(np.array([3.0, 3.0]), 8.0), [0.5, 0.5])
    # N = 1 → [1]
    close(selection.rank_probabilities(np.array([7.0]), 8.0), [1.0])


def test_rank_probabilities_boundary_ranks_survive_rescaling():
    # N = 4, scores [0, 1, 2, 4]: â = [0, .25, .5, 1], N(1 − â) = [4, 3, 2, 0] exactly on
    # the quantisation boundaries: κ = [4, 3, 2, 1] → π ∝ s^(−κ/4), s = 16 → [1/16, 1/8, 1/4, 1/2]
    want = np.array([1, 2, 4, 8]) / 15
    scores = np.array([0.0, 1.0, 2.0, 4.0])
    close(selection.rank_probabilities(scores, 16.0), want)
    close(selection.rank_probabilities(0.1 * scores + 0.3, 16.0), want)
    # Here the rescaled scores land a rounding error above a boundary: without the
    # tolerance in the ceiling, two ranks would move.
    scores = np.array([0.0, 10, 1, 5, 9, 8, 8, 0, 0, 2])
    close(
        selection.rank_probabilities(0.1 * scores + 7, 16.0),
        selection.rank_probabilities(scores, 16.0),
    )


def test_draw_batches_needs_support_for_the_largest_batch():
    p = np.r_[np.full(5, 0.2), np.zeros(3)]  # 8 draws: batches of 6 and 2
    with pytest.raises(ValueError, match="cannot draw 6 distinct instances"):
        selection.draw_batches(p, 2, 6, np.random.default_rng(0))


def test_selection_pressure_hand():
    # T = 10, e_w = 2, s0 = 8
    assert selection.selection_pressure(0, 10, 2) == 8.0  # warm-up
    assert selection.selection_pressure(1, 10, 2) == 8.0
    assert selection.selection_pressure(2, 10, 2) == 8.0  # 8^(1 − 0/8)
    assert math.isclose(selection.selection_pressure(4, 10, 2), 8**0.75)  # 8^(1 − 2/8) = 4.756828
    assert math.isclose(selection.selection_pressure(6, 10, 2), 8**0.5)  # 8^(1 − 4/8) = 2.828427
    assert selection.selection_pressure(10, 10, 2) == 1.0  # 8^0
    assert selection.selection_pressure(12, 10, 2) == 1.0  # max(1, 8^(−1/4))
    # s0 = 4, T = 5, e_w = 1, e = 3: 4^(1 − 2/4) = 2
    assert math.isclose(selection.selection_pressure(3, 5, 1, initial=4.0), 2.0)
    # No warm-up: e = 0 → s0
    assert selection.selection_pressure(0, 10, 0) == 8.0


def test_mixture_weight_hand():
    # e_w = 10, e_m = 70, β: .7 → .3
    assert math.isclose(selection.mixture_weight(0, 10, 70), 0.7)  # before the ramp
    assert math.isclose(selection.mixture_weight(10, 10, 70), 0.7)  # t = 0
    assert math.isclose(selection.mixture_weight(25, 10, 70), 0.6)  # .7 − .4·15/60
    assert math.isclose(selection.mixture_weight(40, 10, 70), 0.5)  # .7 − .4·30/60
    assert math.isclose(selection.mixture_weight(70, 10, 70), 0.3)  # t = 1
    assert math.isclose(selection.mixture_weight(99, 10, 70), 0.3)  # clipped
    # start = 1, end = 0, e_w = 1, e_m = 5, e = 3: 1 − 2/4 = .5
    assert math.isclose(selection.mixture_weight(3, 1, 5, start=1.0, end=0.0), 0.5)
    # ramp of length 0 (e_m = e_w = 5): a step at e_w
    assert math.isclose(selection.mixture_weight(4, 5, 5), 0.7)
    assert math.isclose(selection.mixture_weight(5, 5, 5), 0.3)


def test_effective_sample_size_hand():
    assert selection.effective_sample_size(np.full(4, 0.25)) == 1.0  # 1/(4·4·1/16)
    assert math.isclose(selection.effective_sample_size([1.0, 0, 0, 0]), 0.25)  # 1/(4·1)
    assert math.isclose(selection.effective_sample_size([0.5, 0.5, 0, 0]), 0.5)  # 1/(4·.5)


@pytest.mark.parametrize("dynamic_weights", [False, True])
@pytest.mark.parametrize("correlation", [False, True])
def test_d2ace_distribution_hand(dynamic_weights, correlation):
    Y = np.array([[1], [0]])
    E = np.array([[1.0], [0.0]])
    H = np.array([[0.0], [1.0]])
    # u ∝ [1, 0] (any positive weight / boost keeps the order):
    #   N = 2, s = 4: κ = [1, 2], π(u) ∝ [4^(−1/2), 4^(−1)] = [1/2, 1/4] → [2/3, 1/3]
    # h ∝ [0, 1] → π(h) = [1/3, 2/3]
    # P = .75·[2/3, 1/3] + .25·[1/3, 2/3] = [7/12, 5/12]; ESS = 1/(2·(49 + 25)/144) = 144/148
    P, info = selection.d2ace_distribution(
        E,
        H,
        Y,
        Y,
        pressure=4.0,
        mixture=0.75,
        dynamic_weights=dynamic_weights,
        correlation=correlation,
    )
    close(P, [7 / 12, 5 / 12])
    assert math.isclose(info["ess"], 144 / 148)
    # E and H columns both have mean .5, std .5 → v = exp(.25 + .25) = e^.5 (or 1 if static)
    v = math.exp(0.5) if dynamic_weights else 1.0
    close(info["label_weights_uncertainty"], [v])
    close(info["label_weights_hardness"], [v])
    # β = 1: only the uncertainty pool; β = 0: only the hardness pool.
    P1, _ = selection.d2ace_distribution(E, H, Y, Y, pressure=4.0, mixture=1.0)
    P0, _ = selection.d2ace_distribution(E, H, Y, Y, pressure=4.0, mixture=0.0)
    close(P1, [2 / 3, 1 / 3])
    close(P0, [1 / 3, 2 / 3])


def test_draw_batches_hand():
    rng = np.random.default_rng(0)
    # N = 5, B = 3: ⌈5/3⌉ = 2 batches of sizes [3, 2]; only 3 instances have mass,
    # so batch 0 is exactly {2, 3, 4} and batch 1 two of them.
    p = np.array([0.0, 0.0, 1 / 3, 1 / 3, 1 / 3])
    for _ in range(20):
        b0, b1 = selection.draw_batches(p, 2, 3, rng)
        assert set(b0.tolist()) == {2, 3, 4}
        assert len(b1) == 2 and set(b1.tolist()) <= {2, 3, 4} and len(set(b1.tolist())) == 2
    # Support smaller than a batch: documented ValueError.
    with pytest.raises(ValueError, match="distinct"):
        selection.draw_batches(np.array([0.5, 0.5, 0.0, 0.0]), 1, 4, rng)


# =========================================================================== reference agreement
def random_labels(rng, n, q, density, sparse):
    Y = (rng.random((n, q)) < density).astype(np.int8)
    if n > 2:
        Y[rng.integers(n)] = 0  # an empty row
    if q > 1:
        Y[:, rng.integers(q)] = 0  # an empty column
    return sp.csr_matrix(Y) if sparse else Y


def random_history(rng, n, w, q):
    h = rng.random((n, w, q))
    # Mostly mid-range values, some saturated ones (entropy clip), some repeats.
    h[rng.random(h.shape) < 0.1] = 1.0
    h[rng.random(h.shape) < 0.1] = 0.0
    fill = rng.integers(0, w + 1, size=(n, q))  # predictions held per (instance, label)
    for i in range(n):
        for j in range(q):
            h[i, : w - fill[i, j], j] = np.nan
    return h


SHAPES = [(1, 1), (2, 3), (7, 3), (25, 6), (40, 1), (30, 8)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("w", [1, 2, 3, 5])
def test_uncertainty_matches_reference(seed, w):
    rng = np.random.default_rng(seed)
    for n, q in SHAPES:
        h = random_history(rng, n, w, q)
        for lam in (0.5, 0.2):
            close(selection.uncertainty(h, lam), ref.uncertainty(h, lam))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hardness_matches_reference(seed):
    rng = np.random.default_rng(seed)
    for n, q in SHAPES:
        loss = rng.exponential(size=(n, q)) * (rng.random((n, q)) < 0.8)
        flip = rng.random((n, q)) * (rng.random((n, q)) < 0.7)
        close(selection.hardness(loss, flip), ref.hardness(loss, flip))
        # float32 fast path within 1e-6 as the module promises
        got32 = selection.hardness(loss.astype(np.float32), flip.astype(np.float32))
        close(got32, ref.hardness(loss.astype(np.float32), flip.astype(np.float32)))


@pytest.fixture(params=["dense", "sparse"])
def products(request, monkeypatch):
    """Both ways of computing the correlation terms: dense masked products (small
    problems) and sparse ones over the positives of Y (large problems)."""
    if request.param == "sparse":
        monkeypatch.setattr(selection, "DENSE_WORK", -1)
    return request.param


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("density", [0.0, 0.15, 0.6, 1.0])
def test_core_matches_reference(seed, sparse, density, products):
    rng = np.random.default_rng(seed)
    for n, q in SHAPES:
        Y = random_labels(rng, n, q, density, sparse)
        M = rng.random((n, q)) * (rng.random((n, q)) < 0.9)
        k = min(3, n - 1)
        nbrs = ref.knn(rng.random((n, 2)), k)
        Z = selection.local_label_context(Y, nbrs)
        np.testing.assert_array_equal(Z, ref.local_label_context(Y, nbrs))
        close(selection.label_weights(M), ref.label_weights(M))
        close(selection.label_weights(M, 0.2, 1.5), ref.label_weights(M, 0.2, 1.5))
        C = selection.label_correlation(M, Y)
        close(C, ref.label_correlation(M, Y))
        v = ref.label_weights(M)
        for context in (Z, sp.csr_matrix(Z), np.ones((n, q), dtype=np.int8)):
            got = selection.instance_scores(M, Y, context, v, C)
            close(got, ref.instance_scores(M, Y, context, v, C))
        # A correlation matrix in Fortran order gives the same scores.
        scores = ref.instance_scores(M, Y, Z, v, C)
        close(selection.instance_scores(M, Y, Z, v, np.asfortranarray(C)), scores)
        for s in (1.0, 2.5, 8.0, 100.0):
            close(selection.rank_probabilities(scores, s), ref.rank_probabilities(scores, s))


@pytest.mark.parametrize(("n", "q"), [(50, 4), (3000, 10)])
def test_float32_metrics_within_1e6(n, q):
    # The sampler hands float32 metrics to these functions; the module promises float64
    # accuracy (1e-6) for them. Reference: the same float32 values, computed in float64.
    rng = np.random.default_rng(n)
    Y = random_labels(rng, n, q, 0.3, sparse=False)
    M32 = rng.random((n, q)).astype(np.float32)
    M64 = M32.astype(np.float64)
    Z = np.ones((n, q), dtype=np.int8)
    close(selection.label_weights(M32), selection.label_weights(M64))
    C32, C64 = selection.label_correlation(M32, Y), selection.label_correlation(M64, Y)
    close(C32, C64)
    v = selection.label_weights(M64)
    got = selection.instance_scores(M32, Y, Z, v, C64)
    assert got.dtype == np.float64
    close(got, selection.instance_scores(M64, Y, Z, v, C64))
    if n <= 50:
        close(C64, ref.label_correlation(M64, Y))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sparse", [False, True])
def test_d2ace_distribution_matches_reference(seed, sparse, products):
    rng = np.random.default_rng(seed)
    for n, q in SHAPES:
        Y = random_labels(rng, n, q, 0.3, sparse)
        E = ref.uncertainty(random_history(rng, n, 5, q))
        H = ref.hardness(rng.exponential(size=(n, q)), rng.random((n, q)))
        nbrs = ref.knn(rng.random((n, 3)), min(6, n - 1))
        Z = ref.local_label_context(Y, nbrs)
        for context in (Z, np.ones((n, q), dtype=np.int8)):
            for dyn in (True, False):
                for corr in (True, False):
                    s, beta = float(rng.uniform(1, 16)), float(rng.uniform(0, 1))
                    P, info = selection.d2ace_distribution(
                        E,
                        H,
                        Y,
                        context,
                        pressure=s,
                        mixture=beta,
                        dynamic_weights=dyn,
                        correlation=corr,
                    )
                    P_ref, info_ref = ref.d2ace_distribution(
                        E, H, Y, context, s, beta, dynamic_weights=dyn, correlation=corr
                    )
                    assert_distribution(P, n)
                    close(P, P_ref)
                    assert math.isclose(info["ess"], info_ref["ess"], abs_tol=1e-6)
                    for key in ("label_weights_uncertainty", "label_weights_hardness"):
                        close(info[key], info_ref[key])


def test_schedules_match_reference():
    for T, ew in ((100, 10), (10, 2), (7, 0), (30, 29)):
        for e in range(T + 3):
            for s0 in (1.0, 2.0, 8.0, 64.0):
                got = selection.selection_pressure(e, T, ew, s0)
                assert math.isclose(got, ref.selection_pressure(e, T, ew, s0), rel_tol=1e-12)
            for em in (ew + 1, round(0.7 * T) if round(0.7 * T) > ew else ew + 1, T):
                for b0, b1 in ((0.7, 0.3), (1.0, 1.0), (0.0, 1.0)):
                    got = selection.mixture_weight(e, ew, em, b0, b1)
                    assert math.isclose(got, ref.mixture_weight(e, ew, em, b0, b1), abs_tol=1e-12)


# =========================================================================== properties
finite_scores = arrays(
    np.float64, st.integers(1, 60), elements=st.floats(-1e300, 1e300, allow_subnormal=True)
)
pressures = st.floats(1.0, 1e6)


@settings(max_examples=150, deadline=None)
@given(scores=finite_scores, pressure=pressures)
def test_rank_probabilities_valid(scores, pressure):
    p = selection.rank_probabilities(scores, pressure)
    assert_distribution(p, scores.size)


def test_rank_probabilities_huge_finite_range():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the overflowing range is handled, not warned
        p = selection.rank_probabilities(np.array([-1e308, 0.0, 1e308]), 8.0)
    assert_distribution(p, 3)


bounded = st.floats(-1e3, 1e3)


@settings(max_examples=200, deadline=None)
@given(
    scores=arrays(np.float64, st.integers(2, 40), elements=bounded),
    c=st.floats(1e-2, 1e2),
    d=st.floats(-1e3, 1e3),
    pressure=st.floats(1.0, 100.0),
)
def test_rank_probabilities_affine_invariant(scores, c, d, pressure):
    assume(np.ptp(scores) >= 1e-3)
    transformed = c * scores + d
    assume(np.ptp(transformed) > 0)
    # The quantised rank is discontinuous: rounding c·a + d moves N(1 − â) by up to
    # `margin`, and a rank that close to a cut (the implementation cuts at k + 1e-9,
    # k = 1 … N−1) may legitimately flip. Such draws are skipped; exact boundaries are
    # covered by test_rank_probabilities_boundary_ranks_survive_rescaling.
    n, eps = scores.size, np.finfo(float).eps
    margin = n * (
        8 * eps * (np.abs(c * scores).max() + np.abs(transformed).max()) / np.ptp(transformed)
        + 4 * eps * np.abs(scores).max() / np.ptp(scores)
    )
    lo, hi = scores.min(), scores.max()
    y = n * (1 - (scores - lo) / (hi - lo)) - 1e-9
    interior = (scores > lo) & (scores < hi)
    cut = np.clip(np.round(y), 1, max(n - 1, 1))
    assume(np.all(np.abs(y - cut)[interior] > margin))
    p = selection.rank_probabilities(scores, pressure)
    p2 = selection.rank_probabilities(transformed, pressure)
    assert np.allclose(p, p2)


@settings(max_examples=150, deadline=None)
@given(scores=arrays(np.float64, st.integers(1, 40), elements=bounded), pressure=pressures)
def test_rank_probabilities_monotone(scores, pressure):
    p = selection.rank_probabilities(scores, pressure)
    order = np.argsort(scores, kind="stable")
    assert np.all(np.diff(p[order]) >= -1e-15)
    # equal scores, equal probabilities
    for value in np.unique(scores):
        assert np.ptp(p[scores == value]) == 0


@settings(max_examples=100, deadline=None)
@given(
    scores=arrays(np.float64, st.integers(1, 40), elements=bounded),
    pressure=pressures,
    value=bounded,
)
def test_rank_probabilities_uniform_cases(scores, pressure, value):
    n = scores.size
    close(selection.rank_probabilities(scores, 1.0), np.full(n, 1 / n), atol=1e-12)
    close(selection.rank_probabilities(np.full(n, value), pressure), np.full(n, 1 / n), atol=1e-12)


@settings(max_examples=150, deadline=None)
@given(
    scores=arrays(np.float64, st.integers(2, 50), elements=bounded, unique=True),
    pressure=st.floats(1.0, 1e4),
)
def test_rank_probabilities_extreme_ratio(scores, pressure):
    p = selection.rank_probabilities(scores, pressure)
    n = scores.size
    # best: κ = 1, worst: κ = N → ratio s^(−1/N)/s^(−1) = s^(1 − 1/N)
    assert math.isclose(p.max() / p.min(), pressure ** (1 - 1 / n), rel_tol=1e-9)
    assert p[np.argmax(scores)] == p.max() and p[np.argmin(scores)] == p.min()


@settings(max_examples=80, deadline=None)
@given(
    scores=arrays(np.float64, st.integers(1, 30), elements=st.floats(allow_nan=True)),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    pressure=pressures,
    data=st.data(),
)
def test_rank_probabilities_non_finite_uniform(scores, bad, pressure, data):
    scores = scores.copy()
    scores[data.draw(st.integers(0, scores.size - 1))] = bad
    with pytest.warns(selection.NonFiniteScoresWarning):
        p = selection.rank_probabilities(scores, pressure)
    close(p, np.full(scores.size, 1 / scores.size), atol=1e-15)


@settings(max_examples=150, deadline=None)
@given(
    T=st.integers(1, 200),
    ew=st.integers(0, 220),
    s0=st.floats(1.0, 1e3),
)
def test_selection_pressure_bounded_nonincreasing(T, ew, s0):
    values = [selection.selection_pressure(e, T, ew, s0) for e in range(0, T + 5)]
    assert all(1.0 <= s <= s0 * (1 + 1e-12) for s in values)
    assert all(b <= a for a, b in itertools.pairwise(values))
    assert all(s == s0 for s in values[: min(ew, len(values))])


@settings(max_examples=150, deadline=None)
@given(
    e=st.integers(0, 300),
    ew=st.integers(0, 100),
    em=st.integers(0, 200),
    start=st.floats(0, 1),
    end=st.floats(0, 1),
)
def test_mixture_weight_between(e, ew, em, start, end):
    beta = selection.mixture_weight(e, ew, em, start, end)
    lo, hi = min(start, end), max(start, end)
    assert lo - 1e-12 <= beta <= hi + 1e-12
    if e <= ew:
        assert math.isclose(beta, start, abs_tol=1e-12) or (e == ew and em <= ew)
    if e >= max(em, ew) and em > ew:
        assert math.isclose(beta, end, abs_tol=1e-12)


metric_values = st.one_of(st.just(0.0), st.floats(1e-3, 1.0))


@settings(max_examples=100, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 25), st.integers(1, 8)),
    data=st.data(),
    sparse=st.booleans(),
)
def test_label_correlation_rows(shape, data, sparse):
    M = data.draw(arrays(np.float64, shape, elements=metric_values))
    Y = data.draw(arrays(np.int8, shape, elements=st.integers(0, 1)))
    C = selection.label_correlation(M, sp.csr_matrix(Y) if sparse else Y)
    assert C.shape == (shape[1], shape[1])
    assert np.all(np.isfinite(C)) and np.all(C >= 0)
    sums = C.sum(axis=1)
    assert np.all(np.isclose(sums, 1.0, atol=1e-6) | (sums == 0.0))
    # a row is zero exactly when its masked column is zero
    np.testing.assert_array_equal(sums == 0.0, ~np.any((M * Y) > 0, axis=0))


ADVERSARIAL = {
    "zero metrics": lambda n, q, r: (np.zeros((n, q)), np.zeros((n, q)), r.random((n, q)) < 0.4),
    "constant metrics": lambda n, q, r: (
        np.full((n, q), 0.3),
        np.ones((n, q)),
        r.random((n, q)) < 0.4,
    ),
    "zero Y": lambda n, q, r: (r.random((n, q)), r.random((n, q)), np.zeros((n, q))),
    "one Y": lambda n, q, r: (r.random((n, q)), r.random((n, q)), np.ones((n, q))),
    "one-hot metric": lambda n, q, r: (np.eye(n, q), np.eye(n, q)[::-1], np.eye(n, q)),
}


@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
@pytest.mark.parametrize(("n", "q"), [(1, 1), (5, 1), (6, 3), (30, 1), (30, 5)])
@pytest.mark.parametrize("mixture", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("pressure", [1.0, 8.0, 1e6])
def test_d2ace_distribution_adversarial(case, n, q, mixture, pressure):
    rng = np.random.default_rng(n * 10 + q)
    E, H, Y = ADVERSARIAL[case](n, q, rng)
    Y = Y.astype(np.int8)
    for Z in (Y, np.ones_like(Y)):
        for Yx, Zx in ((Y, Z), (sp.csr_matrix(Y), sp.csr_matrix(Z))):
            P, info = selection.d2ace_distribution(E, H, Yx, Zx, pressure=pressure, mixture=mixture)
            assert_distribution(P, n)
            assert 0 < info["ess"] <= 1 + 1e-12
    if case == "zero metrics":  # all scores 0 → uniform (constant metrics are not:
        close(P, np.full(n, 1 / n), atol=1e-12)  # the y·S boost differs between rows)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 30), st.integers(1, 6)),
    data=st.data(),
    mixture=st.floats(0, 1),
    pressure=st.floats(1, 1e4),
    sparse=st.booleans(),
)
def test_d2ace_distribution_valid(shape, data, mixture, pressure, sparse):
    E = data.draw(arrays(np.float64, shape, elements=st.floats(0, 1)))
    H = data.draw(arrays(np.float64, shape, elements=st.floats(0, 1)))
    Y = data.draw(arrays(np.int8, shape, elements=st.integers(0, 1)))
    Yx = sp.csr_matrix(Y) if sparse else Y
    P, info = selection.d2ace_distribution(E, H, Yx, Yx, pressure=pressure, mixture=mixture)
    assert_distribution(P, shape[0])
    assert 0 < info["ess"] <= 1 + 1e-12


def test_d2ace_distribution_non_finite_metric_warns():
    E = np.array([[np.nan], [0.2], [0.3]])
    H = np.array([[0.1], [np.inf], [0.3]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        P, _ = selection.d2ace_distribution(
            E, H, np.ones((3, 1)), np.ones((3, 1)), pressure=8.0, mixture=0.5
        )
    assert_distribution(P, 3)
    # One warning per pool, saying why, not numpy's RuntimeWarnings along the way.
    assert [w.category for w in caught] == [selection.NonFiniteScoresWarning] * 2


# =========================================================================== draw_batches
@pytest.mark.parametrize(("n", "b"), [(10, 3), (10, 10), (7, 2), (100, 16), (5, 8), (1, 1)])
@pytest.mark.parametrize("skew", [0.0, 3.0])
def test_draw_batches_shapes(n, b, skew):
    rng = np.random.default_rng(1)
    p = ref.rank_probabilities(rng.random(n), 1.0 + skew**4)
    n_batches = math.ceil(n / b)
    for _ in range(10):
        batches = selection.draw_batches(p, n_batches, b, rng)
        assert len(batches) == n_batches
        assert [len(x) for x in batches] == [b] * (n_batches - 1) + [n - (n_batches - 1) * b]
        assert sum(len(x) for x in batches) == n
        for x in batches:
            assert np.issubdtype(x.dtype, np.integer)
            assert len(np.unique(x)) == len(x)
            assert x.min() >= 0 and x.max() < n


def test_draw_batches_reproducible_and_uses_generator():
    p = ref.rank_probabilities(np.arange(50.0), 8.0)
    state = np.random.get_state()  # noqa: NPY002
    a = selection.draw_batches(p, 4, 13, np.random.default_rng(42))
    b = selection.draw_batches(p, 4, 13, np.random.default_rng(42))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    rng = np.random.default_rng(42)
    first = selection.draw_batches(p, 4, 13, rng)
    second = selection.draw_batches(p, 4, 13, rng)  # the generator has advanced
    assert all(np.array_equal(x, y) for x, y in zip(a, first, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(first, second, strict=True))
    other = selection.draw_batches(p, 4, 13, np.random.default_rng(43))
    assert not all(np.array_equal(x, y) for x, y in zip(a, other, strict=True))
    # the global numpy state is left alone
    after = np.random.get_state()  # noqa: NPY002
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]


class CountingGenerator:
    """A Generator proxy counting the exponential races of the fallback path."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.exponential_calls = 0

    def standard_exponential(self, *args, **kwargs):
        return self.rng.standard_exponential(*args, **kwargs)

    def permutation(self, *args, **kwargs):
        return self.rng.permutation(*args, **kwargs)

    def exponential(self, *args, **kwargs):
        self.exponential_calls += 1
        return self.rng.exponential(*args, **kwargs)


def chi2_pvalue(counts: Counter, law: dict, n_draws: int) -> float:
    """Goodness of fit of observed set counts to an exact law (cells < 5 expected merged)."""
    assert set(counts) <= set(law), f"impossible sets drawn: {set(counts) - set(law)}"
    keys = sorted(law, key=law.get, reverse=True)
    observed, expected = [], []
    rest_obs, rest_exp = 0, 0.0
    for key in keys:
        e = law[key] * n_draws
        if e >= 5:
            observed.append(counts.get(key, 0))
            expected.append(e)
        else:
            rest_obs += counts.get(key, 0)
            rest_exp += e
    if rest_exp > 0:
        observed.append(rest_obs)
        expected.append(rest_exp)
    expected = np.array(expected) * (sum(observed) / sum(expected))
    return float(stats.chisquare(observed, expected).pvalue)


TINY_CASES = {
    # name: (p, batch size) — N = len(p), ⌈N/B⌉ batches
    "moderate": (np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.05]), 4),
    "fallback": (np.array([0.9, 0.05, 0.02, 0.015, 0.01, 0.005]), 5),
    "zeros": (np.array([0.4, 0.0, 0.3, 0.1, 0.0, 0.15, 0.05]), 4),
    "uniform": (np.full(5, 0.2), 3),
}


@pytest.mark.parametrize("case", sorted(TINY_CASES))
def test_draw_batches_exact_law(case):
    p, b = TINY_CASES[case]
    n = p.size
    n_batches = math.ceil(n / b)
    sizes = [b] * (n_batches - 1) + [n - (n_batches - 1) * b]
    rng = CountingGenerator(12345)
    epochs = 4000
    counts = [Counter() for _ in range(n_batches)]
    inclusion = np.zeros((n_batches, n))
    for _ in range(epochs):
        for k, batch in enumerate(selection.draw_batches(p, n_batches, b, rng)):
            counts[k][frozenset(batch.tolist())] += 1
            inclusion[k, batch] += 1
    if case == "fallback":
        assert rng.exponential_calls > 100  # the exponential-race completion ran often
    for k, size in enumerate(sizes):
        law = ref.successive_sampling_sets(p, size)
        assert chi2_pvalue(counts[k], law, epochs) > 1e-3
        exact = ref.inclusion_probabilities(p, size)
        freq = inclusion[k] / epochs
        tol = 5 * np.sqrt(exact * (1 - exact) / epochs) + 1e-12
        assert np.all(np.abs(freq - exact) <= tol)
        assert np.all(freq[p == 0] == 0)


def test_chi2_helper_has_power():
    # The same test rejects a wrong sampler (choice from p^0.5 instead of p).
    p, b = TINY_CASES["moderate"]
    rng = np.random.default_rng(0)
    wrong = np.sqrt(p) / np.sqrt(p).sum()
    counts = Counter(
        frozenset(rng.choice(p.size, b, replace=False, p=wrong).tolist()) for _ in range(4000)
    )
    assert chi2_pvalue(counts, ref.successive_sampling_sets(p, b), 4000) < 1e-6


@pytest.mark.parametrize(
    ("n", "b", "pressure"),
    [(40, 8, 64.0), (30, 28, 1e4), (25, 5, 1.0)],
)
def test_draw_batches_matches_numpy_choice(n, b, pressure):
    rng = np.random.default_rng(7)
    p = ref.rank_probabilities(rng.random(n), pressure)
    p[rng.choice(n, size=2, replace=False)] = 0.0  # some instances can never be drawn
    p /= p.sum()
    n_batches = math.ceil(n / b)
    sizes = [b] * (n_batches - 1) + [n - (n_batches - 1) * b]
    epochs = 3000
    ours = np.zeros((n_batches, n))
    brute = np.zeros((n_batches, n))
    for _ in range(epochs):
        for k, batch in enumerate(selection.draw_batches(p, n_batches, b, rng)):
            ours[k, batch] += 1
        for k, size in enumerate(sizes):
            brute[k, rng.choice(n, size=size, replace=False, p=p)] += 1
    for k in range(n_batches):
        assert np.all(ours[k][p == 0] == 0)
        keep = (ours[k] + brute[k]) > 0
        table = np.vstack([ours[k][keep], brute[k][keep]])
        if table.shape[1] > 1:
            # Each epoch contributes `size` inclusions per row: a two-sample homogeneity
            # test on the inclusion counts (conservative enough with the fixed seed).
            assert stats.chi2_contingency(table).pvalue > 1e-3
        rate_ours, rate_brute = ours[k] / epochs, brute[k] / epochs
        assert np.max(np.abs(rate_ours - rate_brute)) < 0.05


@pytest.mark.parametrize("sparse", [False, True])
def test_d2ace_distribution_pools_in_threads_match(monkeypatch, sparse):
    # Large problems compute the two pools in two threads: same result.
    rng = np.random.default_rng(5)
    n, q = 300, 12
    E, H = rng.random((n, q)).astype(np.float32), rng.random((n, q)).astype(np.float32)
    Y = (rng.random((n, q)) < 0.3).astype(np.int8)
    Y = sp.csr_matrix(Y) if sparse else Y
    kwargs = {"pressure": 3.0, "mixture": 0.6}
    want, want_info = selection.d2ace_distribution(E, H, Y, Y, **kwargs)
    monkeypatch.setattr(selection, "_PARALLEL_ENTRIES", 1)
    submitted = []
    submit = selection._background.submit

    def tracked(executor, fn, *args):  # the pools are background work a fork waits for
        submitted.append(fn)
        return submit(executor, fn, *args)

    monkeypatch.setattr(selection._background, "submit", tracked)
    got, info = selection.d2ace_distribution(E, H, Y, Y, **kwargs)
    assert len(submitted) == 2
    np.testing.assert_array_equal(got, want)
    for key in ("label_weights_uncertainty", "label_weights_hardness"):
        np.testing.assert_array_equal(info[key], want_info[key])
    assert info["ess"] == want_info["ess"]


def test_correlation_terms_of_an_empty_metric(products):
    # No instances: no correlation, no scores (both product paths).
    M, Y = np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int8)
    np.testing.assert_array_equal(selection.label_correlation(M, Y), np.zeros((3, 3)))
    assert selection.instance_scores(M, Y, Y, np.ones(3), np.zeros((3, 3))).shape == (0,)


@pytest.mark.parametrize("bound", [3, 2**16, 2**16 + 1])
def test_argsort_indices_is_a_stable_argsort(bound):
    # The radix path (bound ≤ 2¹⁶, values cast to uint16) must give numpy's stable
    # order, the largest value included; above the bound the int64 sort is used.
    rng = np.random.default_rng(0)
    values = rng.integers(0, bound, (6, 50))
    values[0, :3] = bound - 1
    expected = np.argsort(values, axis=1, kind="stable")
    np.testing.assert_array_equal(selection._argsort_indices(values, bound, axis=1), expected)
    flat = values.ravel()
    np.testing.assert_array_equal(
        selection._argsort_indices(flat, bound), np.argsort(flat, kind="stable")
    )


@pytest.mark.parametrize("n, q", [(60, 5), (3000, 200)])  # dense and sparse products
def test_sparse_labels_are_read_by_position_whatever_their_storage(n, q):
    # Duplicate entries (scipy sums them) and stored zeros: the labels are the
    # non-zero positions, as for the dense matrix; a duplicate once counted twice.
    rng = np.random.default_rng(2)
    E, H = rng.random((n, q)).astype(np.float32), rng.random((n, q)).astype(np.float32)
    Y = (rng.random((n, q)) < 0.05).astype(np.int8)
    Y[np.arange(n), rng.integers(0, q, n)] = 1
    rows, cols = np.nonzero(Y)
    order = np.argsort(np.r_[rows, rows, 0], kind="stable")
    data = np.r_[np.ones(2 * rows.size), 0.0][order]  # every entry twice, one stored zero
    indices = np.r_[cols, cols, 1 if Y[0, 1] == 0 else 2 if Y[0, 2] == 0 else 3][order]
    indptr = np.r_[0, np.cumsum(np.bincount(np.r_[rows, rows, 0], minlength=n))]
    messy = sp.csr_matrix((data, indices, indptr), shape=(n, q))
    assert not messy.has_canonical_format and (messy.toarray() != 0).sum() == Y.sum()
    kwargs = {"pressure": 4.0, "mixture": 0.6}
    clean = sp.csr_matrix(Y, dtype=messy.dtype)  # the same dtype: the same rounding
    want, _ = selection.d2ace_distribution(E, H, clean, clean, **kwargs)
    got, _ = selection.d2ace_distribution(E, H, messy, messy, **kwargs)
    np.testing.assert_array_equal(got, want)


def test_row_blocks_give_the_one_block_results(monkeypatch):
    # Label weights, correlation and scores sum over row blocks of ~2¹⁸ values: with
    # blocks of 64 values, every block must count, not only the last.
    rng = np.random.default_rng(3)
    n, q = 500, 8
    M = rng.random((n, q)).astype(np.float32)
    Y = (rng.random((n, q)) < 0.4).astype(np.int8)
    weights = selection.label_weights(M, 0.5, 0.5)
    C = selection.label_correlation(M, Y)
    scores = selection.instance_scores(M, Y, Y, weights, C)
    monkeypatch.setattr(selection, "_BLOCK_ENTRIES", 64)
    assert len(selection._row_blocks(n, q)) == 63
    np.testing.assert_allclose(selection.label_weights(M, 0.5, 0.5), weights, rtol=1e-6)
    np.testing.assert_allclose(selection.label_correlation(M, Y), C, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(selection.instance_scores(M, Y, Y, weights, C), scores, rtol=1e-5)

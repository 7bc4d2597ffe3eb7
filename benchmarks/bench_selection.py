"""Per-epoch cost of each stage of D2ACE selection, its memory, and how both grow.

Usage::

    python benchmarks/bench_selection.py                 # N × q grid, breakdown, growth
    python benchmarks/bench_selection.py --sizes 2417x14 16105x983 100000x100

For each (N, q) a sampler is fed one epoch of batches (random probabilities and losses,
labels with ~2 positives per row as in make_multilabel_classification), then each stage
is timed (median over repeats):

- record: queueing the epoch's ⌈N/B⌉ batches and applying them (METHOD §1, §2);
- weights: the two label-weight vectors (§3);
- correlation: the two label-correlation matrices (§4);
- scores+rank: instance scores and rank probabilities of both pools, the mixture (§5–7);
- sampling: drawing the epoch's batches (§8);
- knn: the one-off nearest-neighbour search for the local label context (d = 20 uniform
  random features; exact up to 20 000 instances, partitioned beyond).

``bytes/(i,j)`` is the recorded state per (instance, label). The growth table fits the
log-log slope of each stage's time against N (q fixed) and against q (N fixed).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import scipy.sparse as sp
from _common import median, set_threads, table, timed

from skd2ace import nearest_neighbors, selection
from skd2ace.sampler import D2ACEBatchSampler


def labels(n: int, q: int, rng) -> sp.csr_matrix:
    """About two positive labels per row (at least one), like make_multilabel_classification."""
    k = min(q, 2)
    cols = rng.integers(0, q, size=(n, k))
    rows = np.repeat(np.arange(n), k)
    Y = sp.csr_matrix((np.ones(n * k, dtype=np.int8), (rows, cols.ravel())), shape=(n, q))
    Y.data[:] = 1
    return Y


def measure(n: int, q: int, repeats: int, batch_size: int = 128) -> dict:
    rng = np.random.default_rng(0)
    Y = labels(n, q, rng)
    X = rng.random((n, 20), dtype=np.float32)
    knn_time = median(timed(lambda: nearest_neighbors(X, 6, random_state=0), 1))
    neighbors = nearest_neighbors(X, 6, random_state=0)
    sampler = D2ACEBatchSampler(
        Y,
        batch_size=batch_size,
        max_epochs=10,
        warmup_epochs=1,
        neighbors=neighbors,
        random_state=0,
    )
    n_batches = math.ceil(n / batch_size)
    batches = [rng.permutation(n)[:batch_size] for _ in range(n_batches)]
    proba = [rng.random((len(b), q), dtype=np.float32) for b in batches]
    loss = [rng.random((len(b), q), dtype=np.float32) for b in batches]

    def record():
        for b, p, ell in zip(batches, proba, loss, strict=True):
            sampler.record(b, p, ell)
        sampler.record_.flush()

    record()
    E, H = sampler.record_.uncertainty, sampler.record_.hardness
    Z = sampler.context_
    stages = {}
    stages["record"] = timed(record, repeats)
    stages["weights"] = timed(lambda: [selection.label_weights(M) for M in (E, H)], repeats)
    stages["correlation"] = timed(
        lambda: [selection.label_correlation(M, sampler.labels) for M in (E, H)], repeats
    )
    corr = [selection.label_correlation(M, sampler.labels) for M in (E, H)]
    v = [selection.label_weights(M) for M in (E, H)]

    def scores_and_rank():
        pools = [
            selection.rank_probabilities(selection.instance_scores(M, sampler.labels, Z, w, c), 4.0)
            for M, w, c in zip((E, H), v, corr, strict=True)
        ]
        return 0.5 * pools[0] + 0.5 * pools[1]

    stages["scores+rank"] = timed(scores_and_rank, repeats)
    P = scores_and_rank()
    stages["sampling"] = timed(
        lambda: selection.draw_batches(P, n_batches, batch_size, rng), repeats
    )
    row = {"N": n, "q": q}
    row.update({name: median(values) for name, values in stages.items()})
    row["epoch total"] = sum(row[name] for name in stages)
    row["knn (once)"] = knn_time
    row["bytes/(i,j)"] = sampler.record_.nbytes / (n * q)
    return row


def slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["10000x20", "40000x20", "160000x20", "10000x80", "10000x320"],
        help="NxQ cases; the default grid also gives the growth table",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    set_threads(args.threads)
    rows = []
    for size in args.sizes:
        n, q = (int(part) for part in size.split("x"))
        rows.append(measure(n, q, args.repeats))
        print(table(rows[-1:], list(rows[-1])), flush=True)
    stages = ["record", "weights", "correlation", "scores+rank", "sampling", "epoch total"]
    print("\n## Per-epoch selection cost (seconds, medians)\n")
    print(table(rows, ["N", "q", *stages, "knn (once)", "bytes/(i,j)"]))
    by_n = [r for r in rows if r["q"] == rows[0]["q"]]
    by_q = [r for r in rows if r["N"] == rows[0]["N"]]
    growth = []
    for name in [*stages, "knn (once)"]:
        entry = {"stage": name}
        if len(by_n) > 1:
            entry["slope vs N"] = slope([r["N"] for r in by_n], [r[name] for r in by_n])
        if len(by_q) > 1:
            entry["slope vs q"] = slope([r["q"] for r in by_q], [r[name] for r in by_q])
        growth.append(entry)
    if len(by_n) > 1 or len(by_q) > 1:
        print("\n## Growth: log-log slope of time (1 = linear)\n")
        print(table(growth, ["stage", "slope vs N", "slope vs q"]))


if __name__ == "__main__":
    main()

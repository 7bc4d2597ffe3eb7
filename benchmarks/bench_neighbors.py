"""Time of the one-off nearest-neighbour search (local label context) on the CPU and a device.

Usage::

    python benchmarks/bench_neighbors.py                      # CPU, one thread
    python benchmarks/bench_neighbors.py --device cuda        # CPU and the GPU, side by side

Each case ``NxD`` is a random matrix of N rows and D features (``binary``: 2 % ones, like
delicious' 500 bag-of-words features; ``normal``: Gaussian). The CPU search is exact up to
20 000 instances (and N²·d ≤ 2³⁴), partitioned beyond; on a CUDA device exact up to 100 000.
Times are medians over repeats after one warm-up call per device (CUDA's start-up).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import median, set_threads, table, timed

from skd2ace import nearest_neighbors


def matrix(n: int, d: int, kind: str, rng) -> np.ndarray:
    if kind == "binary":
        return (rng.random((n, d)) < 0.02).astype(np.float32)
    return rng.normal(size=(n, d)).astype(np.float32)


def search_time(X, device, repeats: int) -> float:
    def search():
        nearest_neighbors(X, 6, random_state=0, device=device)
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    return median(timed(search, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["16105x500:binary", "100000x100:normal", "300000x20:normal"],
        help="NxD[:binary|normal] cases",
    )
    parser.add_argument("--device", default=None, help="also time the search there (e.g. cuda)")
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    set_threads(args.threads)
    rng = np.random.default_rng(0)
    warm = matrix(64, 8, "normal", rng)
    devices = [None] + ([args.device] if args.device else [])
    for device in devices:
        nearest_neighbors(warm, 3, device=device)  # start-up costs out of the timings
    rows = []
    for case in args.sizes:
        size, _, kind = case.partition(":")
        n, d = (int(part) for part in size.split("x"))
        X = matrix(n, d, kind or "normal", rng)
        row = {
            "N": n,
            "d": d,
            "features": kind or "normal",
            "host s": search_time(X, None, args.repeats),
        }
        if args.device:
            row["device s"] = search_time(X, args.device, args.repeats)
            row["host/device"] = row["host s"] / row["device s"]
        rows.append(row)
        print(table(rows[-1:], list(row)), flush=True)
    where = f", device = {args.device}" if args.device else ""
    print(f"\n## Nearest-neighbour search (k = 6{where}), seconds, medians\n")
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()

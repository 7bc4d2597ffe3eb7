"""Fit time of D2ACE against random batch selection and a plain torch loop.

Usage::

    python benchmarks/bench_overhead.py                      # yeast (30 epochs) + plain torch
    python benchmarks/bench_overhead.py --cases yeast delicious synthetic-100000-100 \\
        synthetic-1000000-20 --repeats 3
    python benchmarks/bench_overhead.py --device cuda         # all three loops on a GPU
    python benchmarks/bench_overhead.py --threads default     # as a user gets it (below)

Every number is a median over ``--repeats`` fits in this process, after one warm-up fit
(the first torch optimizer in a process costs a one-off import). Ratios compare runs of
the same process: ``d2ace / random`` is the selection overhead in wall-clock time
(``paired range``: the smallest and largest ratio of one d2ace fit to the random fit of
the same repeat; ``paired d2ace/torch`` the same against the plain torch loop, which runs
in the same repeats),
``cpu d2ace/random`` the same in CPU time of all threads (the neighbour search runs in a
background thread during the warm-up epochs), ``random / torch`` the framework's
(skorch) overhead over a hand-written loop. Large cases train few epochs
(``max_epochs=5, warmup_epochs=2``: selection is active in 3 of them).

``--threads N`` runs all three loops with torch and BLAS on ``N`` threads (the
estimators with ``torch_threads=None``); ``--threads default`` leaves torch's and the
BLAS libraries' own defaults and the estimators' ``torch_threads='auto'``: what a
user's ``fit`` gets (on a machine where torch takes every core, D2ACE fits then train
with one thread fewer than 'random' and the plain loop).
"""

from __future__ import annotations

import argparse
import resource

from _common import (
    estimator,
    load,
    median,
    plain_torch_fit,
    set_threads,
    synchronize,
    table,
    timed,
)


def measure(
    case: str, repeats: int, epochs: int | None, device: str = "cpu", torch_threads=None
) -> dict:
    X, Y = load(case)
    big = X.shape[0] > 20000
    epochs = epochs or (5 if big else 30)
    warmup = 2 if big else None
    repeats = 1 if X.shape[0] >= 500000 else repeats

    def fit(strategy):
        def run():
            estimator(strategy, epochs, warmup, device=device, torch_threads=torch_threads).fit(
                X, Y
            )
            synchronize(device)

        return run

    fit("random")()  # warm-up fit: one-off imports and allocator growth
    runs = {"random": fit("random"), "d2ace": fit("d2ace")}
    if not big:
        runs["torch"] = lambda: plain_torch_fit(X, Y, epochs, device=device)
    times = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved, so that drifts of a shared machine hit all
        for name, run in runs.items():
            times[name] += timed(run, 1, cpu[name])
    row = {
        "case": case if device == "cpu" else f"{case} ({device})",
        "N": X.shape[0],
        "q": Y.shape[1],
        "epochs": epochs,
        "random s": median(times["random"]),
        "d2ace s": median(times["d2ace"]),
    }
    row["d2ace/random"] = row["d2ace s"] / row["random s"]
    # Per-repeat ratios of the interleaved fits: how much the machine moves the figure.
    row["paired range"] = paired_range(times["d2ace"], times["random"])
    # CPU time of all threads: the neighbour search overlaps the warm-up epochs in a
    # background thread, so wall time hides its cost on a machine with a free core.
    row["cpu d2ace/random"] = median(cpu["d2ace"]) / median(cpu["random"])
    if not big:
        row["torch s"] = median(times["torch"])
        row["d2ace/torch"] = row["d2ace s"] / row["torch s"]
        row["paired d2ace/torch"] = paired_range(times["d2ace"], times["torch"])
        row["random/torch"] = row["random s"] / row["torch s"]
    return row


def paired_range(numerator: list[float], denominator: list[float]) -> str:
    """Smallest and largest ratio of the fits of the same repeat."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return f"{min(ratios):.2f}–{max(ratios):.2f}"


def _threads(value: str):
    if value == "default":
        return value
    threads = int(value)
    if threads < 1:
        raise argparse.ArgumentTypeError("must be >= 1 or 'default'")
    return threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["yeast"])
    parser.add_argument(
        "--threads",
        type=_threads,
        default=1,
        help="torch/BLAS threads (default 1), or 'default': the libraries' and the "
        "estimator's own settings",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="default: 30, 5 when N > 20000")
    parser.add_argument(
        "--device", default="cpu", help="torch device of all three loops (e.g. cuda)"
    )
    args = parser.parse_args()
    if args.threads == "default":
        torch_threads = "auto"
    else:
        set_threads(args.threads)
        torch_threads = None
    rows = []
    for case in args.cases:
        rows.append(measure(case, args.repeats, args.epochs, args.device, torch_threads))
        print(table(rows[-1:], list(rows[-1])), flush=True)
    columns = ["case", "N", "q", "epochs", "torch s", "random s", "d2ace s"]
    columns += ["d2ace/random", "paired range", "cpu d2ace/random", "d2ace/torch"]
    columns += ["paired d2ace/torch", "random/torch"]
    print("\n## Fit time, medians over repeats\n")
    print(table(rows, columns))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\npeak resident memory of this process: {peak:.2f} GiB")


if __name__ == "__main__":
    main()

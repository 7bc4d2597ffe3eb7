"""Shared helpers of the benchmark scripts: data, timing, a plain torch baseline."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import make_multilabel_classification
from sklearn.preprocessing import MinMaxScaler

from skd2ace import D2ACEMultiLabelClassifier
from skd2ace.modules import MLP

ROOT = Path(__file__).resolve().parents[1]


def set_threads(n: int) -> None:
    """Run torch and numpy/scikit-learn (BLAS, OpenMP) on ``n`` threads for the process.

    On the 2-core machine of docs/performance.md, torch's default of 2 intra-op threads
    made small-MLP training 5–20× slower and erratic (OpenMP runtimes of torch and
    scikit-learn/OpenBLAS contending), so the scripts default to 1; the plain torch
    loop, 'random' and 'd2ace' always run under the same setting.
    """
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)


def data_home() -> Path:
    return Path(os.environ.get("SKD2ACE_DATA", ROOT.parent / "shared" / "data" / "mulan"))


def load(name: str):
    """``(X, Y)``: a MULAN dataset, or ``synthetic-N-q`` (make_multilabel_classification)."""
    if name.startswith("synthetic"):
        _, n, q = name.split("-")
        X, Y = make_multilabel_classification(
            n_samples=int(n), n_features=20, n_classes=int(q), n_labels=2, random_state=0
        )
        return MinMaxScaler().fit_transform(X).astype(np.float32), Y.astype(np.int8)
    from skd2ace.datasets import fetch_mulan

    data = fetch_mulan(name, data_home=data_home())
    X = data.X.toarray() if hasattr(data.X, "toarray") else data.X
    return MinMaxScaler().fit_transform(X).astype(np.float32), data.Y


def timed(fn, repeats: int, cpu: list[float] | None = None) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls; with ``cpu``, also appends the
    process CPU seconds of each call (all threads: the background neighbour search
    included)."""
    times = []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.process_time() - start_cpu)
    return times


def median(values) -> float:
    return statistics.median(values)


def estimator(strategy: str, epochs: int, warmup: int | None = None, **kwargs):
    # torch_threads=None: every loop trains with the threads set_threads set (the
    # estimator's 'auto' would give d2ace one fewer than 'random' on all cores).
    return D2ACEMultiLabelClassifier(
        **{
            "max_epochs": epochs,
            "warmup_epochs": warmup,
            "batch_selection": strategy,
            "validation_fraction": None,
            "random_state": 0,
            "torch_threads": None,
            **kwargs,
        }
    )


def plain_torch_fit(
    X: np.ndarray, Y: np.ndarray, epochs: int, batch_size: int = 128, device: str = "cpu"
) -> None:
    """The same MLP, optimizer, loss, batch size and epochs as the estimator's
    defaults, in a hand-written torch loop with uniform shuffling (on a GPU with the
    whole training set moved to it once)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    Xt = torch.from_numpy(X).to(device)
    Yt = torch.from_numpy(Y.astype(np.float32)).to(device)
    model = MLP(X.shape[1], Y.shape[1]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    criterion = torch.nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(Xt), generator=gen).to(device).split(batch_size):
            optimizer.zero_grad()
            criterion(model(Xt[idx]), Yt[idx]).backward()
            optimizer.step()
    synchronize(device)


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a CUDA fit's last steps run asynchronously)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` (dicts) with ``columns``."""

    def fmt(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)

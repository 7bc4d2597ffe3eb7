"""Per-epoch plots of a benchmark (matplotlib, Agg canvas; no pyplot, no global state)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..plotting import _epoch_axis, _epoch_marker, _integer_ticks
from ._journal import _atomic_open
from ._protocol import BenchmarkResult

__all__ = [
    "epoch_matrix",
    "make_plots",
    "plot_label_weights",
    "plot_schedule",
    "plot_valid_auc",
]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG file, atomically (as the other reports)."""
    path = Path(path)
    with _atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    return path


def epoch_matrix(folds: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    """Stack a scalar history entry of several fold jobs: (n_runs, n_epochs), nan-padded.

    Missing or None entries (e.g. a key random selection does not record) are ``nan``.

    Examples
    --------
    >>> epoch_matrix([{"history": {"a": [1.0, 2.0]}}, {"history": {"a": [3.0]}}], "a")
    array([[ 1.,  2.],
           [ 3., nan]])
    """
    rows = [r["history"].get(key) or [] for r in folds]
    n_epochs = max((len(row) for row in rows), default=0)
    out = np.full((len(rows), n_epochs), np.nan)
    for i, row in enumerate(rows):
        out[i, : len(row)] = [np.nan if v is None else v for v in row]
    return out


def _vector_stack(folds: Sequence[dict[str, Any]], key: str) -> np.ndarray | None:
    """Mean over fold jobs of a per-epoch vector entry: (n_epochs, n_labels), or None."""
    mats = []
    for r in folds:
        rows = r["history"].get(key) or []
        if not rows or all(v is None for v in rows):
            continue
        width = max(len(v) for v in rows if v is not None)
        mat = np.full((len(rows), width), np.nan)
        for e, v in enumerate(rows):
            if v is not None:
                mat[e, : len(v)] = v
        mats.append(mat)
    if not mats:
        return None
    n_epochs = max(m.shape[0] for m in mats)
    width = max(m.shape[1] for m in mats)
    stack = np.full((len(mats), n_epochs, width), np.nan)
    for i, m in enumerate(mats):
        stack[i, : m.shape[0], : m.shape[1]] = m
    if np.isnan(stack).all():
        return None
    with _quiet():
        return np.nanmean(stack, axis=0)


@contextmanager
def _quiet():
    """Silence the 'mean of empty slice' warnings of nan-aware reductions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _mean_band(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with _quiet():
        mean = np.nanmean(mat, axis=0)
        std = np.nanstd(mat, axis=0)
    return np.arange(1, mat.shape[1] + 1), mean, std


def _by_strategy(result: BenchmarkResult, dataset: str) -> dict[str, list[dict[str, Any]]]:
    return {
        s: [r for r in result.folds if r["dataset"] == dataset and r["strategy"] == s]
        for s in result.config.strategies
    }


def plot_valid_auc(result: BenchmarkResult, dataset: str, path: str | os.PathLike) -> Path:
    """Validation macro-AUC per epoch for each strategy: mean over folds × seeds ± std."""
    fig = _figure(7, 4.2)
    ax = fig.add_subplot()
    n_epochs = 0
    for strategy, folds in _by_strategy(result, dataset).items():
        mat = epoch_matrix(folds, "valid_macro_auc")
        if mat.size == 0 or np.isnan(mat).all():
            continue
        x, mean, std = _mean_band(mat)
        n_epochs = max(n_epochs, x.size)
        (line,) = ax.plot(
            x,
            mean,
            marker=_epoch_marker(x.size),
            ms=3,
            label=f"{strategy} (n={mat.shape[0]})",
        )
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
    if n_epochs:
        _epoch_axis(ax, 1, n_epochs)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation macro-AUC")
    ax.set_title(f"{dataset}: validation macro-AUC (mean ± std over folds × seeds)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _save(fig, path)


def plot_schedule(result: BenchmarkResult, dataset: str, path: str | os.PathLike) -> Path:
    """Selection pressure, mixture weight and effective sample size per epoch."""
    fig = _figure(12, 3.6)
    axes = fig.subplots(1, 3)
    panels = (
        ("selection_pressure", "selection pressure s(e)"),
        ("mixture_weight", "mixture weight β(e)"),
        ("selection_ess", "effective sample size / N"),
    )
    for ax, (key, title) in zip(axes, panels, strict=True):
        n_epochs = 0
        for strategy, folds in _by_strategy(result, dataset).items():
            mat = epoch_matrix(folds, key)
            if mat.size == 0 or np.isnan(mat).all():
                continue
            x, mean, std = _mean_band(mat)
            n_epochs = max(n_epochs, x.size)
            (line,) = ax.plot(
                x,
                mean,
                label=strategy,
                ls="--" if strategy == "random" else "-",
                marker=_epoch_marker(x.size),
                ms=3,
            )
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
        if n_epochs:
            _epoch_axis(ax, 1, n_epochs)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(f"{dataset}: selection schedule (mean over folds × seeds)")
    return _save(fig, path)


def plot_label_weights(
    result: BenchmarkResult, dataset: str, path: str | os.PathLike
) -> Path | None:
    """Heat maps of the dynamic label weights per epoch (uncertainty | hardness).

    One row of panels per strategy that records label weights (D2ACE); returns None and
    writes nothing when no strategy does.
    """
    rows = []
    for strategy, folds in _by_strategy(result, dataset).items():
        unc = _vector_stack(folds, "label_weights_uncertainty")
        hard = _vector_stack(folds, "label_weights_hardness")
        if unc is not None or hard is not None:
            rows.append((strategy, unc, hard))
    if not rows:
        return None
    names = result.datasets.get(dataset, {}).get("label_names") or []
    n_labels = max(m.shape[1] for _, u, h in rows for m in (u, h) if m is not None)
    height = min(2.0 + 0.22 * n_labels, 10.0)
    fig = _figure(12, height * len(rows))
    axes = np.atleast_2d(fig.subplots(len(rows), 2, squeeze=False))
    for (strategy, unc, hard), pair in zip(rows, axes, strict=True):
        for ax, mat, kind in zip(pair, (unc, hard), ("uncertainty", "hardness"), strict=True):
            ax.set_title(f"{strategy}: label weights, {kind} pool")
            ax.set_xlabel("epoch")
            ax.set_ylabel("label")
            if mat is None:
                ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
                continue
            image = ax.imshow(
                mat.T,
                aspect="auto",
                origin="lower",
                interpolation="nearest",
                cmap="viridis",
                extent=(0.5, mat.shape[0] + 0.5, -0.5, mat.shape[1] - 0.5),
            )
            fig.colorbar(image, ax=ax, label="weight")
            _epoch_axis(ax, 1, mat.shape[0])
            if 0 < len(names) == mat.shape[1] <= 30:
                ax.set_yticks(np.arange(mat.shape[1]), labels=names, fontsize="x-small")
            else:  # label indices
                _integer_ticks(ax.yaxis)
    fig.suptitle(f"{dataset}: dynamic label weights per epoch (mean over folds × seeds)")
    return _save(fig, path)


def make_plots(result: BenchmarkResult, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``valid_auc_<dataset>.png``, ``schedule_<dataset>.png`` and (when a strategy
    records label weights) ``label_weights_<dataset>.png`` for every data set.

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    out_dir = Path(out_dir)
    written = []
    for dataset in result.config.datasets:
        written.append(plot_valid_auc(result, dataset, out_dir / f"valid_auc_{dataset}.png"))
        written.append(plot_schedule(result, dataset, out_dir / f"schedule_{dataset}.png"))
        heat = plot_label_weights(result, dataset, out_dir / f"label_weights_{dataset}.png")
        if heat is not None:
            written.append(heat)
    return written

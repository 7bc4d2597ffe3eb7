"""Benchmark reports: summary tables (Markdown, console), CSV, JSON, paired comparisons."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import MULAN_DATASETS, get_data_home
from ..metrics import LOWER_IS_BETTER, METRIC_NAMES
from ._journal import _atomic_open
from ._protocol import _ARRAY_KEYS, BenchmarkResult, _json_safe

__all__ = [
    "CONSOLE_METRICS",
    "REPORTED_METRICS",
    "baseline_strategy",
    "compare_strategies",
    "comparison_markdown",
    "console_table",
    "environment",
    "fold_values",
    "paired_comparison",
    "results_markdown",
    "summarize",
    "write_comparison_markdown",
    "write_csv",
    "write_json",
    "write_reports",
    "write_results_markdown",
]

#: Quantities reported per fold: the metrics of :func:`skd2ace.metrics.evaluate`, then
#: the fit time in seconds. ``results.csv`` has one row per fold job and quantity.
REPORTED_METRICS: tuple[str, ...] = (*METRIC_NAMES, "fit_time_s")

#: The short list printed on the console by the command line.
CONSOLE_METRICS: tuple[str, ...] = (
    "macro_auc",
    "micro_auc",
    "ranking_loss",
    "macro_f1",
    "micro_f1",
    "hamming_loss",
    "fit_time_s",
)

_LOWER = frozenset(LOWER_IS_BETTER) | {"fit_time_s"}

#: Differences at most this large count as ties in :func:`paired_comparison`.
TIE_TOLERANCE = 1e-12


def _lower_is_better(metric: str) -> bool:
    return metric in _LOWER


def _arrow(metric: str) -> str:
    return "↓" if _lower_is_better(metric) else "↑"


def _value(result: dict[str, Any], metric: str) -> float:
    value = result["fit_time_s"] if metric == "fit_time_s" else result["metrics"][metric]
    return float("nan") if value is None else float(value)


# --------------------------------------------------------------------------- summaries


def fold_values(
    folds: Sequence[dict[str, Any]], dataset: str, strategy: str, metric: str
) -> dict[tuple[int, int], float]:
    """``{(seed, fold): value}`` of one metric for one dataset and strategy."""
    return {
        (r["seed"], r["fold"]): _value(r, metric)
        for r in folds
        if r["dataset"] == dataset and r["strategy"] == strategy
    }


def summarize(result: BenchmarkResult) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Mean and standard deviation over folds × seeds.

    Returns
    -------
    dict
        ``summary[dataset][strategy][metric] = {"mean", "std", "n"}`` for every metric of
        :data:`REPORTED_METRICS`. The standard deviation is the sample one (``ddof=1``;
        0 for a single value); ``nan`` values (e.g. an undefined AUC) are left out.
    """
    summary: dict = {}
    for dataset in result.config.datasets:
        summary[dataset] = {}
        for strategy in result.config.strategies:
            summary[dataset][strategy] = {}
            for metric in REPORTED_METRICS:
                values = np.array(
                    list(fold_values(result.folds, dataset, strategy, metric).values()), dtype=float
                )
                values = values[np.isfinite(values)]
                n = values.size
                summary[dataset][strategy][metric] = {
                    "mean": float(values.mean()) if n else float("nan"),
                    "std": float(values.std(ddof=1)) if n > 1 else 0.0 if n else float("nan"),
                    "n": int(n),
                }
    return summary


def _best(means: dict[str, float], metric: str) -> set[str]:
    """Strategies with the best mean as shown (rounded to the table's digits: means that
    read the same are all best, never one of two equal-looking cells; none if every
    mean is nan)."""
    shown = {s: round(m, _digits(metric)) for s, m in means.items() if math.isfinite(m)}
    if not shown:
        return set()
    target = min(shown.values()) if _lower_is_better(metric) else max(shown.values())
    return {s for s, m in shown.items() if m == target}


def _fmt(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _digits(metric: str) -> int:
    return 2 if metric in ("fit_time_s", "coverage") else 4


def _dataset_line(info: dict[str, Any]) -> str:
    prep = (
        f"labels with ≤ {info['min_positives']} positives and rows without labels dropped"
        if info["preprocessed"]
        else "no preprocessing"
    )
    return (
        f"{info['n_samples']} instances × {info['n_features']} features"
        f"{' (sparse)' if info['sparse'] else ''}, {info['n_labels']} labels "
        f"(raw: {info['n_samples_raw']} × {info['n_labels_raw']} labels; {prep})"
    )


def results_markdown(result: BenchmarkResult, summary: dict | None = None) -> str:
    """The Markdown text of ``results.md`` (one table per data set).

    Cells are ``mean ± std`` over folds × seeds; the best mean of every row is bold;
    ↑ marks higher-is-better metrics, ↓ lower-is-better ones.
    """
    summary = summarize(result) if summary is None else summary
    cfg = result.config
    lines = [
        "# Benchmark results",
        "",
        f"Protocol: {cfg.n_folds}-fold multi-label iterative stratification × "
        f"{len(cfg.seeds)} seed(s) {list(cfg.seeds)}; {cfg.validation_fraction:.0%} of each "
        f"training fold for validation (best validation macro-AUC epoch kept); "
        f"{cfg.max_epochs} epochs, batch size {cfg.batch_size}, lr {cfg.lr}, "
        f"hidden layers {list(cfg.hidden_layer_sizes)}; threshold {cfg.threshold}. "
        f"Values are mean ± std over folds × seeds; **bold** is the best; "
        f"↑ higher is better, ↓ lower is better.",
        "",
    ]
    if not result.complete:
        lines += [
            f"**Partial results: {len(result.folds)} of {result.n_fold_jobs} fold jobs "
            "finished** (the run was interrupted; `skd2ace benchmark --resume` with the same "
            "options, or `run_benchmark(config, done=...)`, runs the others).",
            "",
        ]
    for dataset in cfg.datasets:
        lines += [f"## {dataset}", "", _dataset_line(result.datasets[dataset]), ""]
        lines.append("| metric | " + " | ".join(cfg.strategies) + " |")
        lines.append("|---|" + "---:|" * len(cfg.strategies))
        for metric in REPORTED_METRICS:
            stats = summary[dataset]
            means = {s: stats[s][metric]["mean"] for s in cfg.strategies}
            best = _best(means, metric) if len(cfg.strategies) > 1 else set()
            cells = []
            for s in cfg.strategies:
                cell = _fmt(stats[s][metric]["mean"], stats[s][metric]["std"], _digits(metric))
                cells.append(f"**{cell}**" if s in best else cell)
            lines.append(f"| {metric} {_arrow(metric)} | " + " | ".join(cells) + " |")
        lines.append("")
    resumed = (
        f" (this session; {result.n_resumed} of the fold jobs had finished before it)"
        if result.n_resumed
        else ""
    )
    lines.append(f"Wall time: {result.wall_time_s:.1f} s{resumed}.")
    return "\n".join(lines) + "\n"


def write_results_markdown(
    result: BenchmarkResult, path: str | os.PathLike, summary: dict | None = None
) -> Path:
    """Write :func:`results_markdown` to ``path`` (atomically, as every report)."""
    path = Path(path)
    with _atomic_open(path) as fh:
        fh.write(results_markdown(result, summary))
    return path


def console_table(
    result: BenchmarkResult, summary: dict | None = None, metrics: Sequence[str] = CONSOLE_METRICS
) -> str:
    """A plain-text comparison table per data set (the best mean marked with ``*``)."""
    summary = summarize(result) if summary is None else summary
    strategies = list(result.config.strategies)
    width = max(17, *(len(s) + 2 for s in strategies))
    out = []
    for dataset in result.config.datasets:
        info = result.datasets[dataset]
        out.append(f"{dataset}: {_dataset_line(info)}")
        out.append(f"{'metric':<16}" + "".join(f"{s:>{width}}" for s in strategies))
        for metric in metrics:
            stats = summary[dataset]
            means = {s: stats[s][metric]["mean"] for s in strategies}
            best = _best(means, metric) if len(strategies) > 1 else set()
            cells = []
            for s in strategies:
                cell = _fmt(stats[s][metric]["mean"], stats[s][metric]["std"], _digits(metric))
                cells.append(f"{cell + ('*' if s in best else ' '):>{width}}")
            out.append(f"{metric + ' ' + _arrow(metric):<16}" + "".join(cells))
        out.append("")
    if len(strategies) > 1:
        out.append("* the best mean of a row as shown (↑ higher, ↓ lower is better)")
    return "\n".join(out)


# --------------------------------------------------------------------------- comparison


def paired_comparison(
    scores: Sequence[float],
    baseline: Sequence[float],
    *,
    lower_is_better: bool = False,
    tol: float = TIE_TOLERANCE,
) -> dict[str, Any]:
    """Wins, ties and losses of ``scores`` against paired ``baseline`` values, with a
    two-sided Wilcoxon signed-rank test.

    Pairs where either value is ``nan`` are dropped. A pair is a tie when the values
    differ by at most ``tol``; ties are left out of the test (``zero_method="wilcox"``).
    With no untied pair the p-value is 1 and the statistic ``nan`` (the test is
    undefined; nothing suggests a difference).

    Parameters
    ----------
    scores, baseline : sequence of float
        Paired values (same folds and seeds, same order).
    lower_is_better : bool, default=False
        Whether a smaller value is a win.
    tol : float, default=1e-12

    Returns
    -------
    dict
        ``n`` (valid pairs), ``wins``, ``ties``, ``losses``, ``mean_diff`` (mean of
        ``scores - baseline``), ``statistic`` and ``p_value`` of
        :func:`scipy.stats.wilcoxon`.

    Examples
    --------
    >>> r = paired_comparison([0.8, 0.7, 0.9], [0.7, 0.7, 0.8])
    >>> r["wins"], r["ties"], r["losses"], round(r["p_value"], 3)
    (2, 1, 0, 0.5)
    >>> paired_comparison([1.0, 2.0], [1.0, 2.0])["p_value"]
    1.0
    """
    from scipy.stats import wilcoxon

    a = np.asarray(scores, dtype=float)
    b = np.asarray(baseline, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"scores and baseline must be 1-D of one length; got {a.shape} and {b.shape}."
        )
    keep = np.isfinite(a) & np.isfinite(b)
    diff = a[keep] - b[keep]
    tied = np.abs(diff) <= tol
    better = diff < 0 if lower_is_better else diff > 0
    wins = int(np.sum(better & ~tied))
    ties = int(np.sum(tied))
    losses = int(diff.size - wins - ties)
    statistic, p_value = float("nan"), 1.0
    untied = diff[~tied]
    if untied.size:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            test = wilcoxon(untied, zero_method="wilcox", alternative="two-sided")
        statistic = float(test.statistic)
        p_value = float(test.pvalue) if np.isfinite(test.pvalue) else 1.0
    return {
        "n": int(diff.size),
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "mean_diff": float(diff.mean()) if diff.size else float("nan"),
        "statistic": statistic,
        "p_value": p_value,
    }


def baseline_strategy(strategies: Sequence[str]) -> str:
    """``"random"`` when it is among ``strategies``, else the first one."""
    return "random" if "random" in strategies else strategies[0]


def compare_strategies(result: BenchmarkResult) -> dict[str, Any]:
    """Paired comparison of every strategy with the baseline, per data set and metric.

    Returns
    -------
    dict
        ``{"baseline": name, "datasets": {dataset: {strategy: {metric: stats}}}}`` with
        the stats of :func:`paired_comparison`, pairs matched on (seed, fold).
    """
    strategies = list(result.config.strategies)
    base = baseline_strategy(strategies)
    out: dict[str, Any] = {"baseline": base, "datasets": {}}
    for dataset in result.config.datasets:
        per = out["datasets"][dataset] = {}
        for strategy in strategies:
            if strategy == base:
                continue
            per[strategy] = {}
            for metric in REPORTED_METRICS:
                ours = fold_values(result.folds, dataset, strategy, metric)
                theirs = fold_values(result.folds, dataset, base, metric)
                keys = sorted(set(ours) & set(theirs))
                per[strategy][metric] = paired_comparison(
                    [ours[k] for k in keys],
                    [theirs[k] for k in keys],
                    lower_is_better=_lower_is_better(metric),
                )
    return out


def comparison_markdown(result: BenchmarkResult, comparison: dict | None = None) -> str:
    """The Markdown text of ``comparison.md``."""
    comparison = compare_strategies(result) if comparison is None else comparison
    base = comparison["baseline"]
    lines = [
        f"# Paired comparison against `{base}`",
        "",
        "Pairs are the (seed, fold) jobs: same folds, same validation split, same "
        "initialisation. W/T/L: folds where the strategy is better / equal / worse than "
        f"`{base}` (↑ higher is better, ↓ lower is better). Δ: mean of strategy − baseline. "
        "p: two-sided Wilcoxon signed-rank test on the untied pairs "
        "(`scipy.stats.wilcoxon`; 1 when every pair is tied). With few folds the smallest "
        "attainable p-value is large (5 pairs: 0.0625); use several seeds for a finer test.",
        "",
    ]
    others = [s for s in result.config.strategies if s != base]
    if not others:
        lines.append("Only one strategy was run: nothing to compare.")
        return "\n".join(lines) + "\n"
    for dataset in result.config.datasets:
        for strategy in others:
            lines += [f"## {dataset}: `{strategy}` vs `{base}`", ""]
            lines.append("| metric | W | T | L | Δ | p |")
            lines.append("|---|---:|---:|---:|---:|---:|")
            for metric, stats in comparison["datasets"][dataset][strategy].items():
                delta = stats["mean_diff"]
                delta_s = f"{delta:+.{_digits(metric)}f}" if math.isfinite(delta) else "n/a"
                lines.append(
                    f"| {metric} {_arrow(metric)} | {stats['wins']} | {stats['ties']} | "
                    f"{stats['losses']} | {delta_s} | {stats['p_value']:.4g} |"
                )
            lines.append("")
    return "\n".join(lines) + "\n"


def write_comparison_markdown(
    result: BenchmarkResult, path: str | os.PathLike, comparison: dict | None = None
) -> Path:
    """Write :func:`comparison_markdown` to ``path``."""
    path = Path(path)
    with _atomic_open(path) as fh:
        fh.write(comparison_markdown(result, comparison))
    return path


# --------------------------------------------------------------------------- files


def write_csv(result: BenchmarkResult, path: str | os.PathLike) -> Path:
    """Write ``results.csv`` in long format.

    Columns ``dataset, strategy, seed, fold, metric, value``; one row per fold job and
    quantity of :data:`REPORTED_METRICS` (so datasets × strategies × seeds × folds ×
    ``len(REPORTED_METRICS)`` rows). Undefined values are empty cells.
    """
    path = Path(path)
    with _atomic_open(path, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["dataset", "strategy", "seed", "fold", "metric", "value"])
        for r in result.folds:
            for metric in REPORTED_METRICS:
                value = _value(r, metric)
                writer.writerow(
                    [
                        r["dataset"],
                        r["strategy"],
                        r["seed"],
                        r["fold"],
                        metric,
                        repr(value) if math.isfinite(value) else "",
                    ]
                )
    return path


def environment() -> dict[str, Any]:
    """Versions and machine of this process (recorded in ``results.json``)."""
    import joblib
    import scipy
    import sklearn
    import skorch
    import torch

    from .. import __version__

    return {
        "versions": {
            "skd2ace": __version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__,
            "torch": torch.__version__,
            "skorch": skorch.__version__,
            "joblib": joblib.__version__,
        },
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda_available": bool(torch.cuda.is_available()),
        },
        "executable": sys.executable,
    }


def write_json(
    result: BenchmarkResult,
    path: str | os.PathLike,
    *,
    argv: Sequence[str] | None = None,
    summary: dict | None = None,
    comparison: dict | None = None,
) -> Path:
    """Write ``results.json``: configuration, environment, every fold, summaries.

    Keys: ``argv``, ``config`` (:meth:`BenchmarkConfig.to_dict`, with ``data_home``
    the absolute data folder the MULAN files were read from, whether given or
    ``$SKD2ACE_DATA`` or the default; as given without a MULAN data set), ``environment``
    (:func:`environment`), ``wall_time_s``, ``n_fold_jobs`` (of the configuration),
    ``complete`` (False for the partial reports of an interrupted run), ``n_resumed``
    (jobs finished before a resumed run), ``datasets`` (shapes, label names),
    ``metrics`` (:data:`REPORTED_METRICS`), ``lower_is_better``, ``folds`` (every fold
    job: metrics, times, best epoch, per-epoch history), ``summary``
    (:func:`summarize`) and ``comparison`` (:func:`compare_strategies`). Undefined
    numbers are ``null``.
    """
    path = Path(path)
    config = result.config.to_dict()
    if any(name in MULAN_DATASETS for name in result.config.datasets):
        # The folder the MULAN files were read from, also when it came from
        # $SKD2ACE_DATA or the default (data_home None): the report says where.
        config["data_home"] = str(get_data_home(result.config.data_home).absolute())
    payload = {
        "argv": None if argv is None else list(argv),
        "config": config,
        "environment": environment(),
        "wall_time_s": result.wall_time_s,
        "n_fold_jobs": result.n_fold_jobs,
        "complete": result.complete,
        "n_resumed": result.n_resumed,
        "datasets": result.datasets,
        "metrics": list(REPORTED_METRICS),
        "lower_is_better": sorted(m for m in REPORTED_METRICS if _lower_is_better(m)),
        "folds": [{k: v for k, v in r.items() if k not in _ARRAY_KEYS} for r in result.folds],
        "summary": summarize(result) if summary is None else summary,
        "comparison": compare_strategies(result) if comparison is None else comparison,
    }
    with _atomic_open(path) as fh:
        json.dump(_json_safe(payload), fh, indent=1, allow_nan=False)
        fh.write("\n")
    return path


def write_reports(
    result: BenchmarkResult,
    out_dir: str | os.PathLike,
    *,
    argv: Sequence[str] | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """Write every output of a benchmark run into ``out_dir`` (created if needed).

    ``results.md``, ``results.csv``, ``results.json``, ``comparison.md`` and, with
    ``plots=True``, the PNG files of :func:`skd2ace.benchmark.make_plots`. Each file is
    replaced at once (written next to it, then renamed): an interruption leaves the
    previous version of a report or the new one, never a file cut short.

    Returns
    -------
    dict of str to pathlib.Path
        File name to path of everything written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(result)
    comparison = compare_strategies(result)
    paths = [
        write_results_markdown(result, out_dir / "results.md", summary),
        write_csv(result, out_dir / "results.csv"),
        write_json(
            result, out_dir / "results.json", argv=argv, summary=summary, comparison=comparison
        ),
        write_comparison_markdown(result, out_dir / "comparison.md", comparison),
    ]
    if plots:
        from ._plots import make_plots

        paths += make_plots(result, out_dir)
    return {p.name: p for p in paths}

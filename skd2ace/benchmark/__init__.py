"""Benchmarking batch-selection strategies under the reference protocol (docs/method.md §10).

:func:`run_benchmark` trains one model per (dataset, strategy, seed, fold): multi-label
iteratively stratified K-fold, 10 % of every training fold held out by the estimator to
keep the epoch with the best validation macro-AUC, min-max scaled features (max-abs for
sparse ones), threshold 0.5. The strategies of a (seed, fold) share the folds and the
estimator's ``random_state``, so their results are paired. :func:`write_reports` writes
``results.md``, ``results.csv``, ``results.json``, ``comparison.md`` (wins/ties/losses
and Wilcoxon signed-rank tests against random selection) and per-epoch plots.
With a ``journal`` file, :func:`run_benchmark` appends every finished fold job to it at
once; :func:`read_journal` reads them back and ``run_benchmark(config, done=...)`` runs
only the missing jobs (resuming an interrupted run gives the same results).
The command line ``skd2ace benchmark`` drives the same functions (``--resume``).

Examples
--------
>>> from skd2ace.benchmark import BenchmarkConfig, run_benchmark, write_reports
>>> config = BenchmarkConfig(datasets=["synthetic"], n_folds=2, max_epochs=3)
>>> result = run_benchmark(config)  # doctest: +SKIP
>>> write_reports(result, "skd2ace-out")  # doctest: +SKIP
"""

from ._journal import (
    FOLDS_FILE,
    NON_RESULT_FIELDS,
    ConfigMismatchError,
    FoldJournal,
    append_fold,
    config_fingerprint,
    read_journal,
    result_settings,
)
from ._plots import make_plots, plot_label_weights, plot_schedule, plot_valid_auc
from ._protocol import (
    DATASET_NAMES,
    HISTORY_KEYS,
    MAX_SEED,
    STRATEGIES,
    SYNTHETIC_PARAMS,
    BenchmarkConfig,
    BenchmarkInterrupted,
    BenchmarkResult,
    InsufficientDataError,
    fold_jobs,
    fold_random_state,
    fold_splits,
    load_dataset,
    make_model,
    run_benchmark,
    run_fold,
)
from ._report import (
    CONSOLE_METRICS,
    REPORTED_METRICS,
    baseline_strategy,
    compare_strategies,
    comparison_markdown,
    console_table,
    environment,
    paired_comparison,
    results_markdown,
    summarize,
    write_csv,
    write_json,
    write_reports,
)

__all__ = [
    "CONSOLE_METRICS",
    "DATASET_NAMES",
    "FOLDS_FILE",
    "HISTORY_KEYS",
    "MAX_SEED",
    "NON_RESULT_FIELDS",
    "REPORTED_METRICS",
    "STRATEGIES",
    "SYNTHETIC_PARAMS",
    "BenchmarkConfig",
    "BenchmarkInterrupted",
    "BenchmarkResult",
    "ConfigMismatchError",
    "FoldJournal",
    "InsufficientDataError",
    "append_fold",
    "baseline_strategy",
    "compare_strategies",
    "comparison_markdown",
    "config_fingerprint",
    "console_table",
    "environment",
    "fold_jobs",
    "fold_random_state",
    "fold_splits",
    "load_dataset",
    "make_model",
    "make_plots",
    "paired_comparison",
    "plot_label_weights",
    "plot_schedule",
    "plot_valid_auc",
    "read_journal",
    "result_settings",
    "results_markdown",
    "run_benchmark",
    "run_fold",
    "summarize",
    "write_csv",
    "write_json",
    "write_reports",
]

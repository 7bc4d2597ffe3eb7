"""The reference evaluation protocol (docs/method.md §10): data, folds, one model per fold job."""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler
from sklearn.utils import Bunch

from .._classifier import D2ACEMultiLabelClassifier
from ..datasets import MULAN_DATASETS, fetch_mulan, preprocess_reference
from ..metrics import evaluate
from ..sampler import BATCH_SELECTIONS

__all__ = [
    "DATASET_NAMES",
    "HISTORY_KEYS",
    "MAX_SEED",
    "STRATEGIES",
    "SYNTHETIC_PARAMS",
    "BenchmarkConfig",
    "BenchmarkInterrupted",
    "BenchmarkResult",
    "fold_jobs",
    "fold_random_state",
    "fold_splits",
    "load_dataset",
    "make_model",
    "run_benchmark",
    "run_fold",
]

#: Parameters of :func:`sklearn.datasets.make_multilabel_classification` for the built-in
#: ``"synthetic"`` data set (fixed seed: the same data on every machine).
SYNTHETIC_PARAMS: dict[str, Any] = {
    "n_samples": 6000,
    "n_features": 100,
    "n_classes": 20,
    "n_labels": 3,
    "length": 50,
    "allow_unlabeled": True,
    "random_state": 0,
}

#: Names accepted by :func:`load_dataset`: ``"synthetic"`` and the MULAN benchmarks.
DATASET_NAMES: tuple[str, ...] = ("synthetic", *MULAN_DATASETS)

#: The largest seed of :class:`BenchmarkConfig` (``2**32 - 1``: the folds are shuffled
#: by a :class:`numpy.random.RandomState`, which takes 32-bit seeds).
MAX_SEED: int = 2**32 - 1

#: Batch-selection strategies (values of the estimator's ``batch_selection``).
STRATEGIES: tuple[str, ...] = tuple(BATCH_SELECTIONS)

#: Per-epoch entries of the estimator's ``net_.history`` kept for every fold job.
HISTORY_KEYS: tuple[str, ...] = (
    "train_loss",
    "valid_loss",
    "valid_macro_auc",
    "dur",
    "selection_pressure",
    "mixture_weight",
    "selection_ess",
    "label_weights_uncertainty",
    "label_weights_hardness",
)

# Fold-result entries kept in memory only: results.json and the fold journal leave them out
# (one probability per test row and label: far larger than everything else, and the rows
# are recomputed by fold_splits).
_ARRAY_KEYS: tuple[str, ...] = ("proba", "test_index")


@dataclass
class BenchmarkConfig:
    """Settings of a benchmark run (everything that determines its numbers).

    Parameters
    ----------
    datasets : sequence of str, default=("synthetic",)
        Names from :data:`DATASET_NAMES`.
    strategies : sequence of str, default=("d2ace", "random")
        Values of the estimator's ``batch_selection``.
    n_folds : int, default=5
        Folds of the multi-label iterative stratification.
    seeds : sequence of int, default=(0,)
        One repeat of the whole cross-validation per seed: the seed shuffles the folds
        and (with the fold index) seeds the model, see :func:`fold_random_state`. Each
        in [0, :data:`MAX_SEED`].
    max_epochs, batch_size, lr, hidden_layer_sizes, validation_fraction, threshold, device
        Passed to :class:`~skd2ace.D2ACEMultiLabelClassifier`.
    preprocess : bool, default=True
        Apply :func:`~skd2ace.datasets.preprocess_reference` (drop labels with at most
        ``min_positives`` positives, then rows without any label).
    min_positives : int, default=20
    data_home : str or None, default=None
        Folder of the MULAN files; None uses ``$SKD2ACE_DATA`` (see
        :func:`~skd2ace.datasets.get_data_home`).
    n_jobs : int, default=1
        Parallel fold jobs (joblib; -1 uses every core). With more than one, every job
        runs torch single-threaded.
    torch_threads : int or None, default=1
        Torch intra-op threads of a job when ``n_jobs == 1`` (restored afterwards); None
        leaves torch's setting. One thread is the default because the default MLPs are
        too small to gain from more, and torch's thread pool slows down by an order of
        magnitude when other processes compete for the cores.
    verbose : int, default=0
        The estimator's ``verbose`` (1: one line per epoch).
    estimator_params : dict, default={}
        Further estimator parameters (e.g. ``{"selection_pressure": 4.0}``); not those
        set by the fields above, ``batch_selection`` or ``random_state``. All estimator
        parameters are validated here (``ValueError`` or ``TypeError``).
    """

    datasets: Sequence[str] = ("synthetic",)
    strategies: Sequence[str] = ("d2ace", "random")
    n_folds: int = 5
    seeds: Sequence[int] = (0,)
    max_epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    hidden_layer_sizes: Sequence[int] = (256,)
    validation_fraction: float = 0.1
    threshold: float = 0.5
    device: str = "cpu"
    preprocess: bool = True
    min_positives: int = 20
    data_home: str | None = None
    n_jobs: int = 1
    torch_threads: int | None = 1
    verbose: int = 0
    estimator_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.datasets = tuple(str(name).lower() for name in self.datasets)
        self.strategies = tuple(self.strategies)
        self.seeds = tuple(int(seed) for seed in self.seeds)
        self.hidden_layer_sizes = tuple(int(h) for h in self.hidden_layer_sizes)
        for name, values in (
            ("datasets", self.datasets),
            ("strategies", self.strategies),
            ("seeds", self.seeds),
        ):
            if not values:
                raise ValueError(f"{name} must not be empty.")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} holds duplicates: {list(values)}.")
        unknown = [name for name in self.datasets if name not in DATASET_NAMES]
        if unknown:
            raise ValueError(f"Unknown data set(s) {unknown}; choose from {list(DATASET_NAMES)}.")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"Unknown strategy(ies) {unknown}; choose from {list(STRATEGIES)}.")
        if min(self.seeds) < 0 or max(self.seeds) > MAX_SEED:
            # The folds are shuffled by a numpy RandomState, seeded by 32-bit integers.
            raise ValueError(f"seeds must be in [0, 2**32 - 1], got {list(self.seeds)}.")
        if self.n_folds < 2:
            raise ValueError(f"n_folds must be >= 2, got {self.n_folds}.")
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {self.max_epochs}.")
        if self.n_jobs == 0:
            raise ValueError("n_jobs must not be 0.")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1 or None, got {self.torch_threads}.")
        owned = sorted(set(self.estimator_params) & set(_protocol_params("d2ace", 0, self)))
        if owned:
            raise ValueError(
                f"estimator_params must not set {owned}: the configuration has its own "
                "fields for them (batch_selection comes from strategies, random_state "
                "from seeds and folds)."
            )
        # Every estimator parameter is checked now, not in the first fold job.
        for strategy in self.strategies:
            make_model(strategy, 0, self)[-1]._check_params()

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-friendly values."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` returns.

    Attributes
    ----------
    config : BenchmarkConfig
    datasets : dict of str to dict
        Per data set: its shape before and after preprocessing, sparsity, label names.
    folds : list of dict
        One per finished (dataset, strategy, seed, fold) job, see :func:`run_fold`; sorted
        by dataset, strategy, seed and fold in the configuration's order (as
        :func:`fold_jobs`). All of them unless the run was interrupted
        (:class:`BenchmarkInterrupted`).
    wall_time_s : float
        Wall-clock seconds of the :func:`run_benchmark` call (data loading included); for
        a resumed run, of the resumed part only.
    n_resumed : int, default=0
        How many of ``folds`` were finished before the call (its ``done`` argument).
    """

    config: BenchmarkConfig
    datasets: dict[str, dict[str, Any]]
    folds: list[dict[str, Any]]
    wall_time_s: float
    n_resumed: int = 0

    @property
    def n_fold_jobs(self) -> int:
        """Number of fold jobs of the configuration (``len(fold_jobs(config))``)."""
        return len(fold_jobs(self.config))

    @property
    def complete(self) -> bool:
        """Whether every fold job of the configuration is in ``folds``."""
        return len(self.folds) == self.n_fold_jobs


# --------------------------------------------------------------------------- data


def load_dataset(
    name: str,
    *,
    data_home: str | os.PathLike | None = None,
    preprocess: bool = True,
    min_positives: int = 20,
) -> Bunch:
    """Load a benchmark data set, with the reference preprocessing by default.

    Parameters
    ----------
    name : str
        ``"synthetic"`` (:func:`sklearn.datasets.make_multilabel_classification` with
        :data:`SYNTHETIC_PARAMS`) or a MULAN name read by
        :func:`~skd2ace.datasets.fetch_mulan`.
    data_home : str or path-like, optional
        Folder of the MULAN files; default ``$SKD2ACE_DATA``.
    preprocess : bool, default=True
        Drop the labels with at most ``min_positives`` positives, then the rows left
        without a label (:func:`~skd2ace.datasets.preprocess_reference`).
    min_positives : int, default=20

    Returns
    -------
    sklearn.utils.Bunch
        ``X`` (ndarray or CSR matrix), ``Y`` (int8 ndarray), ``name``, ``label_names``
        and ``info`` (a JSON-friendly dict: shapes before/after preprocessing, ...).

    Examples
    --------
    >>> data = load_dataset("synthetic")
    >>> data.X.shape[1], data.Y.shape[1], data.info["sparse"]
    (100, 20, False)
    """
    key = str(name).lower()
    if key == "synthetic":
        from sklearn.datasets import make_multilabel_classification

        X, Y = make_multilabel_classification(**SYNTHETIC_PARAMS)
        X = X.astype(np.float64)
        label_names = [f"label_{j}" for j in range(Y.shape[1])]
        source = f"sklearn.datasets.make_multilabel_classification(**{SYNTHETIC_PARAMS})"
    elif key in MULAN_DATASETS:
        bunch = fetch_mulan(key, data_home=data_home)
        X, Y, label_names = bunch.X, bunch.Y, list(bunch.label_names)
        source = str(bunch.filename) if "filename" in bunch else key
    else:
        raise ValueError(f"Unknown data set {name!r}; choose from {list(DATASET_NAMES)}.")
    Y = Y.toarray() if sp.issparse(Y) else np.asarray(Y)
    raw_shape = (int(X.shape[0]), int(X.shape[1]), int(Y.shape[1]))
    if preprocess:
        X, Y, _, label_mask = preprocess_reference(X, Y, min_positives=min_positives)
        label_names = [n for n, keep in zip(label_names, label_mask, strict=True) if keep]
    if sp.issparse(X):
        X = X.tocsr()
    Y = np.asarray(Y, dtype=np.int8)
    info = {
        "name": key,
        "source": source,
        "preprocessed": bool(preprocess),
        "min_positives": int(min_positives) if preprocess else None,
        "n_samples_raw": raw_shape[0],
        "n_labels_raw": raw_shape[2],
        "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]),
        "n_labels": int(Y.shape[1]),
        "label_cardinality": float(Y.sum(axis=1).mean()) if Y.size else 0.0,
        "sparse": bool(sp.issparse(X)),
        "label_names": label_names,
    }
    return Bunch(X=X, Y=Y, name=key, label_names=label_names, info=info)


# --------------------------------------------------------------------------- folds


def fold_splits(Y: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Multi-label iteratively stratified K-fold ``(train, test)`` index pairs.

    :class:`iterstrat.ml_stratifiers.MultilabelStratifiedKFold` with ``shuffle=True``
    and ``random_state=seed``: the same ``(Y, n_folds, seed)`` always gives the same
    folds, whatever the strategy.

    Parameters
    ----------
    Y : ndarray of shape (n_samples, n_labels)
    n_folds : int
    seed : int

    Returns
    -------
    list of (ndarray, ndarray)

    Examples
    --------
    >>> import numpy as np
    >>> Y = np.random.default_rng(0).integers(0, 2, size=(40, 3))
    >>> splits = fold_splits(Y, 4, seed=0)
    >>> len(splits), sorted(np.concatenate([test for _, test in splits])) == list(range(40))
    (4, True)
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    Y = np.asarray(Y)
    cv = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [
        (np.asarray(train, dtype=np.intp), np.asarray(test, dtype=np.intp))
        for train, test in cv.split(np.zeros((Y.shape[0], 1)), Y)
    ]


def fold_random_state(seed: int, fold: int) -> int:
    """The estimator's ``random_state`` for repeat ``seed`` and fold ``fold``.

    Every strategy gets the same value for the same ``(seed, fold)``, hence the same
    validation split and weight initialisation: the comparison is paired.

    Examples
    --------
    >>> fold_random_state(0, 1) == fold_random_state(0, 1) != fold_random_state(0, 2)
    True
    """
    state = np.random.SeedSequence([int(seed), int(fold)]).generate_state(1, dtype=np.uint32)
    return int(state[0] >> 1)


def fold_jobs(config: BenchmarkConfig) -> list[tuple[str, str, int, int]]:
    """Every ``(dataset, strategy, seed, fold)`` job of ``config``, in report order.

    The order of :attr:`BenchmarkResult.folds`: data sets, then strategies, then seeds in
    the configuration's order, then folds.

    Examples
    --------
    >>> jobs = fold_jobs(BenchmarkConfig(n_folds=2, seeds=[0, 1]))
    >>> len(jobs), jobs[:3]
    (8, [('synthetic', 'd2ace', 0, 0), ('synthetic', 'd2ace', 0, 1), ('synthetic', 'd2ace', 1, 0)])
    """
    return _job_keys(config.datasets, config.strategies, config.seeds, config.n_folds)


def _job_keys(
    datasets: Sequence[str], strategies: Sequence[str], seeds: Sequence[int], n_folds: int
) -> list[tuple[str, str, int, int]]:
    # From the four fields rather than a BenchmarkConfig: a journal's recorded settings
    # (a plain dict) have them too.
    return [
        (dataset, strategy, int(seed), fold)
        for dataset in datasets
        for strategy in strategies
        for seed in seeds
        for fold in range(int(n_folds))
    ]


def _job_key(result: dict[str, Any]) -> tuple[str, str, int, int]:
    """The ``(dataset, strategy, seed, fold)`` of a fold result."""
    return (result["dataset"], result["strategy"], int(result["seed"]), int(result["fold"]))


def make_model(
    strategy: str, random_state: int, config: BenchmarkConfig, *, sparse: bool = False
) -> Pipeline:
    """The fold model: feature scaling, then the classifier with ``strategy``.

    Min-max scaling as in the reference; for sparse ``X`` :class:`MaxAbsScaler`, which
    keeps the matrix sparse (min-max scaling would shift the zeros) and equals min-max
    scaling on non-negative features such as the MULAN bag-of-words sets.

    Examples
    --------
    >>> pipe = make_model("random", 0, BenchmarkConfig(max_epochs=3))
    >>> [name for name, _ in pipe.steps]
    ['minmaxscaler', 'd2acemultilabelclassifier']
    >>> pipe[-1].batch_selection, pipe[-1].max_epochs
    ('random', 3)
    """
    params = {**config.estimator_params, **_protocol_params(strategy, random_state, config)}
    scaler = MaxAbsScaler() if sparse else MinMaxScaler()
    return make_pipeline(scaler, D2ACEMultiLabelClassifier(**params))


def _protocol_params(strategy: str, random_state: int, config: BenchmarkConfig) -> dict:
    """The estimator parameters the protocol sets itself (``estimator_params`` may not)."""
    return {
        "max_epochs": config.max_epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "hidden_layer_sizes": tuple(config.hidden_layer_sizes),
        "validation_fraction": config.validation_fraction,
        "threshold": config.threshold,
        "device": config.device,
        "verbose": config.verbose,
        "batch_selection": strategy,
        "random_state": random_state,
        # The job sets torch's threads (torch_threads, n_jobs) for both strategies alike.
        "torch_threads": None,
    }


@functools.cache
def _warm_up_torch() -> None:
    """Pay torch's one-off cost of the first optimizer step in a process (~1 s of
    imports) outside the timed fits (once per process): it would land on whichever
    job runs first."""
    import torch

    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([weight])
    weight.sum().backward()
    optimizer.step()


class InsufficientDataError(ValueError):
    """A data set has too few rows or labels left for the protocol's folds."""


def _check_enough_data(name: str, Y: np.ndarray, config: BenchmarkConfig) -> None:
    """Raise :class:`InsufficientDataError` unless ``Y`` has a row per fold and at least
    two labels: the multi-label iterative stratification rejects a single label column
    (it reads it as binary targets)."""
    n_rows, n_labels = Y.shape
    if n_rows >= config.n_folds and n_labels >= 2:
        return
    where = (
        f"after preprocessing (labels with <= {config.min_positives} positives dropped, "
        "then rows without a label)"
        if config.preprocess
        else "(no preprocessing)"
    )
    if n_rows < config.n_folds:
        needs = f"too few rows for {config.n_folds} folds"
    else:
        needs = "the multi-label protocol needs at least 2 labels"
        if config.preprocess:
            needs += " (a lower min_positives keeps more)"
    raise InsufficientDataError(
        f"Data set {name!r} has {n_rows} rows and {n_labels} label{'s' * (n_labels != 1)} "
        f"{where}: {needs}."
    )


@contextmanager
def _torch_threads(n_threads: int | None):
    """Run torch with ``n_threads`` intra-op threads (None: unchanged), then restore."""
    import torch

    if n_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(n_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _ctrl_c_noted():
    """Note every Ctrl-C (SIGINT) during the block, then let it act as before.

    The estimator's fit catches ``KeyboardInterrupt`` (skorch stops training after the
    current batch and returns a usable model, and its early stopping raises it too), so
    a Ctrl-C during a fold's fit would otherwise end that fold early, count the cut-short
    model as a finished job, and go on with the next one. Only in the main thread
    (where Python runs signal handlers) and over a Python-level handler (the default
    one raises ``KeyboardInterrupt``); an ignored SIGINT stays ignored.
    """
    import signal
    import threading

    seen: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield seen
        return

    def note(signum, frame):
        seen.append(signum)
        previous(signum, frame)

    signal.signal(signal.SIGINT, note)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def _history(net) -> dict[str, list]:
    """Per-epoch values of :data:`HISTORY_KEYS` (None where an epoch lacks a key)."""
    rows = list(net.history)
    out: dict[str, list] = {"epoch": [int(row.get("epoch", i + 1)) for i, row in enumerate(rows)]}
    for key in HISTORY_KEYS:
        values = [row.get(key) for row in rows]
        out[key] = [_plain(v) for v in values]
    return out


def _plain(value):
    """numpy scalars and arrays as Python floats and lists (JSON-friendly)."""
    if isinstance(value, np.ndarray):
        return value.astype(float).tolist()
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    if isinstance(value, (np.floating, np.integer, float, int)) and not isinstance(value, bool):
        return float(value)
    return value


def _json_safe(value):
    """Replace non-finite floats by None and numpy values by Python ones (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def run_fold(
    X,
    Y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    *,
    dataset: str,
    strategy: str,
    seed: int,
    fold: int,
    config: BenchmarkConfig,
    single_thread: bool = False,
    return_proba: bool = False,
) -> dict[str, Any]:
    """Fit one fold's model and score it on the fold's test part.

    Parameters
    ----------
    X : ndarray or sparse matrix, Y : ndarray
        The whole (preprocessed) data set.
    train, test : ndarray of int
        The fold's rows (:func:`fold_splits`).
    dataset, strategy : str
    seed, fold : int
        Identify the job; the estimator's ``random_state`` is
        ``fold_random_state(seed, fold)``.
    config : BenchmarkConfig
    single_thread : bool, default=False
        Run torch on one thread (parallel jobs); else on ``config.torch_threads``.
    return_proba : bool, default=False
        Add the test probabilities (``"proba"``) and rows (``"test_index"``).

    Returns
    -------
    dict
        ``dataset``, ``strategy``, ``seed``, ``fold``, ``random_state``, ``n_train``,
        ``n_test``, ``metrics`` (:func:`~skd2ace.metrics.evaluate` on the test part),
        ``fit_time_s``, ``predict_time_s``, ``n_epochs``, ``best_epoch`` (1-based, best
        validation macro-AUC: the weights kept) and ``history`` (lists per epoch of
        :data:`HISTORY_KEYS`).

    Raises
    ------
    KeyboardInterrupt
        Ctrl-C during the fit: the estimator stops training early and keeps the model
        (see :meth:`~skd2ace.D2ACEMultiLabelClassifier.fit`), which is not the fold's
        result, so the interruption goes on to the caller instead.
    """
    random_state = fold_random_state(seed, fold)
    model = make_model(strategy, random_state, config, sparse=sp.issparse(X))
    _warm_up_torch()
    with _torch_threads(1 if single_thread else config.torch_threads), _ctrl_c_noted() as ctrl_c:
        start = time.perf_counter()
        model.fit(X[train], Y[train])
        fit_time = time.perf_counter() - start
        if ctrl_c:  # the fit stopped early on Ctrl-C: not this job's result
            raise KeyboardInterrupt
        start = time.perf_counter()
        proba = model.predict_proba(X[test])
        predict_time = time.perf_counter() - start
    scores = evaluate(Y[test], proba, threshold=config.threshold)
    history = _history(model[-1].net_)
    auc = np.array([np.nan if v is None else v for v in history["valid_macro_auc"]], float)
    best_epoch = int(np.nanargmax(auc)) + 1 if np.isfinite(auc).any() else len(auc)
    out = {
        "dataset": dataset,
        "strategy": strategy,
        "seed": int(seed),
        "fold": int(fold),
        "random_state": random_state,
        "n_train": len(train),
        "n_test": len(test),
        "metrics": scores,
        "fit_time_s": fit_time,
        "predict_time_s": predict_time,
        "n_epochs": len(history["epoch"]),
        "best_epoch": best_epoch,
        "history": history,
    }
    if return_proba:
        out["proba"] = proba
        out["test_index"] = test
    return out


# --------------------------------------------------------------------------- the run


class BenchmarkInterrupted(KeyboardInterrupt):
    """:func:`run_benchmark` was interrupted (Ctrl-C) after some fold jobs finished.

    A :class:`KeyboardInterrupt`, so code that does not know it still stops as on Ctrl-C.

    Attributes
    ----------
    result : BenchmarkResult
        The finished fold jobs (resumed ones included); ``result.complete`` is False.
    """

    def __init__(self, result: BenchmarkResult) -> None:
        super().__init__(f"{len(result.folds)} of {result.n_fold_jobs} fold jobs finished")
        self.result = result


def run_benchmark(
    config: BenchmarkConfig,
    *,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    return_proba: bool = False,
    done: Iterable[dict[str, Any]] = (),
    journal: str | os.PathLike | None = None,
) -> BenchmarkResult:
    """Run every (dataset, strategy, seed, fold) job of ``config`` not already ``done``.

    The data sets are loaded (and checked) first; the folds of a (dataset, seed) are
    computed once and shared by all strategies, and the strategies of a (seed, fold)
    share the estimator's ``random_state``, so their results are paired. Every job is
    seeded by its (seed, fold) alone, so a job gives the same result whether it runs in
    one call with all the others or in a later call that resumes an interrupted run.

    Parameters
    ----------
    config : BenchmarkConfig
    progress : callable, optional
        Called as ``progress(n_done, n_total, fold_result)`` whenever a job finishes
        (in completion order); ``n_done`` counts the ``done`` results too.
    return_proba : bool, default=False
        Keep the test probabilities in every fold result (see :func:`run_fold`); every
        ``done`` result must then have them (a journal does not keep them).
    done : iterable of dict, default=()
        Fold results finished earlier with the same :func:`result_settings`, e.g.
        ``read_journal(path).folds`` after :meth:`FoldJournal.check`: their jobs are
        skipped and they are part of the returned result.
    journal : str or path-like, optional
        A JSON-lines file that keeps every finished job (see :func:`read_journal`): once
        the data are loaded it is rewritten to hold the ``done`` results only (an
        existing file is replaced), then every job that finishes is appended at once
        (:func:`append_fold`), so an interruption, a crash or a killed machine loses at
        most the jobs still running.

    Returns
    -------
    BenchmarkResult

    Raises
    ------
    InsufficientDataError
        A data set has fewer rows than folds, or fewer than 2 labels, after
        preprocessing.
    BenchmarkInterrupted
        Ctrl-C (:class:`KeyboardInterrupt`) while the jobs ran; its ``result`` holds the
        jobs finished so far (also in ``journal``).
    ValueError
        ``done`` holds a job twice or a job that is not one of ``config``.

    Examples
    --------
    >>> config = BenchmarkConfig(n_folds=2, max_epochs=2)
    >>> result = run_benchmark(config, journal="out/folds.jsonl")  # doctest: +SKIP
    >>> len(result.folds)  # 2 strategies x 1 seed x 2 folds  # doctest: +SKIP
    4

    After an interruption, run the missing jobs only:

    >>> journal = read_journal("out/folds.jsonl")  # doctest: +SKIP
    >>> journal.check(config)  # doctest: +SKIP
    >>> result = run_benchmark(config, done=journal.folds, journal=journal.path)  # doctest: +SKIP
    """
    from joblib import Parallel, delayed, effective_n_jobs

    from ._journal import _start_journal, append_fold  # (the journal module imports this one)

    start = time.perf_counter()
    all_jobs = fold_jobs(config)
    finished: dict[tuple[str, str, int, int], dict[str, Any]] = {}
    for r in done:
        key = _job_key(r)
        if key in finished:
            raise ValueError(f"done holds the fold job {key} twice.")
        finished[key] = r
    unknown = sorted(set(finished) - set(all_jobs))
    if unknown:
        raise ValueError(f"done holds fold jobs that are not in the configuration: {unknown}.")
    if return_proba and any("proba" not in r for r in finished.values()):
        raise ValueError(
            "return_proba=True needs the test probabilities of every done result; fold "
            "results read from a journal do not keep them."
        )
    data = {
        name: load_dataset(
            name,
            data_home=config.data_home,
            preprocess=config.preprocess,
            min_positives=config.min_positives,
        )
        for name in config.datasets
    }
    n_jobs = effective_n_jobs(config.n_jobs)
    jobs = []
    for name, bunch in data.items():
        _check_enough_data(name, bunch.Y, config)
        for seed in config.seeds:
            for fold, (train, test) in enumerate(fold_splits(bunch.Y, config.n_folds, seed)):
                for strategy in config.strategies:
                    if (name, strategy, seed, fold) in finished:
                        continue
                    jobs.append(
                        delayed(run_fold)(
                            bunch.X,
                            bunch.Y,
                            train,
                            test,
                            dataset=name,
                            strategy=strategy,
                            seed=seed,
                            fold=fold,
                            config=config,
                            single_thread=n_jobs > 1,
                            return_proba=return_proba,
                        )
                    )
    folds = list(finished.values())
    if journal is not None:
        # Rewritten rather than appended to: the file then holds exactly this run's
        # results, without a line cut short by a crash or the results of other settings.
        _start_journal(journal, folds, config)
    order = {key: i for i, key in enumerate(all_jobs)}

    def result() -> BenchmarkResult:
        return BenchmarkResult(
            config=config,
            datasets={name: bunch.info for name, bunch in data.items()},
            folds=sorted(folds, key=lambda r: order[_job_key(r)]),
            wall_time_s=time.perf_counter() - start,
            n_resumed=len(finished),
        )

    if jobs:
        try:  # results in completion order (joblib >= 1.4), else in submission order
            runner = Parallel(n_jobs=min(n_jobs, len(jobs)), return_as="generator_unordered")
        except ValueError:
            runner = Parallel(n_jobs=min(n_jobs, len(jobs)), return_as="generator")
        try:
            # closing: an interruption stops the jobs still running at once (joblib
            # aborts its workers when the generator is closed).
            with closing(runner(jobs)) as finishing:
                for fold_result in finishing:
                    folds.append(fold_result)
                    if journal is not None:
                        append_fold(journal, fold_result, config)
                    if progress is not None:
                        progress(len(folds), len(all_jobs), fold_result)
        except KeyboardInterrupt as exc:
            raise BenchmarkInterrupted(result()) from exc
    return result()

"""The fold journal of a benchmark run: every finished fold job kept on disk at once,
so that an interrupted run (Ctrl-C, a crash, a lost machine) resumes with the missing
jobs only (``skd2ace benchmark --resume``)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._protocol import _ARRAY_KEYS, BenchmarkConfig, _job_key, _job_keys, _json_safe

__all__ = [
    "FOLDS_FILE",
    "NON_RESULT_FIELDS",
    "ConfigMismatchError",
    "FoldJournal",
    "append_fold",
    "config_fingerprint",
    "read_journal",
    "result_settings",
]

#: Name of the fold journal in an output folder: ``skd2ace benchmark`` passes
#: ``<out>/folds.jsonl`` as :func:`run_benchmark`'s ``journal`` (see :func:`read_journal`).
FOLDS_FILE = "folds.jsonl"

# Why these fields cannot change a fold result (everything else in BenchmarkConfig can):
# - data_home says where the MULAN files are, not what they hold: the same files reached
#   through another path, a symbolic link or another machine's mount give the same data.
# - n_jobs and torch_threads say how many jobs and torch threads share the cores. Every
#   job builds its own estimator, seeded by its (seed, fold) alone (fold_random_state),
#   on folds computed from (Y, n_folds, seed) alone, so the split, the initialisation and
#   the batch order do not depend on them (per-job seeding is what makes a resumed run
#   equal an uninterrupted one). Torch does not promise bit-identical floating-point
#   reductions for every thread count, so with large layers the last bits of a loss may
#   differ; that is the rounding noise of another machine, not another experiment, and at
#   the default sizes the results are bit-identical with 1 and 2 threads, and with n_jobs
#   1 and 2 (checked on the synthetic data).
#   Leaving them out lets a resumed run use another parallelism or another machine.
# - verbose only prints.
#: :class:`BenchmarkConfig` fields left out of :func:`result_settings` (and of the
#: fingerprint) because they cannot change a fold result.
NON_RESULT_FIELDS: tuple[str, ...] = ("data_home", "n_jobs", "torch_threads", "verbose")

# Version of the journal's line layout, written in every line and checked when reading.
_JOURNAL_FORMAT = 1


class ConfigMismatchError(ValueError):
    """A fold journal holds results of other result-determining settings.

    Attributes
    ----------
    differences : list of str
        One ``"field: <journal value> in the journal, <value> now"`` per differing field of
        :func:`result_settings`.
    """

    def __init__(self, message: str, differences: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.differences = list(differences)


def result_settings(config: BenchmarkConfig) -> dict[str, Any]:
    """The fields of ``config`` that determine the fold results, as JSON values.

    Every field of :class:`BenchmarkConfig` but :data:`NON_RESULT_FIELDS` (data folder,
    parallelism, verbosity); ``min_positives`` is None without preprocessing, where it
    is unused.

    Examples
    --------
    >>> settings = result_settings(BenchmarkConfig(n_jobs=2, max_epochs=3))
    >>> settings["max_epochs"], "n_jobs" in settings
    (3, False)
    """
    settings = {k: v for k, v in config.to_dict().items() if k not in NON_RESULT_FIELDS}
    if not config.preprocess:
        settings["min_positives"] = None
    # Through JSON and back: the values compare equal to those read from a journal
    # (tuples become lists; an estimator parameter JSON cannot hold becomes its repr).
    return json.loads(json.dumps(_json_safe(settings), default=_stable_json))


def _stable_json(value) -> Any:
    """A JSON stand-in for an estimator parameter JSON cannot hold, the same in every
    process (``repr`` of most objects holds their memory address): a class or function
    by its qualified name, an object with ``get_params`` (a callback, a scikit-learn
    estimator) by its class and parameters, anything else by its class and ``repr``."""
    if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
        return f"{value.__module__}.{value.__qualname__}"
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if hasattr(value, "get_params"):
        return {kind: _json_safe(value.get_params(deep=False))}
    return {kind: repr(value)}


def config_fingerprint(config: BenchmarkConfig) -> str:
    """A short hash of :func:`result_settings`: equal fingerprints, equal fold results.

    (Up to the last bits that another torch thread count or machine may change, see
    :data:`NON_RESULT_FIELDS`.)

    Examples
    --------
    >>> a = config_fingerprint(BenchmarkConfig(max_epochs=3))
    >>> a == config_fingerprint(BenchmarkConfig(max_epochs=3, n_jobs=2, verbose=1))
    True
    >>> a == config_fingerprint(BenchmarkConfig(max_epochs=4))
    False
    """
    return _settings_hash(result_settings(config))


def _settings_hash(settings: dict[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class FoldJournal:
    """The contents of a fold journal (see :func:`read_journal`).

    Attributes
    ----------
    path : pathlib.Path
    folds : list of dict
        The finished fold results, in the order they finished; usable by
        :func:`run_benchmark` (``done``) and the report writers like fresh ones.
    settings : dict or None
        :func:`result_settings` of the run that wrote them (None for an empty journal).
    fingerprint : str or None
        :func:`config_fingerprint` of that run.
    """

    path: Path
    folds: list[dict[str, Any]]
    settings: dict[str, Any] | None = None
    fingerprint: str | None = None

    @property
    def n_fold_jobs(self) -> int:
        """Number of fold jobs of the run that wrote the journal (0 if empty)."""
        if self.settings is None:
            return 0
        s = self.settings
        return len(_job_keys(s["datasets"], s["strategies"], s["seeds"], s["n_folds"]))

    @property
    def complete(self) -> bool:
        """Whether every fold job of that run is in the journal (True if empty)."""
        return len({_job_key(r) for r in self.folds}) >= self.n_fold_jobs

    def check(self, config: BenchmarkConfig) -> None:
        """Raise :class:`ConfigMismatchError` unless the journal's results belong to
        ``config`` (same :func:`config_fingerprint`; an empty journal belongs to any)."""
        if self.fingerprint is None or self.fingerprint == config_fingerprint(config):
            return
        now = result_settings(config)
        then = self.settings or {}
        differences = [
            f"{key}: {then.get(key)!r} in the journal, {now.get(key)!r} now"
            for key in sorted(set(then) | set(now))
            if then.get(key) != now.get(key)
        ]
        raise ConfigMismatchError(
            f"{self.path} holds the fold results of other settings "
            f"(fingerprint {self.fingerprint}, now {config_fingerprint(config)}): "
            + ("; ".join(differences) or "the settings differ"),
            differences,
        )


def _journal_line(result: dict[str, Any], settings: dict[str, Any]) -> str:
    # The same conversion as results.json (strict JSON: non-finite numbers become null),
    # on one line; the settings are repeated in every line so that each line says which
    # configuration made it, whatever happened to the others.
    record = {
        "format": _JOURNAL_FORMAT,
        "fingerprint": _settings_hash(settings),
        "settings": settings,
        "result": {k: v for k, v in result.items() if k not in _ARRAY_KEYS},
    }
    return json.dumps(_json_safe(record), allow_nan=False, separators=(",", ":")) + "\n"


def append_fold(path: str | os.PathLike, result: dict[str, Any], config: BenchmarkConfig) -> None:
    """Append one finished fold result to the journal ``path`` (one JSON line, flushed).

    The line holds the result as in ``results.json`` (no ``proba`` or ``test_index``),
    :func:`result_settings` of ``config`` and their :func:`config_fingerprint`.
    :func:`run_benchmark` calls it for every job that finishes when given a ``journal``.

    A line cut short at the end of the file (a crash while it was written) is dropped
    first, as :func:`read_journal` ignores it: the new line must not be glued to it.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> config = BenchmarkConfig(n_folds=2, max_epochs=2)
    >>> fold = {"dataset": "synthetic", "strategy": "random", "seed": 0, "fold": 1,
    ...         "metrics": {"macro_auc": 0.75}, "history": {"train_loss": [0.5, 0.4]}}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     append_fold(Path(tmp) / "folds.jsonl", fold, config)
    ...     read_journal(Path(tmp) / "folds.jsonl").folds == [fold]
    True
    """
    path = Path(path)
    line = _journal_line(result, result_settings(config))
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":  # rare (after a crash): read it all, cut the tail
                fh.seek(0)
                fh.truncate(fh.read().rfind(b"\n") + 1)
    with open(path, "a", encoding="utf-8") as fh:  # closing flushes; no fsync needed
        fh.write(line)


@contextmanager
def _atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[Any]:
    """Open ``path`` for writing so that it changes at once, when the block ends.

    The block writes a temporary file next to ``path`` (same folder: same file system),
    which then replaces ``path`` (:func:`os.replace`). An interruption or an error leaves
    the old file, or none, never a half-written one; the temporary file is removed.
    Text modes are UTF-8 unless ``encoding`` is given; ``kwargs`` go to :func:`open`.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _start_journal(
    path: str | os.PathLike, results: Sequence[dict[str, Any]], config: BenchmarkConfig
) -> None:
    """(Re)write the journal with ``results`` only, atomically: an interruption leaves the
    old file or the new one, and a line cut short by a crash is dropped for good."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = result_settings(config)
    with _atomic_open(path) as fh:
        fh.writelines(_journal_line(r, settings) for r in results)


def _fold_from_json(result: dict[str, Any]) -> dict[str, Any]:
    # Metrics are floats in memory, nan where undefined (evaluate); JSON holds null.
    # History entries stay None: every reader treats None and nan alike (an epoch without
    # the value), so the reports come out the same.
    metrics = result.get("metrics") or {}
    result["metrics"] = {k: float("nan") if v is None else v for k, v in metrics.items()}
    return result


def read_journal(path: str | os.PathLike) -> FoldJournal:
    """Read a fold journal written by :func:`run_benchmark` (or :func:`append_fold`).

    A last line cut short (a crash or a killed machine while it was written: no newline
    at its end) is ignored: its job counts as not finished. A line repeating an earlier
    line's fold job with the same result (a copy) is ignored too.

    Parameters
    ----------
    path : str or path-like
        The journal, e.g. ``<out>/folds.jsonl`` of ``skd2ace benchmark``.

    Returns
    -------
    FoldJournal
        Its fold results (metrics back to floats, ``nan`` where ``results.json`` has
        ``null``), the recorded settings and fingerprint. Check them against a
        configuration with :meth:`FoldJournal.check` before resuming.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        A complete line is not a journal line (not UTF-8 text, not JSON, ...), two lines
        hold different results of one fold job, or the lines were written by runs of
        different settings. The message names the file (and the lines).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> config = BenchmarkConfig(n_folds=2, max_epochs=2)
    >>> fold = {"dataset": "synthetic", "strategy": "d2ace", "seed": 0, "fold": 0,
    ...         "metrics": {"macro_auc": float("nan")}, "history": {}}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     append_fold(Path(tmp) / "folds.jsonl", fold, config)
    ...     journal = read_journal(Path(tmp) / "folds.jsonl")
    >>> journal.folds[0]["metrics"], journal.n_fold_jobs, journal.complete
    ({'macro_auc': nan}, 4, False)
    >>> journal.check(config)  # no error: the results belong to this configuration
    >>> try:
    ...     journal.check(BenchmarkConfig(n_folds=2, max_epochs=3))
    ... except ConfigMismatchError as exc:
    ...     print(exc.differences)
    ['max_epochs: 2 in the journal, 3 now']
    """
    path = Path(path)
    with open(path, "rb") as fh:
        # A line is written with its newline in one go: the text after the last newline
        # is a line cut short (ignored; append_fold drops it before writing).
        *lines, _ = fh.read().split(b"\n")
    records = []
    seen: dict[tuple[str, str, int, int], tuple[int, dict[str, Any]]] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            # Decoded line by line: the error then names the line (UnicodeDecodeError is
            # a ValueError), and json.loads would guess another encoding from raw bytes.
            line = raw.decode("utf-8")
            record = json.loads(line)
            if record.get("format") != _JOURNAL_FORMAT:
                raise ValueError(f"format {record.get('format')!r}")
            _job_key(record["result"])
            if not isinstance(record["settings"], dict) or not record["fingerprint"]:
                raise TypeError("no settings or fingerprint")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"{path}, line {number}: not a fold journal line ({exc}). Repair or delete "
                "that line (the other lines keep their jobs), or delete the file or choose "
                "another --out to start over."
            ) from None
        key = _job_key(record["result"])
        if key in seen:
            # The same job twice (a line copied, or two runs' journals joined): a copy
            # adds nothing and is dropped; of two different results neither is chosen.
            first_number, first = seen[key]
            if record != first:
                raise ValueError(
                    f"{path}, lines {first_number} and {number}: two different results of "
                    f"the fold job {key} (dataset, strategy, seed, fold). Delete one of the "
                    "two lines, or delete the file or choose another --out to start over."
                )
            continue
        seen[key] = (number, record)
        records.append(record)
    fingerprints = sorted({r["fingerprint"] for r in records})
    if len(fingerprints) > 1:
        raise ValueError(
            f"{path} mixes the fold results of runs with different settings "
            f"(fingerprints {fingerprints})."
        )
    return FoldJournal(
        path=path,
        folds=[_fold_from_json(r["result"]) for r in records],
        settings=records[0]["settings"] if records else None,
        fingerprint=fingerprints[0] if records else None,
    )

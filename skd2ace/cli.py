"""The ``skd2ace`` command line.

``skd2ace`` (or ``skd2ace run``) is the main job: it trains D2ACE and random batch
selection on the built-in synthetic multi-label data under the reference protocol and
prints a comparison table. ``skd2ace benchmark`` is the same run with the full protocol's
defaults (100 epochs) and any data sets, strategies, folds and seeds. Both write
``results.md``, ``results.csv``, ``results.json``, ``comparison.md`` and PNG plots into
``--out`` (default ``./skd2ace-out``).

Every fold job is saved in ``--out``'s ``folds.jsonl`` as soon as it finishes. Ctrl-C
writes the reports of the jobs done so far and exits with code 130; the same command
with ``--resume`` runs only the jobs that are missing. Without ``--resume``, a
``folds.jsonl`` of an unfinished run is refused (it is not overwritten), a finished
one is replaced.

Examples
--------
.. code-block:: console

    $ skd2ace                                   # the main job (about a minute)
    $ SKD2ACE_DATA=/data/mulan skd2ace benchmark --datasets emotions yeast --seeds 0 1 2
    $ python -m skd2ace benchmark --datasets emotions --folds 2 --epochs 5 --out out/
    $ python -m skd2ace benchmark --datasets emotions --folds 2 --epochs 5 --out out/ --resume
"""

from __future__ import annotations

import argparse
import ast
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when needed: --help stays fast
    from .benchmark import BenchmarkConfig, BenchmarkResult

__all__ = ["BENCHMARK_DEFAULTS", "RUN_DEFAULTS", "build_parser", "main"]

#: Defaults of ``skd2ace run`` (the main job): small, about a minute on two cores.
RUN_DEFAULTS: dict[str, Any] = {
    "datasets": ["synthetic"],
    "strategies": ["d2ace", "random"],
    "folds": 5,
    "epochs": 80,
    "seeds": [0],
}

#: Defaults of ``skd2ace benchmark``: the reference protocol (docs/method.md §10).
BENCHMARK_DEFAULTS: dict[str, Any] = {
    "datasets": ["synthetic"],
    "strategies": ["d2ace", "random"],
    "folds": 5,
    "epochs": 100,
    "seeds": [0],
}

_SUBCOMMANDS = ("run", "benchmark")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Raw descriptions; "(default: ...)" added to options with a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and action.option_strings
            and not any(default is v for v in (None, True, False, argparse.SUPPRESS))
            and default != []
        ):
            if isinstance(default, list):
                text += " (default: " + " ".join(map(str, default)) + ")"
            else:
                text += " (default: %(default)s)"
        return text


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        value = _int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _seed(text: str) -> int:
    from .benchmark import MAX_SEED

    value = _int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32 - 1], got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _n_jobs(text: str) -> int:
    value = _int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must not be 0 (-1: all cores)")
    return value


def _param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def _add_options(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    from .benchmark import DATASET_NAMES, STRATEGIES

    data = parser.add_argument_group("data")
    data.add_argument(
        "--datasets",
        nargs="+",
        metavar="NAME",
        type=str.lower,  # before the choices check: any case, as fetch_mulan
        choices=DATASET_NAMES,
        default=defaults["datasets"],
        help="data sets: 'synthetic' (built in) or MULAN names read from --data-home "
        f"(choices, any case: {', '.join(DATASET_NAMES)})",
    )
    data.add_argument(
        "--data-home",
        metavar="DIR",
        default=None,
        help="folder of the MULAN files (NAME/NAME.arff, NAME/NAME.xml); "
        "default: $SKD2ACE_DATA, else ~/skd2ace_data",
    )
    data.add_argument(
        "--no-preprocess",
        dest="preprocess",
        action="store_false",
        help="skip the reference preprocessing (dropping labels with <= --min-positives "
        "positives, then rows without a label)",
    )
    data.add_argument(
        "--min-positives",
        type=_int_at_least(0),
        default=20,
        metavar="N",
        help="labels with at most N positives are dropped",
    )

    proto = parser.add_argument_group("protocol")
    proto.add_argument(
        "--strategies",
        nargs="+",
        metavar="NAME",
        choices=STRATEGIES,
        default=defaults["strategies"],
        help=f"batch-selection strategies (choices: {', '.join(STRATEGIES)}); "
        "compared against 'random', else the first one",
    )
    proto.add_argument(
        "--folds",
        type=_int_at_least(2),
        default=defaults["folds"],
        metavar="K",
        help="folds of the multi-label iterative stratification",
    )
    proto.add_argument(
        "--seeds",
        nargs="+",
        type=_seed,
        default=defaults["seeds"],
        metavar="S",
        help="one repeat of the cross-validation per seed",
    )
    proto.add_argument(
        "--validation-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="share of each training fold held out to pick the best epoch",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--epochs",
        type=_int_at_least(1),
        default=defaults["epochs"],
        metavar="T",
        help="training epochs",
    )
    model.add_argument(
        "--batch-size", type=_int_at_least(1), default=128, metavar="B", help="mini-batch size"
    )
    model.add_argument("--lr", type=_positive_float, default=1e-3, help="learning rate")
    model.add_argument(
        "--hidden",
        nargs="+",
        type=_int_at_least(1),
        default=[256],
        metavar="H",
        help="hidden layer sizes of the MLP",
    )
    model.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    model.add_argument(
        "--param",
        action="append",
        type=_param,
        default=[],
        metavar="KEY=VALUE",
        help="any other estimator parameter, e.g. --param selection_pressure=4 "
        "(repeatable; VALUE read as a Python literal)",
    )

    run = parser.add_argument_group("execution and output")
    run.add_argument(
        "--n-jobs",
        type=_n_jobs,
        default=1,
        metavar="N",
        help="parallel fold jobs (joblib; -1: all cores); each job runs torch "
        "single-threaded when N > 1",
    )
    run.add_argument(
        "--torch-threads",
        type=_int_at_least(0),
        default=1,
        metavar="N",
        help="torch threads per job when --n-jobs is 1 (0: torch's default); "
        "the small default MLPs run fastest on one",
    )
    run.add_argument(
        "--out",
        type=Path,
        default=Path("skd2ace-out"),
        metavar="DIR",
        help="output folder: the reports, and folds.jsonl with every finished fold job",
    )
    run.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    run.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted run (Ctrl-C, a crash): every fold job is saved in "
        "DIR/folds.jsonl as it finishes; --resume keeps those, runs only the missing ones and "
        "writes the reports over all of them. Refused unless the options that change results "
        "are those of the saved run (--n-jobs, --torch-threads, --data-home, -v and "
        "--no-plots may differ). Without --resume, a folds.jsonl of an unfinished run is "
        "refused, not overwritten; a finished one is replaced",
    )
    run.add_argument(
        "-v", "--verbose", action="store_true", help="print the estimator's per-epoch table"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``skd2ace`` (subcommands ``run`` and ``benchmark``)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="skd2ace",
        description="D2ACE multi-label batch selection: train and compare batch-selection "
        "strategies under the reference protocol (5-fold multi-label iterative "
        "stratification, 10% validation for the best epoch, min-max scaling, "
        "threshold 0.5).\n\nWithout a subcommand, 'run' is used: 'skd2ace' alone "
        "is the main job.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{run,benchmark}")
    run = sub.add_parser(
        "run",
        help="the main job: D2ACE vs random on the built-in synthetic data (small defaults)",
        description="The main job: D2ACE and random batch selection on the built-in "
        "synthetic multi-label data (sklearn make_multilabel_classification, fixed seed), "
        "5 folds, 80 epochs; prints a comparison table and writes the reports. Same "
        "options as 'benchmark', with smaller defaults.",
        formatter_class=_Formatter,
    )
    _add_options(run, RUN_DEFAULTS)
    bench = sub.add_parser(
        "benchmark",
        help="batch-selection strategies on data sets under the reference protocol",
        description="Run batch-selection strategies on one or more data sets under the "
        "reference protocol and write results.md, results.csv, results.json, "
        "comparison.md and plots into --out. Every fold job is saved in --out as it "
        "finishes: after Ctrl-C or a crash, --resume runs only the missing ones.",
        formatter_class=_Formatter,
    )
    _add_options(bench, BENCHMARK_DEFAULTS)
    return parser


def _progress(n_done: int, n_total: int, r: dict[str, Any]) -> None:
    auc = r["metrics"]["macro_auc"]
    auc_s = f"{auc:.4f}" if auc == auc else "n/a"
    width = len(str(n_total))
    print(
        f"[{n_done:>{width}}/{n_total}] {r['dataset']:<10} {r['strategy']:<7} "
        f"fold {r['fold']} seed {r['seed']}  macro-AUC {auc_s}  "
        f"best epoch {r['best_epoch']:>3}/{r['n_epochs']}  {r['fit_time_s']:.1f} s",
        flush=True,
    )


def _finished_jobs(journal: Path, config: BenchmarkConfig, *, resume: bool) -> list[dict]:
    """The fold results to keep from ``journal``: all of them with ``resume`` (after
    checking they belong to ``config``), none without.

    Raises ValueError (a :class:`~skd2ace.benchmark.ConfigMismatchError` naming the
    differing options) when the journal cannot be resumed, or, without ``resume``, when
    it holds an unfinished run: rerunning the command that crashed must not overwrite
    its finished jobs; starting over is an explicit choice (delete the file, or another
    ``--out``). A finished run's journal is replaced, like the reports.
    """
    from .benchmark import read_journal

    if not journal.exists():  # with resume too: a script may always pass --resume
        return []
    previous = read_journal(journal)
    if resume:
        previous.check(config)
        return previous.folds
    if not previous.complete:
        raise ValueError(
            f"{journal} holds {len(previous.folds)} of {previous.n_fold_jobs} fold jobs of "
            "an unfinished run: add --resume (with that run's options) to finish it, or "
            "delete the file or choose another --out to start over."
        )
    return []


def _interrupted(
    partial: BenchmarkResult, args: argparse.Namespace, argv: list[str], resume_command: str
) -> int:
    """After Ctrl-C: say how far the run got, write the partial reports and how to
    resume; return 130, the exit code of a command interrupted in a shell."""
    from .benchmark import FOLDS_FILE, write_reports

    print(
        f"\nInterrupted: {len(partial.folds)} of {partial.n_fold_jobs} fold jobs done, "
        f"kept in {args.out / FOLDS_FILE}.",
        file=sys.stderr,
        flush=True,
    )
    if partial.folds:
        try:
            write_reports(partial, args.out, argv=argv, plots=args.plots)
            print(f"Partial reports in {args.out.resolve()}.", file=sys.stderr)
        except KeyboardInterrupt:
            print("Partial reports not written (interrupted again).", file=sys.stderr)
    n_left = partial.n_fold_jobs - len(partial.folds)
    print(f"To run the other {n_left}: {resume_command}", file=sys.stderr)
    return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Examples
    --------
    >>> main(["--version"])  # doctest: +SKIP
    skd2ace 0.1.0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    given = list(argv)
    if not argv or argv[0] not in (*_SUBCOMMANDS, "-h", "--help", "--version"):
        argv = ["run", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)

    from .benchmark import (
        FOLDS_FILE,
        BenchmarkConfig,
        BenchmarkInterrupted,
        InsufficientDataError,
        console_table,
        fold_jobs,
        run_benchmark,
        write_reports,
    )
    from .datasets import ChecksumError, MulanDataNotFoundError, MulanFileError

    estimator_params = dict(args.param)
    try:
        from ._classifier import D2ACEMultiLabelClassifier

        known = D2ACEMultiLabelClassifier().get_params()
        unknown = sorted(set(estimator_params) - set(known))
        if unknown:
            raise ValueError(f"unknown estimator parameter(s) {unknown} in --param")
        config = BenchmarkConfig(
            datasets=args.datasets,
            strategies=args.strategies,
            n_folds=args.folds,
            seeds=args.seeds,
            max_epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            hidden_layer_sizes=args.hidden,
            validation_fraction=args.validation_fraction,
            device=args.device,
            preprocess=args.preprocess,
            min_positives=args.min_positives,
            data_home=args.data_home,
            n_jobs=args.n_jobs,
            torch_threads=args.torch_threads or None,
            verbose=int(args.verbose),
            estimator_params=estimator_params,
        )
    except (ValueError, TypeError) as exc:  # any option or --param the estimator rejects
        parser.error(str(exc))

    journal = args.out / FOLDS_FILE
    command = ["skd2ace", *given]  # as typed: recorded in the reports, repeated to resume
    resume_command = shlex.join([*command, *([] if args.resume else ["--resume"])])
    if args.out.exists() and not args.out.is_dir():
        print(f"skd2ace: error: --out {args.out} is a file, not a folder.", file=sys.stderr)
        return 2
    try:
        # Now, not once the data are loaded: an --out that cannot be made fails at once.
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # no permission, a file on the way, ...
        print(f"skd2ace: error: cannot create --out {args.out}: {exc}", file=sys.stderr)
        return 2
    try:
        done = _finished_jobs(journal, config, resume=args.resume)
    except (ValueError, OSError) as exc:  # other settings, an unfinished run, not a journal
        print(f"skd2ace: error: {exc}", file=sys.stderr)
        return 2
    n_total = len(fold_jobs(config))
    print(
        f"skd2ace {args.command}: {', '.join(config.datasets)} | strategies "
        f"{', '.join(config.strategies)} | {config.n_folds} folds × seeds "
        f"{list(config.seeds)} | {config.max_epochs} epochs | {n_total} fold jobs, "
        f"n_jobs={config.n_jobs}",
        flush=True,
    )
    if args.resume:
        print(
            f"Resuming: {len(done)} of {n_total} fold jobs done in {journal}, "
            f"{n_total - len(done)} to run.",
            flush=True,
        )
    start = time.perf_counter()
    n_finished = 0  # fold jobs finished in this call (each appended to the journal)

    def progress(n_done: int, n_total: int, r: dict[str, Any]) -> None:
        nonlocal n_finished
        n_finished += 1
        _progress(n_done, n_total, r)

    try:
        result = run_benchmark(config, progress=progress, done=done, journal=journal)
    except (
        MulanDataNotFoundError,  # a data file missing, not downloadable
        ChecksumError,  # a download that is not the MULAN file
        MulanFileError,  # a data file that cannot be read
        InsufficientDataError,  # too few rows or labels left for the folds
    ) as exc:  # the user's data, not a bug: no traceback
        print(f"skd2ace: error: {exc}", file=sys.stderr)
        return 1
    except BenchmarkInterrupted as exc:
        return _interrupted(exc.result, args, command, resume_command)
    except KeyboardInterrupt:  # while loading the data, before any job started
        print(f"\nInterrupted before the fold jobs started; {journal} unchanged.", file=sys.stderr)
        return 130
    except Exception:  # a bug, or the machine's: the traceback follows
        # The resumed jobs stay in the journal (rewritten with them, or not yet touched)
        # and every job finished here was appended to it; with none, there is nothing
        # to resume and the hint would mislead.
        n_kept = len(done) + n_finished
        if n_kept and journal.is_file():
            print(
                f"skd2ace: the {n_kept} fold job(s) finished so far are kept in {journal}; "
                f"once the error below is fixed, this runs the others: {resume_command}",
                file=sys.stderr,
                flush=True,
            )
        raise
    try:
        written = write_reports(result, args.out, argv=command, plots=args.plots)
    except KeyboardInterrupt:
        print(
            f"\nInterrupted while writing the reports; all {n_total} fold jobs are kept in "
            f"{journal}, this writes them: {resume_command}",
            file=sys.stderr,
        )
        return 130
    print()
    print(console_table(result))
    elapsed = time.perf_counter() - start
    print(f"Done in {elapsed:.1f} s. Outputs in {args.out.resolve()}:")
    for name in written:
        print(f"  {name}")
    print(f"  {FOLDS_FILE} (every fold job, for --resume)")
    return 0

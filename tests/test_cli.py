"""Tests of the ``skd2ace`` command line (run in-process through ``main``)."""

import csv
import dataclasses
import json
import subprocess
import sys

import pytest

import skd2ace.benchmark
import skd2ace.benchmark._protocol
from skd2ace.benchmark import FOLDS_FILE, REPORTED_METRICS
from skd2ace.cli import BENCHMARK_DEFAULTS, RUN_DEFAULTS, build_parser, main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OUTPUTS = ("results.md", "results.csv", "results.json", "comparison.md")


def check_outputs(out, datasets, strategies, n_folds, seeds):
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    payload = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert {
        "argv",
        "config",
        "environment",
        "wall_time_s",
        "datasets",
        "folds",
        "summary",
        "comparison",
        "metrics",
    } <= set(payload)
    env = payload["environment"]
    assert {"skd2ace", "torch", "scikit-learn", "skorch", "numpy"} <= set(env["versions"])
    assert {"platform", "cpu_count"} <= set(env["machine"])
    assert payload["wall_time_s"] > 0
    n_jobs = len(datasets) * len(strategies) * n_folds * len(seeds)
    assert len(payload["folds"]) == n_jobs
    assert payload["config"]["datasets"] == list(datasets)
    fold = payload["folds"][0]
    assert {
        "dataset",
        "strategy",
        "seed",
        "fold",
        "metrics",
        "fit_time_s",
        "best_epoch",
        "history",
    } <= set(fold)
    assert len(fold["history"]["valid_macro_auc"]) == payload["config"]["max_epochs"]

    with open(out / "results.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n_jobs * len(REPORTED_METRICS)
    assert set(rows[0]) == {"dataset", "strategy", "seed", "fold", "metric", "value"}
    first = {r["metric"]: float(r["value"]) for r in rows[: len(REPORTED_METRICS)]}
    assert first["macro_auc"] == pytest.approx(fold["metrics"]["macro_auc"])

    md = (out / "results.md").read_text(encoding="utf-8")
    for dataset in datasets:
        assert f"## {dataset}" in md
        assert f"## {dataset}: `d2ace` vs `random`" in (out / "comparison.md").read_text(
            encoding="utf-8"
        )
    assert "| macro_auc ↑ |" in md and "| hamming_loss ↓ |" in md
    assert md.count("**") >= 2 * len(REPORTED_METRICS)  # a bold best in every row

    for dataset in datasets:
        for kind in ("valid_auc", "schedule", "label_weights"):
            data = (out / f"{kind}_{dataset}.png").read_bytes()
            assert data[:8] == PNG_SIGNATURE and len(data) > 10_000, (kind, len(data))
    return payload


def test_benchmark_synthetic(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["benchmark", "--folds", "2", "--epochs", "3", "--out", str(out)])
    assert code == 0
    payload = check_outputs(out, ["synthetic"], ["d2ace", "random"], 2, [0])
    assert payload["argv"][:2] == ["skd2ace", "benchmark"]
    assert payload["config"]["max_epochs"] == 3
    printed = capsys.readouterr().out
    assert printed.count("macro-AUC") == 4  # one line per fold job
    assert "synthetic  d2ace   fold 0 seed 0" in printed
    assert "macro_auc ↑" in printed and "fit_time_s ↓" in printed
    assert str(out.resolve()) in printed


def test_bare_command_is_the_main_job(tmp_path, monkeypatch, capsys):
    """``skd2ace`` alone runs ``run`` with its defaults (shrunk here to stay fast)."""
    seen = {}
    real = skd2ace.benchmark.run_benchmark

    def shrunk(config, **kwargs):
        seen["config"] = config
        return real(dataclasses.replace(config, n_folds=2, max_epochs=2), **kwargs)

    monkeypatch.setattr(skd2ace.benchmark, "run_benchmark", shrunk)
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    config = seen["config"]
    assert list(config.datasets) == RUN_DEFAULTS["datasets"] == ["synthetic"]
    assert list(config.strategies) == ["d2ace", "random"]
    assert (config.n_folds, config.max_epochs) == (RUN_DEFAULTS["folds"], RUN_DEFAULTS["epochs"])
    assert (tmp_path / "skd2ace-out" / "results.md").is_file()
    printed = capsys.readouterr().out
    assert printed.startswith("skd2ace run:")
    assert "Outputs in" in printed
    assert "folds.jsonl (every fold job, for --resume)" in printed
    assert (tmp_path / "skd2ace-out" / "folds.jsonl").is_file()


def test_parser_defaults_and_options():
    parser = build_parser()
    run = parser.parse_args(["run"])
    bench = parser.parse_args(["benchmark"])
    assert run.epochs == RUN_DEFAULTS["epochs"] < bench.epochs == BENCHMARK_DEFAULTS["epochs"]
    args = parser.parse_args(
        [
            "benchmark",
            "--datasets",
            "emotions",
            "yeast",
            "--strategies",
            "random",
            "--seeds",
            "0",
            "1",
            "--n-jobs",
            "2",
            "--batch-size",
            "64",
            "--lr",
            "0.01",
            "--hidden",
            "64",
            "32",
            "--param",
            "selection_pressure=4",
            "--no-preprocess",
        ]
    )
    assert args.datasets == ["emotions", "yeast"] and args.seeds == [0, 1]
    assert args.n_jobs == 2 and args.hidden == [64, 32] and not args.preprocess
    assert args.param == [("selection_pressure", 4)]
    assert not bench.resume and parser.parse_args(["benchmark", "--resume"]).resume


@pytest.mark.parametrize(
    "argv",
    [
        ["benchmark", "--datasets", "nope"],
        ["benchmark", "--strategies", "nope"],
        ["benchmark", "--folds", "1"],
        ["benchmark", "--n-jobs", "0"],
        ["benchmark", "--param", "no_such_parameter=1"],
        ["benchmark", "--seeds", "1", "1"],
        ["benchmark", "--seeds", "4294967296"],  # the folds' RandomState takes 32 bits
        ["benchmark", "--seeds", "-1"],
        # Values the estimator rejects, checked before any fold runs.
        ["benchmark", "--validation-fraction", "1.5"],
        ["benchmark", "--param", "selection_pressure=0.5"],
        ["benchmark", "--param", "weight_decay=abc"],
        # Parameters with their own option, or set by the protocol, are not --params.
        ["benchmark", "--param", "max_epochs=7"],
        ["benchmark", "--param", "random_state=3"],
        ["benchmark", "--param", "batch_selection=random"],
    ],
)
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_dataset_names_in_any_case():
    """fetch_mulan takes any case; so does --datasets (lower-cased before the check)."""
    args = build_parser().parse_args(["benchmark", "--datasets", "Flags", "SYNTHETIC"])
    assert args.datasets == ["flags", "synthetic"]
    assert build_parser().parse_args(["benchmark", "--seeds", "4294967295"]).seeds == [2**32 - 1]


# A MULAN file for the data home: 10 rows, label a with 5 positives, label b with 1.
TOY_ARFF = (
    "@relation flags\n@attribute x numeric\n@attribute y numeric\n"
    "@attribute a {0,1}\n@attribute b {0,1}\n@data\n"
    + "".join(f"{i},{i % 3},{i % 2},{int(i == 0)}\n" for i in range(10))
)
TOY_XML = '<labels><label name="a"></label><label name="b"></label></labels>\n'


def toy_home(home, arff=TOY_ARFF, xml=TOY_XML):
    (home / "flags").mkdir(parents=True)
    (home / "flags" / "flags.arff").write_text(arff, encoding="utf-8")
    (home / "flags" / "flags.xml").write_text(xml, encoding="utf-8")
    return home


def corrupt_download(url, filename):
    with open(filename, "wb") as fh:
        fh.write(b"not the MULAN file")


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("one label left", 1, "1 label after preprocessing (labels with <= 1 positives"),
        ("truncated ARFF", 1, "flags.arff: cannot parse ARFF"),
        ("XML names other labels", 1, "flags.arff: ['c']. Delete the broken file"),
        ("checksum mismatch", 1, "Checksum mismatch for flags.arff"),
        ("--out is a file", 2, "is a file, not a folder"),
    ],
)
def test_user_errors_are_one_line_without_traceback(
    case, code, message, tmp_path, monkeypatch, capsys
):
    """Errors in the user's data or options: one 'skd2ace: error:' line and an exit code,
    as for a missing data file; no traceback, no --resume hint (no job ran)."""
    home, out = tmp_path / "home", tmp_path / "out"
    if case == "truncated ARFF":
        toy_home(home, arff=TOY_ARFF[: TOY_ARFF.index("5,2,1")] + "5,2")
    elif case == "XML names other labels":
        toy_home(home, xml=TOY_XML.replace('"b"', '"c"'))
    elif case == "checksum mismatch":
        home.mkdir()
        monkeypatch.setattr("skd2ace.datasets._mulan._urlretrieve", corrupt_download)
    else:
        toy_home(home)
    if case == "--out is a file":
        out.write_text("not a folder", encoding="utf-8")
    argv = ["benchmark", "--datasets", "flags", "--data-home", str(home), "--folds", "2"]
    argv += ["--epochs", "1", "--min-positives", "1", "--out", str(out), "--no-plots"]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("skd2ace: error: ") and err.count("\n") == 1, err
    assert message in err
    assert "kept in" not in err and "Traceback" not in err


def fail_at(monkeypatch, n):
    """Make the n-th fold job fail with a bug (RuntimeError); the others run."""
    real = skd2ace.benchmark._protocol.run_fold
    calls = []

    def run(*args, **kwargs):
        calls.append(None)
        if len(calls) == n:
            raise RuntimeError("a bug in a fold job")
        return real(*args, **kwargs)

    monkeypatch.setattr(skd2ace.benchmark._protocol, "run_fold", run)


@pytest.mark.parametrize("failing_job", [1, 2])
def test_a_bug_keeps_its_traceback_and_the_resume_hint_only_with_jobs_kept(
    failing_job, tmp_path, monkeypatch, capsys
):
    fail_at(monkeypatch, failing_job)
    argv = ["benchmark", "--folds", "2", "--epochs", "1", "--strategies", "random"]
    with pytest.raises(RuntimeError, match="a bug in a fold job"):  # not caught: a traceback
        main([*argv, "--no-plots", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    journal = tmp_path / FOLDS_FILE
    if failing_job == 1:  # no job finished: nothing to resume, no hint
        assert "kept in" not in err and journal.read_text(encoding="utf-8") == ""
    else:
        assert f"the 1 fold job(s) finished so far are kept in {journal}" in err
        assert err.rstrip().endswith("--resume") and len(journal_lines(tmp_path)) == 1


def test_missing_mulan_data_returns_1(tmp_path, monkeypatch, capsys):
    def offline(url, filename):
        raise OSError("offline")

    monkeypatch.setattr("skd2ace.datasets._mulan._urlretrieve", offline)
    code = main(
        [
            "benchmark",
            "--datasets",
            "emotions",
            "--data-home",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "emotions" in err and "SKD2ACE_DATA" in err


def test_no_data_left_after_preprocessing_returns_1(tmp_path, capsys):
    code = main(["--min-positives", "100000", "--epochs", "1", "--out", str(tmp_path)])
    assert code == 1
    assert "0 rows and 0 labels after preprocessing" in capsys.readouterr().err


def test_python_m_help():
    proc = subprocess.run(
        [sys.executable, "-m", "skd2ace", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "benchmark" in proc.stdout and "run" in proc.stdout


@pytest.mark.slow
def test_benchmark_emotions(mulan_home, tmp_path, capsys):
    out = tmp_path / "emotions"
    code = main(
        [
            "benchmark",
            "--datasets",
            "emotions",
            "--folds",
            "2",
            "--epochs",
            "2",
            "--data-home",
            str(mulan_home),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    payload = check_outputs(out, ["emotions"], ["d2ace", "random"], 2, [0])
    info = payload["datasets"]["emotions"]
    assert (info["n_samples"], info["n_features"], info["n_labels"]) == (593, 72, 6)
    for fold in payload["folds"]:
        assert fold["n_train"] + fold["n_test"] == 593
        assert 0.0 <= fold["metrics"]["macro_auc"] <= 1.0


# --------------------------------------------------------------------------- Ctrl-C, --resume

# Small enough for a few seconds: 2 strategies x 2 folds = 4 fold jobs of 2 epochs.
SMALL = ["benchmark", "--folds", "2", "--epochs", "2"]


def read_folds(out):
    return json.loads((out / "results.json").read_text(encoding="utf-8"))["folds"]


def without_timing(fold):
    """A fold of results.json without what differs between two runs: the times."""
    out = {k: v for k, v in fold.items() if k not in ("fit_time_s", "predict_time_s")}
    out["history"] = {k: v for k, v in fold["history"].items() if k != "dur"}
    return out


def journal_lines(out):
    return (out / FOLDS_FILE).read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The output folder of the small benchmark run in one go."""
    out = tmp_path_factory.mktemp("uninterrupted")
    assert main([*SMALL, "--no-plots", "--out", str(out)]) == 0
    return out


@pytest.fixture
def count_fold_jobs(monkeypatch):
    """Count the calls to run_fold; ``calls["fail_at"] = n`` makes the n-th one raise
    KeyboardInterrupt (Ctrl-C during that job)."""
    real = skd2ace.benchmark._protocol.run_fold
    calls = {"n": 0, "fail_at": None}

    def counted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(skd2ace.benchmark._protocol, "run_fold", counted)
    return calls


def test_every_finished_job_is_in_the_journal(uninterrupted):
    lines = [json.loads(line) for line in journal_lines(uninterrupted)]
    assert len(lines) == 4 and len({line["fingerprint"] for line in lines}) == 1
    assert lines[0]["settings"]["max_epochs"] == 2 and "n_jobs" not in lines[0]["settings"]
    jobs = {(r["strategy"], r["fold"]) for r in (line["result"] for line in lines)}
    assert jobs == {("d2ace", 0), ("d2ace", 1), ("random", 0), ("random", 1)}
    # In completion order; the same as results.json's folds (report order) once sorted.
    journaled = sorted(
        (line["result"] for line in lines), key=lambda r: (r["strategy"] != "d2ace", r["fold"])
    )
    assert journaled == read_folds(uninterrupted)


def test_ctrl_c_then_resume_equals_uninterrupted(uninterrupted, count_fold_jobs, tmp_path, capsys):
    out = tmp_path / "out"
    count_fold_jobs["fail_at"] = 2  # Ctrl-C during the second job: one job done
    assert main([*SMALL, "--out", str(out)]) == 130
    printed = capsys.readouterr()
    assert "Interrupted: 1 of 4 fold jobs done" in printed.err
    assert f"--out {out} --resume" in printed.err
    assert "Traceback" not in printed.out + printed.err
    assert len(journal_lines(out)) == 1
    # Partial reports of the finished job, plots included, marked as partial.
    payload = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert (payload["complete"], payload["n_fold_jobs"], len(payload["folds"])) == (False, 4, 1)
    assert "**Partial results: 1 of 4 fold jobs finished**" in (out / "results.md").read_text(
        encoding="utf-8"
    )
    assert (out / "valid_auc_synthetic.png").read_bytes()[:8] == PNG_SIGNATURE

    # Output options may change (--no-plots); only the 3 missing jobs run.
    count_fold_jobs.update(n=0, fail_at=None)
    assert main([*SMALL, "--no-plots", "--out", str(out), "--resume"]) == 0
    assert count_fold_jobs["n"] == 3
    assert "Resuming: 1 of 4 fold jobs done" in capsys.readouterr().out
    assert len(journal_lines(out)) == 4
    payload = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert payload["complete"] and payload["n_resumed"] == 1
    # The per-job seeds make the resumed run equal the uninterrupted one.
    resumed, whole = read_folds(out), read_folds(uninterrupted)
    assert [without_timing(r) for r in resumed] == [without_timing(r) for r in whole]
    assert [r["metrics"] for r in resumed] == [r["metrics"] for r in whole]  # exactly


def test_resume_refuses_other_results_settings(uninterrupted, count_fold_jobs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    journal = "\n".join(journal_lines(uninterrupted)[:1]) + "\n"
    (out / FOLDS_FILE).write_text(journal, encoding="utf-8")
    code = main(["benchmark", "--folds", "2", "--epochs", "3", "--out", str(out), "--resume"])
    assert code == 2 and count_fold_jobs["n"] == 0
    err = capsys.readouterr().err
    assert "max_epochs: 2 in the journal, 3 now" in err and "folds.jsonl" in err
    assert (out / FOLDS_FILE).read_text(encoding="utf-8") == journal  # untouched


def test_without_resume_unfinished_refused_finished_replaced(
    uninterrupted, count_fold_jobs, tmp_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    unfinished = "\n".join(journal_lines(uninterrupted)[:1]) + "\n"
    (out / FOLDS_FILE).write_text(unfinished, encoding="utf-8")
    # Rerunning the interrupted command must not throw its finished job away.
    assert main([*SMALL, "--no-plots", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 of 4 fold jobs of an unfinished run" in err and "--resume" in err
    assert (out / FOLDS_FILE).read_text(encoding="utf-8") == unfinished
    assert count_fold_jobs["n"] == 0

    # A finished run's journal is replaced, like its reports (here by another run's).
    (out / FOLDS_FILE).write_bytes((uninterrupted / FOLDS_FILE).read_bytes())
    other = ["benchmark", "--folds", "2", "--epochs", "1", "--strategies", "random"]
    assert main([*other, "--no-plots", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in journal_lines(out)]
    assert len(lines) == 2 == count_fold_jobs["n"]
    assert {line["settings"]["max_epochs"] for line in lines} == {1}


def test_resume_without_journal_or_jobs_left(uninterrupted, count_fold_jobs, tmp_path):
    # A finished run: nothing runs, the reports are written again, the same.
    out = tmp_path / "done"
    out.mkdir()
    (out / FOLDS_FILE).write_bytes((uninterrupted / FOLDS_FILE).read_bytes())
    assert main([*SMALL, "--no-plots", "--out", str(out), "--resume"]) == 0
    assert count_fold_jobs["n"] == 0
    assert read_folds(out) == read_folds(uninterrupted)  # the recorded times too
    # Nothing to resume: every job runs (a script may always pass --resume).
    out = tmp_path / "new"
    small = ["benchmark", "--folds", "2", "--epochs", "1", "--strategies", "random"]
    assert main([*small, "--no-plots", "--out", str(out), "--resume"]) == 0
    assert count_fold_jobs["n"] == 2 and len(journal_lines(out)) == 2


def test_resume_with_a_fold_job_twice_in_the_journal(uninterrupted, count_fold_jobs, tmp_path):
    """A duplicated line (e.g. journals joined by hand) is a copy, not an error."""
    out = tmp_path / "out"
    out.mkdir()
    lines = journal_lines(uninterrupted)
    (out / FOLDS_FILE).write_text("\n".join([*lines, lines[0]]) + "\n", encoding="utf-8")
    assert main([*SMALL, "--no-plots", "--out", str(out), "--resume"]) == 0
    assert count_fold_jobs["n"] == 0
    assert journal_lines(out) == lines  # rewritten without the copy
    assert read_folds(out) == read_folds(uninterrupted)


def test_unreadable_journal_is_named(uninterrupted, count_fold_jobs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / FOLDS_FILE).write_bytes((uninterrupted / FOLDS_FILE).read_bytes() + b"\xff\n")
    assert main([*SMALL, "--no-plots", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"skd2ace: error: {out / FOLDS_FILE}, line 5: not a fold journal")
    assert count_fold_jobs["n"] == 0

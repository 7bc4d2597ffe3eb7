"""Tests of the ``skd2ace`` command line (run in-process through ``main``)."""

import csv
import dataclasses
import json
import subprocess
import sys

import pytest

import skd2ace.benchmark
from skd2ace.benchmark import REPORTED_METRICS
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


@pytest.mark.parametrize(
    "argv",
    [
        ["benchmark", "--datasets", "nope"],
        ["benchmark", "--strategies", "nope"],
        ["benchmark", "--folds", "1"],
        ["benchmark", "--n-jobs", "0"],
        ["benchmark", "--param", "no_such_parameter=1"],
        ["benchmark", "--seeds", "1", "1"],
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

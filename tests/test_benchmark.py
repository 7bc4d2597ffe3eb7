"""Tests of skd2ace.benchmark: protocol, paired comparison, reports, plots."""

import csv
import dataclasses
import json
import math
import signal
import threading

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import wilcoxon
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler
from skorch.callbacks import Callback

import skd2ace.benchmark._plots
import skd2ace.benchmark._protocol
import skd2ace.benchmark._report
from skd2ace.benchmark import (
    HISTORY_KEYS,
    MAX_SEED,
    NON_RESULT_FIELDS,
    REPORTED_METRICS,
    SYNTHETIC_PARAMS,
    BenchmarkConfig,
    BenchmarkInterrupted,
    BenchmarkResult,
    ConfigMismatchError,
    InsufficientDataError,
    append_fold,
    baseline_strategy,
    compare_strategies,
    comparison_markdown,
    config_fingerprint,
    console_table,
    fold_jobs,
    fold_random_state,
    fold_splits,
    load_dataset,
    make_model,
    paired_comparison,
    read_journal,
    result_settings,
    results_markdown,
    run_benchmark,
    run_fold,
    summarize,
    write_json,
    write_reports,
)
from skd2ace.benchmark._plots import epoch_matrix, make_plots, plot_label_weights
from skd2ace.metrics import LOWER_IS_BETTER, METRIC_NAMES, evaluate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_bytes=5_000):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > min_bytes, (path, len(data))


# --------------------------------------------------------------------------- fake results


def fake_fold(dataset, strategy, seed, fold, value, n_epochs=4, n_labels=3, weights=True):
    metrics = {m: value for m in METRIC_NAMES}
    history = {
        "epoch": list(range(1, n_epochs + 1)),
        "valid_macro_auc": list(np.linspace(0.5, value, n_epochs)),
        "selection_pressure": [8.0 if weights else 1.0] * n_epochs,
        "mixture_weight": [0.5] * n_epochs if weights else [None] * n_epochs,
        "selection_ess": [0.9] * n_epochs,
    }
    for key in ("label_weights_uncertainty", "label_weights_hardness"):
        history[key] = (
            [list(np.linspace(1, 2, n_labels) + e) for e in range(n_epochs)]
            if weights
            else [None] * n_epochs
        )
    return {
        "dataset": dataset,
        "strategy": strategy,
        "seed": seed,
        "fold": fold,
        "random_state": fold_random_state(seed, fold),
        "n_train": 10,
        "n_test": 5,
        "metrics": metrics,
        "fit_time_s": 1.0 if strategy == "random" else 2.0,
        "predict_time_s": 0.1,
        "n_epochs": n_epochs,
        "best_epoch": n_epochs,
        "history": history,
    }


def fake_result(values, strategies=("d2ace", "random"), seeds=(0,), n_folds=3, n_epochs=4):
    """values[strategy] -> list of per-(seed, fold) values, seed-major."""
    folds = []
    for s in strategies:
        k = 0
        for seed in seeds:
            for fold in range(n_folds):
                folds.append(
                    fake_fold(
                        "toy", s, seed, fold, values[s][k], n_epochs=n_epochs, weights=s != "random"
                    )
                )
                k += 1
    config = BenchmarkConfig(
        datasets=["synthetic"], strategies=strategies, seeds=seeds, n_folds=n_folds
    )
    config.datasets = ("toy",)  # a made-up data set name, past validation
    info = {
        "name": "toy",
        "n_samples": 15,
        "n_features": 2,
        "n_labels": 3,
        "sparse": False,
        "n_samples_raw": 15,
        "n_labels_raw": 3,
        "preprocessed": True,
        "min_positives": 20,
        "label_names": ["a", "b", "c"],
    }
    return BenchmarkResult(config=config, datasets={"toy": info}, folds=folds, wall_time_s=1.0)


# --------------------------------------------------------------------------- comparison


def test_paired_comparison_wins_losses_and_scipy_p_value():
    a = [0.80, 0.75, 0.90, 0.60, 0.70, 0.85]
    b = [0.70, 0.76, 0.80, 0.50, 0.65, 0.80]
    r = paired_comparison(a, b)
    assert (r["wins"], r["ties"], r["losses"], r["n"]) == (5, 0, 1, 6)
    expected = wilcoxon(np.subtract(a, b))
    assert r["p_value"] == pytest.approx(expected.pvalue)
    assert r["statistic"] == pytest.approx(expected.statistic)
    assert r["mean_diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    # Lower is better: the same numbers are 1 win and 5 losses; same p-value.
    low = paired_comparison(a, b, lower_is_better=True)
    assert (low["wins"], low["ties"], low["losses"]) == (1, 0, 5)
    assert low["p_value"] == pytest.approx(r["p_value"])


def test_paired_comparison_all_ties_and_partial_ties():
    r = paired_comparison([0.5, 0.7, 0.9], [0.5, 0.7, 0.9])
    assert (r["wins"], r["ties"], r["losses"]) == (0, 3, 0)
    assert r["p_value"] == 1.0
    assert math.isnan(r["statistic"])
    assert r["mean_diff"] == 0.0
    # Ties are left out of the test: same p-value as the untied pairs alone.
    r = paired_comparison([1.0, 2.0, 3.5, 4.0, 6.0], [1.0, 2.0, 3.0, 5.0, 4.0])
    assert (r["wins"], r["ties"], r["losses"]) == (2, 2, 1)
    assert r["p_value"] == pytest.approx(wilcoxon([0.5, -1.0, 2.0]).pvalue)


def test_paired_comparison_nan_pairs_and_errors():
    r = paired_comparison([0.9, np.nan, 0.8], [0.7, 0.5, np.nan])
    assert (r["n"], r["wins"], r["ties"], r["losses"]) == (1, 1, 0, 0)
    assert 0 < r["p_value"] <= 1
    empty = paired_comparison([], [])
    assert empty["n"] == 0 and empty["p_value"] == 1.0 and math.isnan(empty["mean_diff"])
    with pytest.raises(ValueError, match="one length"):
        paired_comparison([1.0, 2.0], [1.0])


def test_baseline_strategy():
    assert baseline_strategy(["d2ace", "random"]) == "random"
    assert baseline_strategy(["d2ace"]) == "d2ace"


def test_compare_strategies_pairs_on_seed_and_fold():
    result = fake_result(
        {"d2ace": [0.9, 0.8, 0.7, 0.6], "random": [0.8, 0.8, 0.6, 0.7]},
        seeds=(0, 1),
        n_folds=2,
    )
    cmp = compare_strategies(result)
    assert cmp["baseline"] == "random"
    assert set(cmp["datasets"]["toy"]) == {"d2ace"}
    stats = cmp["datasets"]["toy"]["d2ace"]
    assert set(stats) == set(REPORTED_METRICS)
    assert (
        stats["macro_auc"]["wins"],
        stats["macro_auc"]["ties"],
        stats["macro_auc"]["losses"],
    ) == (2, 1, 1)
    # ranking_loss is lower-is-better: the same values become 1 win, 2 losses.
    assert (stats["ranking_loss"]["wins"], stats["ranking_loss"]["losses"]) == (1, 2)
    assert stats["fit_time_s"]["losses"] == 4  # d2ace is slower in every fake fold
    text = comparison_markdown(result, cmp)
    assert "`d2ace` vs `random`" in text and "| macro_auc ↑ | 2 | 1 | 1 |" in text


# --------------------------------------------------------------------------- summaries


def test_summary_markdown_and_console_bold_best():
    result = fake_result({"d2ace": [0.9, 0.8, 0.7], "random": [0.6, 0.7, 0.8]})
    summary = summarize(result)
    s = summary["toy"]["d2ace"]["macro_auc"]
    assert s["mean"] == pytest.approx(0.8) and s["std"] == pytest.approx(0.1) and s["n"] == 3
    text = results_markdown(result, summary)
    lines = {
        line.split("|")[1].strip(): line
        for line in text.splitlines()
        if line.startswith("| ") and "metric" not in line
    }
    # Higher-is-better: d2ace (0.8) beats random (0.7); lower-is-better: random wins.
    assert "**0.8000 ± 0.1000**" in lines["macro_auc ↑"]
    assert "**0.7000 ± 0.1000**" in lines["ranking_loss ↓"]
    assert "**1.00 ± 0.00**" in lines["fit_time_s ↓"]  # random's fake fit time
    assert set(lines) == {
        f"{m} {'↓' if m in LOWER_IS_BETTER or m == 'fit_time_s' else '↑'}" for m in REPORTED_METRICS
    }
    table = console_table(result, summary)
    assert "0.8000 ± 0.1000*" in table and "fit_time_s" in table


def test_summary_equal_means_both_bold_and_nan():
    result = fake_result({"d2ace": [0.7, 0.7, 0.7], "random": [0.7, 0.7, 0.7]})
    for r in result.folds:
        r["metrics"]["micro_auc"] = float("nan")
    text = results_markdown(result)
    row = next(line for line in text.splitlines() if line.startswith("| macro_auc"))
    assert row.count("**") == 4
    row = next(line for line in text.splitlines() if line.startswith("| micro_auc"))
    assert "n/a" in row and "**" not in row
    assert summarize(result)["toy"]["d2ace"]["micro_auc"]["n"] == 0
    cmp = compare_strategies(result)
    assert cmp["datasets"]["toy"]["d2ace"]["macro_auc"]["p_value"] == 1.0


def test_means_equal_as_shown_are_all_best():
    # 0.70001 and 0.70002 both read 0.7000: bolding one of two equal-looking cells
    # would claim a difference the table does not show.
    result = fake_result({"d2ace": [0.70001] * 3, "random": [0.70002] * 3})
    row = next(line for line in results_markdown(result).splitlines() if "| macro_auc" in line)
    assert row.count("**0.7000 ± 0.0000**") == 2
    table = console_table(result)
    macro = next(line for line in table.splitlines() if line.startswith("macro_auc"))
    assert macro.count("0.7000 ± 0.0000*") == 2
    assert "* the best mean of a row as shown" in table


def test_one_strategy_has_nothing_to_compare():
    result = fake_result({"d2ace": [0.7, 0.8, 0.9]}, strategies=("d2ace",))
    assert compare_strategies(result)["datasets"]["toy"] == {}
    assert "nothing to compare" in comparison_markdown(result)
    rows = [line for line in results_markdown(result).splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(REPORTED_METRICS) and not any("**" in r for r in rows)


def test_write_reports_from_fake_result(tmp_path):
    result = fake_result({"d2ace": [0.9, 0.8, 0.7], "random": [0.6, 0.7, 0.8]})
    result.folds[0]["metrics"]["micro_auc"] = float("nan")
    written = write_reports(result, tmp_path / "out", argv=["skd2ace", "x"])
    assert set(written) == {
        "results.md",
        "results.csv",
        "results.json",
        "comparison.md",
        "valid_auc_toy.png",
        "schedule_toy.png",
        "label_weights_toy.png",
    }
    payload = json.loads((tmp_path / "out" / "results.json").read_text())  # strict JSON
    assert payload["argv"] == ["skd2ace", "x"]
    assert payload["folds"][0]["metrics"]["micro_auc"] is None
    with open(tmp_path / "out" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 3 * len(REPORTED_METRICS)
    assert next(r for r in rows if r["metric"] == "micro_auc")["value"] == ""
    for name in ("valid_auc_toy.png", "schedule_toy.png", "label_weights_toy.png"):
        assert_png(written[name])


def test_reports_are_replaced_atomically(tmp_path, monkeypatch):
    """An error (or Ctrl-C) while a report is written leaves the previous version whole,
    and no temporary file."""
    out = tmp_path / "out"
    result = fake_result({"d2ace": [0.9, 0.8, 0.7], "random": [0.6, 0.7, 0.8]})
    write_reports(result, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def dump_then_fail(obj, fh, **kwargs):
        fh.write('{"argv": ')  # part of the file written, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(skd2ace.benchmark._report.json, "dump", dump_then_fail)
    other = fake_result({"d2ace": [0.1, 0.2, 0.3], "random": [0.6, 0.7, 0.8]})
    with pytest.raises(OSError, match="No space"):
        write_reports(other, out)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after.keys() == before.keys()  # no *.tmp left behind
    assert after["results.json"] == before["results.json"]
    json.loads(after["results.json"])
    assert after["results.md"] != before["results.md"]  # written before the failure: new
    assert after["results.md"].startswith(b"# Benchmark results")


def test_results_json_records_the_data_folder_used(tmp_path, monkeypatch):
    """config.data_home None means "$SKD2ACE_DATA, else ~/skd2ace_data": the report says
    which folder that was."""
    result = fake_result({"d2ace": [0.9, 0.8, 0.7], "random": [0.6, 0.7, 0.8]})
    write_json(result, tmp_path / "synthetic.json")
    payload = json.loads((tmp_path / "synthetic.json").read_text(encoding="utf-8"))
    assert payload["config"]["data_home"] is None  # no MULAN data set: no data folder
    monkeypatch.setenv("SKD2ACE_DATA", str(tmp_path / "mulan"))
    result.config.datasets = ("emotions",)
    write_json(result, tmp_path / "env.json")
    payload = json.loads((tmp_path / "env.json").read_text(encoding="utf-8"))
    assert payload["config"]["data_home"] == str(tmp_path / "mulan")
    assert result.config.data_home is None  # the configuration itself is unchanged
    monkeypatch.chdir(tmp_path)
    result.config.data_home = "given"
    write_json(result, tmp_path / "given.json")
    payload = json.loads((tmp_path / "given.json").read_text(encoding="utf-8"))
    assert payload["config"]["data_home"] == str(tmp_path / "given")  # absolute


def test_plots_helpers():
    folds = [{"history": {"a": [1.0, None]}}, {"history": {"a": [3.0, 4.0, 5.0]}}, {"history": {}}]
    mat = epoch_matrix(folds, "a")
    assert mat.shape == (3, 3)
    np.testing.assert_array_equal(mat[1], [3, 4, 5])
    assert np.isnan(mat[0, 1:]).all() and np.isnan(mat[2]).all()
    only_random = fake_result({"random": [0.5, 0.6, 0.7]}, strategies=("random",))
    assert plot_label_weights(only_random, "toy", "unused.png") is None


@pytest.fixture
def drawn_figures(monkeypatch):
    """The figures the benchmark plots draw, in order (``_plots._figure`` is spied on)."""
    figures = []
    real = skd2ace.benchmark._plots._figure

    def spy(*args):
        figures.append(real(*args))
        return figures[-1]

    monkeypatch.setattr(skd2ace.benchmark._plots, "_figure", spy)
    return figures


def visible_ticks(ticks, limits):
    low, high = sorted(limits)
    return [t for t in ticks if low <= t <= high]


def test_plots_of_a_single_epoch_show_points_on_integer_ticks(tmp_path, drawn_figures):
    """One epoch is one point per curve: it must be drawn (a marker; a line needs two
    points) on an epoch axis with the integer tick 1, not 0.96, 0.98, ..."""
    result = fake_result({"d2ace": [0.7] * 3, "random": [0.6] * 3}, n_epochs=1)
    result.datasets["toy"]["label_names"] = []  # heat-map rows by label index
    written = make_plots(result, tmp_path)
    assert len(written) == 3 and len(drawn_figures) == 3
    curves = [ax for fig in drawn_figures[:2] for ax in fig.axes if ax.get_lines()]
    assert len(curves) == 4  # validation AUC, then the three schedule panels
    for ax in curves:
        for line in ax.get_lines():
            assert line.get_marker() == "o" and list(line.get_xdata()) == [1]
        assert ax.get_xlim() == (0.5, 1.5)
        assert visible_ticks(ax.get_xticks(), ax.get_xlim()) == [1]
    heat_maps = [ax for ax in drawn_figures[2].axes if ax.get_images()]
    assert len(heat_maps) == 2
    for ax in heat_maps:
        assert visible_ticks(ax.get_xticks(), ax.get_xlim()) == [1]
        assert visible_ticks(ax.get_yticks(), ax.get_ylim()) == [0, 1, 2]  # 3 labels

    # Many epochs: plain lines (markers would hide them), still integer epoch ticks.
    drawn_figures.clear()
    make_plots(fake_result({"d2ace": [0.7] * 3, "random": [0.6] * 3}, n_epochs=40), tmp_path)
    lines = [line for fig in drawn_figures[:2] for ax in fig.axes for line in ax.get_lines()]
    assert lines and all(line.get_marker() in (None, "None", "") for line in lines)
    for ax in (ax for fig in drawn_figures for ax in fig.axes if ax.get_lines()):
        ticks = visible_ticks(ax.get_xticks(), ax.get_xlim())
        assert len(ticks) > 2 and all(float(t).is_integer() for t in ticks)


# --------------------------------------------------------------------------- protocol


def test_fold_random_state_and_splits():
    assert fold_random_state(0, 0) == fold_random_state(0, 0)
    states = {fold_random_state(s, f) for s in range(3) for f in range(5)}
    assert len(states) == 15 and all(0 <= v < 2**31 for v in states)
    Y = np.random.default_rng(1).integers(0, 2, size=(60, 4))
    splits = fold_splits(Y, 3, seed=0)
    tests = np.concatenate([test for _, test in splits])
    np.testing.assert_array_equal(np.sort(tests), np.arange(60))
    for train, test in splits:
        assert np.intersect1d(train, test).size == 0 and train.size + test.size == 60
    again = fold_splits(Y, 3, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again, strict=True))
    other = fold_splits(Y, 3, seed=1)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(splits, other, strict=True))


def test_fold_splits_stratify_rare_labels():
    # Three rare labels with one positive per fold each (on different rows), under a
    # frequent one: iterative stratification gives every fold's test part exactly one
    # positive of each (a plain shuffled KFold leaves some folds without).
    n, k = 100, 5
    Y = np.zeros((n, 4), dtype=int)
    Y[:, 0] = np.random.default_rng(0).random(n) < 0.5
    for label in range(1, 4):
        Y[np.arange(k) * 20 + label, label] = 1
    for seed in range(3):
        for _, test in fold_splits(Y, k, seed=seed):
            assert Y[test, 1:].sum(axis=0).tolist() == [1, 1, 1]


def test_load_dataset_synthetic_preprocessing():
    data = load_dataset("synthetic")
    raw = load_dataset("synthetic", preprocess=False)
    assert raw.X.shape == (SYNTHETIC_PARAMS["n_samples"], SYNTHETIC_PARAMS["n_features"])
    assert data.X.shape[0] < raw.X.shape[0]  # rows without labels dropped
    assert data.Y.any(axis=1).all() and (data.Y.sum(axis=0) > 20).all()
    assert data.info["n_samples"] == data.X.shape[0] and data.info["preprocessed"]
    assert len(data.label_names) == data.Y.shape[1]
    np.testing.assert_array_equal(load_dataset("synthetic").X, data.X)  # fixed seed
    with pytest.raises(ValueError, match="Unknown data set"):
        load_dataset("nope")


def test_config_validation():
    with pytest.raises(ValueError, match="Unknown strategy"):
        BenchmarkConfig(strategies=["nope"])
    with pytest.raises(ValueError, match="Unknown data set"):
        BenchmarkConfig(datasets=["nope"])
    with pytest.raises(ValueError, match="duplicates"):
        BenchmarkConfig(seeds=[0, 0])
    with pytest.raises(ValueError, match="n_folds"):
        BenchmarkConfig(n_folds=1)
    # The folds' RandomState takes 32-bit seeds: refused here, not in the first fold job.
    with pytest.raises(ValueError, match=r"seeds must be in \[0, 2\*\*32 - 1\]"):
        BenchmarkConfig(seeds=[0, MAX_SEED + 1])
    assert BenchmarkConfig(seeds=[MAX_SEED]).seeds == (2**32 - 1,)
    assert (
        len(fold_splits(np.eye(4, 2, dtype=int) + np.eye(4, 2, k=-2, dtype=int), 2, MAX_SEED)) == 2
    )
    cfg = BenchmarkConfig(datasets=["Emotions"], hidden_layer_sizes=[8])
    assert cfg.datasets == ("emotions",) and cfg.to_dict()["hidden_layer_sizes"] == [8]


def test_make_model_scalers_and_pairing():
    cfg = BenchmarkConfig(max_epochs=2, lr=0.01, estimator_params={"selection_pressure": 3.0})
    dense = make_model("d2ace", 7, cfg)
    sparse = make_model("random", 7, cfg, sparse=True)
    assert isinstance(dense[0], MinMaxScaler) and isinstance(sparse[0], MaxAbsScaler)
    assert dense[-1].random_state == sparse[-1].random_state == 7
    assert dense[-1].selection_pressure == 3.0 and dense[-1].lr == 0.01
    assert sparse[-1].batch_selection == "random"
    # Both strategies train with the job's torch threads (no 'auto' for d2ace alone).
    assert dense[-1].torch_threads is None and sparse[-1].torch_threads is None


def test_run_fold_sparse_input():
    rng = np.random.default_rng(0)
    X = sp.random(80, 30, density=0.2, format="csr", random_state=0) * 5
    Y = (rng.random((80, 3)) < 0.4).astype(np.int8)
    Y[:3] = 1
    train, test = np.arange(60), np.arange(60, 80)
    r = run_fold(
        X,
        Y,
        train,
        test,
        dataset="toy",
        strategy="d2ace",
        seed=0,
        fold=0,
        config=BenchmarkConfig(max_epochs=2, batch_size=16),
    )
    assert set(r["metrics"]) == set(METRIC_NAMES)
    assert r["n_train"] == 60 and r["n_test"] == 20 and r["n_epochs"] == 2
    assert set(HISTORY_KEYS) <= set(r["history"])


@pytest.fixture(scope="module")
def small_run():
    config = BenchmarkConfig(n_folds=2, max_epochs=3, seeds=(0,))
    return run_benchmark(config, return_proba=True)


def test_run_benchmark_is_paired_and_scores_agree(small_run):
    result = small_run
    assert [(r["strategy"], r["fold"]) for r in result.folds] == [
        ("d2ace", 0),
        ("d2ace", 1),
        ("random", 0),
        ("random", 1),
    ]
    data = load_dataset("synthetic")
    by_key = {(r["strategy"], r["fold"]): r for r in result.folds}
    for fold in range(2):
        d2, rnd = by_key["d2ace", fold], by_key["random", fold]
        assert d2["random_state"] == rnd["random_state"] == fold_random_state(0, fold)
        np.testing.assert_array_equal(d2["test_index"], rnd["test_index"])
    for r in result.folds:
        assert evaluate(data.Y[r["test_index"]], r["proba"]) == pytest.approx(r["metrics"])
        assert len(r["history"]["valid_macro_auc"]) == 3
        auc = r["history"]["valid_macro_auc"]
        assert r["best_epoch"] == int(np.argmax(auc)) + 1
    # D2ACE records its schedule and label weights; random selection does not.
    d2 = by_key["d2ace", 0]["history"]
    assert len(d2["label_weights_uncertainty"][-1]) == data.Y.shape[1]
    assert by_key["random", 0]["history"]["label_weights_hardness"][-1] is None


def test_refit_of_one_fold_reproduces_its_metrics(small_run):
    """Rebuild fold 1 of D2ACE from the public helpers: same split, seed, numbers."""
    data = load_dataset("synthetic")
    train, test = fold_splits(data.Y, 2, seed=0)[1]
    recorded = next(r for r in small_run.folds if r["strategy"] == "d2ace" and r["fold"] == 1)
    np.testing.assert_array_equal(recorded["test_index"], test)
    model = make_model("d2ace", fold_random_state(0, 1), small_run.config)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the benchmark's default torch_threads
    try:
        model.fit(data.X[train], data.Y[train])
        proba = model.predict_proba(data.X[test])
    finally:
        torch.set_num_threads(threads)
    assert evaluate(data.Y[test], proba) == pytest.approx(recorded["metrics"], rel=1e-6)


# --------------------------------------------------------------------------- fold journal


def test_journal_round_trip_gives_the_same_reports(tmp_path):
    """Fold results read back from the journal make the same reports as in memory."""
    result = fake_result({"d2ace": [0.9, 0.8, 0.7], "random": [0.6, 0.7, 0.8]})
    result.folds[0]["metrics"]["micro_auc"] = float("nan")  # undefined: null in JSON
    result.folds[1]["history"]["valid_macro_auc"][0] = float("nan")
    journal = tmp_path / "folds.jsonl"
    for r in result.folds:
        append_fold(journal, r, result.config)
    back = read_journal(journal)
    assert len(back.folds) == 6 and back.complete and back.n_fold_jobs == 6
    assert math.isnan(back.folds[0]["metrics"]["micro_auc"])  # a float, as in memory
    assert back.folds[0]["metrics"]["macro_auc"] == result.folds[0]["metrics"]["macro_auc"]
    assert back.folds[3]["history"]["mixture_weight"] == [None] * 4  # random records none
    again = dataclasses.replace(result, folds=back.folds)
    write_reports(result, tmp_path / "memory", plots=False)
    write_reports(again, tmp_path / "journal", plots=False)
    for name in ("results.md", "results.csv", "comparison.md"):
        assert (tmp_path / "memory" / name).read_text() == (tmp_path / "journal" / name).read_text()
    memory, journaled = (
        json.loads((tmp_path / d / "results.json").read_text()) for d in ("memory", "journal")
    )
    for key in ("folds", "summary", "comparison"):
        assert memory[key] == journaled[key], key


def test_journal_line_cut_short_by_a_crash(tmp_path):
    result = fake_result({"d2ace": [0.9, 0.8, 0.7], "random": [0.6, 0.7, 0.8]})
    journal = tmp_path / "folds.jsonl"
    for r in result.folds[:2]:
        append_fold(journal, r, result.config)
    whole = journal.read_text()
    journal.write_text(whole + whole.splitlines()[0][:100])  # the machine died mid-line
    assert [r["fold"] for r in read_journal(journal).folds] == [0, 1]
    append_fold(journal, result.folds[2], result.config)  # the cut line is dropped first
    assert journal.read_text().startswith(whole) and len(journal.read_text().splitlines()) == 3
    assert [r["fold"] for r in read_journal(journal).folds] == [0, 1, 2]
    # Elsewhere a broken line is not a crash's trace: refused, with its line number.
    journal.write_text(whole.replace("\n", "\n{broken\n", 1))
    with pytest.raises(ValueError, match="line 2: not a fold journal line"):
        read_journal(journal)
    # Lines of runs with different settings do not mix.
    append_fold(journal := tmp_path / "mixed.jsonl", result.folds[0], result.config)
    append_fold(journal, result.folds[1], BenchmarkConfig(lr=0.1))
    with pytest.raises(ValueError, match="different settings"):
        read_journal(journal)


def test_journal_with_a_fold_job_twice(tmp_path):
    """A copied line (same job, same result) is dropped; two different results of one
    job are refused with both line numbers, not handed to run_benchmark (which rejects
    a job given twice)."""
    result = fake_result({"d2ace": [0.9, 0.8, 0.7], "random": [0.6, 0.7, 0.8]})
    journal = tmp_path / "folds.jsonl"
    for r in result.folds[:2]:
        append_fold(journal, r, result.config)
    first, second = journal.read_text(encoding="utf-8").splitlines()
    journal.write_text(f"{first}\n{second}\n{first}\n", encoding="utf-8")
    back = read_journal(journal)
    assert [job_key(r) for r in back.folds] == [job_key(r) for r in result.folds[:2]]
    assert back.folds[0]["metrics"] == result.folds[0]["metrics"]

    other = dict(result.folds[0], fit_time_s=99.0)  # the same job run again
    append_fold(journal, other, result.config)
    with pytest.raises(ValueError, match=r"folds\.jsonl, lines 1 and 4: two different results"):
        read_journal(journal)


def test_journal_not_utf8_names_the_file_and_line(tmp_path):
    result = fake_result({"d2ace": [0.9, 0.8, 0.7], "random": [0.6, 0.7, 0.8]})
    journal = tmp_path / "folds.jsonl"
    append_fold(journal, result.folds[0], result.config)
    journal.write_bytes(journal.read_bytes() + b"\xff\xfe{}\n")
    with pytest.raises(ValueError, match=r"folds\.jsonl, line 2: not a fold journal line") as exc:
        read_journal(journal)
    assert "utf-8" in str(exc.value)


def test_fingerprint_leaves_out_only_what_cannot_change_results():
    config = BenchmarkConfig(n_folds=2, max_epochs=2)
    fields = {f.name for f in dataclasses.fields(BenchmarkConfig)}
    assert set(NON_RESULT_FIELDS) < fields
    assert set(result_settings(config)) == fields - set(NON_RESULT_FIELDS)
    same = dataclasses.replace(config, n_jobs=4, torch_threads=None, verbose=1, data_home="/x")
    assert config_fingerprint(same) == config_fingerprint(config)
    changes = {
        "datasets": ["emotions"],
        "strategies": ["random"],
        "n_folds": 3,
        "seeds": [1],
        "max_epochs": 3,
        "batch_size": 64,
        "lr": 0.01,
        "hidden_layer_sizes": [8],
        "validation_fraction": 0.2,
        "threshold": 0.4,
        "device": "cpu:0",
        "preprocess": False,
        "min_positives": 5,
        "estimator_params": {"selection_pressure": 4.0},
    }
    assert set(changes) == fields - set(NON_RESULT_FIELDS)  # a new field needs a decision
    for name, value in changes.items():
        other = dataclasses.replace(config, **{name: value})
        assert config_fingerprint(other) != config_fingerprint(config), name
    # Unused without preprocessing.
    raw = dataclasses.replace(config, preprocess=False)
    assert config_fingerprint(dataclasses.replace(raw, min_positives=5)) == config_fingerprint(raw)


def test_journal_check_names_the_differing_settings(tmp_path):
    config = BenchmarkConfig(n_folds=2, max_epochs=2)
    fold = {"dataset": "synthetic", "strategy": "d2ace", "seed": 0, "fold": 0, "metrics": {}}
    append_fold(tmp_path / "folds.jsonl", fold, config)
    journal = read_journal(tmp_path / "folds.jsonl")
    journal.check(dataclasses.replace(config, n_jobs=2, torch_threads=4))  # no error
    other = dataclasses.replace(config, max_epochs=5, estimator_params={"dropout": 0.1})
    with pytest.raises(ConfigMismatchError, match="max_epochs: 2 in the journal, 5 now") as exc:
        journal.check(other)
    assert [d.split(":")[0] for d in exc.value.differences] == ["estimator_params", "max_epochs"]
    assert not journal.complete and journal.n_fold_jobs == 4


def job_key(r):
    return (r["dataset"], r["strategy"], r["seed"], r["fold"])


def fake_run_fold(calls, interrupt_at=None):
    """A run_fold that trains nothing; the ``interrupt_at``-th call raises KeyboardInterrupt."""

    def run(X, Y, train, test, *, dataset, strategy, seed, fold, config, **kwargs):
        calls.append((dataset, strategy, seed, fold))
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return fake_fold(dataset, strategy, seed, fold, 0.5 + 0.1 * fold)

    return run


def test_run_benchmark_interrupted_then_resumed(tmp_path, monkeypatch):
    config = BenchmarkConfig(n_folds=3, max_epochs=2, seeds=(0, 1))  # 12 fold jobs
    journal = tmp_path / "out" / "folds.jsonl"
    calls = []
    monkeypatch.setattr(skd2ace.benchmark._protocol, "run_fold", fake_run_fold(calls, 6))
    seen = []
    with pytest.raises(BenchmarkInterrupted) as exc:
        run_benchmark(config, journal=journal, progress=lambda *a: seen.append(a[:2]))
    assert isinstance(exc.value, KeyboardInterrupt)  # stops callers that do not know it
    partial = exc.value.result
    assert len(partial.folds) == 5 and not partial.complete and partial.n_fold_jobs == 12
    assert seen == [(k, 12) for k in range(1, 6)]
    assert len(journal.read_text().splitlines()) == 5  # every finished job, at once
    keys = [job_key(r) for r in partial.folds]
    assert keys == [k for k in fold_jobs(config) if k in keys]  # in report order

    # Resume: only the 7 missing jobs run; the result is in report order.
    done = read_journal(journal)
    done.check(config)
    calls.clear()
    monkeypatch.setattr(skd2ace.benchmark._protocol, "run_fold", fake_run_fold(calls))
    result = run_benchmark(
        config, done=done.folds, journal=journal, progress=lambda *a: seen.append(a[:2])
    )
    assert len(calls) == 7 and set(calls) == set(fold_jobs(config)) - set(keys)
    assert seen[5:] == [(k, 12) for k in range(6, 13)]  # counting the resumed ones
    assert result.complete and result.n_resumed == 5
    assert [job_key(r) for r in result.folds] == fold_jobs(config)
    assert read_journal(journal).complete
    # Everything done: nothing runs; the journal is rewritten with the done results.
    calls.clear()
    again = run_benchmark(config, done=read_journal(journal).folds, journal=journal)
    assert calls == [] and again.n_resumed == 12 and len(journal.read_text().splitlines()) == 12


@pytest.mark.parametrize(
    ("Y", "preprocess", "match"),
    [
        (
            np.array([[1], [0], [1], [0], [1], [0]]),
            True,
            r"'synthetic' has 6 rows and 1 label after preprocessing \(labels with <= 20 "
            r"positives dropped.*needs at least 2 labels \(a lower min_positives",
        ),
        (
            np.array([[1], [0], [1], [0], [1], [0]]),
            False,
            r"\(no preprocessing\).*at least 2 labels",
        ),
        (np.array([[1, 0]]), True, "1 rows and 2 labels .*too few rows for 2 folds"),
    ],
)
def test_run_benchmark_needs_two_labels_and_a_row_per_fold(monkeypatch, Y, preprocess, match):
    """The iterative stratification reads one label column as binary targets and fails
    deep inside iterstrat: a single label left is refused first, with the reason."""
    from sklearn.utils import Bunch

    def load(name, **kwargs):
        info = {"name": name}
        return Bunch(X=np.zeros((len(Y), 2)), Y=Y, name=name, label_names=[], info=info)

    monkeypatch.setattr(skd2ace.benchmark._protocol, "load_dataset", load)
    monkeypatch.setattr(skd2ace.benchmark._protocol, "run_fold", fake_run_fold([]))
    config = BenchmarkConfig(n_folds=2, max_epochs=2, preprocess=preprocess)
    with pytest.raises(InsufficientDataError, match=match):
        run_benchmark(config)


def test_run_benchmark_checks_done(monkeypatch):
    config = BenchmarkConfig(n_folds=2, max_epochs=2)
    monkeypatch.setattr(skd2ace.benchmark._protocol, "run_fold", fake_run_fold([]))
    fold = fake_fold("synthetic", "d2ace", 0, 0, 0.7)
    with pytest.raises(ValueError, match="twice"):
        run_benchmark(config, done=[fold, fold])
    with pytest.raises(ValueError, match="not in the configuration"):
        run_benchmark(config, done=[fake_fold("synthetic", "d2ace", 0, 5, 0.7)])
    with pytest.raises(ValueError, match="return_proba"):
        run_benchmark(config, done=[fold], return_proba=True)


class CtrlC(Callback):
    """Press Ctrl-C (a real SIGINT) at the end of epoch 1."""

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) == 1:
            signal.raise_signal(signal.SIGINT)


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signals are handled in the main thread",
)
def test_run_fold_does_not_return_a_fit_cut_short_by_ctrl_c():
    """The estimator's fit swallows Ctrl-C (it stops early with a usable model): a fold job
    must not count that model as its result."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        rng = np.random.default_rng(0)
        X, Y = rng.random((60, 5)), (rng.random((60, 3)) < 0.4).astype(np.int8)
        Y[:3] = 1
        config = BenchmarkConfig(
            max_epochs=3, batch_size=16, estimator_params={"callbacks": [CtrlC()]}
        )
        kwargs = {"dataset": "toy", "strategy": "d2ace", "seed": 0, "fold": 0, "config": config}
        with pytest.raises(KeyboardInterrupt):
            run_fold(X, Y, np.arange(45), np.arange(45, 60), **kwargs)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
        # Without Ctrl-C, the same fit is a result (of all 3 epochs).
        kwargs["config"] = dataclasses.replace(config, estimator_params={})
        assert run_fold(X, Y, np.arange(45), np.arange(45, 60), **kwargs)["n_epochs"] == 3
    finally:
        signal.signal(signal.SIGINT, previous)


def test_fingerprints_of_object_parameters_are_stable():
    # repr() of most objects holds a memory address: equal configurations would get a
    # new fingerprint in every process, and a journal could never be resumed.
    from skorch.callbacks import EpochTimer

    from skd2ace.benchmark import config_fingerprint

    class Tag(Callback):
        def __init__(self, name="a"):
            self.name = name

    def config(callback):
        return BenchmarkConfig(estimator_params={"callbacks": [callback, EpochTimer()]})

    assert config_fingerprint(config(Tag())) == config_fingerprint(config(Tag()))
    assert config_fingerprint(config(Tag())) != config_fingerprint(config(Tag("b")))

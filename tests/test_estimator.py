"""D2ACEMultiLabelClassifier: scikit-learn compatibility, shapes, reproducibility, real data."""

import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import clone
from sklearn.datasets import make_multilabel_classification
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from skd2ace import D2ACEMultiLabelClassifier, selection
from skd2ace.metrics import macro_auc

FAST = {"max_epochs": 4, "hidden_layer_sizes": (16,), "batch_size": 32}


def small_problem(n=240, q=5, d=12, seed=0):
    return make_multilabel_classification(
        n_samples=n, n_features=d, n_classes=q, n_labels=2, random_state=seed
    )


@parametrize_with_checks(
    [
        D2ACEMultiLabelClassifier(**FAST, random_state=0),
        D2ACEMultiLabelClassifier(**FAST, batch_selection="random", random_state=0),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_shapes_and_dtypes():
    X, Y = small_problem()
    clf = D2ACEMultiLabelClassifier(**FAST, random_state=0).fit(X, Y)
    proba = clf.predict_proba(X)
    assert proba.shape == Y.shape and proba.dtype == np.float64
    assert np.all((proba > 0) & (proba < 1))
    pred = clf.predict(X)
    assert pred.shape == Y.shape and pred.dtype == Y.dtype
    np.testing.assert_array_equal(pred, (proba > 0.5).astype(Y.dtype))
    assert clf.n_labels_ == Y.shape[1] and clf.n_features_in_ == X.shape[1]
    assert len(clf.classes_) == Y.shape[1]


def test_threshold_moves_predictions():
    X, Y = small_problem()
    clf = D2ACEMultiLabelClassifier(**FAST, threshold=0.9, random_state=0).fit(X, Y)
    np.testing.assert_array_equal(clf.predict(X), (clf.predict_proba(X) > 0.9).astype(int))


@pytest.mark.parametrize("kind", ["list", "bool", "dataframe"])
def test_label_containers(kind):
    pd = pytest.importorskip("pandas")
    X, Y = small_problem(n=80)
    if kind == "list":
        y = Y.tolist()
    elif kind == "bool":
        y = Y.astype(bool)
    else:
        X = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
        y = pd.DataFrame(Y, columns=[f"label{j}" for j in range(Y.shape[1])])
    clf = D2ACEMultiLabelClassifier(**FAST, random_state=0).fit(X, y)
    pred = clf.predict(X)
    assert pred.shape == Y.shape
    if kind == "bool":
        assert pred.dtype == bool
    if kind == "dataframe":
        assert list(clf.feature_names_in_) == list(X.columns)


@pytest.mark.parametrize(("dtype", "expected"), [("Int64", np.int64), ("boolean", bool)])
def test_predict_keeps_pandas_nullable_label_dtypes(dtype, expected):
    pd = pytest.importorskip("pandas")
    X, Y = small_problem(n=80)
    clf = D2ACEMultiLabelClassifier(**FAST, random_state=0).fit(X, pd.DataFrame(Y).astype(dtype))
    pred = clf.predict(X)
    assert pred.dtype == expected
    np.testing.assert_array_equal(pred, clf.predict_proba(X) > 0.5)


def test_binary_1d_and_multiclass():
    X, Y = small_problem(n=100)
    y = np.where(Y[:, 0] == 1, "yes", "no")
    clf = D2ACEMultiLabelClassifier(**FAST, random_state=0).fit(X, y)
    assert clf.predict_proba(X).shape == (100, 2)
    assert set(clf.predict(X)) <= {"yes", "no"}
    with pytest.raises(ValueError, match="Only binary classification is supported"):
        clf.fit(X, np.arange(100) % 3)


def test_non_binary_indicator_rejected():
    X, Y = small_problem(n=50)
    Y = Y.copy()
    Y[0, 0] = 2
    with pytest.raises(ValueError, match="values 0 and 1"):
        D2ACEMultiLabelClassifier(**FAST).fit(X, Y)


def test_sparse_input_matches_dense():
    X, Y = small_problem(n=120)
    # Continuous values: integer features tie in kNN, and dense and sparse neighbour
    # searches may break ties differently.
    X = X * np.random.default_rng(0).random(X.shape)
    X[X < 1] = 0
    dense = D2ACEMultiLabelClassifier(**FAST, random_state=3).fit(X, Y)
    sparse = D2ACEMultiLabelClassifier(**FAST, random_state=3).fit(sp.csr_matrix(X), Y)
    np.testing.assert_allclose(
        dense.predict_proba(X), sparse.predict_proba(sp.csr_matrix(X)), rtol=1e-5, atol=1e-6
    )


def test_same_seed_bit_identical_and_global_state_untouched():
    X, Y = small_problem()
    np.random.seed(123)  # noqa: NPY002 (the legacy global state is what must stay untouched)
    torch.manual_seed(123)
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002
    torch_state = torch.get_rng_state().clone()
    a = D2ACEMultiLabelClassifier(**FAST, dropout=0.2, random_state=7).fit(X, Y)
    b = D2ACEMultiLabelClassifier(**FAST, dropout=0.2, random_state=7).fit(X, Y)
    c = D2ACEMultiLabelClassifier(**FAST, dropout=0.2, random_state=8).fit(X, Y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert not np.array_equal(a.predict_proba(X), c.predict_proba(X))
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_pickle_clone_and_refit():
    X, Y = small_problem()
    clf = D2ACEMultiLabelClassifier(**FAST, random_state=0).fit(X, Y)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
    fresh = clone(clf)
    assert not hasattr(fresh, "net_")
    assert fresh.get_params() == clf.get_params()
    first_net = clf.net_
    clf.fit(X, Y)
    assert clf.net_ is not first_net
    assert len(clf.net_.history) == FAST["max_epochs"]
    # The O(N·q) record is freed after fit, so the pickle stays small.
    assert clf.net_.batch_sampler.record_ is None


def test_history_records_selection_schedule():
    X, Y = small_problem(n=300)
    T, warmup = 8, 2
    clf = D2ACEMultiLabelClassifier(
        **{**FAST, "max_epochs": T}, warmup_epochs=warmup, mixture_ramp_end=6, random_state=0
    ).fit(X, Y)
    h = clf.net_.history
    for e in range(T):
        assert h[e, "selection_pressure"] == pytest.approx(
            selection.selection_pressure(e, T, warmup, 8.0)
        )
        assert h[e, "mixture_weight"] == pytest.approx(selection.mixture_weight(e, warmup, 6))
        assert len(h[e, "label_weights_uncertainty"]) == Y.shape[1]
        assert len(h[e, "label_weights_hardness"]) == Y.shape[1]
    ess = h[:, "selection_ess"]
    assert ess[:warmup] == [1.0] * warmup
    assert all(0 < value < 1 for value in ess[warmup:])
    assert all(np.isfinite(h[:, "valid_macro_auc"]))


def test_random_selection_is_uniform():
    X, Y = small_problem()
    clf = D2ACEMultiLabelClassifier(**FAST, batch_selection="random", random_state=0).fit(X, Y)
    assert clf.net_.history[:, "selection_ess"] == [1.0] * FAST["max_epochs"]


def test_patience_stops_early():
    X, Y = small_problem()
    # A learning rate this small never improves validation AUC past the first epoch
    # by much; patience 1 then stops after a few epochs, long before 50.
    clf = D2ACEMultiLabelClassifier(
        **{**FAST, "max_epochs": 50}, lr=1e-12, patience=1, random_state=0
    ).fit(X, Y)
    assert len(clf.net_.history) < 50


def test_pipeline_and_grid_search_over_pressure():
    X, Y = small_problem(n=200)
    pipe = make_pipeline(MinMaxScaler(), D2ACEMultiLabelClassifier(**FAST, random_state=0))
    search = GridSearchCV(
        pipe,
        {"d2acemultilabelclassifier__selection_pressure": [2.0, 8.0]},
        scoring="roc_auc",
        cv=2,
        n_jobs=2,
    )
    search.fit(X, Y)
    best = search.best_params_["d2acemultilabelclassifier__selection_pressure"]
    assert search.best_estimator_[-1].selection_pressure == best
    scores = search.cv_results_["mean_test_score"]
    assert best == [2.0, 8.0][int(np.argmax(scores))]
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.predict(X).shape == Y.shape


@pytest.mark.parametrize("scoring", ["roc_auc", "average_precision"])
def test_two_label_matrix_with_probability_scorers(scoring):
    # With q = 2, scikit-learn's scorers tell a label matrix from 1-D binary output by
    # classes_ (a list of per-label classes, not one array of two): they must get the
    # (n, 2) probabilities of the two labels.
    X, Y = small_problem(n=120, q=2)
    clf = D2ACEMultiLabelClassifier(**FAST, random_state=0)
    scores = cross_val_score(clf, X, Y, scoring=scoring, cv=2)
    assert np.all(np.isfinite(scores)) and np.all((scores > 0) & (scores <= 1))
    fitted = clone(clf).fit(X, Y)
    assert fitted.classes_.shape == (2, 2) and len(fitted.classes_) == 2


@pytest.mark.parametrize("q", [1, 3])
def test_cross_val_predict_and_stacking_with_probabilities(q):
    from sklearn.ensemble import StackingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.multioutput import MultiOutputClassifier

    X, Y = small_problem(n=90, q=q)
    clf = D2ACEMultiLabelClassifier(**FAST, random_state=0)
    cv = KFold(3)
    proba = cross_val_predict(clf, X, Y, cv=cv, method="predict_proba")
    expected = np.zeros(Y.shape)
    for train, test in cv.split(X):
        expected[test] = clone(clf).fit(X[train], Y[train]).predict_proba(X[test])
    np.testing.assert_array_equal(proba, expected)
    if q > 1:
        stack = StackingClassifier(
            [("d2ace", clf)], final_estimator=MultiOutputClassifier(LogisticRegression()), cv=2
        ).fit(X, Y)
        assert stack.predict(X).shape == Y.shape


def test_tags_declare_a_multi_label_classifier():
    tags = D2ACEMultiLabelClassifier().__sklearn_tags__()
    assert tags.estimator_type == "classifier"
    assert tags.classifier_tags.multi_label and tags.target_tags.multi_output


def test_selection_parameters_reach_the_sampler_and_record(monkeypatch):
    import skd2ace._classifier as C

    searched = []
    real_search = C.nearest_neighbors_in_background

    def search(X, k, **kwargs):
        searched.append(k)
        return real_search(X, k, **kwargs)

    monkeypatch.setattr(C, "nearest_neighbors_in_background", search)
    X, Y = small_problem(n=100)
    params = dict(
        max_epochs=6,
        warmup_epochs=2,
        mixture_ramp_end=5,
        selection_pressure=3.0,
        flip_decay=0.4,
        fluctuation_weight=0.2,
        history_size=4,
        label_weight_mean=0.1,
        label_weight_std=0.9,
        mixture_start=0.8,
        mixture_end=0.2,
        dynamic_label_weights=False,
        n_neighbors=3,
    )
    clf = D2ACEMultiLabelClassifier(
        hidden_layer_sizes=(8,), batch_size=16, warm_start=True, random_state=0, **params
    ).fit(X, Y)
    sampler = clf.net_.batch_sampler
    record = sampler.record_
    assert (record.flip_decay, record.lam, record.history_size) == (0.4, 0.2, 4)
    assert (sampler.weight_mean, sampler.weight_std, sampler.dynamic_weights) == (0.1, 0.9, False)
    assert (sampler.initial_pressure, sampler.mixture_start, sampler.mixture_end) == (3.0, 0.8, 0.2)
    assert (sampler.warmup_epochs, sampler.ramp_end, sampler.max_epochs) == (2, 5, 6)
    assert searched == [3]
    history = clf.net_.history
    assert history[:, "selection_pressure"][:3] == [3.0, 3.0, 3.0]
    assert history[-1, "mixture_weight"] == pytest.approx(0.2)
    assert history[-1, "label_weights_hardness"] == [1.0] * Y.shape[1]  # static weights


def test_validation_split_rounds_up():
    X, Y = small_problem(n=40)
    clf = D2ACEMultiLabelClassifier(**FAST, validation_fraction=0.11, random_state=0)
    clf.initialize(X, Y)
    assert len(clf._train_idx) == 40 - 5  # ⌈0.11 · 40⌉ = ⌈4.4⌉ validation rows


def test_custom_module_class():
    class Linear(torch.nn.Module):
        def __init__(self, n_features, n_labels, bias=True):
            super().__init__()
            self.linear = torch.nn.Linear(n_features, n_labels, bias=bias)

        def forward(self, X):
            return self.linear(X)

    X, Y = small_problem(n=80)
    clf = D2ACEMultiLabelClassifier(
        module=Linear, module_kwargs={"bias": False}, **FAST, random_state=0
    ).fit(X, Y)
    assert clf.net_.module_.linear.bias is None
    assert clf.predict(X).shape == Y.shape


def test_yeast_reaches_sensible_macro_auc(mulan_home):
    from skd2ace.datasets import fetch_mulan

    train = fetch_mulan("yeast", data_home=mulan_home, subset="train")
    test = fetch_mulan("yeast", data_home=mulan_home, subset="test")
    scaler = MinMaxScaler().fit(train.X)
    clf = D2ACEMultiLabelClassifier(max_epochs=30, random_state=0)
    clf.fit(scaler.transform(train.X), train.Y)
    auc = macro_auc(test.Y, clf.predict_proba(scaler.transform(test.X)))
    # Published yeast macro-AUCs of MLP-based learners lie around 0.70 (Zhang & Zhou);
    # an untrained net gives ~0.5.
    assert auc > 0.66, auc


def test_fits_in_parallel_threads_are_reproducible():
    # torch's random generator is process-wide: fits in threads take turns with it, so
    # each gets the initialisation and dropout masks of its own seed.
    from joblib import Parallel, delayed

    X, Y = make_multilabel_classification(n_samples=300, n_classes=4, random_state=0)

    def fit(seed):
        clf = D2ACEMultiLabelClassifier(
            max_epochs=6, hidden_layer_sizes=(64,), dropout=0.3, random_state=seed
        )
        return clf.fit(X, Y).predict_proba(X)

    alone = [fit(seed) for seed in (0, 1, 2, 3)]
    together = Parallel(n_jobs=4, backend="threading")(delayed(fit)(s) for s in (0, 1, 2, 3))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)


def test_unseeded_fits_draw_from_numpy_s_global_state():
    # docs/index.md: random_state=None draws the seeds from numpy's global state, as in
    # scikit-learn, so np.random.seed makes such a fit reproducible, and advances it.
    X, Y = small_problem(n=80)
    saved = np.random.get_state()  # noqa: NPY002 - the legacy global state is the subject
    try:
        probas = []
        for _ in range(2):
            np.random.seed(0)  # noqa: NPY002
            clf = D2ACEMultiLabelClassifier(**FAST, random_state=None).fit(X, Y)
            probas.append(clf.predict_proba(X))
            after = np.random.random()  # noqa: NPY002
        np.testing.assert_array_equal(probas[0], probas[1])
        np.random.seed(0)  # noqa: NPY002
        assert after != np.random.random()  # noqa: NPY002 - the fit drew from it
        other = D2ACEMultiLabelClassifier(**FAST, random_state=None).fit(X, Y).predict_proba(X)
        assert not np.array_equal(other, probas[0])  # the state had moved on
    finally:
        np.random.set_state(saved)  # noqa: NPY002


def test_default_ramp_end_score_and_verbose_true(capsys):
    X, Y = small_problem(n=80)
    clf = D2ACEMultiLabelClassifier(**{**FAST, "max_epochs": 10}, verbose=True, random_state=0).fit(
        X, Y
    )
    assert "epoch" in capsys.readouterr().out  # verbose=True prints the epoch table
    betas = clf.net_.history[:, "mixture_weight"]
    # The mixture ramps from 0.7 at the warm-up's end (epoch 1) to 0.3 at 70% of T.
    assert betas[1] == pytest.approx(0.7) and betas[7] == pytest.approx(0.3)
    assert betas[6] > 0.3
    # score: scikit-learn's classifier default, subset accuracy.
    assert clf.score(X, Y) == pytest.approx(np.mean((clf.predict(X) == Y).all(axis=1)))

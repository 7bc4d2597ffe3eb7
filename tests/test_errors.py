"""Bad input and bad hyper-parameters: clear errors, at fit time, before any training."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from skorch.callbacks import Callback

from skd2ace import D2ACEMultiLabelClassifier

FAST = {"max_epochs": 3, "hidden_layer_sizes": (8,), "batch_size": 16, "random_state": 0}


def tiny_problem(n=40, d=4, q=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, d))
    Y = (rng.random((n, q)) < 0.4).astype(int)
    return X, Y


def assert_untrained(clf):
    """A failed first fit builds nothing: no network, no fitted attribute at all."""
    assert not hasattr(clf, "net_")
    assert [key for key in vars(clf) if key.endswith("_") or key.startswith("_")] == []


# ---------------------------------------------------------------- bad data at fit
def _with(array, index, value):
    array = array.astype(float)
    array[index] = value
    return array


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda X, Y: (_with(X, (0, 0), np.nan), Y), "Input X contains NaN"),
        (lambda X, Y: (_with(X, (3, 1), np.inf), Y), "Input X contains infinity"),
        (lambda X, Y: (_with(X, (3, 1), -np.inf), Y), "Input X contains infinity"),
        (lambda X, Y: (X, _with(Y, (0, 0), np.nan)), "Input y contains NaN"),
        # A label matrix whose column holds a third value.
        (lambda X, Y: (X, _with(Y, (0, 0), 2).astype(int)), "values 0 and 1"),
        # Two values per column, but not 0/1.
        (lambda X, Y: (X, np.where(Y == 1, 1, -1)), "values 0 and 1"),
        (lambda X, Y: (X, Y + 1), "values 0 and 1"),
        (lambda X, Y: (X, np.where(Y == 1, "yes", "no")), "values 0 and 1"),
        (lambda X, Y: (X, _with(Y, (0, 0), 0.5)), "Unknown label type"),
        # 1-D y with more than two classes.
        (lambda X, Y: (X, np.arange(X.shape[0]) % 3), "Only binary classification"),
        (lambda X, Y: (X, Y[:-5]), "inconsistent numbers of samples"),
        (lambda X, Y: (X[:1], Y[:1]), "minimum of 2 is required"),
        (lambda X, Y: (X[:0], Y[:0]), "minimum of 2 is required"),
        # Finite in float64, infinite in the network's float32.
        (lambda X, Y: (_with(X, (2, 0), 1e39), Y), "too large for float32"),
        (lambda X, Y: (X, Y[:, :0]), "y has no label columns"),
        (lambda X, Y: (X, [[] for _ in Y]), "y has no label columns"),
        (lambda X, Y: (X, [[], *Y[1:].tolist()]), "inhomogeneous"),
    ],
    ids=[
        "X-nan",
        "X-inf",
        "X-neginf",
        "Y-nan",
        "Y-three-values",
        "Y-minus-one",
        "Y-one-two",
        "Y-strings",
        "Y-continuous",
        "y-multiclass",
        "rows-mismatch",
        "one-row",
        "no-rows",
        "X-beyond-float32",
        "Y-no-labels",
        "Y-list-of-empty-rows",
        "Y-ragged-first-row-empty",
    ],
)
@pytest.mark.parametrize("method", ["fit", "partial_fit", "initialize"])
def test_bad_data_rejected_before_training(make, message, method):
    X, Y = make(*tiny_problem())
    clf = D2ACEMultiLabelClassifier(**FAST)
    with pytest.raises(ValueError, match=message):
        getattr(clf, method)(X, Y)
    assert_untrained(clf)


def test_predict_before_fit_raises_not_fitted():
    X, _ = tiny_problem()
    clf = D2ACEMultiLabelClassifier(**FAST)
    for method in ("predict", "predict_proba"):
        with pytest.raises(NotFittedError, match="not fitted"):
            getattr(clf, method)(X)
    with pytest.raises(NotFittedError, match="not fitted"):
        clf.save_params(f_params="unused.pt")
    with pytest.raises(NotFittedError, match=r"initialize\(X, y\)"):
        clf.load_params(f_params="unused.pt")


@pytest.fixture(scope="module")
def fitted():
    X, Y = tiny_problem()
    return D2ACEMultiLabelClassifier(**FAST).fit(X, Y), X, Y


def test_predict_with_wrong_number_of_features(fitted):
    clf, X, _ = fitted
    for method in ("predict", "predict_proba"):
        with pytest.raises(ValueError, match=r"X has 3 features, but .* expecting 4 features"):
            getattr(clf, method)(X[:, :3])


def test_predict_with_nan_rejected(fitted):
    clf, X, _ = fitted
    with pytest.raises(ValueError, match="Input X contains NaN"):
        clf.predict(_with(X, (0, 0), np.nan))


def test_predict_beyond_float32_rejected(fitted):
    clf, X, _ = fitted
    with pytest.raises(ValueError, match="too large for float32"):
        clf.predict_proba(_with(X, (0, 0), -1e39))


def test_predict_with_different_column_names():
    pd = pytest.importorskip("pandas")
    X, Y = tiny_problem()
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    clf = D2ACEMultiLabelClassifier(**FAST).fit(frame, Y)
    renamed = frame.rename(columns={"d": "e"})
    with pytest.raises(ValueError, match="feature names should match"):
        clf.predict(renamed)
    with pytest.raises(ValueError, match="same order"):
        clf.predict_proba(frame[["b", "a", "c", "d"]])


def test_continuation_with_other_data_rejected_before_training(fitted):
    clf, X, Y = fitted
    clf = clone(clf).set_params(warm_start=True).fit(X, Y)
    epochs = len(clf.net_.history)
    with pytest.raises(ValueError, match="40 rows"):
        clf.partial_fit(X[:30], Y[:30])
    with pytest.raises(ValueError, match="40 rows"):
        clf.fit(X[:30], Y[:30])
    with pytest.raises(ValueError, match="expecting 4 features"):
        clf.partial_fit(X[:, :3], Y)
    with pytest.raises(ValueError, match="y has 2 labels, the first fit had 3"):
        clf.partial_fit(X, Y[:, :2])
    with pytest.raises(ValueError, match="same number of dimensions"):
        clf.partial_fit(X, Y[:, 0])
    # Same shapes, other data: the per-instance statistics would belong to other rows.
    with pytest.raises(ValueError, match="X differs from it"):
        clf.partial_fit(X[::-1], Y[::-1])
    with pytest.raises(ValueError, match="X differs from it"):
        clf.fit(X + 1.0, Y)
    with pytest.raises(ValueError, match="y differs from it"):
        clf.partial_fit(X, 1 - Y)
    assert len(clf.net_.history) == epochs
    # The same data in another container or float dtype is the same data.
    clf.partial_fit(X.astype(np.float32).tolist(), Y.astype(bool))
    assert len(clf.net_.history) == epochs + 1


def test_continuation_of_sparse_data_compares_values():
    sp = pytest.importorskip("scipy.sparse")
    X, Y = tiny_problem()
    X[X < 0.5] = 0.0
    clf = D2ACEMultiLabelClassifier(**FAST, warm_start=True).fit(sp.csr_matrix(X), Y)
    unsorted = sp.csr_matrix(X)[:, ::-1][:, ::-1]  # same values, indices in another order
    clf.fit(unsorted, Y)
    assert len(clf.net_.history) == 2 * FAST["max_epochs"]
    changed = X.copy()
    changed[0, changed[0].nonzero()[0][0]] += 1.0
    with pytest.raises(ValueError, match="X differs from it"):
        clf.fit(sp.csr_matrix(changed), Y)


def test_binary_continuation_rejects_new_classes():
    X, Y = tiny_problem()
    y = np.where(Y[:, 0] == 1, "yes", "no")
    clf = D2ACEMultiLabelClassifier(**FAST).partial_fit(X, y)
    with pytest.raises(ValueError, match="classes outside those of the first fit"):
        clf.partial_fit(X, np.where(Y[:, 0] == 1, "yes", "maybe"))
    assert len(clf.net_.history) == 1


def test_numpy_integer_parameters_train_and_predict():
    # check_scalar accepts numpy integers; torch's BatchSampler takes Python ints only.
    X, Y = tiny_problem()
    params = {**FAST, "batch_size": np.int64(16), "validation_fraction": None}
    clf = D2ACEMultiLabelClassifier(**params)
    assert clf.fit(X, Y).predict(X).shape == Y.shape


# ---------------------------------------------------------------- bad hyper-parameters
class _NotAModule:
    pass


BAD_PARAMS = [
    ({"batch_selection": "smart"}, ValueError, "batch_selection must be one of"),
    ({"label_context": "nearby"}, ValueError, "label_context must be one of"),
    ({"optimizer": "adagrad"}, ValueError, "optimizer must be one of"),
    ({"optimizer": torch.nn.Linear}, TypeError, "optimizer must be a name or a torch"),
    ({"selection_pressure": 0.5}, ValueError, "selection_pressure == 0.5, must be >= 1"),
    ({"selection_pressure": np.inf}, ValueError, "selection_pressure must be a finite"),
    ({"selection_pressure": np.nan}, ValueError, "selection_pressure must be a finite"),
    ({"mixture_start": 1.5}, ValueError, "mixture_start == 1.5, must be <= 1"),
    ({"mixture_start": -0.1}, ValueError, "mixture_start == -0.1, must be >= 0"),
    ({"mixture_end": 2}, ValueError, "mixture_end == 2, must be <= 1"),
    ({"mixture_end": -1}, ValueError, "mixture_end == -1, must be >= 0"),
    ({"history_size": 1}, ValueError, "history_size == 1, must be >= 2"),
    ({"history_size": 2.5}, TypeError, "history_size must be an instance of"),
    ({"n_neighbors": -1}, ValueError, "n_neighbors == -1, must be >= 0"),
    ({"warmup_epochs": 3}, ValueError, r"warmup_epochs must be smaller than max_epochs \(3\)"),
    ({"warmup_epochs": 7}, ValueError, "warmup_epochs must be smaller than max_epochs"),
    ({"warmup_epochs": -1}, ValueError, "warmup_epochs == -1, must be >= 0"),
    ({"mixture_ramp_end": -1}, ValueError, "mixture_ramp_end == -1"),
    ({"lr": 0}, ValueError, "lr == 0, must be > 0"),
    ({"lr": -1e-3}, ValueError, "lr == -0.001, must be > 0"),
    ({"lr": np.nan}, ValueError, "lr must be a finite number"),
    ({"lr": "fast"}, TypeError, "lr must be an instance of"),
    ({"weight_decay": -1}, ValueError, "weight_decay == -1"),
    ({"batch_size": 0}, ValueError, "batch_size == 0, must be >= 1"),
    ({"max_epochs": 0}, ValueError, "max_epochs == 0, must be >= 1"),
    ({"validation_fraction": 1.0}, ValueError, "validation_fraction == 1.0, must be < 1"),
    ({"validation_fraction": -0.1}, ValueError, "validation_fraction == -0.1, must be >= 0"),
    ({"threshold": 1.5}, ValueError, "threshold == 1.5, must be <= 1"),
    ({"threshold": -0.5}, ValueError, "threshold == -0.5, must be >= 0"),
    ({"patience": 0}, ValueError, "patience == 0, must be >= 1"),
    ({"dropout": 1.0}, ValueError, "dropout == 1.0, must be < 1"),
    ({"dropout": -0.2}, ValueError, "dropout == -0.2, must be >= 0"),
    ({"flip_decay": 0.0}, ValueError, "flip_decay == 0.0, must be > 0"),
    ({"flip_decay": 1.2}, ValueError, "flip_decay == 1.2, must be <= 1"),
    ({"fluctuation_weight": 2}, ValueError, "fluctuation_weight == 2"),
    ({"label_weight_mean": np.inf}, ValueError, "label_weight_mean must be a finite"),
    ({"label_weight_std": np.nan}, ValueError, "label_weight_std must be a finite"),
    ({"num_workers": -1}, ValueError, "num_workers == -1"),
    ({"torch_threads": 0}, ValueError, "torch_threads == 0, must be >= 1"),
    ({"torch_threads": 2**40}, ValueError, "torch_threads == 1099511627776, must be <="),
    ({"torch_threads": "all"}, ValueError, "torch_threads must be 'auto', an int"),
    ({"torch_threads": True}, TypeError, "torch_threads must be 'auto', an int"),
    ({"torch_threads": 2.0}, TypeError, "torch_threads must be an instance of"),
    ({"module": _NotAModule}, TypeError, "module must be a torch.nn.Module subclass"),
    ({"module": torch.nn.Linear(4, 3)}, TypeError, r"the class, not an instance"),
    ({"module": "MLP"}, TypeError, "module must be a torch.nn.Module subclass"),
    ({"module_kwargs": [("bias", False)]}, TypeError, "module_kwargs must be a dict"),
    ({"hidden_layer_sizes": (8, 0)}, ValueError, "hidden_layer_sizes must be a sequence"),
    ({"hidden_layer_sizes": "wide"}, ValueError, "hidden_layer_sizes must be a sequence"),
    ({"hidden_layer_sizes": None}, TypeError, "hidden_layer_sizes must be a sequence"),
    ({"callbacks": "progress"}, TypeError, "callbacks must be a list"),
    ({"device": "gpu"}, ValueError, "device='gpu' is not a torch device"),
    ({"device": 0}, TypeError, "device must be a string"),
    # Whole-number floats are not ints; booleans are not layer sizes.
    ({"max_epochs": 3.0}, TypeError, "max_epochs must be an instance of"),
    ({"batch_size": 16.0}, TypeError, "batch_size must be an instance of"),
    ({"warmup_epochs": 1.0}, TypeError, "warmup_epochs must be an instance of"),
    ({"fluctuation_weight": -0.1}, ValueError, "fluctuation_weight == -0.1, must be >= 0"),
    ({"weight_decay": np.inf}, ValueError, "weight_decay must be a finite"),
    ({"hidden_layer_sizes": (True,)}, ValueError, "hidden_layer_sizes must be a sequence"),
    ({"dynamic_label_weights": "x"}, TypeError, "dynamic_label_weights must be True or False"),
    ({"warm_start": 1}, TypeError, "warm_start must be True or False"),
    ({"verbose": "x"}, TypeError, "verbose must be an instance of int"),
    ({"verbose": -1}, ValueError, "verbose == -1, must be >= 0"),
    ({"random_state": "x"}, ValueError, "random_state: 'x' cannot be used to seed"),
    # Booleans are Integral (True == 1): not a number of epochs, a rate or a pressure.
    ({"max_epochs": True}, TypeError, "max_epochs must be an instance of int, not bool"),
    ({"batch_size": True}, TypeError, "batch_size must be an instance of int, not bool"),
    ({"warmup_epochs": False}, TypeError, "warmup_epochs must be an instance of int, not"),
    ({"lr": True}, TypeError, "lr must be an instance of float, not bool"),
    ({"selection_pressure": True}, TypeError, "selection_pressure must be an instance of"),
    ({"threshold": np.True_}, TypeError, "threshold must be an instance of float, not bool"),
    ({"callbacks": [1]}, TypeError, r"callbacks must be a list of skorch callbacks .*got 1"),
    ({"callbacks": [("a", "b", "c")]}, TypeError, r"\(name, callback\) pairs"),
    ({"callbacks": [("name", object())]}, TypeError, "skorch.callbacks.Callback"),
    ({"device": "meta"}, ValueError, "device='meta' was requested but no meta device"),
    ({"device": "mps"}, ValueError, "device='mps' was requested but no mps device"),
]


def _param_id(case):
    params = case[0]
    key = next(iter(params))
    return f"{key}={params[key]!r}"[:40]


@pytest.fixture(params=BAD_PARAMS, ids=[_param_id(case) for case in BAD_PARAMS])
def bad_params(request):
    return request.param


def test_bad_hyper_parameters_accepted_by_init_and_round_trip(bad_params):
    params = bad_params[0]
    clf = D2ACEMultiLabelClassifier(**{**FAST, **params})  # never validated in __init__
    got = clf.get_params()
    for key, value in params.items():
        assert got[key] is value
    copy = D2ACEMultiLabelClassifier().set_params(**got)
    # ``is``, not ``==``: NaN values must round-trip too.
    assert all(copy.get_params()[key] is value for key, value in got.items())
    clone(clf)  # clone checks that get_params returns exactly what was set


@pytest.mark.parametrize("method", ["fit", "partial_fit", "initialize"])
def test_bad_hyper_parameters_rejected_before_training(bad_params, method):
    params, error, message = bad_params
    X, Y = tiny_problem()
    clf = D2ACEMultiLabelClassifier(**{**FAST, **params})
    with pytest.raises(error, match=message):
        getattr(clf, method)(X, Y)
    assert_untrained(clf)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda X, Y: (X[:, :3], Y[:, :2] * 2), "values 0 and 1"),
        (lambda X, Y: (_with(X[:, :3], (0, 0), np.nan), Y[:, :2]), "contains NaN"),
        (lambda X, Y: (X[:, :3], Y[:1, :2]), "inconsistent numbers of samples"),
    ],
    ids=["bad-Y", "nan-X", "rows"],
)
@pytest.mark.parametrize("method", ["fit", "initialize"])
def test_rejected_refit_leaves_the_fitted_estimator_intact(fitted, make, message, method):
    clf, X, Y = fitted
    clf = clone(clf).fit(X, Y)
    before = {key: value for key, value in vars(clf).items() if key.endswith("_")}
    proba = clf.predict_proba(X)
    with pytest.raises(ValueError, match=message):
        getattr(clf, method)(*make(X, Y))
    assert clf.n_features_in_ == 4 and clf.n_labels_ == 3
    assert all(getattr(clf, key) is value for key, value in before.items())
    np.testing.assert_array_equal(clf.predict_proba(X), proba)


def test_bad_hyper_parameter_on_fitted_estimator_trains_nothing(fitted):
    clf, X, Y = fitted
    clf = clone(clf).fit(X, Y)
    weights = {k: v.clone() for k, v in clf.net_.module_.state_dict().items()}
    epochs = len(clf.net_.history)
    clf.set_params(selection_pressure=0.0)
    for method in ("fit", "partial_fit"):
        with pytest.raises(ValueError, match="selection_pressure"):
            getattr(clf, method)(X, Y)
    assert len(clf.net_.history) == epochs
    for key, value in clf.net_.module_.state_dict().items():
        assert torch.equal(value, weights[key])


# ---------------------------------------------------------------- failures while training
class _WrongWidth(torch.nn.Module):
    """One logit more than there are labels."""

    def __init__(self, n_features, n_labels):
        super().__init__()
        self.linear = torch.nn.Linear(n_features, n_labels + 1)

    def forward(self, X):
        return self.linear(X)


@pytest.mark.parametrize("method", ["fit", "partial_fit", "initialize"])
def test_module_with_the_wrong_number_of_outputs_is_rejected_before_training(method):
    X, Y = tiny_problem()
    clf = D2ACEMultiLabelClassifier(**{**FAST, "module": _WrongWidth})
    with pytest.raises(ValueError, match=r"must return a \(n_samples, 3\) tensor.*got \(1, 4\)"):
        getattr(clf, method)(X, Y)
    assert_untrained(clf)


class _FailsAtEpoch(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, net, **kwargs):
        if len(net.history) == self.epoch:  # the net's own hook has added the epoch
            raise RuntimeError(f"boom in epoch {self.epoch}")


@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_a_fit_failing_before_its_first_epoch_ends_leaves_the_estimator_as_it_was(fitted, method):
    clf, X, Y = fitted
    # Unfitted before: still unfitted after (not an untrained net predict would use).
    failing = D2ACEMultiLabelClassifier(**{**FAST, "callbacks": [_FailsAtEpoch(1)]})
    with pytest.raises(RuntimeError, match="boom"):
        getattr(failing, method)(X, Y)
    assert_untrained(failing)
    # Fitted before: a refit failing in its first epoch keeps the previous model.
    clf = clone(clf).fit(X, Y)
    before = {key: value for key, value in vars(clf).items() if key.endswith("_")}
    proba = clf.predict_proba(X)
    clf.set_params(callbacks=[_FailsAtEpoch(1)])
    with pytest.raises(RuntimeError, match="boom"):
        clf.fit(X, Y)
    assert all(getattr(clf, key) is value for key, value in before.items())
    np.testing.assert_array_equal(clf.predict_proba(X), proba)
    # Failing later, the epochs trained are kept (tests/test_resume.py continues them).
    clf.set_params(callbacks=[_FailsAtEpoch(2)])
    with pytest.raises(RuntimeError, match="boom"):
        clf.fit(X, Y)
    assert clf.net_ is not before["net_"] and len(clf.net_.history) == 2


def test_continued_training_that_fails_keeps_its_network():
    X, Y = tiny_problem()
    epochs = FAST["max_epochs"]
    failing = _FailsAtEpoch(epochs + 2)  # fails in the second call's second epoch
    clf = D2ACEMultiLabelClassifier(**FAST, warm_start=True, callbacks=[failing]).fit(X, Y)
    net = clf.net_
    with pytest.raises(RuntimeError, match="boom"):
        clf.fit(X, Y)  # continues in place: the epoch it trained stays
    assert clf.net_ is net and len(net.history) == epochs + 2


def test_one_int_is_one_hidden_layer():
    X, Y = tiny_problem()
    for params in ({"hidden_layer_sizes": 5}, {"module_kwargs": {"hidden_layer_sizes": 5}}):
        clf = D2ACEMultiLabelClassifier(**{**FAST, **params}).fit(X, Y)
        widths = [m.out_features for m in clf.net_.module_.modules() if hasattr(m, "out_features")]
        assert widths == [5, 3]


def test_continuation_with_the_same_values_dense_or_sparse():
    sp = pytest.importorskip("scipy.sparse")
    X, Y = tiny_problem()
    X[X < 0.5] = 0.0
    clf = D2ACEMultiLabelClassifier(**FAST).partial_fit(sp.csr_matrix(X), Y)
    clf.partial_fit(X, Y)  # the same values as a dense array
    clf.partial_fit(sp.csc_matrix(X.astype(np.float32)), Y)
    assert len(clf.net_.history) == 3
    changed = X.copy()
    changed[1, 2] += 0.25
    with pytest.raises(ValueError, match="X differs from it"):
        clf.partial_fit(changed, Y)


def test_predict_proba_checks_the_width_of_the_network_s_outputs(fitted):
    clf, X, _ = fitted
    clf = clone(clf).fit(X, tiny_problem()[1])
    clf.net_.module_ = _WrongWidth(X.shape[1], 3)  # e.g. other parameters loaded by hand
    with pytest.raises(ValueError, match=r"must return a \(n_samples, 3\) tensor.*got \(40, 4\)"):
        clf.predict_proba(X)

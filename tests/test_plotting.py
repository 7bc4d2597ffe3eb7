"""SelectionHistoryDisplay: a fitted estimator's history as a figure."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.datasets import make_multilabel_classification
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from skd2ace import D2ACEMultiLabelClassifier, SelectionHistoryDisplay

matplotlib.use("Agg")  # no display needed


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def data():
    return make_multilabel_classification(n_samples=150, n_classes=4, random_state=0)


def fitted(data, **params):
    params = {"max_epochs": 6, "hidden_layer_sizes": (16,), "random_state": 0, **params}
    return D2ACEMultiLabelClassifier(**params).fit(*data)


def test_panels_show_the_history(data):
    clf = fitted(data)
    history = clf.net_.history
    display = SelectionHistoryDisplay.from_estimator(clf, label_names=["a", "b", "c", "d"])
    assert display.axes_.shape == (2, 2) and display.figure_ is display.axes_[0, 0].figure
    np.testing.assert_array_equal(display.epochs_, history[:, "epoch"])

    losses, schedule, v_e, v_h = display.axes_.flat
    curves = {line.get_label(): line.get_ydata() for line in losses.get_lines()}
    np.testing.assert_allclose(curves["train loss"], history[:, "train_loss"])
    np.testing.assert_allclose(curves["valid loss"], history[:, "valid_loss"])
    twins = [ax for ax in display.figure_.axes if ax.get_shared_x_axes().joined(ax, losses)]
    auc = [ln for ax in twins for ln in ax.get_lines() if ln.get_label() == "valid macro-AUC"]
    np.testing.assert_allclose(auc[0].get_ydata(), history[:, "valid_macro_auc"])

    pressure = schedule.get_lines()[0]
    np.testing.assert_allclose(pressure.get_ydata(), history[:, "selection_pressure"])
    for ax, key in ((v_e, "label_weights_uncertainty"), (v_h, "label_weights_hardness")):
        image = ax.get_images()[0].get_array()
        np.testing.assert_allclose(image, np.array(history[:, key]).T)
        assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c", "d"]


def test_random_selection_leaves_the_weight_panels_out(data):
    clf = fitted(data, batch_selection="random", validation_fraction=None)
    display = SelectionHistoryDisplay.from_estimator(clf)
    losses, _, v_e, v_h = display.axes_.flat
    assert [line.get_label() for line in losses.get_lines()] == ["train loss"]
    assert not v_e.axison and not v_h.axison and not v_e.get_images()
    assert display.weights("label_weights_uncertainty") is None
    assert display.column("mixture_weight") is None


def test_pipeline_and_own_axes(data):
    pipe = make_pipeline(MinMaxScaler(), D2ACEMultiLabelClassifier(max_epochs=3, random_state=0))
    pipe.fit(*data)
    fig, axes = plt.subplots(1, 4)
    display = SelectionHistoryDisplay.from_estimator(pipe, axes=axes)
    assert display.figure_ is fig and display.axes_[1, 1] is axes[3]
    with pytest.raises(ValueError, match="4 matplotlib Axes"):
        display.plot(axes=axes[:3])


def test_columns_with_missing_epochs():
    history = [
        {"epoch": 1, "train_loss": 0.7},
        {"epoch": 2, "train_loss": 0.6, "label_weights_hardness": [1.0, 2.0]},
    ]
    display = SelectionHistoryDisplay(history)
    np.testing.assert_array_equal(display.column("train_loss"), [0.7, 0.6])
    np.testing.assert_array_equal(
        display.weights("label_weights_hardness"), [[np.nan, np.nan], [1.0, 2.0]]
    )
    assert display.column("valid_loss") is None
    display.plot()  # panels for what is there, nothing fails on the rest


def test_bad_input(data):
    with pytest.raises(NotFittedError):
        SelectionHistoryDisplay.from_estimator(D2ACEMultiLabelClassifier())
    with pytest.raises(TypeError, match="D2ACEMultiLabelClassifier"):
        SelectionHistoryDisplay.from_estimator(LogisticRegression())
    with pytest.raises(ValueError, match="no epoch"):
        SelectionHistoryDisplay([])

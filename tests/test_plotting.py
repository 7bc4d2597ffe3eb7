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


def visible_ticks(ticks, limits):
    low, high = sorted(limits)
    return [t for t in ticks if low <= t <= high]


def test_a_single_epoch_is_drawn_on_integer_ticks(data):
    """One epoch: every curve is one point, so it needs a marker to be seen, and the
    epoch axis must read 1, not 0.96, 0.98, ...; without label names the heat maps'
    rows are label indices, integers too."""
    display = SelectionHistoryDisplay.from_estimator(fitted(data, max_epochs=1))
    losses, schedule, v_e, v_h = display.axes_.flat
    curves = [ax for ax in display.figure_.axes if ax.get_lines()]
    lines = [line for ax in curves for line in ax.get_lines()]
    # train and valid loss, validation AUC, pressure, mixture weight, ESS
    assert len(lines) == 6
    for line in lines:
        assert line.get_marker() == "o" and list(line.get_xdata()) == [1]
    for ax in (losses, schedule, v_e, v_h):
        assert ax.get_xlim() == (0.5, 1.5)
        assert visible_ticks(ax.get_xticks(), ax.get_xlim()) == [1]
    for ax in (v_e, v_h):
        assert visible_ticks(ax.get_yticks(), ax.get_ylim()) == [0, 1, 2, 3]  # 4 labels


def test_many_epochs_plain_lines_and_integer_ticks():
    history = [
        {"epoch": e, "train_loss": 1 / e, "label_weights_hardness": [1.0]} for e in range(1, 41)
    ]
    display = SelectionHistoryDisplay(history).plot()
    losses, _, _, v_h = display.axes_.flat
    (line,) = losses.get_lines()
    assert line.get_marker() in (None, "None", "")
    ticks = visible_ticks(losses.get_xticks(), losses.get_xlim())
    assert len(ticks) > 2 and all(float(t).is_integer() for t in ticks)
    assert visible_ticks(v_h.get_yticks(), v_h.get_ylim()) == [0]  # one label: index 0


def test_history_as_a_dict_of_lists(data):
    """A fold's history in results.json / folds.jsonl: one list per key."""
    clf = fitted(data, max_epochs=3)
    rows = list(clf.net_.history)
    as_lists = {
        key: [row.get(key) for row in rows]
        for key in ("epoch", "train_loss", "valid_macro_auc", "label_weights_hardness")
    }
    as_lists["mixture_weight"] = [None, 0.5, None]  # None: an epoch without the value
    display = SelectionHistoryDisplay(as_lists).plot()
    np.testing.assert_array_equal(display.epochs_, [1, 2, 3])
    np.testing.assert_allclose(display.column("train_loss"), [r["train_loss"] for r in rows])
    np.testing.assert_array_equal(display.column("mixture_weight"), [np.nan, 0.5, np.nan])
    np.testing.assert_allclose(
        display.weights("label_weights_hardness"), [r["label_weights_hardness"] for r in rows]
    )
    with pytest.raises(TypeError, match=r"list of per-epoch values .*'train_loss'"):
        SelectionHistoryDisplay({"epoch": [1], "train_loss": 0.5})
    with pytest.raises(ValueError, match="one length"):
        SelectionHistoryDisplay({"epoch": [1, 2], "train_loss": [0.5]})
    with pytest.raises(ValueError, match="no epoch"):
        SelectionHistoryDisplay({"epoch": []})


def _panel_lines(display, panel):
    """The lines of a top panel and of its twin (one legend covers both)."""
    ax = display.axes_.flat[panel]
    axes = [a for a in display.figure_.axes if a is ax or a.get_shared_x_axes().joined(a, ax)]
    return [(a, line) for a in axes for line in a.get_lines()]


@pytest.mark.parametrize("selection", ["d2ace", "random"])
def test_the_top_legends_sit_above_every_curve(data, selection):
    # loc="best" only avoids the curves of the axes holding the legend, not its twin's:
    # the curves keep to the lower three quarters, the legend to the strip above.
    display = SelectionHistoryDisplay.from_estimator(fitted(data, batch_selection=selection))
    display.figure_.canvas.draw()
    for panel in (0, 1):
        legend = display.axes_.flat[panel].get_legend()
        box = legend.get_window_extent()
        for axes, line in _panel_lines(display, panel):
            y = axes.transData.transform(np.column_stack([line.get_xdata(), line.get_ydata()]))
            assert np.nanmax(y[:, 1]) < box.y0, line.get_label()
    colours = {line.get_label(): line.get_color() for _, line in _panel_lines(display, 1)}
    assert colours["ESS / N"] == "tab:orange"  # with or without the mixture's line

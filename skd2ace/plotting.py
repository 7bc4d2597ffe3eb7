"""A fitted estimator's training and batch-selection history, as one figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["SelectionHistoryDisplay"]

#: Lines over at most this many epochs get a marker at every epoch (a single epoch is
#: a point, invisible as a line).
_MARKER_MAX_EPOCHS = 30


def _epoch_marker(n_epochs: int) -> str | None:
    """Marker of a per-epoch line: dots for few epochs, none for many."""
    return "o" if n_epochs <= _MARKER_MAX_EPOCHS else None


def _integer_ticks(axis) -> None:
    """Put only integer ticks on ``axis`` (an epoch or label axis).

    ``MaxNLocator(integer=True)`` alone still falls back to fractional steps on a range
    holding fewer than two integers (a single epoch or label); ``min_n_ticks=1`` lets one
    integer tick do instead.
    """
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _epoch_axis(ax, first: int, last: int) -> None:
    """Integer epoch ticks on ``ax``'s x axis; a single epoch is centred in a unit range
    (matplotlib would widen the empty range by a few hundredths only)."""
    _integer_ticks(ax.xaxis)
    if first == last:
        ax.set_xlim(first - 0.5, last + 0.5)


def _legend_on_top(ax, twin, lines) -> None:
    """One legend for ``ax`` and its ``twin`` in a strip of headroom above the curves.

    ``loc="best"`` only avoids the artists of the axes that owns the legend, so on a
    twinned panel it lands on the other axes' curves; the y ranges are raised by a
    third instead, and the legend takes that top strip.
    """
    for axes in (ax, twin):
        if axes is not None:
            low, high = axes.get_ylim()
            axes.set_ylim(low, high + (high - low) / 3)
    handles, labels = lines
    ax.legend(handles, labels, loc="upper center", ncols=min(len(handles), 3), fontsize="small")


def _history_rows(history) -> list[dict]:
    """One dict per epoch, from epoch dicts or from a dict of per-epoch lists."""
    if isinstance(history, Mapping):
        # A fold's "history" in results.json or folds.jsonl: {key: [value per epoch]}.
        scalars = [
            k for k, v in history.items() if isinstance(v, str) or not isinstance(v, Sequence)
        ]
        if scalars:
            raise TypeError(
                "a history given as a dict needs a list of per-epoch values for every key; "
                f"not for {scalars[:5]}"
            )
        lengths = {key: len(values) for key, values in history.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"a history given as a dict needs one list per key of one length (one "
                f"value per epoch); got lengths {lengths}"
            )
        n_epochs = next(iter(lengths.values()), 0)
        return [{key: values[e] for key, values in history.items()} for e in range(n_epochs)]
    return [dict(row) for row in history]


_WEIGHTS = (
    ("label_weights_uncertainty", "label weights v(E) (uncertainty)"),
    ("label_weights_hardness", "label weights v(H) (hardness)"),
)


class SelectionHistoryDisplay:
    """How a fit went and how D2ACE chose its batches, epoch by epoch.

    Four panels drawn from the net's history (``clf.net_.history``): the training
    and validation losses with the validation macro-AUC; the selection schedule
    (pressure ``s_e``, mixture weight ``β_e`` and the effective sample size of the
    epoch's distribution, 1 for a uniform one); and the dynamic label weights
    ``v(E)`` and ``v(H)`` as heat maps (epoch × label). Entries a fit did not
    record (no validation split, ``batch_selection='random'``) leave their curve or
    panel out. Follows scikit-learn's display objects: build it with
    :meth:`from_estimator`, or from a history and call :meth:`plot`.

    Parameters
    ----------
    history : skorch History, sequence of dict or dict of lists
        One dict per epoch, with skorch's keys and those :class:`~skd2ace.D2ACENet`
        writes (``selection_pressure``, ``mixture_weight``, ``selection_ess``,
        ``label_weights_uncertainty``, ``label_weights_hardness``); or one list per key
        with a value per epoch (``None`` where an epoch lacks it), as a fold's
        ``history`` in the benchmark's ``results.json`` and ``folds.jsonl``.
    label_names : sequence of str, optional
        Names of the label columns, for the heat maps' rows (shown up to 40 labels).

    Attributes
    ----------
    figure_ : matplotlib Figure
    axes_ : ndarray of matplotlib Axes, shape (2, 2)
        Losses, schedule (top); ``v(E)``, ``v(H)`` (bottom).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn.datasets import make_multilabel_classification
    >>> from skd2ace import D2ACEMultiLabelClassifier
    >>> from skd2ace.plotting import SelectionHistoryDisplay
    >>> X, Y = make_multilabel_classification(n_samples=200, n_classes=4, random_state=0)
    >>> clf = D2ACEMultiLabelClassifier(max_epochs=8, random_state=0).fit(X, Y)
    >>> display = SelectionHistoryDisplay.from_estimator(clf)
    >>> display.axes_.shape, display.epochs_.tolist()[:3]
    ((2, 2), [1, 2, 3])
    >>> display.figure_.savefig("history.png")  # doctest: +SKIP
    """

    def __init__(self, history, *, label_names: Sequence[str] | None = None):
        rows = _history_rows(history)
        if not rows:
            raise ValueError("the history holds no epoch: fit the estimator first")
        self.history = rows
        self.label_names = None if label_names is None else [str(n) for n in label_names]
        self.epochs_ = np.array([row.get("epoch", e + 1) for e, row in enumerate(rows)])

    @classmethod
    def from_estimator(
        cls, estimator, *, label_names: Sequence[str] | None = None, axes=None
    ) -> SelectionHistoryDisplay:
        """Plot the history of a fitted :class:`~skd2ace.D2ACEMultiLabelClassifier`
        (or of a pipeline ending in one).

        Parameters
        ----------
        estimator : D2ACEMultiLabelClassifier or Pipeline
        label_names : sequence of str, optional
        axes : array-like of 4 matplotlib Axes, optional
            Where to draw (row by row); by default a new figure.

        Returns
        -------
        display : SelectionHistoryDisplay
        """
        from sklearn.utils.validation import check_is_fitted

        from ._classifier import D2ACEMultiLabelClassifier

        final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
        if not isinstance(final, D2ACEMultiLabelClassifier):
            raise TypeError(
                "from_estimator needs a D2ACEMultiLabelClassifier (or a pipeline ending in "
                f"one), got {type(final).__name__}"
            )
        check_is_fitted(final)
        return cls(final.net_.history, label_names=label_names).plot(axes=axes)

    def column(self, key: str) -> np.ndarray | None:
        """The per-epoch values of a scalar history entry (nan where an epoch lacks it),
        or None when no epoch has it."""
        values = [row.get(key) for row in self.history]
        if all(v is None for v in values):
            return None
        return np.array([np.nan if v is None else float(v) for v in values])

    def weights(self, key: str) -> np.ndarray | None:
        """A per-epoch label-weight entry as an (epochs, labels) array (nan where an
        epoch lacks it), or None when no epoch has it."""
        values = [row.get(key) for row in self.history]
        present = [np.asarray(v, dtype=float) for v in values if v is not None]
        if not present:
            return None
        out = np.full((len(values), max(v.size for v in present)), np.nan)
        for e, v in enumerate(values):
            if v is not None:
                out[e, : len(v)] = v
        return out

    def plot(self, *, axes=None) -> SelectionHistoryDisplay:
        """Draw the four panels.

        Parameters
        ----------
        axes : array-like of 4 matplotlib Axes, optional
            Where to draw (row by row); by default a new figure (11 × 7 inches).

        Returns
        -------
        self
        """
        if axes is None:
            import matplotlib.pyplot as plt

            _, axes = plt.subplots(2, 2, figsize=(11, 7), layout="constrained")
        axes = np.asarray(axes, dtype=object)
        if axes.size != 4:
            raise ValueError(f"axes must hold 4 matplotlib Axes, got {axes.size}")
        axes = axes.reshape(2, 2)
        self._plot_losses(axes[0, 0])
        self._plot_schedule(axes[0, 1])
        for ax, (key, title) in zip(axes[1], _WEIGHTS, strict=True):
            self._plot_weights(ax, key, title)
        first, last = int(self.epochs_.min()), int(self.epochs_.max())
        for ax in axes.flat:  # after drawing: the limits autoscaling chose are replaced
            _epoch_axis(ax, first, last)
        self.axes_, self.figure_ = axes, axes[0, 0].figure
        return self

    def _plot_losses(self, ax) -> None:
        marker = _epoch_marker(len(self.epochs_))
        for key, style in (("train_loss", "-"), ("valid_loss", "--")):
            values = self.column(key)
            if values is not None:
                ax.plot(
                    self.epochs_, values, style, marker=marker, ms=3, label=key.replace("_", " ")
                )
        ax.set(title="losses", xlabel="epoch", ylabel="loss")
        lines = ax.get_legend_handles_labels()
        auc = self.column("valid_macro_auc")
        if auc is not None:
            twin = ax.twinx()
            twin.plot(
                self.epochs_, auc, color="tab:green", marker=marker, ms=3, label="valid macro-AUC"
            )
            twin.set_ylabel("macro-AUC")
            extra = twin.get_legend_handles_labels()
            lines = (lines[0] + extra[0], lines[1] + extra[1])
            _legend_on_top(ax, twin, lines)
        elif lines[0]:
            _legend_on_top(ax, None, lines)

    def _plot_schedule(self, ax) -> None:
        marker = _epoch_marker(len(self.epochs_))
        pressure = self.column("selection_pressure")
        if pressure is not None:
            ax.plot(
                self.epochs_,
                pressure,
                color="tab:red",
                marker=marker,
                ms=3,
                label="selection pressure s",
            )
        ax.set(title="selection schedule", xlabel="epoch", ylabel="pressure")
        lines = ax.get_legend_handles_labels()
        twin = ax.twinx()
        for key, label, color in (
            ("mixture_weight", "mixture weight β", "tab:blue"),
            ("selection_ess", "ESS / N", "tab:orange"),  # the same colour with or without β
        ):
            values = self.column(key)
            if values is not None:
                twin.plot(self.epochs_, values, "--", color=color, marker=marker, ms=3, label=label)
        twin.set(ylim=(0, 1.05), ylabel="β, ESS / N")
        extra = twin.get_legend_handles_labels()
        if lines[0] or extra[0]:
            _legend_on_top(ax, twin, (lines[0] + extra[0], lines[1] + extra[1]))

    def _plot_weights(self, ax, key: str, title: str) -> None:
        weights = self.weights(key)
        ax.set_title(title)
        if weights is None:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            return
        first, last = self.epochs_[0], self.epochs_[-1]
        image = ax.imshow(
            weights.T,
            aspect="auto",
            origin="lower",
            interpolation="nearest",
            extent=(first - 0.5, last + 0.5, -0.5, weights.shape[1] - 0.5),
        )
        ax.figure.colorbar(image, ax=ax, label="v")
        ax.set(xlabel="epoch", ylabel="label")
        names = self.label_names
        if names is not None and len(names) == weights.shape[1] and len(names) <= 40:
            ax.set_yticks(range(len(names)), names, fontsize="small")
        else:  # label indices
            _integer_ticks(ax.yaxis)

"""A fitted estimator's training and batch-selection history, as one figure."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["SelectionHistoryDisplay"]

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
    history : skorch History or sequence of dict
        One dict per epoch, with skorch's keys and those :class:`~skd2ace.D2ACENet`
        writes (``selection_pressure``, ``mixture_weight``, ``selection_ess``,
        ``label_weights_uncertainty``, ``label_weights_hardness``).
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
        rows = [dict(row) for row in history]
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
        from matplotlib.ticker import MaxNLocator

        for ax in axes.flat:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        self._plot_losses(axes[0, 0])
        self._plot_schedule(axes[0, 1])
        for ax, (key, title) in zip(axes[1], _WEIGHTS, strict=True):
            self._plot_weights(ax, key, title)
        self.axes_, self.figure_ = axes, axes[0, 0].figure
        return self

    def _plot_losses(self, ax) -> None:
        for key, style in (("train_loss", "-"), ("valid_loss", "--")):
            values = self.column(key)
            if values is not None:
                ax.plot(self.epochs_, values, style, label=key.replace("_", " "))
        ax.set(title="losses", xlabel="epoch", ylabel="loss")
        lines = ax.get_legend_handles_labels()
        auc = self.column("valid_macro_auc")
        if auc is not None:
            twin = ax.twinx()
            twin.plot(self.epochs_, auc, color="tab:green", label="valid macro-AUC")
            twin.set_ylabel("macro-AUC")
            extra = twin.get_legend_handles_labels()
            lines = (lines[0] + extra[0], lines[1] + extra[1])
        if lines[0]:
            ax.legend(*lines, loc="best", fontsize="small")

    def _plot_schedule(self, ax) -> None:
        pressure = self.column("selection_pressure")
        if pressure is not None:
            ax.plot(self.epochs_, pressure, color="tab:red", label="selection pressure s")
        ax.set(title="selection schedule", xlabel="epoch", ylabel="pressure")
        lines = ax.get_legend_handles_labels()
        twin = ax.twinx()
        for key, label in (("mixture_weight", "mixture weight β"), ("selection_ess", "ESS / N")):
            values = self.column(key)
            if values is not None:
                twin.plot(self.epochs_, values, "--", label=label)
        twin.set(ylim=(0, 1.05), ylabel="β, ESS / N")
        extra = twin.get_legend_handles_labels()
        if lines[0] or extra[0]:
            ax.legend(lines[0] + extra[0], lines[1] + extra[1], loc="best", fontsize="small")

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

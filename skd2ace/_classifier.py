"""The public estimator: a deep multi-label classifier trained with D2ACE batch selection."""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import threading
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, MultiOutputMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _background, _net
from ._data import IndexedDataset
from ._net import D2ACENet, PredefinedSplit, ValidationRows, net_callbacks, sigmoid
from ._validation import check_float32_range, check_params, data_digests, target_dtype
from .neighbors import nearest_neighbors_in_background
from .sampler import D2ACEBatchSampler

# Pickles made before these moved to _net look them up here (fitted nets hold them).
_PredefinedSplit, _silent, valid_macro_auc = (
    _net.PredefinedSplit,
    _net._silent,
    _net.valid_macro_auc,
)

__all__ = ["D2ACEMultiLabelClassifier"]

_PROBA_EPS = np.finfo(np.float64).eps
# Held while a fit seeds and draws from torch's process-wide random generators;
# _TORCH_RNG_HELD.depth: how often the current thread holds it.
_TORCH_RNG_LOCK = threading.RLock()
_TORCH_RNG_HELD = threading.local()


@contextlib.contextmanager
def _torch_rng_turn():
    """This thread's turn with torch's random generators (fits in threads take turns)."""
    with _TORCH_RNG_LOCK:
        _TORCH_RNG_HELD.depth = getattr(_TORCH_RNG_HELD, "depth", 0) + 1
        try:
            yield
        finally:
            _TORCH_RNG_HELD.depth -= 1


def _torch_rng_lock_after_fork() -> None:
    """In a forked child: a lock held by another thread of the parent (one the child
    does not have) would never be released, so the child gets a fresh one. Forked by
    the thread that holds it (a DataLoader worker of this fit), the child keeps it."""
    global _TORCH_RNG_LOCK
    if not getattr(_TORCH_RNG_HELD, "depth", 0):
        _TORCH_RNG_LOCK = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_torch_rng_lock_after_fork)


class D2ACEMultiLabelClassifier(MultiOutputMixin, ClassifierMixin, BaseEstimator):
    """Deep multi-label classifier whose mini-batches are chosen by D2ACE.

    A torch network (by default an MLP) is trained with binary cross-entropy by a
    skorch net; every epoch after the warm-up, D2ACE (Liu et al., IJCAI-ECAI 2026)
    draws the mini-batches from a distribution that favours instances whose
    predictions are uncertain (early) or consistently hard (later), weighting labels
    dynamically and boosting labels correlated with each instance's local label
    context. The model and the loss are unchanged: only which instances are trained
    on, and how often.

    Parameters
    ----------
    module : torch.nn.Module class, default=None
        The network class; None uses :class:`skd2ace.modules.MLP`. It is built in
        every ``fit`` with ``n_features`` and ``n_labels`` (when its ``__init__``
        accepts them) plus ``module_kwargs``, and must return one logit per label.
    module_kwargs : dict, default=None
        Extra keyword arguments of ``module``.
    hidden_layer_sizes : int or tuple of int, default=(256,)
        Hidden layers of the default MLP (one int: one layer).
    dropout : float, default=0.0
        Dropout of the default MLP.
    max_epochs : int, default=100
        Training epochs ``T``.
    batch_size : int, default=128
    lr : float, default=1e-3
        Learning rate.
    weight_decay : float, default=1e-4
    optimizer : {'adam', 'adamw', 'sgd'} or torch optimizer class, default='adam'
    batch_selection : {'d2ace', 'random'}, default='d2ace'
        How mini-batches are chosen; 'random' shuffles uniformly every epoch.
    history_size : int, default=5
        Predictions per instance and label kept in the window (``W`` ≥ 2).
    flip_decay : float, default=0.7
        ``α`` of the prediction-flip EMA, in (0, 1].
    fluctuation_weight : float, default=0.5
        ``λ``: weight of prediction fluctuation against entropy in the uncertainty.
    label_weight_mean, label_weight_std : float, default=0.5
        ``a`` and ``b`` of the dynamic label weights ``exp(a·mean + b·std)``.
    dynamic_label_weights : bool, default=True
        False uses static label weights ``v ≡ 1`` (ablation).
    label_context : {'local', 'global', 'none'}, default='local'
        Correlation enhancement with the k-nearest-neighbour label context, with all
        labels (``Z ≡ 1``), or none (``S ≡ 0``).
    n_neighbors : int, default=6
        ``k`` of the local label context (0: an instance's own labels only).
    selection_pressure : float, default=8.0
        Initial pressure ``s0`` ≥ 1: the most selectable instance is about ``s0``
        times likelier than the least; decays to 1 after the warm-up.
    warmup_epochs : int, default=None
        Uniformly shuffled epochs before selection starts (``e_w``); None is
        ``round(0.1 · max_epochs)``.
    mixture_start, mixture_end : float, default=0.7, 0.3
        Share ``β`` of the uncertainty pool at the warm-up's end and the ramp's end.
        1 and 1 give uncertainty-only selection, 0 and 0 hardness-only.
    mixture_ramp_end : int, default=None
        Epoch where ``β`` reaches ``mixture_end`` (``e_m``); None is
        ``round(0.7 · max_epochs)``.
    validation_fraction : float or None, default=0.1
        Share of the training data held out (unstratified) to pick the epoch with
        the best validation macro-AUC, whose weights are restored after training.
        None or 0 trains on everything and keeps the last epoch.
    patience : int or None, default=None
        Stop when validation macro-AUC has not improved for this many epochs;
        None trains all ``max_epochs``.
    threshold : float, default=0.5
        ``predict`` returns ``predict_proba > threshold``.
    device : str, default='cpu'
        Torch device of the network ('cpu', 'cuda', 'cuda:1', ...). A CUDA device
        that is not available raises ``ValueError`` at ``fit``. The recorded
        selection statistics live in host memory, except on a CUDA device with at
        least 256 labels (and room in GPU memory), where they stay on the device
        (``SKD2ACE_DEVICE_SELECTION``; see docs/errors.md, "Devices").
    num_workers : int, default=0
        DataLoader worker processes for training batches.
    torch_threads : 'auto', int or None, default='auto'
        torch's intra-op threads while ``fit``, ``partial_fit`` and ``initialize``
        run, restored afterwards (torch's ``set_num_threads``: the fitting thread's
        setting, also inherited by threads that first use torch meanwhile).
        'auto': when D2ACE selects batches on the CPU and torch's threads take
        every core, one thread fewer, so that a core is left for D2ACE's
        bookkeeping and neighbour search, which then overlap training (on 2 cores
        with torch's default 2 threads: fits ~20% faster at 30 000 × 100, as fast
        at yeast size; see docs/performance.md); otherwise unchanged. An int: that
        many threads. None: torch's setting as it is. The thread count can change
        the last bits of the results (float reductions).
    warm_start : bool, default=False
        True makes ``fit`` on a fitted estimator continue training (network,
        selection state and schedules) for another ``max_epochs`` epochs, and keeps
        the selection state after ``fit`` (otherwise freed). See also
        :meth:`partial_fit`. Continued training keeps the network and schedules
        of the first fit: change hyper-parameters only with a fresh ``fit``.
    callbacks : list of skorch callbacks, default=None
        Added to the network's callbacks (e.g. ``skorch.callbacks.ProgressBar()``).
    random_state : int, RandomState instance or None, default=None
        Seeds the validation split, the weight initialisation, dropout and the batch
        selection. An int gives bit-identical results on CPU and leaves the global
        numpy and torch random states untouched. None draws the seeds from numpy's
        global random state (scikit-learn's convention: ``np.random.seed`` then makes
        the fit reproducible); the global torch state is never touched.
    verbose : int, default=0
        1 prints one line per epoch (skorch's table).

    Attributes
    ----------
    net_ : D2ACENet
        The fitted skorch network; ``net_.history`` holds per-epoch losses, the
        validation macro-AUC and the selection record (``selection_pressure``,
        ``mixture_weight``, ``selection_ess``, ``label_weights_uncertainty``,
        ``label_weights_hardness``).
    classes_ : ndarray of shape (n_labels, 2) or (n_classes,)
        For a label matrix, row ``j`` holds label ``j``'s classes ``[0, 1]`` (in
        ``y``'s dtype); for 1-D binary ``y``, its two class labels.
    n_labels_ : int
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` has string column names.

    Examples
    --------
    >>> from sklearn.datasets import make_multilabel_classification
    >>> from skd2ace import D2ACEMultiLabelClassifier
    >>> X, Y = make_multilabel_classification(n_samples=200, n_classes=4, random_state=0)
    >>> clf = D2ACEMultiLabelClassifier(max_epochs=5, random_state=0).fit(X, Y)
    >>> clf.predict(X[:2]).shape, clf.predict_proba(X[:2]).dtype
    ((2, 4), dtype('float64'))
    >>> len(clf.net_.history), clf.net_.history[-1, "selection_pressure"] < 8
    (5, True)
    """

    def __init__(
        self,
        module=None,
        module_kwargs=None,
        hidden_layer_sizes=(256,),
        dropout=0.0,
        max_epochs=100,
        batch_size=128,
        lr=1e-3,
        weight_decay=1e-4,
        optimizer="adam",
        batch_selection="d2ace",
        history_size=5,
        flip_decay=0.7,
        fluctuation_weight=0.5,
        label_weight_mean=0.5,
        label_weight_std=0.5,
        dynamic_label_weights=True,
        label_context="local",
        n_neighbors=6,
        selection_pressure=8.0,
        warmup_epochs=None,
        mixture_start=0.7,
        mixture_end=0.3,
        mixture_ramp_end=None,
        validation_fraction=0.1,
        patience=None,
        threshold=0.5,
        device="cpu",
        num_workers=0,
        torch_threads="auto",
        warm_start=False,
        callbacks=None,
        random_state=None,
        verbose=0,
    ):
        self.module = module
        self.module_kwargs = module_kwargs
        self.hidden_layer_sizes = hidden_layer_sizes
        self.dropout = dropout
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.batch_selection = batch_selection
        self.history_size = history_size
        self.flip_decay = flip_decay
        self.fluctuation_weight = fluctuation_weight
        self.label_weight_mean = label_weight_mean
        self.label_weight_std = label_weight_std
        self.dynamic_label_weights = dynamic_label_weights
        self.label_context = label_context
        self.n_neighbors = n_neighbors
        self.selection_pressure = selection_pressure
        self.warmup_epochs = warmup_epochs
        self.mixture_start = mixture_start
        self.mixture_end = mixture_end
        self.mixture_ramp_end = mixture_ramp_end
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.threshold = threshold
        self.device = device
        self.num_workers = num_workers
        self.torch_threads = torch_threads
        self.warm_start = warm_start
        self.callbacks = callbacks
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ sklearn API
    def __setstate__(self, state):
        # Pickles made before a parameter existed get its default (get_params, clone
        # and continued training read every parameter).
        super().__setstate__({"torch_threads": "auto", **state})

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.classifier_tags.multi_class = False
        tags.classifier_tags.multi_label = True
        tags.target_tags.single_output = True
        tags.target_tags.multi_output = True
        tags.non_deterministic = False
        return tags

    def fit(self, X, y):
        """Train a fresh network on ``X`` and the label matrix ``y``.

        With ``warm_start=True`` and a fitted (or :meth:`initialize`-d) estimator,
        training continues instead: the same network, validation split and recorded
        selection state, for another ``max_epochs`` epochs, with the schedules going
        on where they stopped (``X`` and ``y`` must be the data of the first fit;
        other data raise ``ValueError``). The best validation epoch
        restored at the end is the best of this call.

        Interrupting training (``KeyboardInterrupt``, e.g. Ctrl-C or a callback
        raising it) stops it at once, after the current batch, and leaves a usable
        fitted estimator, with the best validation weights so far restored. The
        interrupted epoch stays in the history (without its losses and scores) and
        counts as an epoch for the schedules.

        All hyper-parameters and the data are validated before anything is built
        or trained: bad values raise ``ValueError`` or ``TypeError`` naming them.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Features; sparse matrices are densified one batch at a time.
        y : array-like of shape (n_samples, n_labels) or (n_samples,)
            Binary indicator matrix (values 0/1), or 1-D binary labels.

        Returns
        -------
        self
        """
        settings = self._check_params()
        with self._training_threads():
            fresh = not (self.warm_start and self._is_initialized())
            with self._training_attempt(fresh):
                if fresh:
                    X, Y = self._start(X, y, settings)
                else:
                    X, Y = self._check_continuation(X, y)
                try:
                    self._run(X, Y, self.max_epochs)
                finally:
                    if not self.warm_start:
                        # The O(N·q) selection state (and its worker thread) is only
                        # needed to continue training; also freed when training raised.
                        self.net_.batch_sampler.release()
        return self

    def partial_fit(self, X, y, classes=None):
        """Train one more epoch, continuing the network and the selection state.

        The first call initialises like :meth:`fit` (validation split, label
        context) and trains one epoch; each later call trains one more, with the
        D2ACE schedules (warm-up, pressure, mixture) continuing epoch by epoch. D2ACE
        keeps statistics per training instance, so every call must pass the same
        data as the first (other data raise ``ValueError``).
        After :meth:`fit` it continues that network; the selection statistics,
        freed by a ``fit`` without ``warm_start``, then start anew. The selection
        state is kept after every call.

        Parameters
        ----------
        X, y :
            As for :meth:`fit`.
        classes : ignored
            For scikit-learn API compatibility; labels are read from ``y``.

        Returns
        -------
        self
        """
        settings = self._check_params()
        with self._training_threads():
            fresh = not self._is_initialized()
            with self._training_attempt(fresh):
                if fresh:
                    X, Y = self._start(X, y, settings)
                else:
                    X, Y = self._check_continuation(X, y)
                self._run(X, Y, 1)
        return self

    def initialize(self, X, y) -> D2ACEMultiLabelClassifier:
        """Validate the data and build the untrained network, without training.

        Sets everything :meth:`fit` sets except the trained weights: ``classes_``,
        ``n_labels_``, ``n_features_in_`` (and ``feature_names_in_``), the
        validation split, the batch sampler and ``net_`` with freshly initialised
        weights. Use it to load saved parameters into an unfitted estimator
        (:meth:`load_params`); :meth:`partial_fit` or ``fit`` with
        ``warm_start=True`` then continue from there.

        Parameters
        ----------
        X, y :
            As for :meth:`fit`; the same data (or data of the same shape) as when
            the parameters were saved.

        Returns
        -------
        self

        Examples
        --------
        >>> from sklearn.datasets import make_multilabel_classification
        >>> X, Y = make_multilabel_classification(n_samples=60, n_classes=3, random_state=0)
        >>> clf = D2ACEMultiLabelClassifier(hidden_layer_sizes=(8,)).initialize(X, Y)
        >>> clf.n_labels_, len(clf.net_.history)
        (3, 0)
        """
        settings = self._check_params()
        # The sampler counts the cores training leaves.
        with self._training_threads(), self._training_attempt(fresh=True):
            self._start(X, y, settings)
        return self

    def save_params(
        self,
        f_params=None,
        f_optimizer=None,
        f_criterion=None,
        f_history=None,
        use_safetensors: bool = False,
    ) -> None:
        """Save the network's weights, optimizer state and history (skorch's format).

        Forwards to :meth:`skorch.NeuralNet.save_params` of ``net_``. The recorded
        D2ACE selection statistics are not saved (pickle the estimator to keep
        them, see :meth:`load_params`).

        Parameters
        ----------
        f_params, f_optimizer, f_criterion : file-like object, str or None
            Where to save the module's, optimizer's and criterion's state dicts;
            None skips that part.
        f_history : file-like object, str or None
            Where to save the training history (JSON).
        use_safetensors : bool, default=False
            Save with safetensors instead of pickle (``f_optimizer`` unsupported).
        """
        check_is_fitted(self, "net_")
        self.net_.save_params(
            f_params=f_params,
            f_optimizer=f_optimizer,
            f_criterion=f_criterion,
            f_history=f_history,
            use_safetensors=use_safetensors,
        )

    def load_params(
        self,
        f_params=None,
        f_optimizer=None,
        f_criterion=None,
        f_history=None,
        use_safetensors: bool = False,
    ) -> D2ACEMultiLabelClassifier:
        """Load what :meth:`save_params` saved into this estimator's network.

        The estimator must be fitted or initialised first: on an unfitted one
        (e.g. a ``clone``) call :meth:`initialize` with the training data, which
        builds a network of the right shape, then load::

            restored = clone(clf).initialize(X, Y)
            restored.load_params(f_params="params.pt", f_history="history.json")

        Loading a history also moves the selection schedules to its epoch count,
        so that continued training (``partial_fit``, warm ``fit``) goes on from
        there; the selection statistics themselves start anew (as after any
        ``fit`` without ``warm_start``).

        Parameters
        ----------
        f_params, f_optimizer, f_criterion, f_history, use_safetensors :
            As for :meth:`save_params`.

        Returns
        -------
        self
        """
        if not self._is_initialized():
            raise NotFittedError(
                f"This {type(self).__name__} instance has no network yet: call "
                "initialize(X, y) (or fit) before load_params."
            )
        self.net_.load_params(
            f_params=f_params,
            f_optimizer=f_optimizer,
            f_criterion=f_criterion,
            f_history=f_history,
            use_safetensors=use_safetensors,
        )
        sampler = self.net_.batch_sampler
        if f_history is not None and sampler is not None:
            # The schedules (warm-up, pressure, mixture) are a function of the epoch.
            sampler.epoch = len(self.net_.history)
        return self

    def predict_proba(self, X):
        """Probability of each label, ``(n_samples, n_labels)`` float64 in (0, 1).

        For 1-D binary ``y`` the shape is ``(n_samples, 2)`` (negative, positive).
        Saturated logits (e.g. ±1e4) give probabilities clipped to
        ``[eps, 1 - eps]``; a diverged network (NaN outputs) raises ``ValueError``
        instead of returning NaN.
        """
        check_is_fitted(self, "net_")
        X = validate_data(self, X, reset=False, accept_sparse="csr", dtype=(np.float32, np.float64))
        check_float32_range(X)
        logits = self.net_.forward(X, training=False)
        self._check_outputs(logits)
        proba = expit(logits.detach().cpu().numpy().astype(np.float64))
        if np.isnan(proba).any():
            raise ValueError(
                "the network's outputs are NaN: training diverged (non-finite training "
                "loss). Refit with a smaller lr or scaled features."
            )
        proba = np.clip(proba, _PROBA_EPS, 1.0 - _PROBA_EPS)
        if self._binary_1d:
            if self.classes_.size == 1:  # y held one class: it is certain
                return np.ones((proba.shape[0], 1))
            return np.column_stack([1.0 - proba[:, 0], proba[:, 0]])
        return proba

    def predict(self, X):
        """Labels ``predict_proba(X) > threshold``, in ``y``'s shape and dtype."""
        proba = self.predict_proba(X)
        if self._binary_1d:
            if self.classes_.size == 1:
                return np.repeat(self.classes_, proba.shape[0])
            return self.classes_[(proba[:, 1] > self.threshold).astype(np.intp)]
        return (proba > self.threshold).astype(self._y_dtype)

    # ------------------------------------------------------------------ internals
    def _check_params(self) -> dict:
        """:func:`~skd2ace._validation.check_params` of this estimator."""
        return check_params(self)

    def _check_data(self, X, y, reset: bool = True):
        """Validate ``X`` and ``y``; encode ``y`` as an int8 (N, q) indicator matrix.

        ``reset=False`` (continued training) checks them against the first fit.
        """
        shape = getattr(y, "shape", None)  # (np.shape would convert array-likes)
        if (
            isinstance(y, (list, tuple))
            and len(y)
            and all(np.ndim(r) == 1 and not len(r) for r in y)
        ):
            shape = (len(y), 0)  # rows given as empty lists
        if shape is not None and len(shape) == 2 and shape[1] == 0:
            raise ValueError(f"y has no label columns (shape {shape}); it needs at least one")
        X, Y = validate_data(
            self,
            X,
            y,
            reset=reset,
            accept_sparse="csr",
            dtype=(np.float32, np.float64),
            multi_output=True,
            ensure_min_samples=2,
        )
        check_float32_range(X)
        check_classification_targets(Y)
        target = type_of_target(Y, input_name="y")
        if target == "multiclass-multioutput":
            # A label matrix with a column holding values other than 0/1.
            values = np.unique(Y.data if sp.issparse(Y) else Y)
            raise ValueError(
                "Only binary classification is supported: y must be a binary indicator "
                "matrix with values 0 and 1 (one column per label); got values "
                f"{values[:10].tolist()}"
            )
        if target not in ("binary", "multilabel-indicator"):
            raise ValueError(
                f"Only binary classification is supported. The type of the target is {target}."
            )
        Y = np.asarray(Y.toarray() if sp.issparse(Y) else Y)
        binary_1d, y_dtype = Y.ndim == 1, target_dtype(y, Y.dtype)
        if not reset and binary_1d != self._binary_1d:
            raise ValueError("y must have the same number of dimensions as in the first fit")
        if binary_1d:
            classes = np.unique(Y) if reset else self.classes_
            if not np.isin(Y, classes).all():
                raise ValueError(f"y has classes outside those of the first fit {classes}")
            encoded = (Y == classes[-1]) & (classes.size > 1)
            Y, labels = encoded.astype(np.int8).reshape(-1, 1), classes
        else:
            values = np.unique(Y)
            if not np.isin(values, (0, 1)).all():
                raise ValueError(
                    "y must be a binary indicator matrix with values 0 and 1 (one column "
                    f"per label); got values {values[:10].tolist()}"
                )
            # An (n_labels, 2) array, not a list: classes_[j] is still label j's
            # classes, and scikit-learn's cross_val_predict and StackingClassifier, which
            # expect an ndarray classes_ with an ndarray predict_proba, work; the scorers
            # still see a 'multilabel-indicator' classes_ (the (n, q) probabilities).
            # y's dtype, as predict's, also for pandas' nullable dtypes.
            labels = np.tile(np.array([0, 1], dtype=y_dtype), (Y.shape[1], 1))
            Y = Y.astype(np.int8)
        if reset:
            self._binary_1d, self._y_dtype = binary_1d, y_dtype
            self.classes_, self.n_labels_ = labels, Y.shape[1]
        elif Y.shape[1] != self.n_labels_:
            raise ValueError(f"y has {Y.shape[1]} labels, the first fit had {self.n_labels_}")
        return X, Y

    def _start(self, X, y, settings):
        """Validate the data and build a fresh, untrained net (fitted attributes set).
        Callers run it inside :meth:`_training_attempt`, which undoes it on error."""
        X, Y = self._check_data(X, y)
        self._initialize(X, Y, settings)
        return X, Y

    @contextlib.contextmanager
    def _training_attempt(self, fresh: bool):
        """All or nothing for a fresh start: when the data are rejected, building the
        net fails, or training raises before the new net's first epoch ends, the
        estimator is left exactly as it was before the call (unfitted, or fitted with
        its previous model and metadata), not with ``n_features_in_`` of the new data
        and the old network, nor with an untrained network that ``predict`` would use.
        Once an epoch has ended the new network is kept, like an interrupted one
        (training can go on with ``partial_fit``); so is a continued one
        (``fresh=False``), trained in place."""
        before = dict(vars(self)) if fresh else None
        try:
            yield
        except BaseException:
            if before is not None:
                net = vars(self).get("net_")
                new = net is not before.get("net_")
                if not (new and _trained(net)):
                    sampler = getattr(net, "batch_sampler", None) if new else None
                    if sampler is not None:
                        # A queue's error raised here would hide the training error and
                        # skip the restore: the net is discarded with its record anyway.
                        with contextlib.suppress(Exception):
                            sampler.release()
                    vars(self).clear()
                    vars(self).update(before)
            raise

    def _initialize(self, X, Y, settings) -> None:
        """Build the validation split, the batch sampler and an untrained net."""
        rng = check_random_state(self.random_state)
        split_seed, torch_seed, sampler_seed = rng.randint(0, 2**31 - 1, size=3)
        train_idx, valid_idx = self._split(X.shape[0], split_seed)
        self._fit_rows, self._train_idx, self._torch_seed = X.shape[0], train_idx, int(torch_seed)
        self._valid_idx = valid_idx
        self._data_fingerprints = data_digests(X, Y)
        sampler = self._build_sampler(
            X[train_idx],
            Y[train_idx],
            max_epochs=self.max_epochs,
            warmup=settings["warmup"],
            ramp_end=settings["ramp_end"],
            random_state=sampler_seed,
        )
        module, module_kwargs = self._module_params(
            settings["module"], X.shape[1], settings["hidden_layer_sizes"]
        )
        net = D2ACENet(
            module,
            criterion=torch.nn.BCEWithLogitsLoss,
            criterion__reduction="none",
            optimizer=settings["optimizer"],
            optimizer__weight_decay=self.weight_decay,
            lr=self.lr,
            max_epochs=self.max_epochs,
            batch_size=int(self.batch_size),  # torch's BatchSampler rejects numpy ints
            # The validation rows themselves are put in place while training (_run).
            train_split=None if valid_idx is None else ValidationRows(valid_idx),
            predict_nonlinearity=sigmoid,
            iterator_train__num_workers=self.num_workers,
            device=self.device,
            verbose=self.verbose,
            **net_callbacks(
                validate=valid_idx is not None,
                patience=self.patience,
                verbose=self.verbose,
                user_callbacks=self.callbacks,
            ),
            batch_sampler=sampler,
            **{f"module__{key}": value for key, value in module_kwargs.items()},
        )
        with self._seeded_torch(self._torch_seed):
            net.initialize()
            # A module with another number of outputs than labels fails here, before
            # any training (and would give wrong-width predictions after it).
            self._check_outputs(net.forward(X[train_idx[:1]], training=False))
        self.net_ = net

    def _check_outputs(self, logits) -> None:
        """Raise unless the network returned one logit per label and row."""
        shape = tuple(getattr(logits, "shape", ()))
        if len(shape) != 2 or shape[1] != self.n_labels_:
            raise ValueError(
                f"the module must return a (n_samples, {self.n_labels_}) tensor of logits, "
                f"one per label of y, got {shape if shape else type(logits).__name__}: give "
                "its last layer n_labels outputs (the estimator passes n_labels to a module "
                "whose __init__ takes it)"
            )

    def _build_sampler(self, X_train, Y_train, *, max_epochs, warmup, ramp_end, random_state):
        return D2ACEBatchSampler(
            Y_train,
            batch_size=self.batch_size,
            max_epochs=max_epochs,
            strategy=self.batch_selection,
            warmup_epochs=warmup,
            ramp_end=ramp_end,
            # Started after the sampler has chosen where its record lives.
            neighbors=functools.partial(self._neighbors, X_train),
            label_context=self.label_context,
            history_size=self.history_size,
            flip_decay=self.flip_decay,
            fluctuation_weight=self.fluctuation_weight,
            weight_mean=self.label_weight_mean,
            weight_std=self.label_weight_std,
            dynamic_weights=self.dynamic_label_weights,
            initial_pressure=self.selection_pressure,
            mixture_start=self.mixture_start,
            mixture_end=self.mixture_end,
            random_state=random_state,
            device=self.device,
        )

    def _check_continuation(self, X, y):
        """Validate the data of continued training (``partial_fit``, warm ``fit``).

        Everything is checked before any training: the features and labels
        against the first fit, and the number of rows, since D2ACE keeps
        statistics per training instance. A sampler whose recorded state was
        released (after ``fit`` without ``warm_start``) is rebuilt with a fresh
        record; its schedules and random stream go on from where they stopped.
        """
        X, Y = self._check_data(X, y, reset=False)
        if X.shape[0] != self._fit_rows:
            raise ValueError(
                f"continuing training needs the data of the first fit ({self._fit_rows} rows; "
                f"D2ACE keeps statistics per training instance), got {X.shape[0]} rows"
            )
        first = getattr(self, "_data_fingerprints", None)  # None: an older version's pickle
        if first is not None:
            for name, old_digest, new_digest in zip(
                ("X", "y"), first, data_digests(X, Y), strict=True
            ):
                if old_digest != new_digest:
                    raise ValueError(
                        f"continuing training needs the data of the first fit: {name} differs "
                        "from it (D2ACE keeps statistics per training instance, and the "
                        "validation rows come from the first fit). To train on other data, "
                        "fit a fresh estimator (warm_start=False)."
                    )
        old = self.net_.batch_sampler
        if old is not None and old.labels is None:
            train = self._train_idx
            sampler = self._build_sampler(
                X[train],
                Y[train],
                max_epochs=old.max_epochs,
                warmup=old.warmup_epochs,
                ramp_end=old.ramp_end,
                random_state=old.rng,  # default_rng(Generator) continues that stream
            )
            sampler.epoch = old.epoch
            self.net_.batch_sampler = sampler
        return X, Y

    def _run(self, X, Y, epochs: int) -> None:
        """Train ``epochs`` more epochs on the training part of ``X`` (data checked by
        :meth:`_start` or :meth:`_check_continuation`)."""
        net = self.net_
        # Fitted estimators (and their pickles) keep which rows validate, not the rows:
        # continued training gets the data of the first fit (checked), so they are
        # taken from it again. Pickles made before hold the rows (valid_idx None).
        valid_idx = getattr(self, "_valid_idx", None)
        if valid_idx is not None:
            net.train_split = PredefinedSplit(IndexedDataset(X[valid_idx], Y[valid_idx]))
        sampler = net.batch_sampler
        if sampler is not None and sampler.epoch < len(net.history):
            # An epoch interrupted before its batches were planned (Ctrl-C in an
            # on_epoch_begin hook, or while DataLoader workers start) is in the history:
            # it counts for the schedules too, as every interrupted epoch does.
            sampler.epoch = len(net.history)
        try:
            # Continuations draw fresh, reproducible torch randomness per epoch count.
            with self._seeded_torch(self._torch_seed + len(net.history)):
                net.partial_fit(
                    X[self._train_idx], Y[self._train_idx].astype(np.float32), epochs=epochs
                )
        finally:
            if valid_idx is not None:
                net.train_split = ValidationRows(valid_idx)
        try:
            loss = net.history[-1, "train_loss"]
        except (KeyError, IndexError):  # interrupted before the first epoch ended
            return
        if not np.isfinite(loss):
            # Once, here, rather than NaN surfacing later in predictions or scores. The
            # best validation epoch restored after training may have finite weights.
            finite = all(bool(torch.isfinite(p).all()) for p in net.module_.parameters())
            consequence = (
                "the weights of the best validation epoch, finite, were restored"
                if finite
                else "predictions will fail"
            )
            warnings.warn(
                f"training diverged: the training loss is {loss} after epoch "
                f"{len(net.history)}; {consequence}. Use a smaller lr or scale the features.",
                RuntimeWarning,
                stacklevel=3,
            )

    @contextlib.contextmanager
    def _training_threads(self):
        """torch's intra-op threads as ``torch_threads`` asks for the block, then
        restored. Fits in threads of one process take turns for the whole block, as
        for torch's random generators (other threads inherit the setting when they
        first use torch)."""
        with _torch_rng_turn():
            previous = torch.get_num_threads()
            threads = self._resolve_torch_threads(previous)
            if threads is None or threads == previous:
                yield
                return
            torch.set_num_threads(threads)
            try:
                yield
            finally:
                torch.set_num_threads(previous)

    def _resolve_torch_threads(self, current: int) -> int | None:
        """The threads ``torch_threads`` means with torch at ``current`` (None: keep)."""
        if self.torch_threads is None:
            return None
        if self.torch_threads != "auto":
            return int(self.torch_threads)
        if self.batch_selection != "d2ace" or torch.device(self.device).type != "cpu":
            return None  # no bookkeeping on the CPU's side, or training on a GPU
        cores = _background.available_cores()
        # Every core trains: the bookkeeping would run on the training thread, between
        # steps, and the background neighbour search would stall torch's thread team.
        return cores - 1 if cores >= 2 and current >= cores else None

    def _is_initialized(self) -> bool:
        """Whether there is a network (fitted or :meth:`initialize`-d) to continue."""
        net = getattr(self, "net_", None)
        return net is not None and getattr(net, "initialized_", False)

    @contextlib.contextmanager
    def _seeded_torch(self, seed: int):
        """Torch's random generators seeded with ``seed`` for the block, restored after.

        They are process-wide: fits in threads of one process take turns (a fit in
        another thread would draw from, and reseed, the same generator)."""
        device = torch.device(self.device)
        with (
            _torch_rng_turn(),
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        ):
            torch.manual_seed(seed)
            yield

    def _split(self, n_samples: int, seed: int):
        fraction = self.validation_fraction or 0.0
        n_valid = math.ceil(fraction * n_samples) if fraction > 0 else 0
        if n_valid == 0 or n_samples - n_valid < 1:
            return np.arange(n_samples), None
        order = np.random.default_rng(seed).permutation(n_samples)
        return np.sort(order[n_valid:]), np.sort(order[:n_valid])

    def _neighbors(self, X_train):
        if self.batch_selection != "d2ace" or self.label_context != "local":
            return None
        k = min(self.n_neighbors, X_train.shape[0] - 1)
        if k <= 0:
            return None
        # Searched while the warm-up epochs train (on a CUDA device: there); the
        # sampler waits for the result when the warm-up ends.
        return nearest_neighbors_in_background(
            X_train, k, random_state=self._torch_seed, device=self.device
        )

    def _module_params(self, module, n_features, hidden_layer_sizes):
        kwargs = dict(self.module_kwargs or {})
        if self.module is None:
            kwargs.setdefault("hidden_layer_sizes", hidden_layer_sizes)
            kwargs.setdefault("dropout", self.dropout)
        accepted = inspect.signature(module.__init__).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
        for key, value in (("n_features", n_features), ("n_labels", self.n_labels_)):
            if takes_any or key in accepted:
                kwargs.setdefault(key, value)
        return module, kwargs


def _trained(net) -> bool:
    """Whether ``net`` (or None) has finished an epoch of training."""
    history = getattr(net, "history", None)
    return bool(history) and "train_loss" in history[0]

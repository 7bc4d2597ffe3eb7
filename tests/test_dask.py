"""Hyper-parameter search over D2ACE scaled out on a Dask cluster (joblib's Dask backend)."""

import joblib
import numpy as np
from distributed import Client, LocalCluster, get_task_stream
from sklearn.datasets import make_multilabel_classification
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from skd2ace import D2ACEMultiLabelClassifier


def test_grid_search_runs_on_a_local_dask_cluster():
    X, Y = make_multilabel_classification(n_samples=200, n_classes=4, random_state=0)
    pipe = make_pipeline(
        MinMaxScaler(),
        D2ACEMultiLabelClassifier(max_epochs=3, hidden_layer_sizes=(16,), random_state=0),
    )
    grid = {"d2acemultilabelclassifier__selection_pressure": [2.0, 8.0]}
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
        joblib.parallel_config(backend="dask"),
    ):
        with get_task_stream(client) as tasks:
            search = GridSearchCV(pipe, grid, scoring="roc_auc", cv=2, n_jobs=-1).fit(X, Y)
        # The 2 × 2 fits ran as tasks on the cluster's worker processes.
        workers = {task["worker"] for task in tasks.data}
        assert len(tasks.data) >= 4 and workers <= set(client.scheduler_info()["workers"])
    local = GridSearchCV(pipe, grid, scoring="roc_auc", cv=2, n_jobs=1).fit(X, Y)
    # Same seeds, same folds: the distributed search reproduces the local one.
    np.testing.assert_allclose(
        search.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"]
    )
    assert search.best_params_ == local.best_params_

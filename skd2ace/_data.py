"""Datasets that serve whole batches, with the row indices kept."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import Dataset

__all__ = ["IndexedDataset", "collate_batch"]


class IndexedDataset(Dataset):
    """Rows of ``X`` (and ``y``) served a whole batch at a time, with their indices.

    A batch is ``({"X": X[idx], "sample_idx": idx}, y[idx])``. Serving whole batches
    through torch's ``__getitems__`` avoids fetching and collating rows one at a
    time; carrying ``sample_idx`` tells the batch sampler which rows were trained
    on, also when the DataLoader uses worker processes. Sparse ``X`` stays sparse and
    is densified one batch at a time.

    Parameters
    ----------
    X : ndarray or scipy sparse matrix of shape (N, d)
    y : ndarray of shape (N, q) or None

    Examples
    --------
    >>> ds = IndexedDataset(np.arange(6.0).reshape(3, 2), np.eye(3))
    >>> xb, yb = ds.__getitems__([2, 0])
    >>> xb["X"].tolist(), xb["sample_idx"].tolist(), yb.shape
    ([[4.0, 5.0], [0.0, 1.0]], [2, 0], torch.Size([2, 3]))
    """

    def __init__(self, X, y=None):
        if sp.issparse(X):
            self.X = sp.csr_matrix(X, dtype=np.float32)
        else:
            self.X = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))
        self.y = None if y is None else torch.as_tensor(np.asarray(y, dtype=np.float32))

    def __len__(self) -> int:
        return self.X.shape[0]

    def __getitem__(self, i):
        xb, yb = self.__getitems__([i])
        return {"X": xb["X"][0], "sample_idx": xb["sample_idx"][0]}, (None if yb is None else yb[0])

    def __getitems__(self, indices):
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        if isinstance(self.X, torch.Tensor):
            xb = self.X.index_select(0, idx)
        else:
            xb = torch.from_numpy(self.X[idx.numpy()].toarray())
        yb = None if self.y is None else self.y.index_select(0, idx)
        return {"X": xb, "sample_idx": idx}, yb


def collate_batch(batch):
    """Identity collate: :class:`IndexedDataset` already returns collated batches."""
    return batch

"""The default torch module: a multi-layer perceptron sized from the data."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """Multi-layer perceptron returning one logit per label.

    Parameters
    ----------
    n_features : int
        Input width (set by the estimator from ``X``).
    n_labels : int
        Output width (set by the estimator from ``Y``).
    hidden_layer_sizes : int or sequence of int, default=(256,)
        Width of each hidden layer (ReLU, then dropout); one int is one layer.
    dropout : float, default=0.0
        Dropout probability after each hidden layer.

    Examples
    --------
    >>> import torch
    >>> MLP(4, 3, hidden_layer_sizes=(8,))(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(
        self,
        n_features: int,
        n_labels: int,
        hidden_layer_sizes: int | Sequence[int] = (256,),
        dropout: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        if isinstance(hidden_layer_sizes, numbers.Integral):
            hidden_layer_sizes = (hidden_layer_sizes,)
        for size in hidden_layer_sizes:
            layers += [nn.Linear(width, int(size)), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(size)
        layers.append(nn.Linear(width, n_labels))
        self.layers = nn.Sequential(*layers)

    def forward(self, X):
        return self.layers(X)

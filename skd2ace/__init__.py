"""skd2ace: D2ACE multi-label batch selection behind the scikit-learn API.

D2ACE (Liu et al., IJCAI-ECAI 2026) chooses the instances of every mini-batch
while a deep multi-label classifier trains, from the model's recent predictions
and losses. :class:`D2ACEMultiLabelClassifier` wraps a skorch network that uses
it; :mod:`skd2ace.selection` holds the method's maths as numpy functions.
"""

from . import selection
from ._classifier import D2ACEMultiLabelClassifier
from ._net import D2ACENet
from .modules import MLP
from .neighbors import nearest_neighbors
from .plotting import SelectionHistoryDisplay
from .sampler import D2ACEBatchSampler

__all__ = [
    "MLP",
    "D2ACEBatchSampler",
    "D2ACEMultiLabelClassifier",
    "D2ACENet",
    "SelectionHistoryDisplay",
    "nearest_neighbors",
    "selection",
]
__version__ = "0.1.0"

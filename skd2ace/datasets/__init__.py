"""Multi-label data: MULAN ARFF reading, the MULAN benchmarks, reference preprocessing.

* :func:`load_arff` reads a MULAN-style ARFF file (dense or sparse rows).
* :func:`fetch_mulan` finds a MULAN benchmark in the data home (``$SKD2ACE_DATA``, else
  ``~/skd2ace_data``), downloading and checksum-verifying it when missing.
* :func:`preprocess_reference` applies the label/row filtering of docs/method.md §10.
"""

from ._arff import load_arff, read_label_xml
from ._mulan import (
    DATA_HOME_ENV,
    MULAN_DATASETS,
    ChecksumError,
    MulanDataNotFoundError,
    MulanFileError,
    fetch_mulan,
    get_data_home,
)
from ._preprocess import preprocess_reference

__all__ = [
    "DATA_HOME_ENV",
    "MULAN_DATASETS",
    "ChecksumError",
    "MulanDataNotFoundError",
    "MulanFileError",
    "fetch_mulan",
    "get_data_home",
    "load_arff",
    "preprocess_reference",
    "read_label_xml",
]

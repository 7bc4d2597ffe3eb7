"""Reading MULAN-style multi-label ARFF files (liac-arff does the parsing)."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import arff
import numpy as np
import scipy.sparse as sp
from sklearn.utils import Bunch

__all__ = ["load_arff", "read_label_xml"]

_DATA_LINE = re.compile(r"^[ \t]*@data\b", re.IGNORECASE | re.MULTILINE)
_ESCAPE = re.compile(r"\\(.)")


def read_label_xml(path: str | os.PathLike) -> list[str]:
    """Return the label names listed in a MULAN XML header file, in file order.

    Every ``<label name="...">`` element counts, nested ones (MULAN's label
    hierarchies) included, whatever the XML namespace.

    Parameters
    ----------
    path : str or path-like
        The MULAN ``.xml`` file.

    Returns
    -------
    list of str
        The label names.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> tmp = tempfile.TemporaryDirectory()
    >>> xml = pathlib.Path(tmp.name) / "toy.xml"
    >>> _ = xml.write_text('<labels xmlns="http://mulan.sourceforge.net/labels">'
    ...                    '<label name="sad"></label><label name="happy"></label></labels>')
    >>> read_label_xml(xml)
    ['sad', 'happy']
    >>> tmp.cleanup()
    """
    try:
        root = ET.parse(os.fspath(path)).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{os.fspath(path)}: not a valid MULAN label XML file: {exc}") from exc
    names = [
        el.get("name")
        for el in root.iter()
        if isinstance(el.tag, str) and el.tag.rsplit("}", 1)[-1] == "label"
    ]
    if any(n is None for n in names):
        raise ValueError(f"{os.fspath(path)}: a <label> element has no 'name' attribute.")
    return names  # type: ignore[return-value]


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: a byte-order mark (some Windows editors write one) is dropped, not
        # read as part of the first line, where liac-arff would reject "@relation".
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        # Some old ARFF files are Latin-1; every byte decodes there.
        return path.read_text(encoding="latin-1")


def _data_lines(text: str) -> list[str] | None:
    """The raw lines after ``@data`` (None if there is no ``@data`` line)."""
    match = _DATA_LINE.search(text)
    if match is None:
        return None
    end = text.find("\n", match.end())
    if end < 0:
        return []
    return text[end + 1 :].replace("\r\n", "\n").split("\n")


def _is_data_row(line: str) -> bool:
    # The rows liac-arff keeps: neither empty nor a comment.
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("%")


def _nominal_values(categories: Sequence[str]) -> np.ndarray:
    """Numbers standing for a nominal attribute's categories, by category index.

    Categories that all read as numbers ("0", "1", "2.5") become those numbers, so that
    ``{0,1}`` attributes give 0/1; otherwise the category index is used.
    """
    try:
        return np.array([float(c) for c in categories], dtype=np.float64)
    except ValueError:
        return np.arange(len(categories), dtype=np.float64)


def _resolve_labels(
    attr_names: list[str],
    path: Path,
    label_xml: str | os.PathLike | None,
    n_labels: int | None,
    label_names: Sequence[str] | None,
) -> np.ndarray:
    """Indices (ARFF order) of the label attributes."""
    n_given = sum(x is not None for x in (label_xml, n_labels, label_names))
    if n_given != 1:
        raise TypeError(
            "Identify the labels in exactly one way: label_xml=, n_labels= or label_names= "
            f"(got {n_given})."
        )
    n_attr = len(attr_names)
    if n_labels is not None:
        if isinstance(n_labels, bool) or not isinstance(n_labels, (int, np.integer)):
            raise TypeError(f"n_labels must be an int, got {n_labels!r}.")
        if not 1 <= n_labels <= n_attr:
            raise ValueError(
                f"n_labels={n_labels} must be in [1, {n_attr}] (the number of attributes of "
                f"{path}); it counts the labels at the end of the attribute list."
            )
        return np.arange(n_attr - int(n_labels), n_attr)

    if label_xml is not None:
        wanted = read_label_xml(label_xml)
        source = f"label XML {os.fspath(label_xml)}"
    else:
        if isinstance(label_names, str):
            raise TypeError("label_names must be a sequence of names, not one string.")
        wanted = list(label_names)  # type: ignore[arg-type]
        source = "label_names"
    if not wanted:
        raise ValueError(f"{source} names no label.")
    if len(set(wanted)) != len(wanted):
        dup = sorted({n for n in wanted if wanted.count(n) > 1})
        raise ValueError(f"{source} names a label more than once: {dup[:10]}.")

    position = {name: j for j, name in enumerate(attr_names)}
    # Fallback: names compared without backslash escapes (an ARFF name written
    # 'm\'usica' is read as m'usica, the XML may keep the backslash).
    unescaped = {_ESCAPE.sub(r"\1", name): j for j, name in enumerate(attr_names)}
    index, missing = [], []
    for name in wanted:
        j = position.get(name, unescaped.get(_ESCAPE.sub(r"\1", name)))
        if j is None:
            missing.append(name)
        else:
            index.append(j)
    if missing:
        raise ValueError(
            f"{len(missing)} label(s) named by {source} are not attributes of {path}: "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}."
        )
    return np.sort(np.asarray(index, dtype=np.intp))


def _parse(text: str, path: Path, sparse_file: bool) -> dict:
    """liac-arff's reading of ``text``: coordinate lists for a sparse file, else a table."""
    try:
        try:
            obj = arff.loads(
                text,
                encode_nominal=True,
                return_type=arff.COO if sparse_file else arff.DENSE,
            )
            obj["return_type"] = "coo" if sparse_file else "dense"
        except arff.BadLayout:
            if not sparse_file:
                raise
            # Sparse and dense rows mixed: liac-arff's dense reader copes with both.
            obj = arff.loads(text, encode_nominal=True, return_type=arff.DENSE)
            obj["return_type"] = "dense"
    except arff.ArffException as exc:
        raise ValueError(f"{path}: cannot parse ARFF (line {exc.line}): {exc}") from exc
    return obj


def _check_labels(values: np.ndarray, path: Path) -> None:
    if np.isnan(values).any():
        raise ValueError(f"{path}: missing values ('?') among the labels.")
    if not ((values == 0) | (values == 1)).all():
        raise ValueError(f"{path}: label values other than 0 and 1.")


def _map_nominal(
    values: np.ndarray, cols: np.ndarray, lut: np.ndarray, lut_row: np.ndarray
) -> None:
    """In place: replace category indices by their numbers where ``lut_row[cols] >= 0``."""
    k = lut_row[cols]
    mask = (k >= 0) & ~np.isnan(values)
    values[mask] = lut[k[mask], values[mask].astype(np.intp)]


def load_arff(
    path: str | os.PathLike,
    *,
    label_xml: str | os.PathLike | None = None,
    n_labels: int | None = None,
    label_names: Sequence[str] | None = None,
    sparse: bool | None = None,
) -> Bunch:
    """Load a MULAN-style multi-label ARFF file.

    Dense rows (``v1,v2,...``) and sparse rows (``{index value, ...}``) are both read;
    liac-arff parses the file. Identify the label attributes in exactly one way: by a
    MULAN XML header, by their count at the end of the attribute list, or by name. All
    other attributes are the features.

    Parameters
    ----------
    path : str or path-like
        The ``.arff`` file (UTF-8, with or without a byte-order mark; Latin-1 is
        accepted as a fallback).
    label_xml : str or path-like, optional
        MULAN XML header naming the labels. Names are matched to attributes by name; the
        XML's order is ignored (enron's XML lists its labels in another order than its
        ARFF does).
    n_labels : int, optional
        The labels are the last ``n_labels`` attributes (MEKA's ``-C -q``).
    label_names : sequence of str, optional
        Names of the label attributes, in any order.
    sparse : bool, optional
        Type of ``X``: ``None`` (default) gives a CSR matrix for a sparse ARFF file and a
        dense array otherwise; ``True`` always CSR, ``False`` always dense.

    Returns
    -------
    sklearn.utils.Bunch
        With keys:

        ``X`` : ndarray of float64, shape (n_samples, n_features), or CSR matrix
            The features, in ARFF order. Numeric attributes as they are; a nominal
            attribute whose categories are all numbers (``{0,1}``, ``{1,2,3}``) becomes
            those numbers, any other nominal attribute its category index (0, 1, ...).
            Missing values (``?``) are NaN. In a sparse file an omitted value is 0.
        ``Y`` : ndarray of int8, shape (n_samples, n_labels)
            The labels in {0, 1}, columns in ARFF order (whatever the order in the XML
            header or in ``label_names``).
        ``feature_names``, ``label_names`` : list of str
            Attribute names matching the columns of ``X`` and ``Y``.
        ``categories`` : dict of str to list of str
            The categories of each nominal feature.
        ``relation`` : str
            The ARFF ``@relation`` name.
        ``filename`` : str
            The file read.

    Raises
    ------
    TypeError
        If the labels are identified in none or more than one way.
    ValueError
        If the file cannot be parsed, a label is missing, a label value is not 0/1 or
        missing, or a feature is a string attribute.

    Notes
    -----
    Sparse files (MULAN's enron, bibtex and delicious) are parsed into coordinate lists
    and then a CSR matrix, never a dense Python table: delicious (16105 rows, 1483
    attributes) loads in about a second with about 60 MB of extra peak memory. The row
    count includes empty sparse rows (``{}``). In a sparse file a nominal attribute whose
    first category is not the number 0 is rejected (its omitted entries would not be 0).

    Names are as liac-arff reads them: quotes removed, a backslash in an unquoted name
    kept (delicious has a label ``TAG_m\\'usica``, spelt the same in its XML). Label
    names are matched exactly, then with backslash escapes removed on both sides.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = pathlib.Path(tmp.name) / "toy.arff"
    >>> _ = path.write_text('''@relation toy
    ... @attribute size numeric
    ... @attribute colour {red,green}
    ... @attribute happy {0,1}
    ... @attribute sad {0,1}
    ... @data
    ... 0.5,red,1,0
    ... 1.5,green,0,1
    ... ''')
    >>> data = load_arff(path, n_labels=2)
    >>> data.X
    array([[0.5, 0. ],
           [1.5, 1. ]])
    >>> data.Y
    array([[1, 0],
           [0, 1]], dtype=int8)
    >>> data.feature_names, data.label_names
    (['size', 'colour'], ['happy', 'sad'])

    A sparse file gives a CSR matrix:

    >>> _ = path.write_text('''@relation toy
    ... @attribute w0 numeric
    ... @attribute w1 numeric
    ... @attribute tag {0,1}
    ... @data
    ... {0 3,2 1}
    ... {1 2}
    ... ''')
    >>> data = load_arff(path, label_names=["tag"])
    >>> data.X.toarray(), data.Y.ravel()
    (array([[3., 0.],
           [0., 2.]]), array([1, 0], dtype=int8))
    >>> tmp.cleanup()
    """
    path = Path(path)
    if sparse not in (None, True, False):
        raise TypeError(f"sparse must be None, True or False, got {sparse!r}.")
    text = _read_text(path)
    lines = _data_lines(text)
    if lines is None:
        raise ValueError(f"{path}: not an ARFF file (no @data line).")
    rows = [ln for ln in lines if _is_data_row(ln)]
    sparse_file = bool(rows) and rows[0].lstrip().startswith("{")
    n_samples = len(rows)
    del lines, rows

    obj = _parse(text, path, sparse_file)
    as_sparse = sparse_file if sparse is None else sparse
    del text

    relation = str(obj["relation"])
    attributes = obj["attributes"]
    attr_names = [a[0] for a in attributes]
    n_attr = len(attributes)
    label_idx = _resolve_labels(attr_names, path, label_xml, n_labels, label_names)
    is_label = np.zeros(n_attr, dtype=bool)
    is_label[label_idx] = True
    feat_idx = np.flatnonzero(~is_label)

    for j, (name, kind) in enumerate(attributes):
        if isinstance(kind, str) and kind.upper() == "STRING":
            role = "label" if is_label[j] else "feature"
            raise ValueError(f"{path}: {role} {name!r} is a string attribute; not supported.")

    # Per nominal attribute, the numbers standing for its categories (padded table).
    nominal = [j for j, (_, kind) in enumerate(attributes) if isinstance(kind, list)]
    lut_row = np.full(n_attr, -1, dtype=np.intp)
    lut_row[nominal] = np.arange(len(nominal))
    width = max((len(attributes[j][1]) for j in nominal), default=0)
    lut = np.zeros((len(nominal), max(width, 1)), dtype=np.float64)
    for k, j in enumerate(nominal):
        numbers = _nominal_values(attributes[j][1])
        lut[k, : numbers.size] = numbers

    if obj["return_type"] == "coo":
        values, row_idx, col_idx = obj["data"]
        values = np.array(values, dtype=np.float64)  # None (missing) -> NaN
        row_idx = np.asarray(row_idx, dtype=np.intp)
        col_idx = np.asarray(col_idx, dtype=np.intp)
        del obj
        if nominal:
            bad = [attr_names[j] for k, j in enumerate(nominal) if lut[k, 0] != 0]
            if bad:
                raise ValueError(
                    f"{path}: sparse ARFF with nominal attribute(s) whose first category is "
                    f"not 0 (omitted entries would not be 0): {bad[:5]}."
                )
            _map_nominal(values, col_idx, lut, lut_row)
        full = sp.csc_matrix((values, (row_idx, col_idx)), shape=(n_samples, n_attr))
        del values, row_idx, col_idx
        full.eliminate_zeros()
        Y_sparse = full[:, label_idx]
        _check_labels(Y_sparse.data, path)  # the omitted entries are 0
        Y = Y_sparse.astype(np.int8).toarray()
        del Y_sparse
        X = full[:, feat_idx].tocsr()
        del full
        if not as_sparse:
            X = X.toarray()
    else:
        table = obj["data"]
        del obj
        M = np.array(table, dtype=np.float64) if table else np.empty((0, n_attr))
        del table
        if nominal:
            J = np.asarray(nominal, dtype=np.intp)
            codes = M[:, J]
            missing = np.isnan(codes)
            idx = np.where(missing, 0, codes).astype(np.intp)
            mapped = lut[np.arange(J.size)[None, :], idx]
            mapped[missing] = np.nan
            M[:, J] = mapped
        _check_labels(M[:, label_idx], path)
        Y = M[:, label_idx].astype(np.int8)
        X = np.ascontiguousarray(M[:, feat_idx])
        del M
        if as_sparse:
            X = sp.csr_matrix(X)

    return Bunch(
        X=X,
        Y=Y,
        feature_names=[attr_names[j] for j in feat_idx],
        label_names=[attr_names[j] for j in label_idx],
        categories={attr_names[j]: list(attributes[j][1]) for j in nominal if not is_label[j]},
        relation=relation,
        filename=str(path),
    )

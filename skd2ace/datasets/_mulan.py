"""Finding, downloading (checksum-verified) and loading the MULAN benchmark data sets."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Any

from sklearn.utils import Bunch

from ._arff import load_arff

__all__ = [
    "DATA_HOME_ENV",
    "MULAN_DATASETS",
    "ChecksumError",
    "MulanDataNotFoundError",
    "MulanFileError",
    "fetch_mulan",
    "get_data_home",
]

#: Environment variable naming the data home (the folder holding the MULAN files).
DATA_HOME_ENV = "SKD2ACE_DATA"

#: Names accepted by :func:`fetch_mulan`.
MULAN_DATASETS: tuple[str, ...] = (
    "emotions",
    "yeast",
    "cal500",
    "enron",
    "bibtex",
    "delicious",
    "flags",
)

_SUBSETS = ("all", "train", "test")
_REGISTRY_FILE = Path(__file__).resolve().parents[1] / "data" / "mulan.json"
_CHUNK = 1 << 20


class MulanDataNotFoundError(FileNotFoundError):
    """A MULAN file is neither in the data home nor downloadable (an ``OSError``)."""


class ChecksumError(OSError):
    """A downloaded file does not have the SHA-256 recorded in ``skd2ace/data/mulan.json``."""


class MulanFileError(ValueError):
    """A MULAN file found in the data home cannot be read (e.g. a truncated ARFF file,
    or an XML header naming labels the ARFF file lacks); the message names the file."""


@lru_cache(maxsize=1)
def _registry() -> dict[str, Any]:
    with open(_REGISTRY_FILE, encoding="utf-8") as fh:
        return json.load(fh)["datasets"]


def get_data_home(data_home: str | os.PathLike | None = None) -> Path:
    """Return the folder where :func:`fetch_mulan` looks for (and caches) MULAN files.

    In order: the ``data_home`` argument, else the environment variable
    ``SKD2ACE_DATA``, else ``~/skd2ace_data`` (the scikit-learn ``~/scikit_learn_data``
    convention). The folder is not created here; a download creates it.

    Parameters
    ----------
    data_home : str or path-like, optional
        An explicit folder; ``~`` is expanded.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> get_data_home("/data/mulan").as_posix()
    '/data/mulan'
    """
    if data_home is None:
        data_home = os.environ.get(DATA_HOME_ENV) or Path("~") / "skd2ace_data"
    return Path(data_home).expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _urlretrieve(url: str, filename: str | os.PathLike) -> None:
    """Copy ``url`` (``https://``, ``file://``, ...) to ``filename``. Tests patch this."""
    with urllib.request.urlopen(url, timeout=60) as response, open(filename, "wb") as out:
        shutil.copyfileobj(response, out, _CHUNK)


def _download(url: str, dest: Path, sha256: str) -> Path:
    """Download ``url`` to ``dest`` through a temporary file, verifying its SHA-256.

    The file appears at ``dest`` only once complete and verified; on any failure the
    partial file, and the folders created for it, are removed.
    """
    created = [folder for folder in (dest.parent, *dest.parent.parents) if not folder.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _urlretrieve(url, tmp)
        actual = _sha256(tmp)
        if actual != sha256:
            raise ChecksumError(
                f"Checksum mismatch for {dest.name} downloaded from {url}: SHA-256 {actual}, "
                f"expected {sha256} (recorded in skd2ace/data/mulan.json). The partial file "
                f"was removed; the source may have changed or the download was corrupted."
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        for folder in created:  # innermost first; a failed download leaves no empty folders
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return dest


def _not_found(name: str, filename: str, home: Path, reason: str) -> MulanDataNotFoundError:
    return MulanDataNotFoundError(
        f"MULAN file {filename!r} (data set {name!r}) not found: {reason} Looked for "
        f"{home / name / filename} and {home / filename}. Put the MULAN files of {name!r} in "
        f"{home / name}, or point the environment variable {DATA_HOME_ENV} (or the "
        f"data_home argument, --data-home on the command line) at a folder that holds a "
        f"folder {name}/ with them."
    )


def _locate(
    name: str, filename: str, home: Path, download_if_missing: bool, info: dict[str, Any]
) -> Path:
    for candidate in (home / name / filename, home / filename):
        if candidate.is_file():
            return candidate
    if not download_if_missing:
        raise _not_found(name, filename, home, "download_if_missing=False.")
    try:
        return _download(info["url"], home / name / filename, info["sha256"])
    except ChecksumError:
        raise
    except OSError as exc:  # no network, HTTP error, read-only folder, ...
        raise _not_found(
            name, filename, home, f"downloading {info['url']} failed ({exc})."
        ) from exc


def fetch_mulan(
    name: str,
    *,
    data_home: str | os.PathLike | None = None,
    subset: str = "all",
    download_if_missing: bool = True,
) -> Bunch:
    """Load a MULAN benchmark data set, downloading it once if needed.

    The files are looked up in the data home (see :func:`get_data_home`) as
    ``NAME/FILE`` or directly as ``FILE``; missing files are downloaded to
    ``data_home/NAME/FILE`` from the MULAN project's repository and verified against the
    SHA-256 recorded in ``skd2ace/data/mulan.json``. Files already present are used as
    they are (not re-verified).

    Parameters
    ----------
    name : {"emotions", "yeast", "cal500", "enron", "bibtex", "delicious", "flags"}
        The data set (case-insensitive).
    data_home : str or path-like, optional
        Folder holding the data; default ``$SKD2ACE_DATA``, else ``~/skd2ace_data``.
    subset : {"all", "train", "test"}, default="all"
        ``"all"`` reads ``NAME.arff`` (all instances: the union of the standard split),
        ``"train"``/``"test"`` read ``NAME-train.arff``/``NAME-test.arff``. cal500 has no
        standard split (``"all"`` only).
    download_if_missing : bool, default=True
        If False, a missing file raises :class:`MulanDataNotFoundError` instead.

    Returns
    -------
    sklearn.utils.Bunch
        As :func:`load_arff` (``X``, ``Y``, ``feature_names``, ``label_names``,
        ``categories``, ``relation``, ``filename``), plus ``name``, ``subset`` and
        ``DESCR``. ``X`` is a CSR matrix for the sparse files (enron, bibtex, delicious),
        a dense float64 array otherwise. Labels come in ARFF order.

    Raises
    ------
    ValueError
        Unknown ``name`` or ``subset``.
    MulanDataNotFoundError
        (an ``OSError``) A file is missing and cannot be downloaded; the message names
        the file, the data home and the environment variable.
    ChecksumError
        (an ``OSError``) A downloaded file has the wrong SHA-256; it is removed.
    MulanFileError
        (a ``ValueError``) A file in the data home cannot be read: not ARFF, cut short,
        labels of the XML header missing from the ARFF file, ... (files already present
        are not verified against their checksum).

    Examples
    --------
    >>> emotions = fetch_mulan("emotions")  # doctest: +SKIP
    >>> emotions.X.shape, emotions.Y.shape  # doctest: +SKIP
    ((593, 72), (593, 6))

    Offline and without the files, a clear error says where to put them:

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as empty:
    ...     try:
    ...         fetch_mulan("emotions", data_home=empty, download_if_missing=False)
    ...     except MulanDataNotFoundError as exc:
    ...         print("SKD2ACE_DATA" in str(exc), "emotions.arff" in str(exc))
    True True
    """
    key = str(name).lower()
    registry = _registry()
    if key not in registry:
        raise ValueError(
            f"Unknown MULAN data set {name!r}; supported: {', '.join(MULAN_DATASETS)}."
        )
    if subset not in _SUBSETS:
        raise ValueError(f"subset must be one of {_SUBSETS}, got {subset!r}.")
    files = registry[key]["files"]
    arff_name = f"{key}.arff" if subset == "all" else f"{key}-{subset}.arff"
    if arff_name not in files:
        raise ValueError(f"MULAN data set {key!r} has no {subset!r} subset (use subset='all').")
    xml_name = f"{key}.xml"

    home = get_data_home(data_home)
    arff_path = _locate(key, arff_name, home, download_if_missing, files[arff_name])
    xml_path = _locate(key, xml_name, home, download_if_missing, files[xml_name])

    try:
        data = load_arff(arff_path, label_xml=xml_path)
    except ValueError as exc:  # the file's content (load_arff names the file)
        raise MulanFileError(
            f"{str(exc).rstrip('.')}. Delete the broken file (it is downloaded again) or "
            f"replace it by the MULAN original: {files[arff_name]['url']}, "
            f"{files[xml_name]['url']}."
        ) from exc
    n, d = data.X.shape
    q = data.Y.shape[1]
    data.name = key
    data.subset = subset
    data.DESCR = (
        f"MULAN data set {key!r} ({subset}): {n} instances, {d} features, {q} labels. "
        f"Read from {arff_path} with labels from {xml_path}. "
        f"Source: {files[arff_name]['url']}"
    )
    return data

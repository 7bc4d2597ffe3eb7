"""Tests of skd2ace.datasets: ARFF reading, MULAN fetching (offline), reference preprocessing."""

import hashlib
import json
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from skd2ace.datasets import (
    DATA_HOME_ENV,
    MULAN_DATASETS,
    ChecksumError,
    MulanDataNotFoundError,
    MulanFileError,
    _mulan,
    fetch_mulan,
    get_data_home,
    load_arff,
    preprocess_reference,
    read_label_xml,
)

REGISTRY = json.loads(
    (Path(_mulan.__file__).resolve().parents[1] / "data" / "mulan.json").read_text()
)["datasets"]

# /work/shared/data/README.md: instances, features, labels q, cardinality, density, distinct
# label sets, standard split sizes where given.
TABLE = {
    "flags": (194, 19, 7, 3.392, 0.485, 54, None),
    "emotions": (593, 72, 6, 1.868, 0.311, 27, (391, 202)),
    "yeast": (2417, 103, 14, 4.237, 0.303, 198, (1500, 917)),
    "cal500": (502, 68, 174, 26.044, 0.150, 502, None),
    "enron": (1702, 1001, 53, 3.378, 0.064, 753, None),
    "bibtex": (7395, 1836, 159, 2.402, 0.015, 2856, None),
    "delicious": (16105, 500, 983, 19.020, 0.019, 15806, None),
}
SPARSE = {"enron", "bibtex", "delicious"}
WITH_SPLIT = ["flags", "emotions", "yeast", "enron", "bibtex", "delicious"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# =================================================================== load_arff on toy files

DENSE = """% a comment
@relation toy
@attribute size numeric
@attribute 'the colour' {red,green,blue}
@attribute level {1,2,3}
@attribute flag {0,1}
@attribute happy {0,1}
@attribute sad {0,1}

@data
% rows follow
0.5,red,3,1,1,0
1.5,blue,1,0,0,1

?,'green',2,0,1,1
"""

SPARSE_TOY = """@relation toy
@attribute w0 numeric
@attribute w1 {0,1}
@attribute w2 numeric
@attribute tagA {0,1}
@attribute tagB {0,1}
@data
{0 3.5,1 1,3 1}
{2 2,4 1}
{1 0,2 ?}
{}
{}
"""

XML = """<?xml version="1.0" encoding="utf-8"?>
<labels xmlns="http://mulan.sourceforge.net/labels">
<label name="sad"></label>
<label name="happy"></label>
</labels>
"""


@pytest.fixture
def dense_file(tmp_path):
    return write(tmp_path / "toy.arff", DENSE)


@pytest.fixture
def sparse_file(tmp_path):
    return write(tmp_path / "sparse.arff", SPARSE_TOY)


def test_dense_by_count(dense_file):
    data = load_arff(dense_file, n_labels=2)
    assert isinstance(data.X, np.ndarray) and data.X.dtype == np.float64
    np.testing.assert_array_equal(
        data.X, [[0.5, 0, 3, 1], [1.5, 2, 1, 0], [np.nan, 1, 2, 0]]
    )  # nominal: numeric categories become their numbers, others their index
    assert data.Y.dtype == np.int8
    np.testing.assert_array_equal(data.Y, [[1, 0], [0, 1], [1, 1]])
    assert data.feature_names == ["size", "the colour", "level", "flag"]
    assert data.label_names == ["happy", "sad"]
    assert data.categories == {
        "the colour": ["red", "green", "blue"],
        "level": ["1", "2", "3"],
        "flag": ["0", "1"],
    }
    assert data.relation == "toy"
    assert data.filename == str(dense_file)


def test_dense_labels_by_xml_and_by_name_in_arff_order(dense_file, tmp_path):
    xml = write(tmp_path / "toy.xml", XML)  # lists sad before happy
    by_xml = load_arff(dense_file, label_xml=xml)
    by_name = load_arff(dense_file, label_names=["sad", "happy"])
    by_count = load_arff(dense_file, n_labels=2)
    for data in (by_xml, by_name):
        assert data.label_names == ["happy", "sad"]
        np.testing.assert_array_equal(data.Y, by_count.Y)
        np.testing.assert_array_equal(data.X, by_count.X)


def test_labels_need_not_be_last(dense_file):
    data = load_arff(dense_file, label_names=["flag", "sad"])
    assert data.label_names == ["flag", "sad"]
    assert data.feature_names == ["size", "the colour", "level", "happy"]
    np.testing.assert_array_equal(data.Y, [[1, 0], [0, 1], [0, 1]])


def test_dense_as_sparse(dense_file):
    data = load_arff(dense_file, n_labels=2, sparse=True)
    assert sp.issparse(data.X) and data.X.format == "csr"
    np.testing.assert_array_equal(data.X.toarray(), load_arff(dense_file, n_labels=2).X)


def test_sparse_file(sparse_file):
    data = load_arff(sparse_file, n_labels=2)
    assert sp.issparse(data.X) and data.X.format == "csr" and data.X.dtype == np.float64
    assert data.X.shape == (5, 3)  # trailing empty rows count
    np.testing.assert_array_equal(
        data.X.toarray(), [[3.5, 1, 0], [0, 0, 2], [0, 0, np.nan], [0, 0, 0], [0, 0, 0]]
    )
    np.testing.assert_array_equal(data.Y, [[1, 0], [0, 1], [0, 0], [0, 0], [0, 0]])
    assert data.Y.dtype == np.int8
    dense = load_arff(sparse_file, n_labels=2, sparse=False)
    assert isinstance(dense.X, np.ndarray)
    np.testing.assert_array_equal(dense.X, data.X.toarray())


def test_sparse_rows_mixed_with_dense_rows(tmp_path):
    path = write(tmp_path / "mixed.arff", SPARSE_TOY.replace("{2 2,4 1}", "0,0,2,0,1"))
    data = load_arff(path, n_labels=2)
    np.testing.assert_array_equal(data.X.toarray()[:2], [[3.5, 1, 0], [0, 0, 2]])
    np.testing.assert_array_equal(data.Y[:2], [[1, 0], [0, 1]])


def test_crlf_line_endings(tmp_path):
    path = tmp_path / "crlf.arff"
    path.write_bytes(DENSE.replace("\n", "\r\n").encode())
    np.testing.assert_array_equal(load_arff(path, n_labels=2).Y, [[1, 0], [0, 1], [1, 1]])


def test_utf8_byte_order_mark(tmp_path):
    """A BOM (Windows editors) is not part of the first line: "@relation" is found."""
    path = tmp_path / "bom.arff"
    path.write_bytes(b"\xef\xbb\xbf" + DENSE.replace("% a comment\n", "").encode())
    data = load_arff(path, n_labels=2)
    assert data.relation == "toy" and data.feature_names[0] == "size"
    np.testing.assert_array_equal(data.Y, [[1, 0], [0, 1], [1, 1]])


def test_hierarchical_xml(tmp_path):
    xml = write(
        tmp_path / "h.xml",
        '<labels xmlns="http://mulan.sourceforge.net/labels">'
        '<label name="a"><label name="a.1"></label></label><label name="b"/></labels>',
    )
    assert read_label_xml(xml) == ["a", "a.1", "b"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, TypeError, "exactly one way"),
        ({"n_labels": 2, "label_names": ["sad"]}, TypeError, "exactly one way"),
        ({"n_labels": 0}, ValueError, "must be in"),
        ({"n_labels": 7}, ValueError, "must be in"),
        ({"n_labels": 2.0}, TypeError, "must be an int"),
        ({"label_names": ["sad", "nope"]}, ValueError, "not attributes"),
        ({"label_names": ["sad", "sad"]}, ValueError, "more than once"),
        ({"label_names": "sad"}, TypeError, "not one string"),
        ({"label_names": ["level"]}, ValueError, "other than 0 and 1"),
        ({"n_labels": 2, "sparse": "yes"}, TypeError, "sparse must be"),
    ],
)
def test_bad_label_specification(dense_file, kwargs, error, match):
    with pytest.raises(error, match=match):
        load_arff(dense_file, **kwargs)


def test_missing_label_value(tmp_path):
    path = write(tmp_path / "m.arff", DENSE.replace("1.5,blue,1,0,0,1", "1.5,blue,1,0,?,1"))
    with pytest.raises(ValueError, match="missing values"):
        load_arff(path, n_labels=2)


def test_string_attribute_rejected(tmp_path):
    path = write(
        tmp_path / "s.arff",
        "@relation s\n@attribute id string\n@attribute y {0,1}\n@data\nabc,1\n",
    )
    with pytest.raises(ValueError, match="string attribute"):
        load_arff(path, n_labels=1)


def test_not_arff_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match="no @data"):
        load_arff(write(tmp_path / "x.arff", "hello\n"), n_labels=1)
    bad = write(tmp_path / "b.arff", DENSE.replace("0.5,red", "0.5,purple"))
    with pytest.raises(ValueError, match="cannot parse"):
        load_arff(bad, n_labels=2)


def test_sparse_nominal_with_nonzero_first_category_rejected(tmp_path):
    text = "@relation t\n@attribute a {1,2}\n@attribute y {0,1}\n@data\n{0 2,1 1}\n"
    with pytest.raises(ValueError, match="first category"):
        load_arff(write(tmp_path / "t.arff", text), n_labels=1)


def test_empty_data_section(tmp_path):
    data = load_arff(write(tmp_path / "e.arff", DENSE.split("@data")[0] + "@data\n"), n_labels=2)
    assert data.X.shape == (0, 4) and data.Y.shape == (0, 2)


# =================================================================== preprocess_reference


def test_preprocess_reference_hand_computed():
    X = np.arange(12.0).reshape(6, 2)
    Y = np.array([[1, 0, 1], [1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]])
    Xk, Yk, rows, labels = preprocess_reference(X, Y, min_positives=2)
    np.testing.assert_array_equal(labels, [True, False, False])  # 4, 1, 2 positives
    np.testing.assert_array_equal(rows, [True, True, True, False, False, True])
    np.testing.assert_array_equal(Xk, X[rows])
    np.testing.assert_array_equal(Yk, Y[rows][:, labels])


def test_preprocess_reference_sparse_and_validation():
    rng = np.random.default_rng(0)
    X = sp.random(40, 6, density=0.3, format="csr", random_state=0)
    Y = (rng.random((40, 5)) < 0.3).astype(np.int8)
    Xk, Yk, rows, labels = preprocess_reference(X, Y, min_positives=10)
    assert sp.issparse(Xk)
    np.testing.assert_array_equal(Xk.toarray(), X.toarray()[rows])
    np.testing.assert_array_equal(labels, Y.sum(axis=0) > 10)
    assert (Yk.sum(axis=1) > 0).all() and Yk.dtype == np.int8
    Xk2, *_ = preprocess_reference(X.tocoo(), sp.csr_matrix(Y), min_positives=10)
    np.testing.assert_array_equal(Xk2.toarray(), Xk.toarray())
    with pytest.raises(ValueError, match="rows"):
        preprocess_reference(X[:5], Y)
    with pytest.raises(ValueError, match=">= 0"):
        preprocess_reference(X, Y, min_positives=-1)


# =================================================================== fetch_mulan, offline


def copy_from(home: Path):
    """A stand-in for the download: copy the file the URL names from ``home``."""

    def fake_urlretrieve(url, filename):
        name, fname = url.rstrip("/").split("/")[-2:]
        shutil.copyfile(home / name / fname, filename)

    return fake_urlretrieve


def no_download(url, filename):
    raise AssertionError(f"unexpected download of {url}")


def test_get_data_home(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_HOME_ENV, str(tmp_path))
    assert get_data_home() == tmp_path
    assert get_data_home(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv(DATA_HOME_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert get_data_home() == tmp_path / "home" / "skd2ace_data"
    assert not (tmp_path / "home").exists()  # not created by a lookup


def test_registry_covers_supported_data_sets():
    assert set(REGISTRY) == set(MULAN_DATASETS)
    for name, entry in REGISTRY.items():
        files = entry["files"]
        assert f"{name}.arff" in files and f"{name}.xml" in files
        for fname, info in files.items():
            assert info["url"].startswith("https://") and info["url"].endswith(f"/{fname}")
            assert len(info["sha256"]) == 64 and info["bytes"] > 0


def test_registry_checksums_match_original_files(mulan_home):
    for name, entry in REGISTRY.items():
        for fname, info in entry["files"].items():
            path = mulan_home / name / fname
            data = path.read_bytes()
            assert len(data) == info["bytes"], path
            assert hashlib.sha256(data).hexdigest() == info["sha256"], path


def test_fetch_downloads_verifies_and_caches(mulan_home, tmp_path, monkeypatch):
    monkeypatch.setattr(_mulan, "_urlretrieve", copy_from(mulan_home))
    data = fetch_mulan("FLAGS", data_home=tmp_path)  # name is case-insensitive
    assert data.X.shape == (194, 19) and data.Y.shape == (194, 7)
    assert data.name == "flags" and data.subset == "all" and "194 instances" in data.DESCR
    assert sorted(p.name for p in (tmp_path / "flags").iterdir()) == ["flags.arff", "flags.xml"]
    monkeypatch.setattr(_mulan, "_urlretrieve", no_download)
    again = fetch_mulan("flags", data_home=tmp_path)
    np.testing.assert_array_equal(again.Y, data.Y)


def test_fetch_uses_env_var_and_flat_layout(mulan_home, tmp_path, monkeypatch):
    for fname in ("flags-test.arff", "flags.xml"):
        shutil.copyfile(mulan_home / "flags" / fname, tmp_path / fname)
    monkeypatch.setenv(DATA_HOME_ENV, str(tmp_path))
    monkeypatch.setattr(_mulan, "_urlretrieve", no_download)
    data = fetch_mulan("flags", subset="test")
    assert data.X.shape == (65, 19)
    assert data.filename == str(tmp_path / "flags-test.arff")


def test_download_from_file_url(tmp_path):
    src = write(tmp_path / "src.txt", "payload\n")
    sha = hashlib.sha256(b"payload\n").hexdigest()
    dest = tmp_path / "cache" / "sub" / "file.txt"
    assert _mulan._download(src.as_uri(), dest, sha) == dest
    assert dest.read_text() == "payload\n"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.txt"]


def test_download_checksum_mismatch_from_file_url(tmp_path):
    src = write(tmp_path / "src.txt", "payload\n")
    dest = tmp_path / "cache" / "file.txt"
    with pytest.raises(ChecksumError, match="Checksum mismatch"):
        _mulan._download(src.as_uri(), dest, "0" * 64)
    assert not dest.parent.exists()  # neither the file, a partial one, nor the new folder


def test_fetch_checksum_mismatch(tmp_path, monkeypatch):
    def corrupt(url, filename):
        Path(filename).write_bytes(b"not the MULAN file")

    monkeypatch.setattr(_mulan, "_urlretrieve", corrupt)
    with pytest.raises(ChecksumError, match=r"flags\.arff") as info:
        fetch_mulan("flags", data_home=tmp_path)
    assert isinstance(info.value, OSError)
    assert not (tmp_path / "flags").exists()  # nor the folder created for it


def test_fetch_offline_error_names_file_and_places(tmp_path, monkeypatch):
    def offline(url, filename):
        Path(filename).write_bytes(b"partial")
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(_mulan, "_urlretrieve", offline)
    with pytest.raises(MulanDataNotFoundError) as info:
        fetch_mulan("emotions", data_home=tmp_path, subset="train")
    message = str(info.value)
    assert isinstance(info.value, OSError)
    for part in ("emotions-train.arff", str(tmp_path / "emotions"), DATA_HOME_ENV, "no network"):
        assert part in message
    assert not (tmp_path / "emotions").exists()
    # a folder that existed before stays, empty or not
    (tmp_path / "yeast").mkdir()
    with pytest.raises(MulanDataNotFoundError):
        fetch_mulan("yeast", data_home=tmp_path / ".")
    assert (tmp_path / "yeast").is_dir()


def test_fetch_missing_without_download(tmp_path, monkeypatch):
    monkeypatch.setattr(_mulan, "_urlretrieve", no_download)
    with pytest.raises(MulanDataNotFoundError, match=r"yeast\.arff.*SKD2ACE_DATA"):
        fetch_mulan("yeast", data_home=tmp_path, download_if_missing=False)


@pytest.mark.parametrize(
    ("arff_text", "xml_text", "match"),
    [
        (DENSE[: DENSE.index("1.5,blue")] + "1.5,bl", XML, r"flags\.arff: cannot parse ARFF"),
        (
            DENSE,
            XML.replace('"sad"', '"angry"'),
            r"flags\.xml are not attributes of .*flags\.arff: \['angry'\]",
        ),
        (DENSE, "<labels><label name=", r"flags\.xml: not a valid MULAN label XML"),
    ],
    ids=["truncated-arff", "xml-names-other-labels", "truncated-xml"],
)
def test_fetch_unreadable_file_in_data_home(tmp_path, monkeypatch, arff_text, xml_text, match):
    """A broken file already in the data home: a MulanFileError (a ValueError) naming
    the file and saying how to get it back; nothing is downloaded."""
    monkeypatch.setattr(_mulan, "_urlretrieve", no_download)
    (tmp_path / "flags").mkdir()
    write(tmp_path / "flags" / "flags.arff", arff_text)
    write(tmp_path / "flags" / "flags.xml", xml_text)
    with pytest.raises(MulanFileError, match=match) as info:
        fetch_mulan("flags", data_home=tmp_path)
    assert isinstance(info.value, ValueError)
    assert "downloaded again" in str(info.value)


def test_fetch_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="Unknown MULAN data set"):
        fetch_mulan("scene", data_home=tmp_path)
    with pytest.raises(ValueError, match="subset must be"):
        fetch_mulan("yeast", data_home=tmp_path, subset="validation")
    with pytest.raises(ValueError, match="no 'train' subset"):
        fetch_mulan("cal500", data_home=tmp_path, subset="train")


# =================================================================== the real MULAN files


@pytest.fixture(scope="module")
def mulan(mulan_home):
    """Memoised ``fetch_mulan(name, subset=...)`` on the shared data (no download)."""
    cache = {}

    def get(name, subset="all"):
        if (name, subset) not in cache:
            cache[name, subset] = fetch_mulan(
                name, data_home=mulan_home, subset=subset, download_if_missing=False
            )
        return cache[name, subset]

    return get


@pytest.mark.parametrize("name", MULAN_DATASETS)
def test_mulan_shapes_and_statistics(mulan, name):
    n, d, q, cardinality, density, distinct, _ = TABLE[name]
    data = mulan(name)
    assert data.X.shape == (n, d)
    assert data.Y.shape == (n, q) and data.Y.dtype == np.int8
    assert len(data.feature_names) == d and len(data.label_names) == q
    card = data.Y.sum(axis=1).mean()
    assert round(card, 3) == pytest.approx(cardinality)
    assert round(card / q, 3) == pytest.approx(density)
    assert len(np.unique(data.Y, axis=0)) == distinct
    assert sp.issparse(data.X) == (name in SPARSE)
    if name in SPARSE:
        assert data.X.format == "csr" and data.X.dtype == np.float64
        np.testing.assert_array_equal(data.X.data, 1.0)  # nominal {0,1} words -> 0/1
    else:
        assert data.X.dtype == np.float64 and np.isfinite(data.X).all()


@pytest.mark.parametrize("name", WITH_SPLIT)
def test_mulan_train_test_split(mulan, name):
    n, d, q, *_, split = TABLE[name]
    train, test = mulan(name, "train"), mulan(name, "test")
    assert train.X.shape[0] + test.X.shape[0] == n
    assert train.X.shape[1] == test.X.shape[1] == d
    assert train.Y.shape[1] == test.Y.shape[1] == q
    assert train.label_names == test.label_names == mulan(name).label_names
    if split is not None:
        assert (train.X.shape[0], test.X.shape[0]) == split


@pytest.mark.parametrize("name", ["flags", "emotions", "yeast"])
def test_mulan_union_is_train_plus_test(mulan, name):
    def sorted_rows(X, Y):
        M = np.hstack([X, Y])
        return M[np.lexsort(M.T[::-1])]

    train, test, full = mulan(name, "train"), mulan(name, "test"), mulan(name)
    np.testing.assert_array_equal(
        sorted_rows(np.vstack([train.X, test.X]), np.vstack([train.Y, test.Y])),
        sorted_rows(full.X, full.Y),
    )


def test_enron_labels_matched_by_name_in_arff_order(mulan, mulan_home):
    data = mulan("enron")
    xml_order = read_label_xml(mulan_home / "enron" / "enron.xml")
    assert xml_order != data.label_names  # the XML lists them in another order
    assert sorted(xml_order) == sorted(data.label_names)
    by_count = load_arff(mulan_home / "enron" / "enron.arff", n_labels=53)
    assert by_count.label_names == data.label_names
    np.testing.assert_array_equal(by_count.Y, data.Y)
    assert (by_count.X != data.X).nnz == 0
    dense = load_arff(mulan_home / "enron" / "enron.arff", n_labels=53, sparse=False)
    np.testing.assert_array_equal(dense.X, data.X.toarray())


def test_flags_nominal_features(mulan):
    data = mulan("flags")
    landmass = data.X[:, data.feature_names.index("landmass")]
    assert set(np.unique(landmass)) == {1, 2, 3, 4, 5, 6}  # category numbers, not indices
    assert data.categories["religion"] == [str(i) for i in range(8)]
    assert data.label_names == ["red", "green", "blue", "yellow", "white", "black", "orange"]


def test_delicious_escaped_label_name(mulan):
    assert "TAG_m\\'usica" in mulan("delicious").label_names


@pytest.mark.parametrize("name", ["emotions", "delicious"])
def test_mulan_reference_preprocessing(mulan, name):
    data = mulan(name)
    Xk, Yk, rows, labels = preprocess_reference(data.X, data.Y)
    np.testing.assert_array_equal(labels, data.Y.sum(axis=0) > 20)
    assert (Yk.sum(axis=0) > 20).all() and (Yk.sum(axis=1) > 0).all()
    assert Xk.shape == (rows.sum(), data.X.shape[1]) and Yk.shape == (rows.sum(), labels.sum())
    assert sp.issparse(Xk) == sp.issparse(data.X)

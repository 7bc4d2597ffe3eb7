"""The documentation's Python code blocks run as written.

``>>>`` examples (docstrings, docs/index.md) are doctests; the fenced ```python blocks of
README.md and docs/*.md are scripts a reader copies, run here in order, one namespace per
file (later blocks use what earlier ones defined, as in a notebook).
"""

import doctest
import re
from pathlib import Path

import pytest
from conftest import on_ci

ROOT = Path(__file__).resolve().parents[1]
FENCED = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)

# What a file's blocks take from the text around them (docs/performance.md's Dask
# example continues the README's search: a pipeline and data).
CONTEXT = {
    "docs/performance.md": """
from sklearn.datasets import make_multilabel_classification
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from skd2ace import D2ACEMultiLabelClassifier

X, Y = make_multilabel_classification(n_samples=200, n_classes=4, random_state=0)
pipe = make_pipeline(MinMaxScaler(), D2ACEMultiLabelClassifier(max_epochs=3, random_state=0))
""",
}


def python_blocks(path: Path) -> list[str]:
    return FENCED.findall(path.read_text(encoding="utf-8"))


def documents() -> list[str]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [str(f.relative_to(ROOT)) for f in files if python_blocks(f)]


def test_documents_with_code_are_found():
    # Guards the collection below: a changed fence style would silently test nothing.
    assert {"README.md", "docs/errors.md", "docs/performance.md"} <= set(documents())


def test_python_blocks_are_found(tmp_path):
    sample = "text\n```python\nx = 1\n```\nmore\n```bash\nls\n```\n```python\ny = x\n```\n"
    path = tmp_path / "sample.md"
    path.write_text(sample, encoding="utf-8")
    assert python_blocks(path) == ["x = 1\n", "y = x\n"]


@pytest.mark.parametrize("document", documents())
def test_python_blocks_run(document, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    namespace: dict = {"__name__": "__docs__"}
    exec(CONTEXT.get(document, ""), namespace)
    for number, block in enumerate(python_blocks(ROOT / document), 1):
        name = f"{document} (python block {number})"
        if block.lstrip().startswith(">>>"):
            if document.startswith("docs/"):
                continue  # a doctest, run by --doctest-glob (docs/ is a test path)
            run_doctest(block, namespace, name)
        else:
            exec(compile(block, name, "exec"), namespace)


def run_doctest(block: str, namespace: dict, name: str) -> None:
    test = doctest.DocTestParser().get_doctest(block, namespace, name, name, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test, clear_globs=False)
    assert runner.failures == 0, f"{runner.failures} failing example(s) in {name}"


def test_doctest_blocks_outside_docs_run(tmp_path):
    # README.md is not a test path: its >>> blocks are run here, and must fail here.
    namespace: dict = {}
    run_doctest(">>> 1 + 1\n2\n", namespace, "ok")
    with pytest.raises(AssertionError, match="1 failing example"):
        run_doctest(">>> 1 + 1\n3\n", namespace, "wrong")


def test_on_ci_reads_the_usual_values(monkeypatch):
    for value, expected in (("true", True), ("True", True), ("1", True), ("", False), ("0", False)):
        monkeypatch.setenv("CI", value)
        assert on_ci() is expected
    monkeypatch.delenv("CI")
    assert on_ci() is False

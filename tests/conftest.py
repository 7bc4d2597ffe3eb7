"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest


def on_ci() -> bool:
    """Whether the tests run on CI: ``$CI`` as CI services set it (``true``, ``1``, ...)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


@pytest.fixture(scope="session")
def mulan_home() -> Path:
    """Folder holding the real MULAN files (``NAME/NAME.arff`` ...).

    ``$SKD2ACE_DATA`` if set, else ``../shared/data/mulan`` seen from the repository root.
    Missing: the test fails on CI (``CI`` set to ``true``, ``1`` or ``yes``, any case) and
    is skipped elsewhere.
    """
    env = os.environ.get("SKD2ACE_DATA")
    if env:
        home = Path(env).expanduser()
    else:
        home = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mulan"
    if not home.is_dir():
        msg = f"MULAN data folder {home} not found (set SKD2ACE_DATA to the MULAN files)."
        if on_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return home


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The distributions batch samplers draw their epochs' batches from, in order
    (``skd2ace.selection.draw_batches`` is spied on, and still draws)."""
    from skd2ace import selection

    seen = []
    original = selection.draw_batches

    def draw(p, *args):
        seen.append(p)
        return original(p, *args)

    monkeypatch.setattr(selection, "draw_batches", draw)
    return seen

"""Fixtures of the STM tests."""
import pytest

from semnb.stm import fewshot

SMALL_FOREST = {"FOREST_TREES": 10, "PSEUDO_ROWS": 300}
"""A 10-tree forest on at most 300 pseudo-labels per group: for tests of plumbing (contracts,
determinism, save/restore equality), where the default forest (100 trees, 2000 pseudo-labels)
only costs seconds per scan."""


@pytest.fixture
def small_forest(monkeypatch):
    """SMALL_FOREST for one test."""
    for name, value in SMALL_FOREST.items():
        monkeypatch.setattr(fewshot, name, value)


@pytest.fixture(scope="module")
def small_forest_module():
    """SMALL_FOREST for every test of a module (a fitted model must be restored with the forest it was fitted with)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SMALL_FOREST.items():
            patch.setattr(fewshot, name, value)
        yield

"""The retrieval browser, driven headless: set a control's value, check what it renders."""
from __future__ import annotations

import numpy as np
import pytest

from semnb.retrieval.explore import render_retrieval, retrieval_browser
from semnb.retrieval.index import RetrievalIndex

pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_figure_left_open")

# ---------------------------------------------------------------- retrieval browser


@pytest.fixture(scope="module")
def index():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2, -1], 4)
    centres = rng.normal(size=(4, 8)) * 3
    embeddings = centres[np.maximum(labels, 0) + (labels < 0) * 3] + rng.normal(size=(16, 8))
    mags = np.where(np.arange(16) % 2 == 0, 2e4, 5e5)
    return RetrievalIndex(embeddings, [f"img_{i:02d}.png" for i in range(16)], labels, ["via", "sti", "gate"], mags)


@pytest.fixture(scope="module")
def thumbs():
    return [np.full((24, 24), i / 16, np.float32) for i in range(16)]


def _brute_force(index, query, k):
    d = ((index.embeddings - index.embeddings[query]) ** 2).sum(1)
    d[query] = np.inf
    return np.argsort(d, kind="stable")[:k]


def test_choosing_another_query_changes_the_top_k_and_never_returns_the_query(index, thumbs):
    browser = retrieval_browser(index, thumbs, k=5)
    first = [row["image"] for row in browser.result.summary["results"]]
    assert first == [f"img_{i:02d}.png" for i in _brute_force(index, 0, 5)]
    browser.controls["query"].value = 9
    rows = browser.result.summary["results"]
    assert [row["image"] for row in rows] == [f"img_{i:02d}.png" for i in _brute_force(index, 9, 5)]
    assert "img_09.png" not in [row["image"] for row in rows] and rows != first
    hits = [row["class"] == "gate" for row in rows]
    assert browser.result.summary["precision@5"] == pytest.approx(np.mean(hits))
    assert {row["magnification"] for row in rows} <= {"20kx", "500kx"}
    browser.controls["k"].value = 3
    assert len(browser.result.summary["results"]) == 3 and "precision@3" in browser.result.summary


def test_query_expansion_and_unlabelled_queries(index, thumbs):
    result = render_retrieval(index, 2, k=4, expand=True, pixels=thumbs)
    result.close()
    _, ids = index.search_expanded(index.embeddings[2], 4, exclude=[2])
    assert [row["image"] for row in result.summary["results"]] == [index.paths[i] for i in ids[0]]
    unlabelled = render_retrieval(index, 13, k=4, pixels=lambda i: thumbs[i])
    unlabelled.close()
    assert "precision@4" not in unlabelled.summary and unlabelled.notes


def test_thumbnails_are_read_from_the_index_paths_without_images(tmp_path, write_png):
    paths = [write_png(tmp_path / f"{i}.png", np.full((16, 16), i / 4)) for i in range(4)]
    small = RetrievalIndex(np.eye(4, dtype=np.float32), paths, [0, 0, 1, 1], ["a", "b"])
    browser = retrieval_browser(small, k=2)
    assert browser.picture.value.tobytes().startswith(b"\x89PNG") and len(browser.result.summary["results"]) == 2


def test_the_query_dropdown_is_wide_enough_for_its_longest_choice(index, thumbs):
    browser = retrieval_browser(index, thumbs, k=3)
    query = browser.controls["query"]
    assert query.label == "0: img_00.png (via, 20kx)"
    longest = max(len(label) for label, _ in query.options)
    assert query.layout.width == f"calc({len('query') + longest}ch + 5em)"  # the default cuts it at 300 px
    assert all(control.style.description_width == "initial" for control in browser.controls.values())

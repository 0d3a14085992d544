"""How retrieval figures title and frame results (shared by notebook 07 and the browser), and the query figure."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest

from semnb.errors import SemnbInputError
from semnb.retrieval.index import RetrievalIndex
from semnb.retrieval.viz import (
    class_label,
    image_title,
    magnification_label,
    query_gallery,
    result_correct,
    result_titles,
)

pytestmark = pytest.mark.usefixtures("no_figure_left_open")


@pytest.fixture(scope="module")
def index():
    labels = [0, 1, -1, 5]  # 5: a label without a class name
    mags = [2e4, 1.2e6, np.nan, 500.0]
    return RetrievalIndex(np.eye(4, dtype=np.float32), [f"{i}.png" for i in range(4)], labels, ["via", "sti"], mags)


def test_magnification_labels():
    assert [magnification_label(m) for m in (125_000, 1.2e6, 500, None, math.nan)] == ["125kx", "1.2Mx", "500x", "?", "?"]


def test_results_are_titled_by_class_and_magnification_in_rank_order(index):
    assert [class_label(index, i) for i in range(4)] == ["via", "sti", "unlabelled", "5"]
    assert image_title("cu_via", 2e5) == "cu_via · 200kx"
    assert result_titles(index, np.array([3, 0, 2, 1])) == ["5 · 500x", "via · 20kx", "unlabelled · ?", "sti · 1.2Mx"]
    assert result_titles(index, []) == []
    with pytest.raises(SemnbInputError, match="ids"):
        result_titles(index, [0, -1])  # a missing result has no title


def test_results_are_framed_only_where_both_classes_are_known(index):
    assert result_correct(index, [0, 1, 2], "via") == [True, False, None]
    assert result_correct(index, [0, 1, 2], None) == [None, None, None]  # an unlabelled query: nothing to judge


def test_query_gallery_draws_the_query_and_one_panel_per_result(index):
    images = [np.full((8, 8), i / 4) for i in range(4)]
    fig = query_gallery(images[0], "via · 20kx", images[1:], result_titles(index, [1, 2, 3]),
                        result_correct(index, [1, 2, 3], "via"), columns=2)
    try:
        titles = [ax.get_title() for ax in fig.axes]
        assert titles == ["query\nvia · 20kx", "1. sti · 1.2Mx", "2. unlabelled · ?", "3. 5 · 500x"]
        assert fig.axes[1].spines["left"].get_linewidth() == 3 and not fig.axes[2].axison
    finally:
        plt.close(fig)

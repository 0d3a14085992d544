"""The predictions browser: sorting, filtering and paging through a predictions folder, without a browser."""
from __future__ import annotations

import pytest

from semnb.errors import SemnbInputError
from semnb.predictions import predict
from semnb.widgets.predictions import ALL, browse_rows, predictions_browser, render_predictions
from tests.test_predictions import BrightnessModel, folder  # noqa: F401  (the image folder fixture)


@pytest.fixture
def predictions(folder, tmp_path):  # noqa: F811
    return predict(BrightnessModel(threshold=0.99), folder, tmp_path / "out", batch_size=4, top_n=0)


def test_rows_follow_the_order_and_the_filter(predictions):
    table = predictions.table
    by_score = browse_rows(predictions, "score, highest first", ALL)
    assert list(table.loc[by_score, "score"]) == sorted(table["score"].dropna(), reverse=True)
    assert len(by_score) == 9  # the broken file is not browsable
    flagged = browse_rows(predictions, "score, highest first", "defect found")
    assert set(flagged) == set(table.index[table["defective"] == True])  # noqa: E712
    with pytest.raises(SemnbInputError, match="no readable image"):
        render_predictions(predictions, group="no such class")


def test_the_browser_shows_the_chosen_image_and_follows_its_controls(predictions, no_figure_left_open):
    browser = predictions_browser(predictions)
    assert browser.result.summary["image"] == "1 of 9" and bytes(browser.picture.value)[:4] == b"\x89PNG"
    top = browser.result.summary["score"]
    browser.controls["position"].value = 3
    assert browser.result.summary["image"] == "4 of 9" and browser.result.summary["score"] <= top
    browser.controls["order"].value = "score, lowest first"
    assert browser.result.summary["score"] <= top

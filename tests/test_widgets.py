"""The Explorer base: a RenderResult shows every number, note and undefined value."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from semnb.widgets.base import RenderResult

pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_figure_left_open")

# ---------------------------------------------------------------- the shared result


def test_render_result_shows_every_number_note_and_undefined_value():
    result = RenderResult(None, {"auroc": 0.81234, "f1": float("nan"), "probabilities": {"good": 0.25},
                                 "results": [{"rank": 1, "class": "<b>"}]}, ["weights are random"])
    html, text = result.html(), result.text()
    for needle in ("0.812", "undefined", "good", "weights are random", "&lt;b&gt;"):
        assert needle in html
    assert "NOTE: weights are random" in text and "f1: undefined" in text and "rank=1" in text
    assert result.png() == b""
    drawn = RenderResult(plt.subplots()[0], {})
    first = drawn.png()
    assert first.startswith(b"\x89PNG") and drawn.figure.number not in plt.get_fignums()
    assert drawn._repr_html_().startswith('<img src="data:image/png;base64,')  # still drawable after closing

"""The Explorer base: a RenderResult shows every number, note and undefined value; labels show in full; a labelled snapshot."""
from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pytest

from semnb.widgets.base import SNAPSHOT_LABEL, Explorer, RenderResult

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


# ---------------------------------------------------------------- the Explorer widget


def _counter_explorer():
    """An explorer whose picture and numbers show a dropdown's value: what follows the controls is easy to see."""
    def render(values):
        return RenderResult(plt.subplots(figsize=(1, 1))[0], {"chosen": values["choice"]})

    long_name = "copper_residue_and_more"
    controls = {"choice": widgets.Dropdown(options=[("a", 1), (f"2: {long_name}.png (copper_residue, 20kx)", 2)],
                                           value=1, description="query"),
                "text": widgets.Textarea(value="x", description=long_name)}
    return Explorer(render, controls)


def test_explorer_labels_and_dropdown_choices_are_not_cut_off():
    explorer = _counter_explorer()
    for control in explorer.controls.values():
        assert control.style.description_width == "initial"  # the default cuts a description at 80 px
    longest = len("2: copper_residue_and_more.png (copper_residue, 20kx)")
    assert explorer.controls["choice"].layout.width == f"calc({len('query') + longest}ch + 5em)"


def test_snapshot_is_labelled_and_does_not_follow_the_controls():
    explorer = _counter_explorer()
    first = explorer.snapshot().data
    assert SNAPSHOT_LABEL in first and "does not follow the controls" in first
    assert '<img src="data:image/png;base64,' in first and ">1<" in first
    explorer.controls["choice"].value = 2
    assert explorer.result.summary["chosen"] == 2 and ">1<" in first  # the earlier snapshot stays as it was
    assert ">2<" in explorer.snapshot().data

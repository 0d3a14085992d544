"""What every explorer shares: the `RenderResult` a render function returns, and the `Explorer` widget.

Why this split: a render function is pure (plain inputs and control values in, a figure and
the numbers it shows out), so a notebook run headless by papermill and a unit test can call
it, and an `Explorer` only wires named controls to it: on every change it calls the render
function again and shows the figure (a PNG in an `Image` widget) and the numbers (an `HTML`
widget). Both are ordinary widget values, so they can be read without a browser.

A report (papermill, `semnb report`) drops live widgets, so each explorer cell also shows
`Explorer.snapshot()`: the current view as a static picture, labelled as a snapshot that does
not follow the controls, so that in Jupyter nobody mistakes it for the live explorer above it.

Taught in: 02_prompts, 04_segmentation, 06_ssl_clustering and 07_retrieval (each notebook's
explorer section).
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import HTML
from matplotlib.figure import Figure

from semnb.data.image_io import read_image
from semnb.errors import SemnbInputError

PNG_DPI = 90
SNAPSHOT_LABEL = "Static snapshot for reports (does not follow the controls)"


@dataclass
class RenderResult:
    """One rendering of an explorer: a figure, the numbers it shows (`summary`), and notes to read first.

    `summary` is JSON-friendly: scalars, dicts of scalars (shown as two-column tables) and
    lists of dicts (shown as tables). `notes` say what the numbers cannot mean, e.g. that the
    backbone's weights are random. In a notebook the result displays itself as HTML.

    Taught in: 02_prompts.
    """

    figure: Figure | None
    summary: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def png(self, dpi: int = PNG_DPI) -> bytes:
        """The figure as PNG bytes (empty without a figure), then `close`: it can still be drawn again.

        The figure is drawn once, at its own size (no tight bounding box, which draws twice):
        a widget redraws on every change, so this is the explorer's main cost.
        """
        if self.figure is None:
            return b""
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=dpi)
        self.close()
        return buffer.getvalue()

    def close(self) -> None:
        """Release the figure from pyplot (which keeps every figure it made until closed); it stays drawable."""
        if self.figure is not None:
            plt.close(self.figure)

    def text(self) -> str:
        """Notes and numbers as plain text, one line each."""
        lines = [f"NOTE: {note}" for note in self.notes]
        for key, value in self.summary.items():
            if isinstance(value, Mapping):
                lines.append(f"{key}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()))
            elif _is_rows(value):
                lines.append(f"{key}:")
                lines += ["  " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()) for row in value]
            else:
                lines.append(f"{key}: {_fmt(value)}")
        return "\n".join(lines)

    def html(self) -> str:
        """Notes (in a warning colour) and the summary as HTML tables, without the figure."""
        parts = [f'<p style="color:#a40"><b>Note:</b> {html.escape(note)}</p>' for note in self.notes]
        scalars = {k: v for k, v in self.summary.items() if not isinstance(v, Mapping) and not _is_rows(v)}
        if scalars:
            parts.append(_table([{"": k, "value": v} for k, v in scalars.items()]))
        for key, value in self.summary.items():
            if isinstance(value, Mapping):
                parts.append(f"<b>{html.escape(str(key))}</b>" + _table([{"": k, "value": v} for k, v in value.items()]))
            elif _is_rows(value):
                parts.append(f"<b>{html.escape(str(key))}</b>" + _table(value))
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        """Notebook display: the figure above the notes and numbers."""
        png = self.png()
        image = f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">' if png else ""
        return image + self.html()


def _is_rows(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and bool(value) and \
        all(isinstance(row, Mapping) for row in value)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "undefined" if math.isnan(value) else f"{value:.3f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return "" if value is None else str(value)


def _table(rows: Sequence[Mapping[str, object]]) -> str:
    columns = list(dict.fromkeys(c for row in rows for c in row))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(row.get(c)))}</td>" for c in columns) + "</tr>"
                   for row in rows)
    return (f'<table style="border-collapse:collapse;font-size:0.9em"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def phrase_lines(text: str | Sequence[str]) -> list[str]:
    """One phrase per line (a Textarea's value) -> the non-empty, stripped phrases; a list passes through.

    Taught in: 02_prompts.
    """
    items = text.splitlines() if isinstance(text, str) else list(text)
    return [str(item).strip() for item in items if str(item).strip()]


def image_at(pixels: Sequence[np.ndarray] | Callable[[int], np.ndarray] | None,
             paths: Sequence[str | os.PathLike] | None, i: int) -> np.ndarray:
    """Picture i for a thumbnail: `images[i]`, `images(i)`, or, without images, read from `paths[i]`.

    Taught in: 07_retrieval.
    """
    if pixels is not None:
        return np.asarray(pixels(i) if callable(pixels) else pixels[i])
    if paths is None:
        raise SemnbInputError("pixels", "are missing and there are no paths to read them from",
                              "pass the images (an array per row) or their paths")
    return read_image(paths[i])


def fit_labels(controls: Sequence[widgets.Widget]) -> None:
    """Show every description and dropdown choice in full: ipywidgets cuts descriptions at 80 px and dropdowns at 300 px.

    A description takes its own width; a dropdown is made as wide as its description and its
    longest choice (unless a width was set), at most the width of the notebook.

    Taught in: 02_prompts.
    """
    for control in controls:
        if getattr(control, "description", "") and hasattr(control, "style"):
            control.style.description_width = "initial"
        if isinstance(control, widgets.Dropdown) and not control.layout.width:
            longest = max((len(label) for label in control._options_labels), default=0)
            control.layout.width = f"calc({len(control.description) + longest}ch + 5em)"
            control.layout.max_width = "100%"


class Explorer(widgets.VBox):
    """Named controls above a picture and a table of numbers, re-rendered on every control change.

    `controls[name].value` is what the render callable receives as `values[name]`; after
    each change `result` holds the latest `RenderResult` (figure already turned into the
    picture) and `error` the message of a rejected setting (then the old picture stays).

    Taught in: 02_prompts.
    """

    def __init__(self, render: Callable[[dict[str, Any]], RenderResult], controls: Mapping[str, widgets.Widget],
                 title: str = ""):
        picture = widgets.Image(format="png")
        summary = widgets.HTML()
        header = [widgets.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        super().__init__(children=[*header, widgets.VBox(list(controls.values())), picture, summary])
        self.controls = dict(controls)
        self.picture = picture
        self.summary = summary
        self.result: RenderResult | None = None
        self.error: str | None = None
        self._render = render
        fit_labels(list(self.controls.values()))
        for control in self.controls.values():
            control.observe(self.refresh, names="value")
        self.refresh()

    def values(self) -> dict[str, Any]:
        """The current value of every control, by name."""
        return {name: control.value for name, control in self.controls.items()}

    def refresh(self, _change: object = None) -> None:
        """Render with the current control values; a SemnbInputError is shown instead of raised."""
        try:
            result = self._render(self.values())
        except SemnbInputError as err:
            self.error = str(err)
            self.summary.value = f'<p style="color:#b00"><b>Cannot show this setting:</b> {html.escape(str(err))}</p>'
            return
        self.error = None
        self.picture.value = result.png()
        self.summary.value = result.html()
        self.result = result

    def snapshot(self) -> HTML:
        """What the explorer shows now (picture and numbers) as static HTML under `SNAPSHOT_LABEL`.

        A report keeps this, not the live widget; the label tells a Jupyter user that moving
        the controls changes the explorer above, not this copy.

        Taught in: 02_prompts.
        """
        png = bytes(self.picture.value)
        image = f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">' if png else ""
        return HTML(f'<p style="color:#555"><b>{SNAPSHOT_LABEL}</b></p>{image}{self.summary.value}')


def random_weights_note(backbone_name: str, weights: str) -> str | None:
    """The sentence an explorer shows when the backbone's weights are random (`backbone.weights` says so).

    Taught in: 02_prompts.
    """
    if not str(weights).startswith("random-init"):
        return None
    return (f"{backbone_name} has random weights: the maps, probabilities and metrics shown here test the "
            "mechanics only and mean nothing; load real CLIP weights for meaningful ones")

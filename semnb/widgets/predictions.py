"""The predictions browser: page through what `semnb predict` wrote, sorted by score, filtered by class.

Why: after a night's predictions an inspector wants the worst images first, one class at a
time, each with its defect map; the report shows the top few, this shows any of them.

Taught in: 00_quickstart and 09_report.
"""
from __future__ import annotations

import ipywidgets as widgets
import pandas as pd

from semnb.data.image_io import read_image
from semnb.errors import SemnbInputError
from semnb.predictions import Predictions
from semnb.viz import image_and_map
from semnb.widgets.base import Explorer, RenderResult

ALL = "(all)"
ORDERS = {"score, highest first": ("score", False), "score, lowest first": ("score", True),
          "file name": ("path", True)}


def group_of(table: pd.DataFrame) -> pd.Series:
    """Each row's group for the filter: its class or cluster, or whether a defect was found."""
    if table["label"].notna().any():
        return table["label"].fillna("(unreadable)").astype(str)
    if "defective" in table and table["defective"].notna().any():
        return table["defective"].map({True: "defect found", False: "clean"}).fillna("(unreadable)")
    return pd.Series(["(all images)"] * len(table), index=table.index)


def browse_rows(predictions: Predictions, order: str, group: str) -> list[int]:
    """Table rows of the readable images in `group` (or all), in `order` (a key of ORDERS)."""
    table = predictions.table
    readable = table[table["error"].isna()]
    if group != ALL:
        readable = readable[group_of(readable) == group]
    column, ascending = ORDERS[order]
    return list(readable.sort_values([column, "index"], ascending=[ascending, True]).index)


def render_predictions(predictions: Predictions, order: str = "score, highest first", group: str = ALL,
                       position: int = 0) -> RenderResult:
    """The image at `position` of the browsing order, its mask outlined, and its defect map beside it.

    Taught in: 00_quickstart.
    """
    rows = browse_rows(predictions, order, group)
    if not rows:
        raise SemnbInputError("filter", f"no readable image is in {group!r}", f"choose another group or {ALL}")
    position = min(max(int(position), 0), len(rows) - 1)
    row = rows[position]
    record = predictions.table.loc[row]
    fig = image_and_map(read_image(record["path"]), predictions.mask(row), predictions.defect_map(row),
                        predictions.run.get("map_range"))
    summary = {"image": f"{position + 1} of {len(rows)}", "file": record["path"], "score": float(record["score"])}
    if isinstance(record["label"], str):
        summary["class"] = record["label"]
    probabilities = {c[2:]: float(record[c]) for c in predictions.table.columns if c.startswith("p_")}
    if probabilities:
        summary["probabilities"] = probabilities
    return RenderResult(fig, summary)


def predictions_browser(predictions: Predictions) -> Explorer:
    """Sort, filter and page through a predictions folder; `render_predictions` draws each view.

    Taught in: 00_quickstart.
    """
    groups = sorted(set(group_of(predictions.table[predictions.table["error"].isna()])))
    controls = {
        "order": widgets.Dropdown(options=list(ORDERS), description="sort by"),
        "group": widgets.Dropdown(options=[ALL, *groups], description="show"),
        "position": widgets.IntSlider(value=0, min=0, max=max(len(predictions.table) - 1, 0), description="image"),
    }
    return Explorer(lambda v: render_predictions(predictions, v["order"], v["group"], v["position"]), controls,
                    title=f"predictions of {predictions.run['task']} ({predictions.run['method']})")

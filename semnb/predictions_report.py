"""The inspection report of one `semnb predict` run: one self-contained HTML page.

What an inspector looks at, in that order: how many images were flagged (per class or
cluster), how the scores spread against the threshold, the images most worth a look with
their maps, and which files could not be read (listed, never silently dropped).

Taught in: 09_report.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from semnb import viz
from semnb.data.image_io import read_image
from semnb.html_page import HtmlPage
from semnb.predictions import Predictions

TOP_WHAT = {  # task -> (which images the report shows first, and why)
    "segment": ("highest", "the highest image scores: the most likely defects"),
    "stm": ("highest", "the highest image scores: the most likely defects"),
    "cluster": ("highest", "the farthest from their cluster's centre: the odd ones out"),
    "classify": ("lowest", "the least confident predictions: where a person should decide"),
}


def inspection_report(predictions: Predictions, top_n: int = 12) -> str:
    """The report page of `predictions` as HTML text (user-supplied names and paths escaped).

    Taught in: 09_report.
    """
    run, table = predictions.run, predictions.table
    readable = table[table["error"].isna()]
    page = HtmlPage(f"semnb inspection report: {run['task']} ({run['method']}) on {run['n_images']} images")
    page.paragraph(f"Model {run['model'][:12]} (method {run['method']}, backbone {run.get('backbone') or 'none'}); "
                   f"{len(readable)} images predicted, {len(table) - len(readable)} unreadable."
                   + (f" Threshold {run['threshold']:.4g}: {run['threshold_rule']}." if run.get("threshold") is not None
                      else ""), css="note")
    _counts(page, run["task"], readable)
    if readable["score"].notna().any():
        groups = _groups(run["task"], readable)
        page.figure(viz.figure_png(viz.score_histogram(readable["score"].to_numpy(), groups, run.get("threshold"))),
                    alt="score histogram")
    _top_images(page, predictions, run, readable, top_n)
    unreadable = table[table["error"].notna()]
    if len(unreadable):
        page.heading(f"Unreadable files ({len(unreadable)}): skipped")
        page.table([{"file": path, "problem": error} for path, error in zip(unreadable["path"], unreadable["error"])])
    return page.render()


def _groups(task: str, readable: pd.DataFrame):
    if task in ("classify", "cluster"):
        return readable["label"].astype(str).to_numpy()
    if task in ("segment", "stm"):
        return np.where(readable["defective"].astype(bool), "defect found", "clean")
    return None


def _counts(page: HtmlPage, task: str, readable: pd.DataFrame) -> None:
    if task in ("classify", "cluster"):
        page.heading("Images per class" if task == "classify" else "Images per cluster")
        counts = readable.groupby("label", sort=True).agg(images=("path", "size"), mean_score=("score", "mean"))
        page.table([{"class" if task == "classify" else "cluster": name, "images": int(row.images),
                     "mean score": float(row.mean_score)} for name, row in counts.iterrows()])
    elif task in ("segment", "stm"):
        flagged = readable["defective"].astype(bool)
        page.heading("Images with a defect found")
        page.table([{"": "defect found", "images": int(flagged.sum()),
                     "mean defect area": float(readable.loc[flagged, "defect_fraction"].mean()) if flagged.any()
                     else float("nan")},
                    {"": "clean", "images": int((~flagged).sum()), "mean defect area": 0.0}])
    else:
        page.heading("Embedded images")
        page.paragraph(f"{len(readable)} images embedded; search them with `semnb search`.")


def _top_images(page: HtmlPage, predictions: Predictions, run: dict, readable: pd.DataFrame, top_n: int) -> None:
    if run["task"] not in TOP_WHAT or not readable["score"].notna().any() or top_n < 1:
        return
    order, why = TOP_WHAT[run["task"]]
    ranked = readable.sort_values(["score", "index"], ascending=[order == "lowest", True]).head(top_n)
    page.heading(f"The {len(ranked)} images to look at first: {why}")
    rows = list(ranked.index)
    images = [read_image(predictions.table["path"].iloc[r]) for r in rows]
    maps = [predictions.defect_map(r) for r in rows]
    masks = [predictions.mask(r) for r in rows]
    titles = [f"{ranked.loc[r, 'label'] + ' ' if isinstance(ranked.loc[r, 'label'], str) else ''}"
              f"{ranked.loc[r, 'score']:.3g}" for r in rows]
    for start in range(0, len(rows), 6):
        part = slice(start, start + 6)
        page.figure(viz.figure_png(viz.map_overlays(images[part], maps[part], masks[part], titles[part],
                                                    run.get("map_range"))), alt="top images with their maps")
    page.table([{"rank": n + 1, "file": str(predictions.table["path"].iloc[r]), "score": float(ranked.loc[r, "score"])}
                for n, r in enumerate(rows)])

"""Retrieval browser: pick a stored image as the query, see its top K with class, magnification and distance.

Why: precision@K says how often the results are right; browsing says how they are wrong
(another magnification of the same structure, a look-alike class, an unlabelled image). The
index (`semnb.retrieval.index.RetrievalIndex`) already holds the embeddings, so a query is
one faiss search: the browser never runs the model. The query is excluded from its own
results (as in the evaluation), and P@K and AvgP@K are `semnb.metrics`' definitions. The
figure and its titles come from `semnb.retrieval.viz`; thumbnails are the images given or,
without them, read lazily from the index's paths through `semnb.data` (`image_at`).

Taught in: 07_retrieval.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import ipywidgets as widgets
import numpy as np

from semnb import metrics
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
from semnb.widgets.base import Explorer, RenderResult, image_at

MAX_K = 20


def render_retrieval(index: RetrievalIndex, query: int, k: int = 10, expand: bool = False,
                     pixels: Sequence[np.ndarray] | Callable[[int], np.ndarray] | None = None) -> RenderResult:
    """Stored image `query` and its `k` nearest other images (with query expansion when `expand`).

    `images[i]` (or `images(i)`) is row i's picture; None reads it from `index.paths[i]`.

    Taught in: 07_retrieval.
    """
    n = len(index)
    if not 0 <= int(query) < n:
        raise SemnbInputError("query", f"got {query} for an index of {n} images", f"use 0 to {n - 1}")
    query = int(query)
    search = index.search_expanded if expand else index.search
    distances, ids = search(index.embeddings[query], int(k), exclude=[query])
    found = [(int(i), float(d)) for i, d in zip(ids[0], distances[0]) if i >= 0]
    rows = [{"rank": rank, "image": Path(index.paths[i]).name, "class": class_label(index, i),
             "magnification": magnification_label(float(index.magnifications[i])), "distance": d}
            for rank, (i, d) in enumerate(found, start=1)]
    query_class = class_label(index, query)
    summary = {
        "query": Path(index.paths[query]).name,
        "query class": query_class,
        "query magnification": magnification_label(float(index.magnifications[query])),
        "k": int(k), "query expansion": bool(expand),
    }
    label = int(index.labels[query])
    if label >= 0:
        retrieved = index.labels_of(ids[0])
        summary[f"precision@{k}"] = metrics.precision_at_k(retrieved, label, int(k))
        summary[f"AvgP@{k}"] = metrics.average_precision_at_k(retrieved, label, int(k))
    summary["results"] = rows
    notes = [] if label >= 0 else ["the query is unlabelled: its results cannot be scored"]
    found_ids = [i for i, _ in found]
    figure = query_gallery(image_at(pixels, index.paths, query),
                           image_title(query_class, float(index.magnifications[query])),
                           [image_at(pixels, index.paths, i) for i in found_ids], result_titles(index, found_ids),
                           result_correct(index, found_ids, query_class if label >= 0 else None))
    return RenderResult(figure, summary, notes)


def retrieval_browser(index: RetrievalIndex, pixels: Sequence[np.ndarray] | Callable[[int], np.ndarray] | None = None,
                      query: int = 0, k: int = 10) -> Explorer:
    """The retrieval browser widget: a query picker, K and a query-expansion switch over the ranked results.

    Example: `retrieval_browser(RetrievalIndex.load(folder))` (thumbnails read from the index's paths).

    Taught in: 07_retrieval.
    """
    if len(index) < 2:
        raise SemnbInputError("index", "holds fewer than 2 images", "index at least two images to browse")
    max_k = min(MAX_K, len(index) - 1)
    names = [f"{i}: {Path(p).name} ({class_label(index, i)}, {magnification_label(float(index.magnifications[i]))})"
             for i, p in enumerate(index.paths)]
    controls = {
        "query": widgets.Dropdown(options=[(name, i) for i, name in enumerate(names)], value=int(query),
                                  description="query"),
        "k": widgets.IntSlider(value=min(int(k), max_k), min=1, max=max_k, description="top K",
                               continuous_update=False),
        "expand": widgets.Checkbox(value=False, description="query expansion"),
    }

    def render(values: dict) -> RenderResult:
        return render_retrieval(index, pixels=pixels, **values)

    return Explorer(render, controls, title=f"Retrieval browser: {index}")

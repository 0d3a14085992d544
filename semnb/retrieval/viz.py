"""Figures for retrieval: a query with its top results, training curves per loss, leave-one-class-out bars.

Also how those figures title an image ("class · magnification"), for the notebook and the
retrieval browser alike.

Taught in: 07_retrieval.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from semnb.errors import SemnbInputError
from semnb.retrieval.index import RetrievalIndex
from semnb.viz import grouped_bars, show_image

CORRECT, WRONG = "#34c759", "#ff3b30"
PHASE_COLORS = {"classifier": "#5856d6", "triplet": "#ff9500", "autoencoder": "#007aff"}


def magnification_label(magnification: float | None) -> str:
    """125000 -> '125kx', 1.2e6 -> '1.2Mx'; '?' when unknown.

    Taught in: 07_retrieval.
    """
    if magnification is None or not math.isfinite(magnification):
        return "?"
    if magnification >= 1e6:
        return f"{magnification / 1e6:.2g}Mx"
    if magnification >= 1e3:
        return f"{magnification / 1e3:.3g}kx"
    return f"{magnification:.3g}x"


def image_title(class_name: str, magnification: float | None) -> str:
    """'cu_via · 200kx': an image's title in retrieval figures, class then magnification.

    Taught in: 07_retrieval.
    """
    return f"{class_name} · {magnification_label(magnification)}"


def class_label(index: RetrievalIndex, row: int) -> str:
    """The class name of stored image `row`: 'unlabelled' without a label, the number if the name is missing.

    Taught in: 07_retrieval.
    """
    label = int(index.labels[row])
    if label < 0:
        return "unlabelled"
    return index.class_names[label] if label < len(index.class_names) else str(label)


def _checked_rows(index: RetrievalIndex, ids) -> list[int]:
    rows = [int(i) for i in np.asarray(ids).reshape(-1)]
    if any(not 0 <= i < len(index) for i in rows):
        raise SemnbInputError("ids", f"must be row ids in [0, {len(index)})", "drop missing results (id -1) first")
    return rows


def result_titles(index: RetrievalIndex, ids) -> list[str]:
    """`image_title` of each stored image in `ids` (ranked result rows, no -1), for `query_gallery`.

    Taught in: 07_retrieval.
    """
    return [image_title(class_label(index, i), float(index.magnifications[i])) for i in _checked_rows(index, ids)]


def result_correct(index: RetrievalIndex, ids, query_class: str | None) -> list[bool | None]:
    """Per result in `ids`: is it of `query_class`? None (no frame) for unlabelled results or a query_class None.

    Taught in: 07_retrieval.
    """
    names = [class_label(index, i) for i in _checked_rows(index, ids)]
    return [None if query_class is None or name == "unlabelled" else name == query_class for name in names]


def query_gallery(query: np.ndarray, query_title: str, results: Sequence[np.ndarray], titles: Sequence[str],
                  correct: Sequence[bool | None] | None = None, columns: int = 5) -> Figure:
    """The query on the left, its ranked results in a grid (rank, title), framed green/red when right/wrong.

    `correct[i]` None leaves result i unframed (e.g. an unlabelled image).

    Taught in: 07_retrieval.
    """
    rows = max(1, math.ceil(len(results) / columns))
    fig = plt.figure(figsize=(2.0 * (columns + 1.3), 2.15 * rows))
    grid = fig.add_gridspec(rows, columns + 1, width_ratios=[1.3] + [1] * columns)
    ax = fig.add_subplot(grid[:, 0])
    show_image(ax, query, title=f"query\n{query_title}")
    for i, (image, title) in enumerate(zip(results, titles)):
        ax = fig.add_subplot(grid[i // columns, 1 + i % columns])
        show_image(ax, image, title=f"{i + 1}. {title}")
        flag = None if correct is None else correct[i]
        if flag is not None:
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color(CORRECT if flag else WRONG)
                spine.set_linewidth(3)
    fig.tight_layout()
    return fig


def training_curves(histories: Mapping[str, Sequence[Mapping]]) -> Figure:
    """One panel per loss (classifier, triplet, autoencoder): its value per epoch for each method that uses it.

    For "ours" the alternation shows as points every other epoch.

    Taught in: 07_retrieval.
    """
    phases = [p for p in PHASE_COLORS if any(h["phase"] == p for hist in histories.values() for h in hist)]
    fig, axes = plt.subplots(1, max(1, len(phases)), figsize=(4.2 * max(1, len(phases)), 3.2), squeeze=False)
    markers = dict(zip(histories, "os^dv"))
    for ax, phase in zip(axes[0], phases):
        for method, hist in histories.items():
            points = [(h["epoch"], h["loss"]) for h in hist if h["phase"] == phase]
            if points:
                epochs, losses = zip(*points)
                ax.plot(epochs, losses, marker=markers.get(method, "o"), label=method,
                        lw=2 if method == "ours" else 1, alpha=1 if method == "ours" else 0.6)
        ax.set_title(f"{phase} loss", color=PHASE_COLORS[phase])
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def loco_bars(loco: Mapping[str, Mapping[str, Mapping[str, float]]], metric: str = "precision_at_k",
              k: int | None = None) -> Figure:
    """Grouped bars: per held-out class (and the mean), the metric of each method.

    Taught in: 07_retrieval.
    """
    label = metric.replace("_at_k", f"@{k}" if k else "@K")
    values = {method: {cls: scores[metric] for cls, scores in per_class.items()} for method, per_class in loco.items()}
    n_classes = len(next(iter(loco.values())))
    return grouped_bars(values, ylabel=label, figsize=(1.3 * n_classes + 2, 3.4), tick_rotation=20,
                        title=f"leave-one-class-out: {label} on queries of the class whose labels were hidden",
                        legend={"fontsize": 8, "ncols": len(loco)})

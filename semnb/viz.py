"""Generic figures every method draws with: an image with its mask, labelled image rows, grouped bars, PNG bytes.

Method modules never plot; each method package's `viz.py` builds its figures from these.

Taught in: 01_sem_data (gallery, overlays); later notebooks reuse them.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

MASK_COLOR = "#ff3b30"


def show_image(ax, image: np.ndarray, mask: np.ndarray | None = None, title: str | None = None) -> None:
    """Draw a gray image with the defect mask as a red contour (filled faintly), no axes."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=1 if image.dtype.kind == "f" else 255)
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=[MASK_COLOR], linewidths=0.8)
        ax.imshow(np.ma.masked_where(~mask, mask), cmap="autumn", alpha=0.18, vmin=0, vmax=1)
    if title:
        ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def image_rows(rows: Sequence[tuple[str, Sequence[int]]], draw: Callable[[object, int], None], columns: int,
               cell: tuple[float, float] = (1.9, 1.9), label_fontsize: int = 10, rotate_labels: bool = True) -> Figure:
    """A grid of images, one labelled row per group: `rows` = [(label, item ids)], `draw(ax, id)` draws one item.

    Why one function: class galleries, cluster thumbnails and defect-crop galleries are the same
    figure with other items; rows shorter than `columns` leave blank cells.
    """
    fig, axes = plt.subplots(len(rows), columns, figsize=(cell[0] * columns, cell[1] * len(rows)), squeeze=False)
    for row, (label, items) in enumerate(rows):
        for col in range(columns):
            ax = axes[row, col]
            ax.set_axis_off()
            if col < len(items):
                draw(ax, items[col])
        axes[row, 0].text(-0.08, 0.5, label, transform=axes[row, 0].transAxes, rotation=90 if rotate_labels else 0,
                          ha="right", va="center", fontsize=label_fontsize)
    fig.tight_layout()
    return fig


def class_gallery(pixels: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                  class_of: Sequence[str], classes: Sequence[str], per_class: int = 4,
                  titles: Sequence[str] | None = None) -> Figure:
    """A grid with one row per class and `per_class` examples, masks outlined in red."""
    rows = [(cls, [i for i, c in enumerate(class_of) if c == cls][:per_class]) for cls in classes]
    return image_rows(rows, lambda ax, i: show_image(ax, pixels[i], masks[i], titles[i] if titles else None),
                      per_class)


def grouped_bars(values: Mapping[str, Mapping[str, float]], errors: Mapping[str, Mapping[str, float]] | None = None,
                 ylabel: str | None = None, title: str | None = None, reference: tuple[float, str] | None = None,
                 figsize: tuple[float, float] | None = None, legend: dict | None = None,
                 tick_rotation: float = 0) -> Figure:
    """Bars grouped along x: `values` = {series: {group: value}}, one colour per series, groups in first-seen
    order; `errors` (same shape) become error bars; `reference` = (y, label) a dashed line (e.g. chance).

    Why one function: method-vs-metric, method-vs-held-out-class and method-vs-surface bars are
    the same figure. The y axis spans [0, 1]: every metric semnb plots is a fraction.
    """
    series = list(values)
    groups = list(dict.fromkeys(g for s in series for g in values[s]))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=figsize or (1.6 + 1.4 * len(groups) * max(1, len(series)) / 3, 3.2))
    for i, name in enumerate(series):
        heights = [values[name].get(g, np.nan) for g in groups]
        yerr = None if errors is None else np.nan_to_num([errors.get(name, {}).get(g, np.nan) for g in groups])
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, yerr=yerr, capsize=2, label=name)
    if reference is not None:
        ax.axhline(reference[0], color="gray", linestyle="--", linewidth=1, label=reference[1])
    ax.set_xticks(x, groups, rotation=tick_rotation)
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(**(legend or {"fontsize": 7, "loc": "upper left", "bbox_to_anchor": (1.0, 1.0)}))
    fig.tight_layout()
    return fig


def metric_bars(results: Mapping[str, Mapping[str, float]], metrics: Sequence[str]) -> Figure:
    """Grouped bars (mean +- std over seeds) of the methods of one results table, one group per metric.

    Taught in: 04_segmentation (ablations) and 10_eval_report (any task).
    """
    values = {name: {m: results[name].get(m, np.nan) for m in metrics} for name in results}
    errors = {name: {m: results[name].get(f"{m}_std", np.nan) for m in metrics} for name in results}
    return grouped_bars(values, errors)


def before_after(before: np.ndarray, after: np.ndarray, titles=("before", "after")) -> Figure:
    """Two images side by side, e.g. raw and preprocessed."""
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    for ax, img, title in zip(axes, (before, after), titles):
        show_image(ax, img, title=f"{title} {img.shape[1]}x{img.shape[0]}")
    fig.tight_layout()
    return fig


def score_histogram(scores: Sequence[float], groups: Sequence[str] | None = None, threshold: float | None = None,
                    xlabel: str = "image score") -> Figure:
    """How the images' scores spread (stacked per group, e.g. predicted class), with the threshold line.

    Why: an inspector reads the tail of this histogram first; a threshold that cuts the bulk of
    the images shows at a glance.
    """
    scores = np.asarray(scores, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 2.6))
    finite = np.isfinite(scores)
    if finite.any():
        bins = np.histogram_bin_edges(scores[finite], bins=30)
        names = sorted(set(groups)) if groups is not None else [None]
        stacks = [scores[finite & (np.asarray(groups) == name)] if name is not None else scores[finite]
                  for name in names]
        ax.hist(stacks, bins=bins, stacked=True, label=[str(n) for n in names] if groups is not None else None)
        if groups is not None and len(names) > 1:
            ax.legend(fontsize=7, frameon=False)
    if threshold is not None:
        ax.axvline(threshold, color=MASK_COLOR, linestyle="--", linewidth=1, label="threshold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    fig.tight_layout()
    return fig


def map_overlays(images: Sequence[np.ndarray], maps: Sequence[np.ndarray | None], masks: Sequence[np.ndarray | None],
                 titles: Sequence[str], map_range: tuple[float, float] | None = None) -> Figure:
    """One column per image: the image with its predicted mask outlined, and under it the defect map."""
    rows = 2 if any(m is not None for m in maps) else 1
    fig, axes = plt.subplots(rows, len(images), figsize=(1.9 * len(images), 1.9 * rows), squeeze=False)
    for col, (image, defect_map, mask, title) in enumerate(zip(images, maps, masks, titles)):
        show_image(axes[0, col], image, mask, title)
        if rows == 2:
            axes[1, col].set_axis_off()
            if defect_map is not None:
                lo, hi = map_range or (float(np.min(defect_map)), float(np.max(defect_map)))
                axes[1, col].imshow(defect_map, cmap="inferno", vmin=lo, vmax=hi)
    fig.tight_layout()
    return fig


def image_and_map(image: np.ndarray, mask: np.ndarray | None, defect_map: np.ndarray | None,
                  map_range: tuple[float, float] | None = None) -> Figure:
    """One image with its predicted mask outlined, and its defect map beside it (when there is one)."""
    fig, axes = plt.subplots(1, 2 if defect_map is not None else 1, squeeze=False,
                             figsize=(7 if defect_map is not None else 3.5, 3.4))
    show_image(axes[0, 0], image, mask, "image" + (" and mask" if mask is not None else ""))
    if defect_map is not None:
        lo, hi = map_range or (float(np.min(defect_map)), float(np.max(defect_map)))
        axes[0, 1].imshow(defect_map, cmap="inferno", vmin=lo, vmax=hi)
        axes[0, 1].set_title("defect map", fontsize=8)
        axes[0, 1].set_axis_off()
    fig.tight_layout()
    return fig


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (for self-contained HTML pages); closes the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()

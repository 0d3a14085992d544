"""Figures for STM scans: raw vs levelled, defect maps, the defect list, defect classes.

Method modules never plot; notebook 08_stm calls these.

Taught in: 08_stm.
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from semnb.viz import MASK_COLOR, grouped_bars, image_rows


def _show_scan(ax, scan: np.ndarray, title: str | None = None, cmap: str = "afmhot") -> None:
    """A topograph with its contrast set by the 1st-99th percentiles (defects do not wash it out)."""
    low, high = np.percentile(scan, [1, 99])
    ax.imshow(scan, cmap=cmap, vmin=low, vmax=high if high > low else low + 1)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def scan_panels(scans: Sequence[np.ndarray], titles: Sequence[str], masks: Sequence[np.ndarray | None] | None = None,
                size: float = 3.2) -> Figure:
    """Scans side by side (e.g. raw, levelled, line-flattened), masks outlined in red.

    Taught in: 08_stm.
    """
    fig, axes = plt.subplots(1, len(scans), figsize=(size * len(scans), size), squeeze=False)
    for i, (ax, scan, title) in enumerate(zip(axes[0], scans, titles)):
        _show_scan(ax, scan, title)
        mask = None if masks is None else masks[i]
        if mask is not None and np.any(mask):
            ax.contour(mask.astype(float), levels=[0.5], colors=[MASK_COLOR], linewidths=0.7)
    fig.tight_layout()
    return fig


def defect_maps(scan: np.ndarray, maps: dict[str, np.ndarray], mask: np.ndarray | None = None,
                size: float = 3.2) -> Figure:
    """The scan and one heat map per method ({"unsupervised": score, ...}), truth outlined.

    Each map is shown from its 50th to its 99.5th percentile, so methods with different
    score units can be compared by eye.

    Taught in: 08_stm.
    """
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(size * (1 + len(maps)), size), squeeze=False)
    _show_scan(axes[0, 0], scan, "scan")
    for ax, (name, values) in zip(axes[0, 1:], maps.items()):
        low, high = np.percentile(values, [50, 99.5])
        ax.imshow(values, cmap="magma", vmin=low, vmax=high if high > low else low + 1)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    if mask is not None and np.any(mask):
        for ax in axes[0]:
            ax.contour(mask.astype(float), levels=[0.5], colors=["#30d158"], linewidths=0.6)
    fig.tight_layout()
    return fig


def defect_list_overlay(scan: np.ndarray, defects: pd.DataFrame, class_column: str | None = None,
                        title: str | None = None, size: float = 5.0) -> Figure:
    """The scan with one marker per listed defect (columns x, y), coloured by class when
    `class_column` is given, with a legend.

    Taught in: 08_stm.
    """
    fig, ax = plt.subplots(figsize=(size, size))
    _show_scan(ax, scan, title, cmap="gray")
    if len(defects):
        if class_column is None:
            ax.scatter(defects["x"], defects["y"], s=60, facecolors="none", edgecolors=MASK_COLOR, linewidths=1.2)
        else:
            colours = plt.get_cmap("tab10")
            for i, cls in enumerate(sorted(defects[class_column].astype(str).unique())):
                part = defects[defects[class_column].astype(str) == cls]
                ax.scatter(part["x"], part["y"], s=60, facecolors="none", edgecolors=[colours(i % 10)],
                           linewidths=1.4, label=f"{cls} ({len(part)})")
            ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    fig.tight_layout()
    return fig


def crop_gallery(crops: np.ndarray, labels: Sequence[str], per_class: int = 6, channel: int = 0,
                 size: float = 1.2) -> Figure:
    """Defect crops, one row per class (channel 0: scan detail, 1: lattice residual).

    Taught in: 08_stm.
    """
    labels = np.asarray(labels).astype(str)
    rows = [(cls, np.flatnonzero(labels == cls)[:per_class]) for cls in sorted(np.unique(labels))]
    return image_rows(rows, lambda ax, i: ax.imshow(crops[i, channel], cmap="afmhot"), per_class,
                      cell=(size, size), label_fontsize=8)


def accuracy_bars(results: dict[str, dict[str, float]], metric: str = "accuracy",
                  title: str | None = None, chance: float | None = None) -> Figure:
    """Bars of one metric per group and method: results = {group: {method: value}}.

    Taught in: 08_stm.
    """
    methods = list(dict.fromkeys(m for per_method in results.values() for m in per_method))
    values = {m: {g: per_method.get(m, np.nan) for g, per_method in results.items()} for m in methods}
    return grouped_bars(values, ylabel=metric, title=title, figsize=(1.6 + 1.4 * len(results), 3.2),
                        reference=None if chance is None else (chance, "chance"),
                        legend={"fontsize": 8, "loc": "lower right"})

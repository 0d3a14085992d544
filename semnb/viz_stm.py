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

from semnb.viz import MASK_COLOR


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
    classes = sorted(np.unique(labels))
    fig, axes = plt.subplots(len(classes), per_class, figsize=(size * per_class, size * len(classes)), squeeze=False)
    for row, cls in enumerate(classes):
        members = np.flatnonzero(labels == cls)[:per_class]
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_axis_off()
            if col < len(members):
                ax.imshow(crops[members[col], channel], cmap="afmhot")
        axes[row, 0].text(-0.1, 0.5, cls, transform=axes[row, 0].transAxes, rotation=90, ha="right",
                          va="center", fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_bars(results: dict[str, dict[str, float]], metric: str = "accuracy",
                  title: str | None = None, chance: float | None = None) -> Figure:
    """Bars of one metric per group and method: results = {group: {method: value}}.

    Taught in: 08_stm.
    """
    groups = list(results)
    methods = list(dict.fromkeys(m for g in groups for m in results[g]))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(groups), 3.2))
    for j, method in enumerate(methods):
        values = [results[g].get(method, np.nan) for g in groups]
        ax.bar(np.arange(len(groups)) + (j - (len(methods) - 1) / 2) * width, values, width, label=method)
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylim(0, 1)
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig

"""Figures for the few-shot notebooks: defect maps over images, k-shot curves, bars, confusion matrices.

Method modules never plot; these helpers take plain arrays and tables and return figures.

Taught in: 04_segmentation (maps, curves, ablation bars) and 05_classification (curves,
confusion matrix).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from semnb.viz import show_image


def defect_map_overlays(images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                        maps: Mapping[str, np.ndarray], titles: Sequence[str] | None = None) -> Figure:
    """One row per image: the image with its mask outlined, then each method's defect map over it.

    `maps` maps a method name to maps [B, h, w], at the images' size or on the patch grid (then
    stretched over the image, bilinear); each method's colours span its own range (min to max
    over the shown images), so methods with different scales compare.

    Taught in: 04_segmentation.
    """
    n = len(images)
    fig, axes = plt.subplots(n, 1 + len(maps), figsize=(2.0 * (1 + len(maps)), 2.0 * n), squeeze=False)
    for row in range(n):
        show_image(axes[row, 0], images[row], masks[row], titles[row] if titles else None)
        for col, (name, stack) in enumerate(maps.items(), start=1):
            lo, hi = float(np.min(stack)), float(np.max(stack))
            ax = axes[row, col]
            show_image(ax, images[row], masks[row])
            height, width = np.shape(images[row])[:2]
            ax.imshow(stack[row], cmap="inferno", alpha=0.55, vmin=lo, vmax=hi if hi > lo else lo + 1,
                      interpolation="bilinear", extent=(0, width, height, 0))
            if row == 0:
                ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return fig


def metric_curves(table: pd.DataFrame, metrics: Sequence[str], x: str = "shots", hue: str = "method") -> Figure:
    """One panel per metric: mean (with std error bars, from `<metric>_std`) against `x`, one line per `hue`.

    Taught in: 04_segmentation (k-shot curves) and 05_classification (shots and a sweeps).
    """
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, part in table.groupby(hue, sort=False):
            part = part.sort_values(x)
            std = part[f"{metric}_std"] if f"{metric}_std" in part else None
            ax.errorbar(part[x], part[metric], yerr=std, marker="o", capsize=3, label=str(name))
        ax.set_xlabel(x)
        ax.set_title(metric, fontsize=10)
        ax.grid(alpha=0.3)
        if x == "shots":
            ax.set_xscale("log")
            ax.set_xticks(sorted(table[x].unique()))
            ax.set_xticklabels([str(v) for v in sorted(table[x].unique())])
    axes[0, -1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def method_bars(results: Mapping[str, Mapping[str, float]], metrics: Sequence[str]) -> Figure:
    """Grouped bars (mean +- std over seeds) of several methods or ablations, one group per metric.

    Taught in: 04_segmentation (ablations).
    """
    names = list(results)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(metrics) * max(1, len(names)) / 3, 3.2))
    positions = np.arange(len(metrics))
    for i, name in enumerate(names):
        values = [results[name].get(m, np.nan) for m in metrics]
        errors = [results[name].get(f"{m}_std", np.nan) for m in metrics]
        ax.bar(positions + i * width, values, width, yerr=np.nan_to_num(errors), capsize=2, label=name)
    ax.set_xticks(positions + width * (len(names) - 1) / 2)
    ax.set_xticklabels(metrics)
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "") -> Figure:
    """Counts with rows = true class and columns = predicted class; colour = share of the row.

    Taught in: 05_classification.
    """
    counts = np.asarray(matrix, dtype=float)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.0 + 0.55 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(class_names)))
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)))
    ax.set_yticklabels(class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    return fig


def loss_curve(losses: Sequence[float], title: str = "training loss") -> Figure:
    """The loss of each training step (e.g. the transformation layer's focal + dice loss).

    Taught in: 04_segmentation.
    """
    fig, ax = plt.subplots(figsize=(4, 2.6))
    ax.plot(np.arange(1, len(losses) + 1), losses)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig

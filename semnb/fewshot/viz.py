"""Figures of SEM-CLIP: the dual-path block, attention and similarity maps; defect maps over images,
k-shot curves, method bars, confusion matrices.

Method modules never plot; these helpers take plain arrays and tables and return figures. The
explorers' views (`prompt_editor_figure`, `segmentation_explorer_figure`) are drawn here too, on a
bare `Figure` (no pyplot state), so that `explore.py` holds only widgets.

Taught in: 02_prompts (similarity matrices, prompt editor), 03_vv_attention (block diagram,
attention and similarity maps), 04_segmentation (maps, curves, ablation bars, segmentation
explorer) and 05_classification (curves, confusion matrix).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from semnb.viz import MASK_COLOR, show_image

PREDICTION_COLOR = "#00c7ff"


def cell_coverage(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Fraction [h, w] of each patch-grid cell that the defect mask covers.

    Taught in: 03_vv_attention.
    """
    rows = np.array_split(np.arange(mask.shape[0]), grid[0])
    cols = np.array_split(np.arange(mask.shape[1]), grid[1])
    return np.array([[mask[np.ix_(r, c)].mean() for c in cols] for r in rows])


def defect_cells(mask: np.ndarray | None, grid: tuple[int, int], min_cover: float = 0.01) -> np.ndarray:
    """Bool [h, w]: the patches at least `min_cover` covered by the defect (none without a mask).

    Taught in: 03_vv_attention.
    """
    if mask is None:
        return np.zeros(grid, bool)
    return cell_coverage(mask, grid) >= min_cover


def query_patch(mask: np.ndarray | None, grid: tuple[int, int]) -> int:
    """Index (row-major) of the grid cell holding most of the defect; the centre cell without one.

    Taught in: 03_vv_attention.
    """
    h, w = grid
    if mask is None or not mask.any():
        return (h // 2) * w + w // 2
    return int(np.argmax(cell_coverage(mask, grid)))


def _overlay(ax, image: np.ndarray, heat: np.ndarray, title: str, cmap: str = "inferno") -> None:
    """Gray image with a grid-sized heat map stretched over it (bilinear), no axes."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=1 if image.dtype.kind == "f" else 255)
    height, width = image.shape[:2]
    ax.imshow(heat, cmap=cmap, alpha=0.55, interpolation="bilinear", extent=(0, width, height, 0))
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def _mark(ax, index: int, grid: tuple[int, int], shape: tuple[int, int]) -> None:
    """Outline grid cell `index` on an image of `shape`."""
    h, w = grid
    r, c = divmod(index, w)
    ch, cw = shape[0] / h, shape[1] / w
    ax.add_patch(plt.Rectangle((c * cw, r * ch), cw, ch, fill=False, edgecolor="#00c7ff", linewidth=1.5))


def attention_panels(pixels: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                     qk: np.ndarray, vv: np.ndarray, grid: tuple[int, int],
                     queries: Sequence[int], titles: Sequence[str] | None = None) -> Figure:
    """One row per image: image with the query patch, where it looks under Q-K, under V-V, and CLS under Q-K.

    qk, vv: [B, T, T] attention (token 0 = CLS); queries: patch index per image (0-based, without CLS).

    Taught in: 03_vv_attention.
    """
    fig, axes = plt.subplots(len(pixels), 4, figsize=(8.4, 2.2 * len(pixels)), squeeze=False)
    for i, image in enumerate(pixels):
        q = queries[i] + 1  # token index: skip CLS
        show_image(axes[i, 0], image, masks[i], titles[i] if titles else None)
        _mark(axes[i, 0], queries[i], grid, image.shape)
        _overlay(axes[i, 1], image, qk[i, q, 1:].reshape(grid), "query patch, Q-K attention")
        _overlay(axes[i, 2], image, vv[i, q, 1:].reshape(grid), "query patch, V-V attention")
        _overlay(axes[i, 3], image, qk[i, 0, 1:].reshape(grid), "CLS, Q-K attention")
    fig.tight_layout()
    return fig


def map_panels(pixels: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
               maps: dict[str, np.ndarray], titles: Sequence[str] | None = None, cmap: str = "jet") -> Figure:
    """One row per image: the image, then each named map [B, h, w] stretched over it (own colour range per map).

    Taught in: 03_vv_attention.
    """
    names = list(maps)
    fig, axes = plt.subplots(len(pixels), 1 + len(names), figsize=(2.1 * (1 + len(names)), 2.2 * len(pixels)),
                             squeeze=False)
    for i, image in enumerate(pixels):
        show_image(axes[i, 0], image, masks[i], titles[i] if titles else None)
        for k, name in enumerate(names):
            _overlay(axes[i, k + 1], image, maps[name][i], name, cmap=cmap)
    fig.tight_layout()
    return fig


def similarity_matrix(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str,
                      ax=None, fmt: str = "{:.2f}") -> Figure:
    """A labelled heat map with the values written in the cells (e.g. image class x text class).

    Taught in: 02_prompts.
    """
    fig = ax.figure if ax is not None else plt.figure(figsize=(0.6 * len(cols) + 2.2, 0.45 * len(rows) + 1.4))
    ax = ax or fig.add_subplot(111)
    ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for (r, c), value in np.ndenumerate(matrix):
        ax.text(c, r, fmt.format(value), ha="center", va="center", fontsize=6.5,
                color="white" if value < matrix.mean() else "black")
    ax.set_title(title, fontsize=9)
    return fig


def _box(ax, xy, text, color):
    x, y = xy
    ax.add_patch(FancyBboxPatch((x - 0.9, y - 0.28), 1.8, 0.56, boxstyle="round,pad=0.04",
                                facecolor=color, edgecolor="#333333", linewidth=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=8)


def _arrow(ax, start, end, style="-|>", dashed=False):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10, linewidth=0.9, color="#333333",
                                 linestyle="--" if dashed else "-"))


def _column(ax, x, boxes):
    """(text, colour) boxes stacked one unit apart, the last at y = 0.2, each arrowed to the next."""
    ys = [0.2 + step for step in range(len(boxes) - 1, -1, -1)]
    for y, (text, color) in zip(ys, boxes):
        _box(ax, (x, y), text, color)
    for y in ys[:-1]:
        _arrow(ax, (x, y - 0.3), (x, y - 0.7))


def draw_dual_path_block() -> Figure:
    """The dual-path block as a diagram: the vanilla path beside the V-V branch sharing its weights.

    Taught in: 03_vv_attention.
    """
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    vanilla, vvx = 1.5, 5.0
    _column(ax, vanilla, [("block input x", "#eeeeee"), ("ln_1", "#dfe9f7"),
                          ("Q, K, V = in_proj", "#dfe9f7"), ("softmax(QKᵀ/√d) V", "#dfe9f7"),
                          ("out_proj, + x", "#dfe9f7"), ("ln_2, MLP, +", "#dfe9f7"),
                          ("Z (after n blocks: Z_j)", "#eeeeee")])
    _column(ax, vvx, [("V = in_proj (V rows)", "#fde2cf"), ("softmax(VVᵀ/√d) V", "#fde2cf"),
                      ("out_proj", "#fde2cf"), ("Σ over the n blocks", "#fde2cf"),
                      ("V_j of level j", "#eeeeee")])
    _arrow(ax, (vanilla + 0.9, 5.2), (vvx, 4.5))
    for y in (4.2, 2.2):  # the two weight matrices both paths use
        _arrow(ax, (vanilla + 0.9, y), (vvx - 0.9, y), style="-", dashed=True)
    ax.text(3.35, 5.05, "same ln_1 output", fontsize=7, color="#a0522d")
    ax.text(3.25, 3.3, "same weights (dashed),\nno new parameters", fontsize=7, color="#a0522d", ha="center")
    ax.text(vvx + 1.0, 1.75, "no MLP", fontsize=7, color="#a0522d")
    ax.set_xlim(0, 6.6)
    ax.set_ylim(-0.3, 6.7)
    ax.set_axis_off()
    ax.set_title("One transformer block of the dual-path encoder (repeated L times, grouped m x n)", fontsize=9)
    fig.tight_layout()
    return fig


def defect_map_overlays(pixels: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                        maps: Mapping[str, np.ndarray], titles: Sequence[str] | None = None) -> Figure:
    """One row per image: the image with its mask outlined, then each method's defect map over it.

    `maps` maps a method name to maps [B, h, w], at the images' size or on the patch grid (then
    stretched over the image, bilinear); each method's colours span its own range (min to max
    over the shown images), so methods with different scales compare.

    Taught in: 04_segmentation.
    """
    n = len(pixels)
    fig, axes = plt.subplots(n, 1 + len(maps), figsize=(2.0 * (1 + len(maps)), 2.0 * n), squeeze=False)
    for row in range(n):
        show_image(axes[row, 0], pixels[row], masks[row], titles[row] if titles else None)
        for col, (name, stack) in enumerate(maps.items(), start=1):
            lo, hi = float(np.min(stack)), float(np.max(stack))
            ax = axes[row, col]
            show_image(ax, pixels[row], masks[row])
            height, width = np.shape(pixels[row])[:2]
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


# ------------------------------------------------------------------ the explorers' views
def prompt_editor_figure(pixels: np.ndarray, mask: np.ndarray | None, defect_map: np.ndarray,
                         class_names: Sequence[str], proba: np.ndarray, title: str, true_class: str) -> Figure:
    """The prompt editor's view: image with its mask, the defect map over it, the class probabilities as bars.

    Taught in: 02_prompts.
    """
    fig = Figure(figsize=(11, 3.2))
    left, middle, right = fig.subplots(1, 3, width_ratios=[1, 1.2, 1.2], gridspec_kw={"wspace": 0.6})
    fig.subplots_adjust(left=0.02, right=0.98, top=0.9, bottom=0.16)
    show_image(left, pixels, mask, f"{title} ({true_class})")
    middle.imshow(pixels, cmap="gray", vmin=0, vmax=1)
    heat = middle.imshow(defect_map, cmap="inferno", alpha=0.55, vmin=0, vmax=1)
    middle.set_title("defect map (zero-shot)", fontsize=8)
    middle.set_axis_off()
    fig.colorbar(heat, ax=middle, shrink=0.8, label="defect probability")
    order = np.arange(len(class_names))[::-1]
    colors = ["tab:orange" if c == true_class else "tab:blue" for c in class_names]
    right.barh([class_names[i] for i in order], proba[order], color=[colors[i] for i in order])
    right.set_xlim(0, 1)
    right.set_xlabel("zero-shot probability", fontsize=8)
    right.tick_params(labelsize=7)
    return fig


def segmentation_explorer_figure(pixels: np.ndarray, mask: np.ndarray, defect_map: np.ndarray,
                                 predicted: np.ndarray, title: str, map_title: str, f1: float,
                                 threshold: float) -> Figure:
    """The segmentation explorer's view: image with its mask, the defect map, the predicted region (cyan) vs the mask (red).

    Taught in: 04_segmentation.
    """
    fig = Figure(figsize=(10, 3.3))
    left, middle, right = fig.subplots(1, 3, width_ratios=[1, 1.2, 1], gridspec_kw={"wspace": 0.25})
    fig.subplots_adjust(left=0.02, right=0.98, top=0.9, bottom=0.04)
    show_image(left, pixels, mask, title)
    heat = middle.imshow(defect_map, cmap="inferno", vmin=0, vmax=1)
    if mask.any():
        middle.contour(mask.astype(float), levels=[0.5], colors=[MASK_COLOR], linewidths=0.8)
    middle.set_title(map_title, fontsize=8)
    middle.set_axis_off()
    fig.colorbar(heat, ax=middle, shrink=0.8, label="defect probability")
    right.imshow(pixels, cmap="gray", vmin=0, vmax=1)
    right.imshow(np.ma.masked_where(~predicted, predicted), cmap="cool", alpha=0.45, vmin=0, vmax=1)
    if predicted.any() and not predicted.all():
        right.contour(predicted.astype(float), levels=[0.5], colors=[PREDICTION_COLOR], linewidths=0.8)
    if mask.any():
        right.contour(mask.astype(float), levels=[0.5], colors=[MASK_COLOR], linewidths=0.8)
    f1_text = "undefined" if np.isnan(f1) else f"{f1:.2f}"
    right.set_title(f"map >= {threshold:.2f} (cyan) vs mask (red), F1 {f1_text}", fontsize=8)
    right.set_axis_off()
    return fig

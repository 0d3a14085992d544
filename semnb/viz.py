"""Figures: overlays, galleries and embedding plots. Method modules never plot; notebooks call these.

Taught in: 01_sem_data (gallery, overlays); later notebooks reuse them.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

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


def class_gallery(images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                  class_of: Sequence[str], classes: Sequence[str], per_class: int = 4,
                  titles: Sequence[str] | None = None) -> Figure:
    """A grid with one row per class and `per_class` examples, masks outlined in red."""
    fig, axes = plt.subplots(len(classes), per_class, figsize=(1.9 * per_class, 1.9 * len(classes)),
                             squeeze=False)
    for row, cls in enumerate(classes):
        picks = [i for i, c in enumerate(class_of) if c == cls][:per_class]
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_axis_off()
            if col < len(picks):
                i = picks[col]
                show_image(ax, images[i], masks[i], titles[i] if titles else None)
        axes[row, 0].text(-0.08, 0.5, cls, transform=axes[row, 0].transAxes, rotation=90,
                          ha="right", va="center", fontsize=10)
    fig.tight_layout()
    return fig


def before_after(before: np.ndarray, after: np.ndarray, titles=("before", "after")) -> Figure:
    """Two images side by side, e.g. raw and preprocessed."""
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    for ax, img, title in zip(axes, (before, after), titles):
        show_image(ax, img, title=f"{title} {img.shape[1]}x{img.shape[0]}")
    fig.tight_layout()
    return fig


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (for self-contained HTML pages); closes the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()

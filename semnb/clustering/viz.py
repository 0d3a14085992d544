"""Figures for clustering: the pyramid, the training curve, 2-D maps of embeddings, clusters as thumbnails,
and the cluster explorer's picture.

Taught in: 06_ssl_clustering.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from threadpoolctl import threadpool_limits

from semnb.clustering.kmeans import UNSCALED_METHODS, clustering_space
from semnb.viz import image_rows, show_image

PROJECTIONS = ("umap", "tsne")
THUMB_COLUMNS = 4  # thumbnails per row beside the cluster explorer's map


def project_2d(features: np.ndarray, method: str = "umap", seed: int = 0, standardized: bool = True) -> np.ndarray:
    """[N, D] features -> [N, 2] map points (UMAP or t-SNE, seeded), from the space k-means saw (`clustering_space`).

    Only a picture: distances in a UMAP or t-SNE map are not those of the feature space.
    Runs on one thread (t-SNE of 42 points: about 1 s, against 8-40 s with two OpenMP threads
    on a shared CPU, measured).

    Taught in: 06_ssl_clustering.
    """
    if method not in PROJECTIONS:
        raise ValueError(f"unknown projection {method!r}; use one of {PROJECTIONS}")
    x = clustering_space(features, standardized)
    n = len(x)
    with threadpool_limits(1):
        if method == "umap":
            import umap  # slow to import (numba); only here

            return umap.UMAP(n_neighbors=max(2, min(15, n - 1)), random_state=seed,
                             init="random" if n < 10 else "spectral", n_jobs=1).fit_transform(x)
        from sklearn.manifold import TSNE

        return TSNE(perplexity=max(1.0, min(30.0, (n - 1) / 3)), init="pca", random_state=seed).fit_transform(x)


def embedding_views(features: np.ndarray, clusters: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                    projections: Sequence[str] = PROJECTIONS, seed: int = 0, method: str = "ssl") -> Figure:
    """One row per projection (UMAP, t-SNE): points coloured by k-means cluster (left) and by true label (right).

    `method` names whose features these are (it decides whether they are standardised, as for k-means).

    Taught in: 06_ssl_clustering.
    """
    fig, axes = plt.subplots(len(projections), 2, figsize=(9, 4.2 * len(projections)), squeeze=False)
    labels = np.asarray(labels)
    for row, projection in enumerate(projections):
        points = project_2d(features, projection, seed, standardized=method not in UNSCALED_METHODS)
        _scatter(axes[row, 0], points, clusters, [f"cluster {c}" for c in range(int(np.max(clusters)) + 1)],
                 f"{method}, {projection.upper()}: k-means clusters")
        _scatter(axes[row, 1], points, labels, list(class_names), f"{method}, {projection.upper()}: true labels")
    fig.tight_layout()
    return fig


def _scatter(ax, points: np.ndarray, groups: np.ndarray, names: Sequence[str], title: str) -> None:
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for g in np.unique(groups):
        pick = groups == g
        name = names[g] if 0 <= g < len(names) else "unlabelled"
        color = "lightgray" if g < 0 else cmap(int(g) % cmap.N)
        ax.scatter(points[pick, 0], points[pick, 1], s=12, color=color, label=name, alpha=0.85, linewidths=0)
    if len(names) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best", frameon=False)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def cluster_thumbnails(pixels: np.ndarray, clusters: np.ndarray, labels: np.ndarray | None = None,
                       class_names: Sequence[str] | None = None, per_cluster: int = 6, seed: int = 0) -> Figure:
    """A row of `per_cluster` random members per cluster (seeded), each titled with its true class.

    Taught in: 06_ssl_clustering.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for cluster in np.unique(clusters):
        members = np.flatnonzero(clusters == cluster)
        rows.append((f"cluster {cluster}\n({len(members)})",
                     rng.choice(members, size=min(per_cluster, len(members)), replace=False)))

    def draw(ax, i):
        named = labels is not None and class_names and labels[i] >= 0
        show_image(ax, pixels[i], title=class_names[labels[i]] if named else None)

    return image_rows(rows, draw, per_cluster, cell=(1.6, 1.7), label_fontsize=8, rotate_labels=False)


def training_curves(history, embedding_dim: int = 128) -> Figure:
    """Loss per epoch (left) and the collapse watch (right) with the healthy level 1/sqrt(d).

    `history` is a `semnb.clustering.ssl.TrainingHistory`.

    Taught in: 06_ssl_clustering.
    """
    epochs = np.arange(1, len(history.loss) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(epochs, history.loss, marker="o")
    left.set_xlabel("epoch")
    left.set_ylabel("cross-scale loss (-1 = perfect agreement)")
    right.plot(epochs, history.std_projection, marker="o", label="projections z (what the loss sees)")
    right.plot(epochs, history.std_embedding, marker="s", label="L0 embeddings h (what is clustered)")
    right.axhline(1 / np.sqrt(embedding_dim), color="gray", ls="--", label=f"1/sqrt({embedding_dim}): spread out")
    right.axhline(0, color="red", lw=0.8, label="0: collapsed")
    right.set_xlabel("epoch")
    right.set_ylabel("std of L2-normalised outputs")
    right.legend(fontsize=7, frameon=False)
    for ax in (left, right):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def pyramid_figure(levels: Sequence[np.ndarray]) -> Figure:
    """The pyramid levels of one image side by side, drawn at their pixel sizes' true ratio.

    Taught in: 06_ssl_clustering.
    """
    sizes = [level.shape[-1] for level in levels]
    fig, axes = plt.subplots(1, len(levels), figsize=(3 * len(levels), 3.2),
                             gridspec_kw={"width_ratios": sizes})
    for j, (ax, level) in enumerate(zip(np.atleast_1d(axes), levels)):
        show_image(ax, np.asarray(level), title=f"L{j}: {level.shape[-1]}x{level.shape[-2]}")
    fig.tight_layout()
    return fig


def scores_figure(results: Mapping[str, Mapping[str, float]], nmi_random: float | None = None) -> Figure:
    """Silhouette and NMI per method as bars (with the seeds' std), NMI of a random assignment as a line.

    Taught in: 06_ssl_clustering.
    """
    methods = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, metric in zip(axes, ("silhouette", "nmi")):
        values = [results[m].get(metric, np.nan) for m in methods]
        errors = [results[m].get(f"{metric}_std", 0.0) for m in methods]
        errors = [0.0 if e is None or not np.isfinite(e) else e for e in errors]
        colors = ["tab:orange" if m == "ssl" else "tab:blue" for m in methods]
        ax.bar(methods, values, yerr=errors, color=colors, capsize=3)
        if metric == "nmi" and nmi_random is not None:
            ax.axhline(nmi_random, color="gray", ls="--", label="random assignment")
            ax.legend(fontsize=7, frameon=False)
        ax.set_title(metric)
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def count_label(n: int, noun: str = "image") -> str:
    """'1 image', '12 images': a count with its noun, singular for one.

    Taught in: 06_ssl_clustering.
    """
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def cluster_members_figure(points: np.ndarray, groups: np.ndarray, group_names: Mapping[int, str],
                           members: np.ndarray, thumbs: Sequence[np.ndarray], titles: Sequence[str],
                           cluster: int) -> Figure:
    """The cluster explorer's picture: the 2-D map (members outlined in black, the rest faded) beside member thumbnails.

    `groups` colour the map (cluster or class per point, named by `group_names`); `members`
    are the indices of cluster `cluster`; `thumbs` and `titles` the shown members, in rows of
    `THUMB_COLUMNS`. A plain `Figure` (not pyplot's), so redrawing leaves nothing open.

    Taught in: 06_ssl_clustering.
    """
    rows = max(1, int(np.ceil(len(thumbs) / THUMB_COLUMNS)))
    fig = Figure(figsize=(4.4 + 1.6 * THUMB_COLUMNS, max(4.0, 1.7 * rows)))
    grid = fig.add_gridspec(rows, THUMB_COLUMNS + 1, width_ratios=[2.8] + [1] * THUMB_COLUMNS, wspace=0.15, hspace=0.3,
                            left=0.02, right=0.98, top=0.92, bottom=0.03)
    ax = fig.add_subplot(grid[:, 0])
    cmap = plt.get_cmap("tab20" if len(group_names) > 10 else "tab10")
    chosen = np.zeros(len(points), bool)
    chosen[members] = True
    for order, g in enumerate(group_names):
        pick = groups == g
        color = "lightgray" if g < 0 else cmap(order % cmap.N)
        ax.scatter(points[pick & ~chosen, 0], points[pick & ~chosen, 1], s=10, color=color, alpha=0.3, linewidths=0,
                   label=group_names[g])
        ax.scatter(points[pick & chosen, 0], points[pick & chosen, 1], s=22, color=color, edgecolors="black",
                   linewidths=0.8)
    if len(group_names) <= 20:
        for handle in ax.legend(fontsize=7, frameon=False, loc="best").legend_handles:
            handle.set_alpha(1)
    ax.set_title(f"cluster {cluster}: {count_label(len(members))} (outlined)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    for k, (thumb, title) in enumerate(zip(thumbs, titles)):
        show_image(fig.add_subplot(grid[k // THUMB_COLUMNS, 1 + k % THUMB_COLUMNS]), thumb, title=title)
    return fig

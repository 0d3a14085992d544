"""Cluster explorer: a 2-D map of the embeddings (UMAP, t-SNE or any), pick a cluster, see its members.

Why: silhouette and NMI (06_ssl_clustering) say how well clusters separate and match the
labels; thumbnails say what a cluster actually groups (a morphology, a magnification, an
imaging artefact). The map and the clusters are computed beforehand (`semnb.cluster_viz.
project_2d`, `semnb.clustering.kmeans.kmeans_clusters`), so choosing a cluster only redraws.

Taught in: 06_ssl_clustering.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from semnb.errors import SemnbInputError
from semnb.viz import show_image
from semnb.widgets.base import Explorer, RenderResult, image_at

COLOR_BY = ("cluster", "class")
THUMB_COLUMNS = 4


def _check_inputs(points: np.ndarray, clusters: np.ndarray, labels: np.ndarray | None,
                  paths: Sequence | None) -> None:
    n = len(clusters)
    if points.ndim != 2 or points.shape != (n, 2):
        raise SemnbInputError("points", f"have shape {points.shape} for {n} cluster labels",
                              "pass one 2-D point per image, e.g. project_2d(features, 'umap')")
    for name, values in (("labels", labels), ("paths", paths)):
        if values is not None and len(values) != n:
            raise SemnbInputError(name, f"{len(values)} entries for {n} images", "pass one entry per image")


def _name(class_names: Sequence[str], label: int) -> str:
    if label < 0:
        return "unlabelled"
    return class_names[label] if label < len(class_names) else str(label)


def render_clusters(points: np.ndarray, clusters: Sequence[int], cluster: int,
                    images: Sequence[np.ndarray] | Callable[[int], np.ndarray] | None = None,
                    labels: Sequence[int] | None = None, class_names: Sequence[str] = (),
                    paths: Sequence[str] | None = None, per_page: int = 12, color_by: str = "cluster") -> RenderResult:
    """The map with cluster `cluster` highlighted, and thumbnails of its first `per_page` members.

    Taught in: 06_ssl_clustering.
    """
    points, clusters = np.asarray(points, dtype=np.float64), np.asarray(clusters, dtype=np.int64)
    labels = None if labels is None else np.asarray(labels, dtype=np.int64)
    _check_inputs(points, clusters, labels, paths)
    if int(cluster) not in set(clusters.tolist()):
        raise SemnbInputError("cluster", f"got {cluster}", f"use one of {sorted(set(clusters.tolist()))}")
    if color_by not in COLOR_BY or (color_by == "class" and labels is None):
        raise SemnbInputError("color_by", f"got {color_by!r}", "use 'cluster', or 'class' when labels are given")
    members = np.flatnonzero(clusters == int(cluster))
    shown = members[:max(1, int(per_page))]
    names = [paths[i] if paths is not None else f"image {i}" for i in range(len(clusters))]
    summary: dict = {"cluster": int(cluster), "members": int(len(members)), "shown": int(len(shown))}
    if labels is not None:
        counts = Counter(_name(class_names, int(labels[i])) for i in members)
        summary["purity (largest class share)"] = max(counts.values()) / len(members)
        summary["classes in cluster"] = dict(counts.most_common())
    summary["shown members"] = [{"#": int(i), "path": str(names[i]),
                                 **({"class": _name(class_names, int(labels[i]))} if labels is not None else {})}
                                for i in shown]
    groups = clusters if color_by == "cluster" else labels
    group_names = ({g: f"cluster {g}" for g in np.unique(clusters)} if color_by == "cluster"
                   else {g: _name(class_names, int(g)) for g in np.unique(labels)})
    titles = [Path(str(names[i])).name if labels is None else _name(class_names, int(labels[i])) for i in shown]
    figure = _cluster_figure(points, groups, group_names, members, [image_at(images, paths, i) for i in shown],
                             titles, int(cluster))
    return RenderResult(figure, summary)


def _cluster_figure(points: np.ndarray, groups: np.ndarray, group_names: dict, members: np.ndarray,
                    thumbs: Sequence[np.ndarray], titles: Sequence[str], cluster: int) -> Figure:
    """Scatter (members outlined in black, the rest faded) beside a grid of member thumbnails."""
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
    ax.set_title(f"cluster {cluster}: {len(members)} images (outlined)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    for k, (thumb, title) in enumerate(zip(thumbs, titles)):
        show_image(fig.add_subplot(grid[k // THUMB_COLUMNS, 1 + k % THUMB_COLUMNS]), thumb, title=title)
    return fig


def cluster_explorer(points: np.ndarray, clusters: Sequence[int],
                     images: Sequence[np.ndarray] | Callable[[int], np.ndarray] | None = None,
                     labels: Sequence[int] | None = None, class_names: Sequence[str] = (),
                     paths: Sequence[str] | None = None, per_page: int = 12) -> Explorer:
    """The cluster explorer widget: a cluster picker, how many thumbnails, and colour by cluster or class.

    Example: `cluster_explorer(project_2d(features, "umap"), kmeans_clusters(features, k), images, labels, names)`.

    Taught in: 06_ssl_clustering.
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    ids, sizes = np.unique(clusters, return_counts=True)
    controls = {
        "cluster": widgets.Dropdown(options=[(f"cluster {c} ({n} images)", int(c)) for c, n in zip(ids, sizes)],
                                    value=int(ids[0]), description="cluster"),
        "per_page": widgets.IntSlider(value=int(per_page), min=1, max=max(int(per_page), int(sizes.max())),
                                      description="thumbnails", continuous_update=False),
    }
    if labels is not None:
        controls["color_by"] = widgets.ToggleButtons(options=list(COLOR_BY), value="cluster", description="colour by")

    def render(values: dict) -> RenderResult:
        return render_clusters(points, clusters, images=images, labels=labels, class_names=class_names,
                               paths=paths, **values)

    return Explorer(render, controls, title="Cluster explorer")

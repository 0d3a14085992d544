"""Cluster explorer: a 2-D map of the embeddings (UMAP, t-SNE or any), pick a cluster, see its members.

Why: silhouette and NMI (06_ssl_clustering) say how well clusters separate and match the
labels; thumbnails say what a cluster actually groups (a morphology, a magnification, an
imaging artefact). The map and the clusters are computed beforehand (`semnb.clustering.viz.
project_2d`, `semnb.clustering.kmeans.kmeans_clusters`), so choosing a cluster only redraws;
thumbnails are read lazily, only those shown (`image_at`), and drawn by `semnb.clustering.viz`.

Taught in: 06_ssl_clustering.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import ipywidgets as widgets
import numpy as np

from semnb.clustering.viz import cluster_members_figure, count_label
from semnb.errors import SemnbInputError
from semnb.widgets.base import Explorer, RenderResult, image_at

COLOR_BY = ("cluster", "class")


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
                    pixels: Sequence[np.ndarray] | Callable[[int], np.ndarray] | None = None,
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
    summary: dict = {"cluster": int(cluster), "members": int(len(members)), "shown": int(len(shown))}
    if labels is not None:
        counts = Counter(_name(class_names, int(labels[i])) for i in members)
        summary["purity (largest class share)"] = max(counts.values()) / len(members)
        summary["classes in cluster"] = dict(counts.most_common())
    summary["shown members"] = [{"#": int(i), **({"path": str(paths[i])} if paths is not None else {}),
                                 **({"class": _name(class_names, int(labels[i]))} if labels is not None else {})}
                                for i in shown]
    groups = clusters if color_by == "cluster" else labels
    group_names = ({g: f"cluster {g}" for g in np.unique(clusters)} if color_by == "cluster"
                   else {g: _name(class_names, int(g)) for g in np.unique(labels)})
    # a thumbnail is titled by its class, else its file name, else its row number (the table's "#")
    titles = [_name(class_names, int(labels[i])) if labels is not None
              else Path(str(paths[i])).name if paths is not None else f"#{i}" for i in shown]
    figure = cluster_members_figure(points, groups, group_names, members,
                                    [image_at(pixels, paths, i) for i in shown], titles, int(cluster))
    return RenderResult(figure, summary)


def cluster_explorer(points: np.ndarray, clusters: Sequence[int],
                     pixels: Sequence[np.ndarray] | Callable[[int], np.ndarray] | None = None,
                     labels: Sequence[int] | None = None, class_names: Sequence[str] = (),
                     paths: Sequence[str] | None = None, per_page: int = 12) -> Explorer:
    """The cluster explorer widget: a cluster picker, how many thumbnails, and colour by cluster or class.

    Example: `cluster_explorer(project_2d(features, "umap"), kmeans_clusters(features, k), images, labels, names)`.

    Taught in: 06_ssl_clustering.
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    ids, sizes = np.unique(clusters, return_counts=True)
    controls = {
        "cluster": widgets.Dropdown(options=[(f"cluster {c} ({count_label(int(n))})", int(c)) for c, n in zip(ids, sizes)],
                                    value=int(ids[0]), description="cluster"),
        "per_page": widgets.IntSlider(value=int(per_page), min=1, max=max(int(per_page), int(sizes.max())),
                                      description="thumbnails", continuous_update=False),
    }
    if labels is not None:
        controls["color_by"] = widgets.ToggleButtons(options=list(COLOR_BY), value="cluster", description="colour by")

    def render(values: dict) -> RenderResult:
        return render_clusters(points, clusters, pixels=pixels, labels=labels, class_names=class_names,
                               paths=paths, **values)

    return Explorer(render, controls, title="Cluster explorer")

"""The cluster explorer, driven headless: set a control's value, check what it renders."""
from __future__ import annotations

import numpy as np
import pytest

from semnb.clustering.explore import cluster_explorer, render_clusters
from semnb.errors import SemnbInputError

pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_figure_left_open")

# ---------------------------------------------------------------- cluster explorer


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(1)
    clusters = np.array([0, 1, 2, 1, 0, 2, 2, 1, 0, 2, 1, 1])
    points = rng.normal(size=(12, 2)) + clusters[:, None] * 4
    labels = np.array([0, 1, 1, 1, 0, 2, 2, 1, 0, 2, -1, 0])
    paths = [f"data/img_{i:02d}.png" for i in range(12)]
    images = [np.full((20, 20), i / 12, np.float32) for i in range(12)]
    return points, clusters, labels, paths, images


def test_choosing_another_cluster_shows_its_members(clustered):
    points, clusters, labels, paths, images = clustered
    explorer = cluster_explorer(points, clusters, images, labels, ["a", "b", "c"], paths, per_page=3)
    shown = [row["path"] for row in explorer.result.summary["shown members"]]
    assert shown == [paths[i] for i in np.flatnonzero(clusters == 0)[:3]]
    explorer.controls["cluster"].value = 1
    summary = explorer.result.summary
    members = np.flatnonzero(clusters == 1)
    assert summary["members"] == len(members) == 5
    assert [row["path"] for row in summary["shown members"]] == [paths[i] for i in members[:3]]
    assert summary["classes in cluster"] == {"b": 3, "unlabelled": 1, "a": 1}
    assert summary["purity (largest class share)"] == pytest.approx(3 / 5)
    explorer.controls["color_by"].value = "class"
    assert explorer.error is None and explorer.picture.value.tobytes().startswith(b"\x89PNG")
    assert len(explorer.result.summary["shown members"]) == 3


def test_cluster_explorer_checks_its_inputs(clustered):
    points, clusters, labels, paths, images = clustered
    with pytest.raises(SemnbInputError, match="points"):
        render_clusters(points[:5], clusters, 0, images)
    with pytest.raises(SemnbInputError, match="cluster"):
        render_clusters(points, clusters, 7, images)
    with pytest.raises(SemnbInputError, match="color_by"):
        render_clusters(points, clusters, 0, images, color_by="class")
    result = render_clusters(points, clusters, 2, images)
    result.close()
    assert "classes in cluster" not in result.summary


def test_cluster_names_counts_and_files_read_as_a_newcomer_expects(clustered):
    points, clusters, labels, paths, images = clustered
    single = np.append(clusters, 3)  # cluster 3 has one member
    points, images = np.vstack([points, [[20.0, 20.0]]]), images + [images[0]]
    explorer = cluster_explorer(points, single, images, per_page=3)
    assert [label for label, _ in explorer.controls["cluster"].options][-1] == "cluster 3 (1 image)"
    explorer.controls["cluster"].value = 3
    assert explorer.result.figure.axes[0].get_title() == "cluster 3: 1 image (outlined)"
    assert explorer.result.summary["shown members"] == [{"#": 12}]  # no made-up "image 12" where no file is known
    assert explorer.result.figure.axes[1].get_title() == "#12"
    named = render_clusters(points, single, 3, images, paths=paths + ["data/odd_one.png"])
    named.close()
    assert named.summary["shown members"] == [{"#": 12, "path": "data/odd_one.png"}]
    assert named.figure.axes[1].get_title() == "odd_one.png"

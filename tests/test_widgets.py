"""Interactive explorers, driven headless: set a control's value, check what the explorer renders."""
from __future__ import annotations

from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from semnb.data import load_dataset, write_sem_dataset
from semnb.errors import SemnbInputError
from semnb.fewshot import prepare_fewshot, sample_episode
from semnb.fewshot.evaluate import segment_episode
from semnb.fewshot.segmentation import SegmentationConfig, upsample_and_smooth
from semnb.models import encode_images, load_backbone
from semnb.prompts import class_text_embeddings, normal_defect_embeddings, zero_shot
from semnb.retrieval_index import RetrievalIndex
from semnb.widgets import (
    RenderResult,
    cluster_explorer,
    default_phrases,
    prepare_prompt_editor,
    prompt_editor,
    render_clusters,
    render_prompt_editor,
    render_retrieval,
    render_segmentation,
    retrieval_browser,
    segment_setting,
    segmentation_explorer,
)
from semnb.widgets.prompt_editor import edited_text_embeddings, zero_shot_defect_map

SIZE = 64
FAST = SegmentationConfig(steps=10)  # the transformation layer trains 10 steps instead of 60: same code, faster


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors on a shared 2-core CPU run far faster on one thread than on two spinning ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def no_figure_left_open():
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before, "an explorer left a matplotlib figure open"


@pytest.fixture(scope="module")
def sem_set(tmp_path_factory):
    root = write_sem_dataset(tmp_path_factory.mktemp("widgets") / "sem", n_per_class=3, size=SIZE, seed=0,
                             progress=False)
    return load_dataset(root)


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("semnb-tiny", image_size=SIZE)


@pytest.fixture(scope="module")
def prompt_data(sem_set, tiny):
    picks = [i for i, c in enumerate(sem_set.labels) if sem_set.class_names[c] in ("good", "scratch", "particle")][::2]
    names = ["good", "scratch", "particle"]
    labels = [names.index(sem_set.class_names[sem_set.labels[i]]) for i in picks]
    return prepare_prompt_editor(tiny, [sem_set.image(i, SIZE) for i in picks], names, labels=labels,
                                 masks=[sem_set.mask(i, SIZE) for i in picks],
                                 titles=[sem_set.paths[i].name for i in picks])


@pytest.fixture(scope="module")
def seg_data(sem_set):
    return prepare_fewshot(sem_set, "segment", backbone="semnb-tiny", image_size=SIZE)


# ---------------------------------------------------------------- the shared result


def test_render_result_shows_every_number_note_and_undefined_value():
    result = RenderResult(None, {"auroc": 0.81234, "f1": float("nan"), "probabilities": {"good": 0.25},
                                 "results": [{"rank": 1, "class": "<b>"}]}, ["weights are random"])
    html, text = result.html(), result.text()
    for needle in ("0.812", "undefined", "good", "weights are random", "&lt;b&gt;"):
        assert needle in html
    assert "NOTE: weights are random" in text and "f1: undefined" in text and "rank=1" in text
    assert result.png() == b""
    drawn = RenderResult(plt.subplots()[0], {})
    first = drawn.png()
    assert first.startswith(b"\x89PNG") and drawn.figure.number not in plt.get_fignums()
    assert drawn._repr_html_().startswith('<img src="data:image/png;base64,')  # still drawable after closing


# ---------------------------------------------------------------- prompt editor


def test_default_phrases_reproduce_the_packaged_prompt_embeddings(tiny):
    names = ["good", "scratch", "crack_line"]  # crack_line: unknown to the knowledge base, {defect} fallback
    data = prepare_prompt_editor(tiny, [np.full((SIZE, SIZE), 0.5, np.float32)], names)
    states, templates = default_phrases(names)
    classes, pair, counts = edited_text_embeddings(data, states, templates)
    assert torch.allclose(classes, class_text_embeddings(tiny, names).embeddings, atol=1e-5)
    assert torch.allclose(pair, normal_defect_embeddings(tiny, names), atol=1e-5)
    assert counts["scratch"] == len(states["scratch"]) * len(templates)


def test_prompt_editor_probabilities_are_clip_zero_shot(prompt_data, tiny):
    states, templates = default_phrases(prompt_data.class_names)
    result = render_prompt_editor(prompt_data, 1, states, templates)
    result.close()
    proba = result.summary["class probabilities"]
    images = torch.from_numpy(prompt_data.pixels)
    expected = zero_shot(tiny.encode_image(list(images.numpy()))[1:2],
                         class_text_embeddings(tiny, prompt_data.class_names).embeddings)[0]
    assert np.allclose(list(proba.values()), expected.numpy(), atol=1e-4)
    assert abs(sum(proba.values()) - 1) < 1e-5
    assert any("random weights" in note for note in result.notes)


def test_prompt_editor_map_is_the_mean_of_a_z_and_a_v_terms(prompt_data, tiny):
    """Independent of semnb.fewshot: softmax of 100 x cosine per level on Z; V with the patch mean removed."""
    states, templates = default_phrases(prompt_data.class_names)
    _, pair, _ = edited_text_embeddings(prompt_data, states, templates)
    levels = encode_images(tiny, list(prompt_data.pixels[:2]))
    t = F.normalize(pair, dim=-1)
    total = 0.0
    for j in range(levels.num_levels):
        total = total + (100 * levels.similarity_maps(pair, level=j, path="z")).softmax(dim=1)[:, 1].flatten(1)
        v = F.normalize(levels.project(levels.patch_v[j]), dim=-1)[:, :, None, :] * t[None, None]
        total = total + (100 * (v - v.mean(dim=1, keepdim=True)).sum(-1)).softmax(dim=-1)[..., 1]
    expected = upsample_and_smooth(total / (2 * levels.num_levels), levels.grid, SIZE, 4.0).numpy()
    got = zero_shot_defect_map(prompt_data.patches.subset([0, 1]), pair, SIZE)
    assert got.shape == (2, SIZE, SIZE) and 0 <= got.min() and got.max() <= 1
    assert np.allclose(got, expected, atol=1e-4)


def test_editing_a_prompt_changes_the_probabilities_and_encodes_only_new_prompts(prompt_data):
    explorer = prompt_editor(prompt_data, image=1)
    before = dict(explorer.result.summary["class probabilities"])
    assert explorer.picture.value.tobytes().startswith(b"\x89PNG") and "random weights" in explorer.summary.value
    known = len(prompt_data.encode.known)
    explorer.controls["states:scratch"].value = "{obj} with a long bright scratch\n\n{obj} with a groove"
    after = explorer.result.summary["class probabilities"]
    assert explorer.error is None
    assert explorer.result.summary["prompts per class"]["scratch"] == 2 * len(default_phrases(["good"])[1])
    assert after["scratch"] != pytest.approx(before["scratch"], abs=1e-4)
    assert len(prompt_data.encode.known) == known + 2 * len(default_phrases(["good"])[1])
    explorer.controls["image"].value = 2
    assert explorer.result.summary["image"] == prompt_data.titles[2]


def test_a_bad_phrase_is_shown_and_keeps_the_last_rendering(prompt_data):
    explorer = prompt_editor(prompt_data)
    shown = explorer.result
    explorer.controls["templates"].value = "an SEM image without a placeholder"
    assert explorer.error is not None and "placeholder {}" in explorer.summary.value
    assert explorer.result is shown
    explorer.controls["templates"].value = "an SEM image of the {}."
    assert explorer.error is None and explorer.result.summary["prompts"] < shown.summary["prompts"]


def test_prompt_editor_refuses_a_backbone_without_text():
    class NoText:
        name, has_text = "efficientnet-lite0", False

    with pytest.raises(SemnbInputError, match="no text tower"):
        prepare_prompt_editor(NoText(), [np.zeros((8, 8))], ["good", "scratch"])


# ---------------------------------------------------------------- segmentation explorer


def test_segmentation_maps_are_semnb_eval_segment_maps_per_term(seg_data):
    run = segment_setting(seg_data, shots=1, seed=0, config=FAST)
    episode = sample_episode(seg_data.labels, 1, 0, seg_data.class_names)
    reference, _ = segment_episode(seg_data, episode, "semclip", config=FAST)
    terms = 2 * len(seg_data.patches.z)  # levels x (Z, V)
    assert np.array_equal(run.episode.queries, episode.queries)
    assert np.allclose(run.maps[episode.queries] * terms, reference.maps, atol=1e-5)
    assert 0 <= run.maps.min() and run.maps.max() <= 1


def test_raising_the_threshold_shrinks_the_predicted_area(seg_data):
    explorer = segmentation_explorer(seg_data, config=FAST)
    run = segment_setting(seg_data, shots=1, seed=0, config=FAST)
    image = explorer.controls["image"].value
    assert explorer.result.summary["role"] == "query" and seg_data.is_defect[image]
    q = run.episode.queries
    low, high = np.quantile(run.maps[q], [0.3, 0.9])
    areas = {}
    for threshold in (round(float(low), 2), round(float(high), 2)):
        explorer.controls["threshold"].value = threshold
        summary = explorer.result.summary
        areas[threshold] = summary["predicted defect area (queries)"]
        assert areas[threshold] == pytest.approx(np.mean(run.maps[q] >= threshold))
        assert summary["predicted defect area (this image)"] == pytest.approx(np.mean(run.maps[image] >= threshold))
        expected_f1 = f1_score(seg_data.masks[q].ravel(), (run.maps[q] >= threshold).ravel())
        assert summary["F1 at threshold (queries)"] == pytest.approx(expected_f1)
    (t_low, a_low), (t_high, a_high) = sorted(areas.items())
    assert a_high < a_low
    # threshold-free metrics do not move with the threshold
    assert explorer.result.summary["pixel AUROC (queries)"] == pytest.approx(run.query_scores["pixel_auroc"])


def test_shots_level_and_path_switches_retrain_the_right_setting(seg_data):
    explorer = segmentation_explorer(seg_data, image=0, config=FAST)
    summary = explorer.result.summary
    queries_1 = summary["queries"]
    explorer.controls["path"].value = "z"
    z_only = segment_setting(seg_data, 1, "all", "z", seed=0, config=FAST)
    assert explorer.result.summary["path"] == "z"
    assert explorer.result.summary["pixel AUROC (queries)"] == pytest.approx(z_only.query_scores["pixel_auroc"])
    explorer.controls["level"].value = 2
    level_2 = segment_setting(seg_data, 1, 2, "z", seed=0, config=FAST)
    assert explorer.result.summary["pixel AUROC (queries)"] == pytest.approx(level_2.query_scores["pixel_auroc"])
    assert not np.allclose(level_2.maps, z_only.maps)
    explorer.controls["shots"].value = 2
    assert explorer.result.summary["queries"] == queries_1 - len(seg_data.class_names)
    support = sample_episode(seg_data.labels, 2, 0, seg_data.class_names).support
    explorer.controls["image"].value = int(support[0])
    assert explorer.result.summary["role"].startswith("support")


def test_v_path_without_a_v_v_backbone_is_refused(seg_data):
    no_v = replace(seg_data, patches=replace(seg_data.patches, v=None))
    with pytest.raises(SemnbInputError, match="V-V path"):
        render_segmentation(no_v, 0, path="v", config=FAST)
    explorer = segmentation_explorer(no_v, config=FAST)
    assert [value for _, value in explorer.controls["path"].options] == ["z"]
    assert explorer.error is None and explorer.result.summary["path"] == "z"


# ---------------------------------------------------------------- retrieval browser


@pytest.fixture(scope="module")
def index():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2, -1], 4)
    centres = rng.normal(size=(4, 8)) * 3
    embeddings = centres[np.maximum(labels, 0) + (labels < 0) * 3] + rng.normal(size=(16, 8))
    mags = np.where(np.arange(16) % 2 == 0, 2e4, 5e5)
    return RetrievalIndex(embeddings, [f"img_{i:02d}.png" for i in range(16)], labels, ["via", "sti", "gate"], mags)


@pytest.fixture(scope="module")
def thumbs():
    return [np.full((24, 24), i / 16, np.float32) for i in range(16)]


def _brute_force(index, query, k):
    d = ((index.embeddings - index.embeddings[query]) ** 2).sum(1)
    d[query] = np.inf
    return np.argsort(d, kind="stable")[:k]


def test_choosing_another_query_changes_the_top_k_and_never_returns_the_query(index, thumbs):
    browser = retrieval_browser(index, thumbs, k=5)
    first = [row["image"] for row in browser.result.summary["results"]]
    assert first == [f"img_{i:02d}.png" for i in _brute_force(index, 0, 5)]
    browser.controls["query"].value = 9
    rows = browser.result.summary["results"]
    assert [row["image"] for row in rows] == [f"img_{i:02d}.png" for i in _brute_force(index, 9, 5)]
    assert "img_09.png" not in [row["image"] for row in rows] and rows != first
    hits = [row["class"] == "gate" for row in rows]
    assert browser.result.summary["precision@5"] == pytest.approx(np.mean(hits))
    assert {row["magnification"] for row in rows} <= {"20kx", "500kx"}
    browser.controls["k"].value = 3
    assert len(browser.result.summary["results"]) == 3 and "precision@3" in browser.result.summary


def test_query_expansion_and_unlabelled_queries(index, thumbs):
    result = render_retrieval(index, 2, k=4, expand=True, images=thumbs)
    result.close()
    _, ids = index.search_expanded(index.embeddings[2], 4, exclude=[2])
    assert [row["image"] for row in result.summary["results"]] == [index.paths[i] for i in ids[0]]
    unlabelled = render_retrieval(index, 13, k=4, images=lambda i: thumbs[i])
    unlabelled.close()
    assert "precision@4" not in unlabelled.summary and unlabelled.notes


def test_thumbnails_are_read_from_the_index_paths_without_images(tmp_path, write_png):
    paths = [write_png(tmp_path / f"{i}.png", np.full((16, 16), i / 4)) for i in range(4)]
    small = RetrievalIndex(np.eye(4, dtype=np.float32), paths, [0, 0, 1, 1], ["a", "b"])
    browser = retrieval_browser(small, k=2)
    assert browser.picture.value.tobytes().startswith(b"\x89PNG") and len(browser.result.summary["results"]) == 2


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

"""SEM-CLIP explorers (prompt editor, segmentation explorer), driven headless: set a control's value, check what renders."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from semnb.components import upsample_and_smooth
from semnb.data import load_dataset, write_sem_dataset
from semnb.errors import SemnbInputError
from semnb.fewshot import prepare_fewshot, sample_episode
from semnb.fewshot.evaluate import segment_episode
from semnb.fewshot.explore import (
    default_phrases,
    edited_text_embeddings,
    prepare_prompt_editor,
    prompt_editor,
    render_prompt_editor,
    render_segmentation,
    segment_setting,
    segmentation_explorer,
    zero_shot_defect_map,
)
from semnb.fewshot.segmentation import SegmentationConfig
from semnb.models import encode_images, load_backbone
from semnb.prompts import class_text_embeddings, normal_defect_embeddings, zero_shot

pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_figure_left_open")

SIZE = 64
FAST = SegmentationConfig(steps=10)  # the transformation layer trains 10 steps instead of 60: same code, faster


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
    assert explorer.controls["states:particle"].style.description_width == "initial"  # a class name is not cut off
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


def test_the_explorer_opens_on_a_defect_query_whose_map_reaches_the_threshold(seg_data):
    """Not on an all-black view: the first defect query may have an empty map (notebook 04, 1-shot)."""
    run = segment_setting(seg_data, shots=1, seed=0, config=FAST)
    q = run.episode.queries
    defects = q[seg_data.is_defect[q]]
    peaks = run.maps[defects].reshape(len(defects), -1).max(axis=1)
    threshold = float(peaks[0] + peaks.max()) / 2  # the first defect query's map stays below it, another reaches it
    assert peaks[0] < threshold <= peaks.max()
    explorer = segmentation_explorer(seg_data, threshold=threshold, config=FAST)
    summary = explorer.result.summary
    assert explorer.controls["image"].value == defects[np.flatnonzero(peaks >= threshold)[0]]
    assert summary["role"] == "query" and summary["predicted defect area (this image)"] > 0
    explorer.controls["threshold"].value = 1.0  # nothing reaches it: the view is empty, as the user asked
    assert explorer.result.summary["predicted defect area (this image)"] == 0
    highest = segmentation_explorer(seg_data, threshold=1.0, config=FAST)  # none reaches it: the highest map
    assert highest.controls["image"].value == defects[np.argmax(peaks)]


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

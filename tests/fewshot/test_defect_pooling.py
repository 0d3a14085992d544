"""Defect-pooled classification: the pooling equations, their limits, seeding, data without masks, end to end."""
import math

import numpy as np
import pytest
import torch

from semnb.data import load_dataset, write_sem_dataset
from semnb.fewshot.defect_pooling import (
    DefectPooledClassifier,
    defect_contrast,
    defect_weights,
    weighted_pool,
)
from semnb.fewshot.episodes import sample_episode
from semnb.fewshot.evaluate import (
    classify_episode,
    evaluate_classification,
    prepare_fewshot,
    shot_sweep,
)
from semnb.fewshot.segmentation import PatchFeatures
from semnb.models import FeatureCache


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMNB_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = write_sem_dataset(tmp_path_factory.mktemp("pool") / "sem", n_per_class=3, size=64, seed=0,
                             train_good=1, progress=False)
    cache = FeatureCache(tmp_path_factory.mktemp("pool_cache"))
    return prepare_fewshot(load_dataset(root), "classify", "semnb-tiny", image_size=64, cache=cache)


def test_pooling_is_the_weighted_mean_by_hand():
    tokens = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [5.0, -4.0]]])  # one image, 3 patches, 2 dims
    p = torch.tensor([[0.0, 0.5, 1.0]])
    w = defect_weights(p, sharpness=2.0)
    e = [math.exp(0.0), math.exp(1.0), math.exp(2.0)]
    want_w = [x / sum(e) for x in e]
    assert torch.allclose(w, torch.tensor([want_w]))
    want = [sum(wi * t for wi, t in zip(want_w, col)) for col in ([1, 3, 5], [0, 2, -4])]
    assert torch.allclose(weighted_pool([tokens], w)[0], torch.tensor([want]))
    mean = tokens.mean(dim=1)
    assert torch.allclose(defect_contrast([tokens, 2 * tokens], w),
                          torch.cat([torch.tensor([want]) - mean, 2 * (torch.tensor([want]) - mean)], dim=-1))


def test_a_map_on_one_patch_pools_that_patch_and_a_flat_map_gives_zero_contrast():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 9, 5, generator=generator)
    one_hot = torch.zeros(2, 9)
    one_hot[0, 4] = one_hot[1, 7] = 1.0
    exact = weighted_pool([tokens], one_hot)[0]
    assert torch.equal(exact, torch.stack([tokens[0, 4], tokens[1, 7]]))
    # softmax weights of a 0/1 map: the patch's weight is 1 / (1 + 8 e^-80), the others' e^-80 times less
    soft = weighted_pool([tokens], defect_weights(one_hot, sharpness=80.0))[0]
    assert torch.allclose(soft, exact, atol=1e-6)
    flat = defect_weights(torch.full((2, 9), 0.3), sharpness=80.0)
    assert torch.allclose(flat, torch.full((2, 9), 1 / 9))
    assert torch.allclose(defect_contrast([tokens], flat), torch.zeros(2, 5), atol=1e-6)


def test_negative_sharpness_is_refused():
    with pytest.raises(Exception, match="sharpness"):
        defect_weights(torch.zeros(1, 4), sharpness=-1.0)


def _toy_support(seed: int = 0):
    """4 images (2 classes x 2) on a 4 x 4 grid: class 1 has one bright patch its mask marks."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(4, 16, 6, generator=generator) * 0.1
    masks = np.zeros((4, 8, 8), dtype=bool)
    for i, patch in ((2, 5), (3, 10)):
        z[i, patch] += torch.tensor([3.0, -3.0, 0, 0, 0, 0])
        r, c = divmod(patch, 4)
        masks[i, 2 * r:2 * r + 2, 2 * c:2 * c + 2] = True
    return PatchFeatures([z], None, (4, 4), in_joint_space=False), masks, np.array([0, 0, 1, 1])


def test_same_seed_same_probabilities_and_rows_sum_to_one():
    feats, masks, labels = _toy_support()
    a = DefectPooledClassifier().fit(feats, masks, labels, 2, seed=3).predict_proba(feats)
    b = DefectPooledClassifier().fit(feats, masks, labels, 2, seed=3).predict_proba(feats)
    assert np.array_equal(a, b)
    assert np.allclose(a.sum(axis=1), 1.0)


def test_data_without_masks_skips_defect_pooled_with_a_warning(tmp_images):
    root = tmp_images("folders", {"good": 3, "crack": 3, "pit": 3}, size=32)
    (root / "crack" / "001_mask.png").unlink()
    data = prepare_fewshot(load_dataset(root), "classify", "semnb-tiny", image_size=64)
    assert data.masks is None and data.patches is None
    result = evaluate_classification(data, shots=1, seeds=(0,))
    assert list(result.results) == ["semclip", "linear_probe", "prototype"]
    assert any("defect_pooled skipped" in w and "mask" in w for w in result.warnings)
    episode = sample_episode(data.labels, 1, 0, data.class_names)
    with pytest.raises(Exception, match="defect_pooled"):
        classify_episode(data, episode, "defect_pooled")


def test_end_to_end_on_tiny_sem_data(tiny_data):
    assert tiny_data.masks is not None and tiny_data.patches is not None and tiny_data.text  # kept for classify
    episode = sample_episode(tiny_data.labels, 2, 0, tiny_data.class_names)
    proba, timing = classify_episode(tiny_data, episode, "defect_pooled")
    assert proba.shape == (len(episode.queries), len(tiny_data.class_names))
    assert np.all(proba >= 0) and np.allclose(proba.sum(axis=1), 1.0)
    assert timing["fit_s"] > 0
    again, _ = classify_episode(tiny_data, episode, "defect_pooled")
    assert np.array_equal(proba, again)
    result = evaluate_classification(tiny_data, shots=1, seeds=(0, 1))
    assert list(result.results) == ["semnb", "semclip", "linear_probe", "prototype", "defect_pooled"]
    assert 0 <= result.results["defect_pooled"]["accuracy"] <= 1 and "accuracy_std" in result.results["defect_pooled"]
    assert np.sum(result.extra["confusion_matrix"]["defect_pooled"]) == 2 * (len(tiny_data.images) - 7)  # 1 shot x 7
    assert "defect_pooled" in result.extra["settings"]


def test_shot_sweep_on_classify_data_with_masks_still_classifies(tiny_data):
    table = shot_sweep(tiny_data, shots=(1,), seeds=(0,))
    assert table["method"].tolist() == ["semnb", "semclip", "linear_probe", "prototype", "defect_pooled"]
    assert "accuracy" in table.columns

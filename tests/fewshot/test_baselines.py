"""Baselines on toy features: an outlier patch scores highest, coreset, local averaging, probes."""
import numpy as np
import torch

from semnb.components import greedy_coreset, locally_aware, middle_levels, patchcore_features
from semnb.fewshot.baselines import (
    linear_probe_proba,
    memory_rows,
    patchcore_patch_maps,
    prototype_proba,
    winclip_patch_maps,
)

GRID = (4, 4)


def _normal_and_query(seed=0):
    """Three normal support images and two queries; query 1 holds one outlier patch (index 6)."""
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(3, 16, 8, generator=g) * 0.1
    queries = torch.randn(2, 16, 8, generator=g) * 0.1
    queries[1, 6] += torch.tensor([0, 0, 0, 3.0, 0, 0, 0, 0])
    return support, queries


def test_patchcore_scores_the_planted_outlier_patch_highest():
    support, queries = _normal_and_query()
    memory = torch.ones(3, 16, dtype=torch.bool)
    maps = patchcore_patch_maps(queries, support, memory)
    assert maps.shape == (2, 16)
    assert int(maps.argmax()) == 16 + 6
    # with half the memory (greedy coreset) the outlier still stands out
    assert int(patchcore_patch_maps(queries, support, memory, coreset_fraction=0.5).argmax()) == 16 + 6


def test_winclip_visual_map_finds_the_outlier_and_mixes_text_half_and_half():
    support, queries = _normal_and_query()
    support = support + torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])  # a common direction, so cosine is meaningful
    queries = queries + torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    memory = torch.ones(3, 16, dtype=torch.bool)
    visual = winclip_patch_maps([queries], [support], memory)
    assert int(visual.argmax()) == 16 + 6
    text = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    mixed = winclip_patch_maps([queries], [support], memory, text, logit_scale=10.0)
    zero_shot = (10.0 * torch.nn.functional.normalize(queries, dim=-1)
                 @ torch.nn.functional.normalize(text, dim=-1).T).softmax(-1)[..., 1]
    np.testing.assert_allclose(mixed.numpy(), ((visual + zero_shot) / 2).numpy(), atol=1e-6)


def test_memory_holds_normal_images_or_else_the_unmasked_patches():
    coverage = torch.zeros(2, 4)
    coverage[1, 2] = 0.3
    assert memory_rows(coverage, np.array([True, False])).tolist() == [[True] * 4, [False] * 4]
    assert memory_rows(coverage, np.array([False, False])).tolist() == [[True] * 4, [True, True, False, True]]


def test_greedy_coreset_keeps_the_far_point_and_distinct_rows():
    points = torch.zeros(50, 3)
    points[:, 0] = torch.linspace(0, 1, 50)
    points[17] = torch.tensor([0.5, 20.0, 0.0])
    chosen = greedy_coreset(points, 5, seed=0)
    assert len(set(chosen.tolist())) == 5 and 17 in chosen.tolist()


def test_locally_aware_is_the_mean_over_the_existing_3x3_neighbours():
    tokens = torch.arange(16, dtype=torch.float32).reshape(1, 16, 1)
    pooled = locally_aware(tokens, GRID).reshape(4, 4)
    grid = np.arange(16, dtype=float).reshape(4, 4)
    assert float(pooled[1, 1]) == grid[0:3, 0:3].mean()
    assert float(pooled[0, 0]) == grid[0:2, 0:2].mean()
    assert patchcore_features([tokens, tokens * 2, tokens], GRID).shape == (1, 16, 1)  # middle level only
    assert middle_levels(4) == [1, 2] and middle_levels(1) == [0]


def test_linear_probe_and_prototype_separate_separable_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 6) * 4
    support_labels = np.repeat(np.arange(3), 3)
    query_labels = np.repeat(np.arange(3), 5)
    support = centres[support_labels] + torch.randn(9, 6, generator=g) * 0.5 + 1.0
    queries = centres[query_labels] + torch.randn(15, 6, generator=g) * 0.5 + 1.0
    for proba in (linear_probe_proba(support, support_labels, queries, 4),
                  prototype_proba(support, support_labels, queries, 4)):
        assert proba.shape == (15, 4) and np.allclose(proba[:, 3], 0)  # class 3 has no support: never predicted
        assert (proba.argmax(axis=1) == query_labels).mean() == 1.0

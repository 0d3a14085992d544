"""Baselines on toy features: an outlier patch scores highest, coreset, local averaging, probes."""
import numpy as np
import torch

from semnb.components import greedy_coreset, locally_aware, middle_levels, patchcore_features
from semnb.fewshot.baselines import (
    CLIP_LOGIT_SCALE,
    harmonic_patch_map,
    linear_probe_proba,
    mean_patch_map,
    memory_rows,
    nearest_upsample_and_smooth,
    nn_visual_patch_maps,
    patchcore_embedding,
    patchcore_memory,
    patchcore_patch_maps,
    prototype_proba,
    reweighted_image_scores,
    winclip_plus,
)
from semnb.models.dual_path import window_indices

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
    maps = patchcore_patch_maps(queries, patchcore_memory(support, memory, coreset_fraction=1.0))
    assert maps.shape == (2, 16)
    assert int(maps.argmax()) == 16 + 6
    # with PatchCore's 10 % coreset (5 of 48 patches) the outlier still stands out
    bank = patchcore_memory(support, memory, seed=0)
    assert bank.shape == (5, 8) and int(patchcore_patch_maps(queries, bank).argmax()) == 16 + 6


def test_patchcore_image_score_is_eq7_on_a_hand_computed_case():
    """Memory {0, 1, 3} on a line, b = 2; the query's worst patch is 5: s* = 2, m* = 3, N_b(m*) = {3, 1}.

    s = (1 - e^|5-3| / (e^|5-3| + e^|5-1|)) * 2 = 2 e^2 / (1 + e^2)."""
    bank = torch.tensor([[0.0], [1.0], [3.0]])
    query = torch.tensor([[[0.5], [5.0]]])
    distances = patchcore_patch_maps(query, bank)
    np.testing.assert_allclose(distances.numpy(), [[0.5, 2.0]])
    score = reweighted_image_scores(query, distances, bank, neighbours=2)
    np.testing.assert_allclose(score.numpy(), [2 * np.e ** 2 / (1 + np.e ** 2)], rtol=1e-6)


def test_patchcore_embedding_is_a_zero_padded_3x3_mean_of_the_two_middle_levels():
    tokens = torch.arange(16, dtype=torch.float32).reshape(1, 16, 1)
    emb = patchcore_embedding([tokens * 100, tokens, tokens * 2, tokens * 100], GRID)
    assert emb.shape == (1, 16, 2)
    grid = np.arange(16, dtype=float).reshape(4, 4)
    np.testing.assert_allclose(float(emb[0, 5, 0]), grid[0:3, 0:3].mean(), rtol=1e-6)
    np.testing.assert_allclose(float(emb[0, 0, 0]), grid[0:2, 0:2].sum() / 9, rtol=1e-6)  # zeros outside count
    np.testing.assert_allclose(emb[..., 1].numpy(), 2 * emb[..., 0].numpy(), rtol=1e-6)


def test_patchcore_map_is_upsampled_by_nearest_neighbour():
    maps = torch.arange(4, dtype=torch.float32).reshape(1, 4)
    full = nearest_upsample_and_smooth(maps, (2, 2), 4, sigma=0)
    np.testing.assert_array_equal(full[0].numpy(), [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])


def test_nn_visual_map_finds_the_outlier_and_mixes_text_half_and_half():
    support, queries = _normal_and_query()
    support = support + torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])  # a common direction, so cosine is meaningful
    queries = queries + torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    memory = torch.ones(3, 16, dtype=torch.bool)
    visual = nn_visual_patch_maps([queries], [support], memory)
    assert int(visual.argmax()) == 16 + 6
    text = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    mixed = nn_visual_patch_maps([queries], [support], memory, text, logit_scale=10.0)
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


def test_winclip_harmonic_and_mean_aggregation_over_the_windows_holding_a_patch():
    indices = torch.tensor([[0, 1], [1, 2]])  # two windows on three patches; patch 1 is in both
    scores = torch.tensor([[0.5, 0.25]])
    np.testing.assert_allclose(harmonic_patch_map(scores, indices, 3).numpy(), [[0.5, 2 / (2 + 4), 0.25]], rtol=1e-6)
    np.testing.assert_allclose(mean_patch_map(scores, indices, 3).numpy(), [[0.5, 0.375, 0.25]], rtol=1e-6)


def test_winclip_plus_averages_zero_shot_and_few_shot_and_scores_by_eq_of_the_paper():
    g = torch.Generator().manual_seed(0)
    grid = (3, 3)
    query = {2: torch.randn(2, 4, 8, generator=g)}
    normal = {2: torch.randn(3, 4, 8, generator=g)}
    text, emb = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    maps, scores = winclip_plus(query, normal, emb, text, grid)
    unit = torch.nn.functional.normalize
    zero = (CLIP_LOGIT_SCALE * unit(query[2], dim=-1) @ unit(text, dim=-1).T).softmax(-1)[..., 1]
    far = (1 - (unit(query[2], dim=-1) @ unit(normal[2].reshape(-1, 8), dim=-1).T).amax(-1)) / 2
    idx = window_indices(grid, 2)
    few = mean_patch_map(far, idx, 9)
    np.testing.assert_allclose(maps.numpy(), ((harmonic_patch_map(zero, idx, 9) + few) / 2).numpy(), rtol=1e-5)
    image_zero = (CLIP_LOGIT_SCALE * unit(emb, dim=-1) @ unit(text, dim=-1).T).softmax(-1)[:, 1]
    np.testing.assert_allclose(scores.numpy(), ((image_zero + few.amax(1)) / 2).numpy(), rtol=1e-5)

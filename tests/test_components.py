"""semnb.components on the inputs' device: explicit placement (implicit_device_is_meta), the same numbers."""
import torch

from semnb.components import (
    greedy_coreset,
    image_scores,
    nearest_distance,
    patchcore_features,
    upsample_and_smooth,
)

GRID, SIZE = (4, 4), 32


def test_components_compute_on_the_inputs_device_with_the_same_numbers(implicit_device_is_meta):
    g = torch.Generator().manual_seed(0)
    features, patches = torch.randn(300, 200, generator=g), torch.randn(3, 16, 8, generator=g)
    expected = (greedy_coreset(features, 20, seed=2), nearest_distance(features[:50], features[50:]),
                upsample_and_smooth(features[:3, :16], GRID, SIZE), patchcore_features([patches] * 3, GRID))
    with implicit_device_is_meta():
        maps = upsample_and_smooth(features[:3, :16], GRID, SIZE)
        got = (greedy_coreset(features, 20, seed=2), nearest_distance(features[:50], features[50:]), maps,
               patchcore_features([patches] * 3, GRID))
        scores = image_scores(maps)
    for a, b in zip(got, expected):
        assert a.device.type == "cpu"
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert scores.shape == (3,) and got[0].dtype == torch.long and len(set(got[0].tolist())) == 20


def test_greedy_coreset_picks_the_rows_it_picked_before_device_support():
    """The same seed, the same rows (values recorded before the projection and the first row were drawn on the CPU)."""
    features = torch.randn(300, 200, generator=torch.Generator().manual_seed(0))
    assert greedy_coreset(features, 8, seed=2).tolist() == [277, 202, 58, 99, 175, 48, 6, 3]  # projected (d > 128)
    assert greedy_coreset(features[:, :64], 8, seed=5).tolist() == [11, 83, 293, 90, 66, 188, 162, 37]

"""The opt-in augmentation of pyramid levels: seeded, sane, independent per level; off by default."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from semnb.clustering.ssl import (
    SSLConfig,
    augment_level,
    augment_pyramid,
    augmentation_generator,
    build_pyramid,
    embed,
    train_ssl,
)
from tests.clustering.ssl_images import stripes_and_dots


def _corner_square(n: int, size: int = 64) -> torch.Tensor:
    """n copies of a dark image with a bright square in the top-left quadrant: where it lands shows the geometry."""
    x = torch.zeros(n, 1, size, size)
    x[:, :, size // 8:size // 8 + size // 4, size // 8:size // 8 + size // 4] = 1.0
    return x


def _centroid(x: torch.Tensor) -> torch.Tensor:
    """Brightness-weighted centre [B, 2] in fractions of the side, background (median) removed."""
    w = (x[:, 0] - x[:, 0].flatten(1).median(1).values[:, None, None]).clamp(min=0)
    size = x.shape[-1]
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    total = w.sum((1, 2))
    return torch.stack([(w.sum(2) * coords).sum(1) / total, (w.sum(1) * coords).sum(1) / total], 1)


def test_augmentation_is_deterministic_for_a_seed_and_differs_between_seeds():
    levels = build_pyramid(torch.from_numpy(stripes_and_dots(6, 64))[:, None])
    a, b, c = (augment_pyramid(levels, augmentation_generator(s)) for s in (5, 5, 6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(not torch.allclose(x, y) for x, y in zip(a, c))


def test_augmentation_keeps_shapes_and_range_and_changes_every_image_differently():
    levels = build_pyramid(torch.from_numpy(stripes_and_dots(8, 64))[:, None])
    views = augment_pyramid(levels, augmentation_generator(0))
    for level, view in zip(levels, views):
        assert view.shape == level.shape and view.dtype == torch.float32
        assert torch.isfinite(view).all() and view.min() >= 0 and view.max() <= 1
        assert (view - level).abs().mean() > 0.01  # it did something
    # Identical input images still get different views: the draws are per image.
    same = _corner_square(4)
    view = augment_level(same, augmentation_generator(1))
    assert all(not torch.allclose(view[0], view[i]) for i in range(1, 4))


def test_each_level_of_an_image_gets_its_own_crop_and_turn():
    levels = build_pyramid(_corner_square(32))
    views = augment_pyramid(levels, augmentation_generator(2))
    moved = (_centroid(views[0]) - _centroid(views[1])).norm(dim=1)
    assert (moved > 0.15).float().mean() > 0.5  # the square lands elsewhere in L0 and L1 for most images
    # Control (the measure can fail): the same draws for both levels put the square in the same place.
    same = [augment_level(level, augmentation_generator(2)) for level in levels[:2]]
    assert (_centroid(same[0]) - _centroid(same[1])).norm(dim=1).max() < 0.1


def test_augmentation_is_off_by_default_and_then_training_is_unchanged():
    assert SSLConfig().augment_levels is False
    assert {f.name: f.default for f in dataclasses.fields(SSLConfig)}["augment_levels"] is False
    images = stripes_and_dots(12)
    default = train_ssl(images, SSLConfig(epochs=2, batch_size=5, seed=3, threads=1), progress=False)
    off = train_ssl(images, SSLConfig(epochs=2, batch_size=5, seed=3, threads=1, augment_levels=False),
                    progress=False)
    assert default.history.loss == off.history.loss
    assert default.history.std_projection == off.history.std_projection
    assert np.array_equal(embed(default.model, images), embed(off.model, images))
    on = train_ssl(images, SSLConfig(epochs=2, batch_size=5, seed=3, threads=1, augment_levels=True), progress=False)
    assert on.history.loss != off.history.loss  # the switch does reach training


def test_training_with_augmentation_is_finite_deterministic_and_embeds_unaugmented():
    images = stripes_and_dots(12)
    config = SSLConfig(epochs=2, batch_size=6, seed=1, threads=1, augment_levels=True)
    runs = [train_ssl(images, config, progress=False) for _ in range(2)]
    assert np.isfinite(runs[0].history.loss).all() and len(runs[0].history.loss) == 2
    assert runs[0].history.loss == runs[1].history.loss
    first, second = (embed(run.model, images) for run in runs)
    assert np.array_equal(first, second)
    with torch.inference_mode():  # the clustering embedding is the encoder on the plain images
        plain = runs[0].model.encoder(torch.from_numpy(images)[:, None]).numpy()
    np.testing.assert_allclose(first, plain, atol=1e-5)

"""semnb's `ssl` mode: defect-region weights, the ImageNet tail, lightly's VICReg against its paper, training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from semnb.clustering.ssl_imagenet import (
    TRUNK_BLOCKS,
    FinetuneConfig,
    Tail,
    embed_finetuned,
    feature_views,
    pooling_weights,
    train_finetune,
    trunk_features,
)
from semnb.errors import SemnbInputError


def _stripes_with_a_blob(n: int = 4, size: int = 128) -> np.ndarray:
    """Periodic stripes (a repeating background), each image with one bright square at a different place."""
    yy, xx = np.mgrid[:size, :size]
    images = []
    for i in range(n):
        image = 0.3 + 0.2 * np.sin(2 * np.pi * xx / 8)
        top, left = (40, 40 + 32 * (i % 2)) if i < 2 else (72, 40 + 32 * (i % 2))
        image[top + 4:top + 12, left + 4:left + 12] = 1.0
        images.append(image)
    return np.asarray(images, dtype=np.float32)


def test_pooling_weights_are_the_softmax_of_the_standardised_scores():
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    w = pooling_weights(scores, (2, 2), (2, 2))
    z = (scores - scores.mean()) / scores.std(correction=0)
    expected = torch.exp(z) / torch.exp(z).sum()
    torch.testing.assert_close(w.flatten(), expected.flatten())
    assert w.sum().item() == pytest.approx(1.0) and w.flatten().argmax().item() == 3
    assert pooling_weights(scores, (2, 2), (1, 1)).item() == pytest.approx(1.0)  # one cell: all the weight, no NaN


def test_vicreg_loss_is_the_papers_equation():
    """Bardes et al. 2022, eq. 1-6: 25 * invariance + 25 * variance + 1 * covariance (lightly's defaults)."""
    from lightly.loss import VICRegLoss

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen)

    def variance(x):
        return torch.relu(1 - torch.sqrt(x.var(dim=0) + 1e-4)).mean()

    def covariance(x):
        x = x - x.mean(dim=0)
        cov = x.T @ x / (len(x) - 1)
        return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / x.shape[1]

    expected = (25 * ((a - b) ** 2).mean() + 25 * (variance(a) + variance(b)) / 2
                + (covariance(a) + covariance(b)))
    torch.testing.assert_close(VICRegLoss()(a, b), expected)


def test_tail_at_imagenet_weights_continues_the_backbone_exactly():
    from semnb.models.efficientnet import create_efficientnet_lite0

    net, _ = create_efficientnet_lite0()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        h = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks[:TRUNK_BLOCKS]:
            h = block(h)
        split = Tail().eval()(h)
        whole = net.extract_features(x)
    torch.testing.assert_close(split, whole)


def test_trunk_weights_sit_on_the_planted_defect_and_bad_sizes_name_the_option():
    images = _stripes_with_a_blob()
    trunk = trunk_features(images, device="cpu", precision="fp32")
    assert trunk.maps.shape == (4, 192, 4, 4) and trunk.weights.shape == (4, 1, 4, 4)
    torch.testing.assert_close(trunk.weights.sum(dim=(1, 2, 3)), torch.ones(4))
    for i in range(4):  # the blob's cell of the 4 x 4 stride-32 grid gets the most weight
        top, left = (40, 40 + 32 * (i % 2)) if i < 2 else (72, 40 + 32 * (i % 2))
        assert int(trunk.peaks[i]) == ((top + 8) // 32) * 4 + (left + 8) // 32
    with pytest.raises(SemnbInputError, match="--image-size"):
        trunk_features(images[:, :112, :112], device="cpu")


def test_views_are_seeded_crops_and_training_is_reproducible():
    images = np.concatenate([_stripes_with_a_blob(), 1 - _stripes_with_a_blob()])
    trunk = trunk_features(images, device="cpu", precision="fp32")
    a = feature_views(trunk.maps, trunk.peaks, torch.Generator().manual_seed(1))
    b = feature_views(trunk.maps, trunk.peaks, torch.Generator().manual_seed(1))
    assert a.shape == (8, 192, 3, 3)
    torch.testing.assert_close(a, b)
    config = FinetuneConfig(epochs=2, batch_size=4, seed=3, threads=1, device="cpu", precision="fp32")
    first, second = train_finetune(trunk, config), train_finetune(trunk, config)
    assert len(first.history.loss) == 2 and first.history.images_per_second > 0
    np.testing.assert_array_equal(embed_finetuned(first.tail, trunk, device="cpu"),
                                  embed_finetuned(second.tail, trunk, device="cpu"))
    untrained = embed_finetuned(Tail(), trunk, device="cpu")
    assert untrained.shape == (8, 1280) and not np.allclose(untrained, embed_finetuned(first.tail, trunk, device="cpu"))


def test_trunk_reads_large_images_at_the_working_size(monkeypatch):
    """Above WORKING_SIZE the trunk sees the image resized to it: the same maps as the images resized beforehand."""
    from semnb.clustering import ssl_imagenet
    from semnb.models.pixels import resize_gray

    images = _stripes_with_a_blob(n=2)
    monkeypatch.setattr(ssl_imagenet, "WORKING_SIZE", 64)
    large = trunk_features(images, device="cpu", precision="fp32")
    small = trunk_features(resize_gray(images, 64)[:, 0].numpy(), device="cpu", precision="fp32")
    assert large.maps.shape == (2, 192, 2, 2) and large.weights.shape == (2, 1, 2, 2)
    torch.testing.assert_close(large.maps, small.maps)
    torch.testing.assert_close(large.weights, small.weights)
    monkeypatch.setattr(ssl_imagenet, "WORKING_SIZE", 128)
    assert trunk_features(images, device="cpu", precision="fp32").maps.shape == (2, 192, 4, 4)

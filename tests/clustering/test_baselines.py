"""Baseline descriptors: GLCM, LBP, wavelet energies, raw-pixel PCA, frozen-network embeddings."""
from __future__ import annotations

import numpy as np
import pytest
import pywt
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

from semnb.clustering.baselines import (
    GLCM_ANGLES,
    GLCM_DISTANCES,
    GLCM_PROPERTIES,
    backbone_features,
    glcm_features,
    lbp_histograms,
    pca_features,
    quantize,
    wavelet_energies,
)
from semnb.errors import SemnbInputError


def _images(n: int = 6, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size)).astype(np.float32)


def test_glcm_features_equal_graycoprops_averaged_over_angles():
    image = _images(1)[0]
    levels = 64
    q = np.minimum((image * levels).astype(int), levels - 1).astype(np.uint8)  # independent quantisation
    matrix = graycomatrix(q, distances=list(GLCM_DISTANCES), angles=list(GLCM_ANGLES), levels=levels,
                          symmetric=True, normed=True)
    expected = np.concatenate([graycoprops(matrix, prop).mean(axis=1) for prop in GLCM_PROPERTIES])
    got = glcm_features(image[None])
    assert got.shape == (1, 5 * len(GLCM_DISTANCES))
    np.testing.assert_allclose(got[0], expected, rtol=1e-5)


def test_glcm_tells_smooth_from_rough_and_survives_a_flat_image():
    rough = _images(1)[0]
    smooth = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    flat = np.full((32, 32), 0.5, np.float32)
    features = glcm_features(np.stack([rough, smooth, flat]))
    contrast = features[:, 0]  # property-major: the first len(distances) columns are contrast
    assert contrast[0] > 10 * contrast[1] and contrast[2] == 0
    assert np.isfinite(features).all()


def test_lbp_histogram_matches_skimage_and_sums_to_one():
    images = _images(3)
    got = lbp_histograms(images)
    assert got.shape == (3, 10)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
    codes = local_binary_pattern(quantize(images[1], 256), 8, 1, method="uniform")
    np.testing.assert_allclose(got[1], np.bincount(codes.astype(int).ravel(), minlength=10) / codes.size, atol=1e-7)
    flat = lbp_histograms(np.full((1, 16, 16), 0.3, np.float32))
    assert flat[0].argmax() == 8  # inside a flat image every neighbour >= centre: the all-ones code


def test_wavelet_energies_are_per_band_mean_squares_and_keep_the_total_energy():
    image = _images(1)[0]
    got = wavelet_energies(image[None])
    assert got.shape == (1, 7)
    coeffs = pywt.wavedec2(image.astype(float), "haar", level=2)
    bands = [coeffs[0], *coeffs[1], *coeffs[2]]
    np.testing.assert_allclose(got[0], [np.mean(b**2) for b in bands], rtol=1e-5)
    # Haar is orthonormal: band energies times band sizes add up to the image's energy (Parseval).
    total = sum(e * b.size for e, b in zip(got[0], bands))
    assert total == pytest.approx(float(np.sum(image.astype(float) ** 2)), rel=1e-5)


def test_pca_features_are_seeded_and_capped_by_the_number_of_images():
    images = _images(10, 16)
    a, b = pca_features(images, seed=0), pca_features(images, seed=0)
    assert a.shape == (10, 10)
    np.testing.assert_array_equal(a, b)
    variances = a.var(axis=0)
    assert np.all(np.diff(variances) <= 1e-6)  # components come in order of variance
    assert pca_features(_images(200, 16), n_components=128).shape == (200, 128)


def test_backbone_features_are_the_backbones_image_embedding():
    from semnb.models import load_backbone

    backbone = load_backbone("semnb-tiny", image_size=64)
    images = _images(3, 64)
    got = backbone_features(images, backbone, batch_size=2)
    assert got.shape == (3, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, backbone.encode_image(images).numpy(), atol=1e-5)


def test_bad_images_raise_a_clear_error():
    with pytest.raises(SemnbInputError, match="pixels"):
        glcm_features(np.zeros((32, 32)))
    with pytest.raises(SemnbInputError, match="pixels"):
        lbp_histograms(np.zeros((0, 32, 32)))

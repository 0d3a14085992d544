"""Baseline image descriptors for clustering: classical texture features and frozen networks.

The SSL paper measures its embedding against GLCM, LBP, wavelet-energy and raw-pixel PCA
features put through the same k-means; we add two stronger references, a frozen ImageNet
CNN and CLIP image embeddings. Every extractor takes preprocessed gray images [N, S, S] in
[0, 1] (`semnb.clustering.ssl.prepare_images`) and returns float32 features [N, D]. The texture code is
scikit-image's and PyWavelets', not hand-written, and runs on the CPU (numpy); only the frozen
networks compute on a device (the backbone's, see `semnb.models.load_backbone`).

Taught in: 06_ssl_clustering.
"""
from __future__ import annotations

import numpy as np
import pywt
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern
from sklearn.decomposition import PCA
from tqdm.auto import tqdm

from semnb.errors import SemnbInputError
from semnb.hardware import run_in_batches

GLCM_PROPERTIES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
GLCM_DISTANCES = (1, 2, 4)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_LEVELS = 64
LBP_POINTS = 8
LBP_RADIUS = 1
WAVELET = "haar"
WAVELET_LEVELS = 2
PCA_COMPONENTS = 128


def quantize(image: np.ndarray, levels: int) -> np.ndarray:
    """A [0, 1] image as integer gray levels 0 .. levels-1 (uint8), as GLCM and LBP want."""
    return np.minimum((np.clip(image, 0.0, 1.0) * levels).astype(np.int64), levels - 1).astype(np.uint8)


def glcm_features(pixels: np.ndarray, distances=GLCM_DISTANCES, angles=GLCM_ANGLES, levels: int = GLCM_LEVELS,
                  progress: bool = False) -> np.ndarray:
    """Haralick-style GLCM properties: contrast, dissimilarity, homogeneity, energy, correlation.

    One symmetric, normalised co-occurrence matrix per distance and angle (skimage
    `graycomatrix`) on the image quantised to `levels` gray levels; each property is averaged
    over the angles (orientation should not decide a defect's class), giving
    5 x len(distances) features (15 by default), ordered property-major.

    Taught in: 06_ssl_clustering.
    """
    pixels = _check_images(pixels)
    rows = []
    for image in tqdm(pixels, desc="glcm", disable=not progress):
        matrix = graycomatrix(quantize(image, levels), distances=list(distances), angles=list(angles),
                              levels=levels, symmetric=True, normed=True)
        rows.append(np.concatenate([graycoprops(matrix, prop).mean(axis=1) for prop in GLCM_PROPERTIES]))
    return np.nan_to_num(np.asarray(rows, dtype=np.float32))  # correlation is NaN on a flat image


def lbp_histograms(pixels: np.ndarray, n_points: int = LBP_POINTS, radius: float = LBP_RADIUS,
                   progress: bool = False) -> np.ndarray:
    """Histogram of uniform local binary patterns (8 neighbours at radius 1): n_points + 2 bins, summing to 1.

    "uniform" (rotation-invariant uniform patterns, skimage's method) folds the 256 raw codes
    into 10: one per count of bright neighbours on a uniform ring, plus one for all others.

    Taught in: 06_ssl_clustering.
    """
    pixels = _check_images(pixels)
    bins = n_points + 2
    rows = []
    for image in tqdm(pixels, desc="lbp", disable=not progress):
        codes = local_binary_pattern(quantize(image, 256), n_points, radius, method="uniform")
        rows.append(np.bincount(codes.astype(np.int64).ravel(), minlength=bins)[:bins] / codes.size)
    return np.asarray(rows, dtype=np.float32)


def wavelet_energies(pixels: np.ndarray, wavelet: str = WAVELET, levels: int = WAVELET_LEVELS,
                     progress: bool = False) -> np.ndarray:
    """Mean squared coefficient of every sub-band of a `levels`-level 2-D wavelet transform.

    Order: approximation, then (horizontal, vertical, diagonal) detail from coarsest to finest:
    1 + 3 x levels features (7 by default).

    Taught in: 06_ssl_clustering.
    """
    pixels = _check_images(pixels)
    rows = []
    for image in tqdm(pixels, desc="wavelet", disable=not progress):
        coeffs = pywt.wavedec2(image.astype(np.float64), wavelet, level=levels)
        bands = [coeffs[0]] + [band for detail in coeffs[1:] for band in detail]
        rows.append([np.mean(np.square(band)) for band in bands])
    return np.asarray(rows, dtype=np.float32)


def pca_features(pixels: np.ndarray, n_components: int = PCA_COMPONENTS, seed: int = 0) -> np.ndarray:
    """Raw pixels projected on their first principal components (at most `n_components`, N and S*S).

    Fitted on the images it transforms (clustering is transductive; no labels are used).

    Taught in: 06_ssl_clustering.
    """
    pixels = _check_images(pixels)
    flat = pixels.reshape(len(pixels), -1)
    components = min(n_components, *flat.shape)
    return PCA(n_components=components, random_state=seed).fit_transform(flat).astype(np.float32)


def backbone_features(pixels: np.ndarray, backbone, batch_size: int = 16, progress: bool = False) -> np.ndarray:
    """Frozen-network embeddings (`backbone.encode_image`, from `semnb.models.load_backbone`).

    With `efficientnet-lite0` this is the pooled 1280-d ImageNet feature; with a CLIP backbone
    it is CLIP's image embedding. The backbone resizes and normalises the gray images itself
    and computes on its own device; a batch that does not fit there is halved and retried.

    Taught in: 06_ssl_clustering.
    """
    pixels = _check_images(pixels)
    batches = run_in_batches(backbone.encode_image, pixels, batch_size, "image")
    parts = [part.numpy() for part in tqdm(batches, desc=f"encode {backbone.name}",
                                           total=-(-len(pixels) // batch_size), disable=not progress)]
    return np.concatenate(parts).astype(np.float32)


def _check_images(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 3 or len(pixels) == 0 or min(pixels.shape[1:]) < 4:
        raise SemnbInputError("pixels", f"has shape {pixels.shape}",
                              "pass preprocessed gray images [N, H, W] (semnb.clustering.ssl.prepare_images makes them)")
    return pixels

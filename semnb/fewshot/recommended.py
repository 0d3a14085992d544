"""`semnb`: the recommended few-shot segmenter and classifier, built from the parts that measurably work.

Segmentation, for every query image:
1. the supervised map p_n in [0, 1]: SEM-CLIP's A divided by its number of terms (the segmenter
   trained on the support's masks; it knows what the support's defects look like);
2. the normal-memory map q_n in [0, 1]: PatchCore's nearest-memory distance d_n (coreset of the
   defect-free support patches), calibrated on the support by a one-feature logistic regression,
   q = sigmoid(a d + b), fitted on the distances of defect patches (mask coverage >= 0.5, or the
   most covered patches where no patch is half covered) against
   the leave-one-image-out distances of the defect-free support images' patches (what a normal
   patch the memory has not seen scores); it finds defects unlike any support defect;
3. the defect map m = sqrt(p q), upsampled and smoothed like SEM-CLIP's (sigma 4 px): a pixel
   is a defect where both agree; on magnetic tiles (10 shots, seed 0) this beat p alone, q alone,
   (p + q) / 2, max(p, q) and 1 - (1 - p)(1 - q) on pixel AUROC and AUPRO;
4. the image score: the mean of the top 1 % of m (continuous where SEM-CLIP's saturated A ties).

Classification: defect_pooled's defect contrast (semnb.fewshot.defect_pooling), pooled by the
supervised map p of the segmenter above (the support: by its true masks), classified by a
logistic regression, times a normal-vs-defect gate: P(defect) from PatchCore's eq. 7 image score,
calibrated on the support (defect-free support images scored leave-one-out against the others),
P(c) proportional to P_probe(c) P(defect) for defect classes and P_probe(normal) (1 - P(defect)).
Measured and dropped: a crop of the detected defect cut at full resolution and encoded again
(synthetic SEM, 5 shots, seed 0: accuracy 0.23 to 0.25 for crops of 12 to 25 % of the side,
against 0.52 for the pooled contrast: the crop's pooled embedding still reads the background
pattern); pooling by the combined map m instead of p (0.49 against 0.52, seeds 0 and 1).

Why these choices: measured on the developers' data (../shared/data/magnetic_tile, synthetic SEM
seeds 0 and 1); the figures are in the closing note of issue 17 and in 04_segmentation /
05_classification.

Taught in: 04_segmentation and 05_classification.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from semnb.components import image_scores, upsample_and_smooth
from semnb.errors import SemnbInputError
from semnb.fewshot import baselines
from semnb.fewshot.defect_pooling import defect_contrast, defect_weights
from semnb.fewshot.segmentation import (
    PatchFeatures,
    SegmentationConfig,
    SegmentationOutput,
    SemClipSegmenter,
    mask_coverage,
)
from semnb.hardware import Compute

DEFECT_COVERAGE = 0.5  # a support patch this much inside a mask is a defect patch for the calibration (or the most covered)


@dataclass(frozen=True)
class SemnbSegmentConfig:
    """Every knob of the `semnb` segmenter: SEM-CLIP's settings, PatchCore's coreset, the map's smoothing and score.

    Taught in: 04_segmentation.
    """

    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    coreset_fraction: float = baselines.PATCHCORE_CORESET


def calibrate_distances(normal: torch.Tensor, defect: torch.Tensor) -> tuple[float, float]:
    """(a, b) of q = sigmoid(a d + b): a class-balanced logistic regression of defect on distance d.

    Taught in: 04_segmentation.
    """
    if len(normal) == 0 or len(defect) == 0:
        raise SemnbInputError("support", "lacks defect-free or defect patches to calibrate the memory map",
                              "include defect-free and defect images (with masks) in the support")
    x = torch.cat([normal, defect]).float().cpu().numpy()[:, None]
    y = np.r_[np.zeros(len(normal)), np.ones(len(defect))]
    fit = LogisticRegression(class_weight="balanced").fit(x, y)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def leave_one_out_distances(features: torch.Tensor) -> torch.Tensor:
    """Distance of each patch of K images [K, N, D] to the nearest patch of the other K - 1 images: [K * N].

    Taught in: 04_segmentation.
    """
    k, n, d = features.shape
    if k < 2:
        raise SemnbInputError("support", "holds one defect-free image", "use 2 shots or more (the normal class too)")
    out = [baselines.patchcore_patch_maps(features[i:i + 1], features[torch.arange(k, device=features.device) != i]
                                          .reshape(-1, d)).reshape(-1) for i in range(k)]
    return torch.cat(out)


class SemnbSegmenter:
    """The recommended segmenter: the geometric mean of SEM-CLIP's supervised map and PatchCore's calibrated memory map.

    Taught in: 04_segmentation.
    """

    def __init__(self, config: SemnbSegmentConfig | None = None, device: str | torch.device | Compute = "auto",
                 precision: str = "auto"):
        self.config = config or SemnbSegmentConfig()
        self.compute = Compute.resolve(device, precision)
        self.semclip: SemClipSegmenter | None = None
        self.bank: torch.Tensor | None = None
        self.calibration = (1.0, 0.0)

    def fit(self, support: PatchFeatures, patchcore_features: torch.Tensor, masks: np.ndarray,
            is_normal: Sequence[bool] | np.ndarray, text: torch.Tensor | None = None, seed: int = 0) -> SemnbSegmenter:
        """Train SEM-CLIP's layer on the support masks [K, S, S], keep the coreset memory, calibrate its distances.

        `patchcore_features` [K, N, D]: `baselines.patchcore_embedding` of the support images.

        Taught in: 04_segmentation.
        """
        is_normal = np.asarray(is_normal, dtype=bool)
        self.semclip = SemClipSegmenter(self.config.segmentation, self.compute).fit(support, masks, text, seed=seed)
        features = self.compute.to(patchcore_features.float())
        coverage = self.compute.to(mask_coverage(masks, support.grid).reshape(len(features), -1))
        memory = baselines.memory_rows(coverage, is_normal)
        self.bank = baselines.patchcore_memory(features, memory, self.config.coreset_fraction, seed)
        normal = (leave_one_out_distances(features[torch.as_tensor(is_normal, device=features.device)])
                  if is_normal.sum() >= 2 else baselines.patchcore_patch_maps(features, self.bank)[coverage <= 0])
        inside = coverage >= min(DEFECT_COVERAGE, float(coverage.max()))  # small defects: the most covered patches
        defect = baselines.patchcore_patch_maps(features, self.bank)[inside & (coverage > 0)]
        self.calibration = calibrate_distances(normal, defect)
        return self

    @torch.no_grad()
    def patch_maps(self, feats: PatchFeatures, patchcore_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """The patch-grid maps [B, N]: "supervised" p, "memory" q, and "map" sqrt(p q), on the device.

        Taught in: 04_segmentation.
        """
        if self.semclip is None or self.bank is None:
            raise SemnbInputError("SemnbSegmenter", "is not fitted", "call fit(...) on the support first")
        p = sum(self.semclip.patch_maps(feats).values()) / self.semclip.num_terms(feats)
        a, b = self.calibration
        d = baselines.patchcore_patch_maps(self.compute.to(patchcore_features.float()), self.bank)
        q = torch.sigmoid(a * d + b)
        return {"supervised": p, "memory": q, "map": (p * q).sqrt()}

    @torch.no_grad()
    def predict(self, feats: PatchFeatures, patchcore_features: torch.Tensor, image_size: int) -> SegmentationOutput:
        """Smoothed maps [B, S, S] and image scores [B] (CPU float32 arrays), with the patch maps.

        Taught in: 04_segmentation.
        """
        parts = self.patch_maps(feats, patchcore_features)
        cfg = self.config.segmentation
        maps = upsample_and_smooth(parts["map"], feats.grid, image_size, cfg.sigma)
        return SegmentationOutput(maps=maps.cpu().numpy(), scores=image_scores(maps, cfg.top_fraction).cpu().numpy(),
                                  patch_maps={k: v.reshape(-1, *feats.grid).cpu().numpy() for k, v in parts.items()})


@dataclass(frozen=True)
class SemnbClassifyConfig:
    """Every knob of the `semnb` classifier: its segmenter and the pooling sharpness beta (defect_pooled's).

    Taught in: 05_classification.
    """

    segment: SemnbSegmentConfig = field(default_factory=SemnbSegmentConfig)
    sharpness: float = 80.0


def support_image_scores(features: torch.Tensor, is_normal: np.ndarray, bank: torch.Tensor) -> np.ndarray:
    """PatchCore's eq. 7 score [K] of each support image: a defect-free one against the memory of the other
    defect-free support images (leave one out, so it scores as an unseen normal query would), a defect one
    against `bank`.

    Taught in: 05_classification.
    """
    out = []
    normal_rows = np.flatnonzero(is_normal)
    for i in range(len(features)):
        if is_normal[i]:
            others = torch.as_tensor(normal_rows[normal_rows != i], device=features.device)
            memory = features[others].reshape(-1, features.shape[-1])
        else:
            memory = bank
        distances = baselines.patchcore_patch_maps(features[i:i + 1], memory)
        out.append(float(baselines.reweighted_image_scores(features[i:i + 1], distances, memory)[0]))
    return np.asarray(out)


def gate_probabilities(proba: np.ndarray, p_defect: np.ndarray, normal: int) -> np.ndarray:
    """P(c) of each class times P(defect) (defect classes) or P(normal) = 1 - P(defect), renormalised: [B, C].

    Taught in: 05_classification.
    """
    weights = np.repeat(np.asarray(p_defect, dtype=np.float64)[:, None], proba.shape[1], axis=1)
    weights[:, normal] = 1 - weights[:, normal]
    gated = proba * weights
    return gated / np.clip(gated.sum(axis=1, keepdims=True), 1e-12, None)


class SemnbClassifier:
    """The recommended classifier: defect_pooled's contrast, pooled by the `semnb` segmenter's supervised map,
    times a PatchCore normal-vs-defect gate.

    Taught in: 05_classification.
    """

    def __init__(self, config: SemnbClassifyConfig | None = None, device: str | torch.device | Compute = "auto",
                 precision: str = "auto"):
        self.config = config or SemnbClassifyConfig()
        self.compute = Compute.resolve(device, precision)
        self.segmenter: SemnbSegmenter | None = None
        self.probe: Pipeline | None = None
        self.gate: LogisticRegression | None = None
        self.normal: int | None = None
        self.n_classes = 0

    def fit(self, support: PatchFeatures, patchcore_features: torch.Tensor, masks: np.ndarray,
            is_normal: np.ndarray, labels: np.ndarray, n_classes: int, text: torch.Tensor | None = None,
            seed: int = 0) -> SemnbClassifier:
        """Fit the segmenter on the support masks [K, S, S], the probe on the true-mask contrasts, the gate on the
        support's PatchCore scores (no defect-free class, or one defect-free image: no gate).

        Taught in: 05_classification.
        """
        is_normal = np.asarray(is_normal, dtype=bool)
        labels = np.asarray(labels, dtype=np.int64)
        support = support.to(self.compute.device)
        self.segmenter = SemnbSegmenter(self.config.segment, self.compute).fit(support, patchcore_features, masks,
                                                                               is_normal, text, seed)
        coverage = self.compute.to(mask_coverage(masks, support.grid).reshape(support.num_images, -1))
        vectors = defect_contrast(support.z, defect_weights(coverage, self.config.sharpness))
        self.probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(vectors.cpu().numpy(),
                                                                                            labels)
        self.n_classes = int(n_classes)
        self.gate, self.normal = None, None
        if is_normal.sum() >= 2 and (~is_normal).any():
            scores = support_image_scores(self.compute.to(patchcore_features.float()), is_normal, self.segmenter.bank)
            self.gate = LogisticRegression(class_weight="balanced").fit(scores[:, None], (~is_normal).astype(int))
            self.normal = int(labels[is_normal][0])
        return self

    @torch.no_grad()
    def predict_proba(self, feats: PatchFeatures, patchcore_features: torch.Tensor) -> np.ndarray:
        """Class probabilities [B, n_classes] of images without masks (a class absent from the support gets 0).

        Taught in: 05_classification.
        """
        if self.probe is None:
            raise SemnbInputError("SemnbClassifier", "is not fitted", "call fit(...) on the support first")
        feats = feats.to(self.compute.device)
        features = self.compute.to(patchcore_features.float())
        parts = self.segmenter.patch_maps(feats, features)
        vectors = defect_contrast(feats.z, defect_weights(parts["supervised"], self.config.sharpness))
        proba = np.zeros((feats.num_images, self.n_classes))
        proba[:, self.probe.classes_] = self.probe.predict_proba(vectors.cpu().numpy())
        if self.gate is None:
            return proba
        bank = self.segmenter.bank
        scores = baselines.reweighted_image_scores(features, baselines.patchcore_patch_maps(features, bank), bank)
        return gate_probabilities(proba, self.gate.predict_proba(scores.cpu().numpy()[:, None])[:, 1], self.normal)

"""Defect-pooled few-shot classification: classify the defect, not the image (an addition to SEM-CLIP).

Why: on wafer SEM images a defect covers 0.1 to 5 % of the image and the background pattern
dominates, so class tokens and globally pooled features average the defect away (5-shot
accuracy near chance). The few-shot segmenter, trained on the same support's masks, finds
the defect well; this method pools the patch tokens where the map says the defect is.

For every image, with z_j,n the patch token of level j at patch n (the segmenter's input:
CLIP's projected tokens, or the layer-normalised CNN stage features) and p_n in [0, 1] a
defect probability on the patch grid:
1. weights w_n = softmax_n(beta * p_n), beta = 80 (`sharpness`);
2. the defect contrast of level j: c_j = sum_n w_n z_j,n - mean_n z_j,n, the defect
   region's mean token minus the image's mean token;
3. the image's vector: the m levels' c_j concatenated;
4. a logistic regression on the standardised vectors of the support (the `linear_probe`
   machinery) gives the class probabilities of the queries.
p comes from the true masks for the support (they are labelled: the fraction of each patch
the mask covers) and from the segmenter's map for the queries (`SemClipSegmenter` trained on
the episode's support images and masks, every class, normal images with empty masks; its
map A divided by its number of terms, levels x paths, so that p is in [0, 1]).

Why these choices (measured on a separate synthetic SEM set, seed 1, 5 shots, efficientnet-lite0;
the figures `semnb eval classify` reports come from other data):
- softmax weights, not the mask or top-k patches alone: one formula serves every image. A
  defect-free image (p low everywhere) gets nearly uniform weights, so c_j is nearly 0, a
  "nothing here" vector the normal class is learned from, instead of an arbitrary top patch.
  Accuracy with hard top-1 / top-3 patch pooling: 0.25 to 0.31; with beta = 5, 10, 20: 0.35
  to 0.36; beta = 40, 80, 160: 0.43, 0.45, 0.47 (std over 3 seeds 0.02 to 0.03); 80 is the
  middle of that plateau. With beta = 80, a patch at p = 1
  outweighs one at p = 0.9 by e^8, so the defect's own patches dominate.
- the contrast, not the pooled token: subtracting the image mean removes the background
  pattern every class shares (0.45 with c_j, 0.43 without the subtraction). Adding the
  global embedding hurt (0.34): its 1280 dimensions are mostly background.
- true masks for the support: 0.43, against 0.37 with the segmenter's own maps (beta = 40).
The contrasts are computed on the segmenter's device; the logistic regression (scikit-learn)
runs on the CPU.
The method needs masks for every defect image of the data set (`prepare_fewshot` keeps them
for task "classify" when they exist); without them `evaluate_classification` skips it with
a warning.

Taught in: 05_classification.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from semnb.errors import SemnbInputError
from semnb.fewshot.segmentation import (
    PatchFeatures,
    SegmentationConfig,
    SemClipSegmenter,
    mask_coverage,
)
from semnb.hardware import Compute


@dataclass(frozen=True)
class DefectPoolingConfig:
    """Every knob of defect pooling: the softmax sharpness beta and the segmenter that maps the queries.

    Taught in: 05_classification.
    """

    sharpness: float = 80.0
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)


def defect_weights(defect_probability: torch.Tensor, sharpness: float = 80.0) -> torch.Tensor:
    """w = softmax_n(beta * p_n) [B, N] from defect probabilities p [B, N]: the defect's patches dominate the pooling.

    Taught in: 05_classification.
    """
    if sharpness < 0:
        raise SemnbInputError("sharpness", f"got {sharpness}", "use 0 (a plain mean) or more (the default: 80)")
    return (float(sharpness) * defect_probability.float()).softmax(dim=-1)


def weighted_pool(tokens: Sequence[torch.Tensor], weights: torch.Tensor) -> list[torch.Tensor]:
    """sum_n w_n z_j,n for each level's tokens [B, N, D_j] and weights [B, N] summing to 1 over n: [B, D_j] each.

    Taught in: 05_classification.
    """
    return [torch.einsum("bn,bnd->bd", weights, t) for t in tokens]


def defect_contrast(tokens: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """[B, sum D_j]: per level, the weighted mean token minus the plain mean token, concatenated (0 for uniform weights).

    Taught in: 05_classification.
    """
    pooled = weighted_pool(tokens, weights)
    return torch.cat([p - t.mean(dim=1) for p, t in zip(pooled, tokens)], dim=-1)


def defect_probability(segmenter: SemClipSegmenter, feats: PatchFeatures) -> torch.Tensor:
    """The segmenter's map on the patch grid [B, N], divided by its number of terms (levels x paths) to lie in [0, 1].

    Taught in: 05_classification.
    """
    return sum(segmenter.patch_maps(feats).values()) / segmenter.num_terms(feats)


class DefectPooledClassifier:
    """Fit on the support (segmenter on its masks; logistic regression on its defect contrasts), classify queries.

    `device` and `precision` as `semnb.hardware.Compute.resolve` reads them (or a resolved
    `Compute` as `device`): the segmenter's, and where the contrasts are computed.

    Taught in: 05_classification.
    """

    def __init__(self, config: DefectPoolingConfig | None = None, device: str | torch.device | Compute = "auto",
                 precision: str = "auto"):
        self.config = config or DefectPoolingConfig()
        self.compute = Compute.resolve(device, precision)
        self.segmenter: SemClipSegmenter | None = None
        self.probe: Pipeline | None = None
        self.n_classes = 0

    def fit(self, support: PatchFeatures, masks: np.ndarray | torch.Tensor, labels: Sequence[int] | np.ndarray,
            n_classes: int, text: torch.Tensor | None = None, seed: int = 0) -> DefectPooledClassifier:
        """Train the segmenter on the support's masks [K, S, S] and the probe on the true-mask contrasts.

        `text`: the (normal, defect) text embeddings the segmenter needs with a CLIP backbone.

        Taught in: 05_classification.
        """
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) != support.num_images:
            raise SemnbInputError("labels", f"{len(labels)} labels for {support.num_images} support images",
                                  "pass one label per support image")
        support = support.to(self.compute.device)
        self.segmenter = SemClipSegmenter(self.config.segmentation, self.compute).fit(support, masks, text, seed=seed)
        coverage = self.compute.to(mask_coverage(masks, support.grid).reshape(support.num_images, -1))
        vectors = defect_contrast(support.z, defect_weights(coverage, self.config.sharpness))
        self.probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        self.probe.fit(vectors.cpu().numpy(), labels)
        self.n_classes = int(n_classes)
        return self

    @torch.no_grad()
    def query_vectors(self, feats: PatchFeatures) -> torch.Tensor:
        """The defect contrasts [B, sum D_j] (CPU float32) of images without masks, pooled by the segmenter's maps.

        Taught in: 05_classification.
        """
        if self.segmenter is None:
            raise SemnbInputError("DefectPooledClassifier", "is not fitted", "call fit(...) on the support first")
        feats = feats.to(self.compute.device)
        weights = defect_weights(defect_probability(self.segmenter, feats), self.config.sharpness)
        return defect_contrast(feats.z, weights).cpu()

    def predict_proba(self, feats: PatchFeatures) -> np.ndarray:
        """Class probabilities [B, n_classes] (rows sum to 1; a class absent from the support gets 0).

        Taught in: 05_classification.
        """
        vectors = self.query_vectors(feats)
        out = np.zeros((feats.num_images, self.n_classes))
        out[:, self.probe.classes_] = self.probe.predict_proba(vectors.numpy())
        return out

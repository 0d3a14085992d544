"""Few-shot defect segmentation and classification: semnb's recommended method, SEM-CLIP (arXiv 2502.14884,
sections 3.3-3.4) and baselines.

- `episodes`: N-way K-shot support/query draws;
- `segmentation`: the transformation layer and the defect map A = A_Z + A_V;
- `classification`: P = (1 - a) P_S + a P_C;
- `defect_pooling`: classify the defect region the segmenter finds (an addition to the paper);
- `recommended`: `semnb`, the recommended segmenter (SEM-CLIP's map x PatchCore's calibrated memory map) and
  classifier (the defect region's pooled tokens x a PatchCore normal gate);
- `baselines`: PatchCore (faithful), a visual nearest neighbour (nn_visual), linear probe, prototype;
- `evaluate`: `semnb eval segment|classify`, shot sweeps (the only module that takes an `ImageSet`);
- `viz`: every figure of the package (the only module that imports matplotlib);
- `explore`: the prompt editor and the segmentation explorer (the only module that imports ipywidgets).

Taught in: 04_segmentation and 05_classification.
"""
from semnb.fewshot.classification import ClassificationConfig, SemClipClassifier
from semnb.fewshot.defect_pooling import DefectPooledClassifier, DefectPoolingConfig
from semnb.fewshot.episodes import PAPER_SHOTS, Episode, sample_episode
from semnb.fewshot.evaluate import (
    FewShotData,
    evaluate_classification,
    evaluate_segmentation,
    prepare_fewshot,
    shot_sweep,
)
from semnb.fewshot.model import ClassifyModel, SegmentModel, fit_classify, fit_segment
from semnb.fewshot.recommended import (
    SemnbClassifier,
    SemnbClassifyConfig,
    SemnbSegmentConfig,
    SemnbSegmenter,
)
from semnb.fewshot.segmentation import SegmentationConfig, SemClipSegmenter, patch_features

__all__ = ["ClassifyModel", "SegmentModel", "fit_classify", "fit_segment",
    "PAPER_SHOTS",
    "ClassificationConfig",
    "DefectPooledClassifier",
    "DefectPoolingConfig",
    "Episode",
    "FewShotData",
    "SegmentationConfig",
    "SemClipClassifier",
    "SemClipSegmenter",
    "SemnbClassifier",
    "SemnbClassifyConfig",
    "SemnbSegmentConfig",
    "SemnbSegmenter",
    "evaluate_classification",
    "evaluate_segmentation",
    "patch_features",
    "prepare_fewshot",
    "sample_episode",
    "shot_sweep",
]

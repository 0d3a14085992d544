"""Image and text encoders: CLIP (dual-path, multi-level), the offline ImageNet CNN, the feature cache.

Start with `load_backbone(name)` and `encode_images(backbone, images, cache)`; see
03_vv_attention for the dual-path encoder and 02_prompts for text.
"""
from semnb.models.backbone import PRECISIONS, Backbone
from semnb.models.feature_cache import (
    FeatureCache,
    cached_text_embeddings,
    default_cache_dir,
    encode_images,
)
from semnb.models.levels import EncodedLevels
from semnb.models.registry import DEFAULT_BACKBONE, PAPER_CLIP, available_weights, load_backbone

__all__ = [
    "DEFAULT_BACKBONE",
    "PAPER_CLIP",
    "PRECISIONS",
    "Backbone",
    "EncodedLevels",
    "FeatureCache",
    "available_weights",
    "cached_text_embeddings",
    "default_cache_dir",
    "encode_images",
    "load_backbone",
]

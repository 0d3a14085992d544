"""Backbone names -> loaded backbones, and which real weights this machine has.

Names (design.md):
- `semnb-tiny`: tiny random open_clip model, for tests and CI only.
- `efficientnet-lite0`: ImageNet CNN, offline, no text.
- `MODEL:PRETRAINED`: any open_clip ViT with a pretrained tag (`ViT-B-16-plus-240:laion400m_e32`,
  the paper's), a checkpoint file (`ViT-B-16:/models/b16.pt`) or `random` (timing only).
- `clip:/path/to/checkpoint`: the default architecture (ViT-B-16-plus-240) from a file;
  plain `clip` reads the file from the environment variable SEMNB_CLIP_CHECKPOINT.

Taught in: 02_prompts and 03_vv_attention (the `backbone` parameter).
"""
from __future__ import annotations

import os

from semnb.errors import SemnbInputError
from semnb.hardware import Compute
from semnb.models.backbone import Backbone
from semnb.models.clip_loader import (
    CHECKPOINT_ENV,
    DEFAULT_MODEL,
    DEFAULT_TAG,
    checkpoint_file,
    env_checkpoint,
    load_open_clip,
    weights_status,
)
from semnb.models.dual_path import ClipBackbone
from semnb.models.efficientnet import (
    EFFICIENTNET_NAME,
    WEIGHTS_PACKAGE,
    EfficientNetBackbone,
    weights_file,
)
from semnb.models.tiny_clip import TINY_GROUPS, TINY_NAME, create_tiny_clip, tiny_weights_label

PAPER_CLIP = f"{DEFAULT_MODEL}:{DEFAULT_TAG}"  # the paper's CLIP (SEM-CLIP: ViT-B/16+ on LAION-400M)
DEFAULT_BACKBONE = EFFICIENTNET_NAME  # what every command uses when none is named: ImageNet, works offline
NAME_FORMS = (f"{TINY_NAME}, {EFFICIENTNET_NAME}, MODEL:PRETRAINED (e.g. {PAPER_CLIP}, "
              f"{DEFAULT_MODEL}:random for timing), MODEL:/path/to/checkpoint, clip:/path/to/checkpoint, clip")


def load_backbone(name: str = TINY_NAME, precision: str = "auto", image_size: int | None = None,
                  seed: int = 0, device: str = "auto") -> Backbone:
    """Load a backbone by name onto `device`; `backbone.weights` says what was really loaded.

    `image_size` overrides the model's own (CLIP interpolates its position embeddings);
    `seed` only matters for random weights (`semnb-tiny`, `MODEL:random`); `device` and
    `precision` as `semnb.hardware` resolves them (`auto`: the first GPU, else the CPU).

    Taught in: 03_vv_attention.
    """
    name = (name or "").strip()
    compute = Compute.resolve(device, precision)
    if image_size is not None and int(image_size) < 32:
        raise SemnbInputError("--image-size", f"got {image_size}", "use at least 32 pixels")
    if name == TINY_NAME:
        model = create_tiny_clip(seed=seed, image_size=image_size)
        return ClipBackbone(model, name, tiny_weights_label(seed), TINY_NAME, compute, TINY_GROUPS)
    if name == EFFICIENTNET_NAME:
        return EfficientNetBackbone(image_size or 224, compute)
    model_name, pretrained = _split_clip_name(name)
    model, weights = load_open_clip(model_name, pretrained, image_size=image_size, seed=seed)
    return ClipBackbone(model, name, weights, model_name, compute)


def _split_clip_name(name: str) -> tuple[str, str]:
    """`MODEL:PRETRAINED`, `clip:/path` or `clip` -> (open_clip model name, tag or path)."""
    if name == "clip":
        path = env_checkpoint()
        if path is None:
            raise SemnbInputError("--backbone clip", f"{CHECKPOINT_ENV} is not set",
                                  f"set {CHECKPOINT_ENV}=/path/to/checkpoint or use --backbone clip:/path/to/checkpoint")
        return DEFAULT_MODEL, str(path)
    model, sep, pretrained = name.partition(":")
    if not sep or not model or not pretrained:
        raise SemnbInputError(f"--backbone {name}", "is not a backbone name", f"use one of: {NAME_FORMS}")
    if model == "clip":
        return DEFAULT_MODEL, str(checkpoint_file(pretrained, f"--backbone {name}"))
    return model, pretrained


def available_weights() -> dict[str, str]:
    """Which backbones can load real weights on this machine, without loading or downloading.

    Taught in: every notebook's first cell (`print_env`).
    """
    try:
        efficientnet = f"ImageNet weights in package {WEIGHTS_PACKAGE} ({weights_file().name})"
    except SemnbInputError as err:
        efficientnet = f"missing: {err}"
    checkpoint = os.environ.get(CHECKPOINT_ENV, "").strip()
    if checkpoint:
        checkpoint += "" if os.path.isfile(os.path.expanduser(checkpoint)) else " (NOT a file)"
    return {
        TINY_NAME: "random init, for tests only (NOT CLIP)",
        EFFICIENTNET_NAME: efficientnet,
        PAPER_CLIP: weights_status(DEFAULT_MODEL, DEFAULT_TAG),
        CHECKPOINT_ENV: checkpoint or "unset",
    }

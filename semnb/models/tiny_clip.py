"""`semnb-tiny`: a tiny, randomly initialised open_clip model for tests and CI.

It has the same structure as CLIP (ViT image tower with a class token, text transformer,
joint embedding space) but 64-wide and 6 blocks deep, so the whole pipeline runs in
seconds on two CPU cores. Its weights are random: its maps and scores mean nothing.

Taught in: 03_vv_attention (every notebook runs on it in smoke mode).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

TINY_NAME = "semnb-tiny"
TINY_CONFIG = Path(__file__).with_name("semnb-tiny.json")
# 6 blocks grouped as 3 encoding blocks of 2 (ViT-B/16+ uses 4 of 3).
TINY_GROUPS = (3, 2)


def register_tiny_config() -> None:
    """Make `semnb-tiny` an open_clip model name (idempotent), so tokenizer and factory know it.

    Taught in: 03_vv_attention.
    """
    import open_clip  # here, not at the top: importing it costs seconds (see clip_loader)

    if TINY_NAME not in open_clip.list_models():
        open_clip.add_model_config(TINY_CONFIG)


def tiny_weights_label(seed: int) -> str:
    """What a result made with the tiny model must say about its weights.

    Taught in: 03_vv_attention.
    """
    return f"random-init ({TINY_NAME}, seed {seed}): NOT CLIP, maps and scores mean nothing"


def create_tiny_clip(seed: int = 0, image_size: int | None = None) -> torch.nn.Module:
    """Build the tiny model with a seeded random init, without touching the global RNG.

    Taught in: 03_vv_attention.
    """
    import open_clip

    register_tiny_config()
    with torch.random.fork_rng(devices=[]), quiet_random_init_warning():
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_NAME, pretrained=None, force_image_size=image_size)
    return model.eval()


@contextlib.contextmanager
def quiet_random_init_warning() -> Iterator[None]:
    """Silence open_clip's "initialized randomly" log line: semnb labels random weights itself.

    Taught in: 03_vv_attention.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)

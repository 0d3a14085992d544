"""What every backbone shares: its name, the weights really loaded, image size and precision.

A backbone turns gray images into `EncodedLevels` (`encode_levels`) and into one vector per
image (`encode_image`). CLIP backbones also embed text (`encode_texts`); the CNN does not
(`has_text` is False). A backbone computes on its `compute.device` under its precision
(`semnb.hardware.Compute`: fp32, or bf16/fp16 autocast while the weights stay fp32, so one
loaded model serves every precision) and returns float32 features on the CPU, which is
where the feature cache and the metrics keep them.

Taught in: 03_vv_attention.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from semnb.errors import SemnbInputError
from semnb.hardware import CPU, Compute, resolve_precision
from semnb.models.levels import EncodedLevels
from semnb.models.pixels import normalize, resize_gray

PRECISIONS = ("fp32", "bf16", "fp16")

Images = Sequence[np.ndarray] | np.ndarray | torch.Tensor


class Backbone:
    """Base class: subclasses set `mean`, `std`, `has_text` and implement the `_encode_*` methods.

    Taught in: 03_vv_attention.
    """

    has_text: bool = False
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __init__(self, name: str, weights: str, image_size: int, compute: Compute = CPU):
        self.name = name
        self.weights = weights
        self.image_size = int(image_size)
        self.compute = compute

    @property
    def device(self):
        return self.compute.device

    @property
    def precision(self) -> str:
        return self.compute.precision

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in PRECISIONS:
            raise SemnbInputError("--precision", f"got {value!r}", f"use one of {', '.join(PRECISIONS)}")
        self.compute = replace(self.compute, precision=resolve_precision(value, self.compute.device))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, weights={self.weights!r}, {self.image_size}px, {self.compute})"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The numeric context for a forward pass: bf16/fp16 autocast on the device, or nothing for fp32.

        Taught in: 03_vv_attention.
        """
        return self.compute.autocast()

    def gray(self, pixels: Images) -> torch.Tensor:
        """Images resized for this backbone, still gray in [0, 1]: [B, 1, S, S] (what the cache hashes).

        Taught in: 03_vv_attention.
        """
        return resize_gray(pixels, self.image_size)

    def network_input(self, pixels: Images) -> torch.Tensor:
        """Network input [B, 3, S, S]; a tensor that already has this shape passes through.

        Taught in: 03_vv_attention.
        """
        if isinstance(pixels, torch.Tensor):
            expected = (3, self.image_size, self.image_size)
            if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
                raise SemnbInputError("pixels", f"tensor of shape {tuple(pixels.shape)}",
                                      f"pass numpy images or a pixel tensor [B, {expected[0]}, {expected[1]}, {expected[2]}]")
            return pixels
        return normalize(self.gray(pixels), self.mean, self.std)

    @torch.no_grad()
    def encode_image(self, pixels: Images, on_device: bool = False) -> torch.Tensor:
        """One plain embedding per image, [B, E] float32 (not normalised), on the CPU.

        `on_device=True` leaves it on the backbone's device, for a method that goes on computing
        there (and for timing the network without the copy back).

        Taught in: 03_vv_attention.
        """
        x = self.compute.to(self.network_input(pixels))
        with self.autocast():
            embedding = self._encode_image(x).float()
        return embedding if on_device else embedding.cpu()

    @torch.no_grad()
    def encode_levels(self, pixels: Images, on_device: bool = False) -> EncodedLevels:
        """Multi-level class and patch tokens of one batch, on the CPU (`on_device` as in `encode_image`).

        Use `encode_images` for many images (batched, cached).

        Taught in: 03_vv_attention.
        """
        x = self.compute.to(self.network_input(pixels))
        with self.autocast():
            levels = self._encode_levels(x)
        return levels if on_device else levels.cpu()

    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        raise SemnbInputError(f"backbone {self.name}", "has no text tower, so prompts cannot be embedded",
                              "use a CLIP backbone (e.g. ViT-B-16-plus-240:laion400m_e32) for text prompts")

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _encode_levels(self, pixels: torch.Tensor) -> EncodedLevels:
        raise NotImplementedError

"""Turn gray images into the pixel tensor a backbone sees, and check them on the way in.

SEM images are gray; CLIP and ImageNet networks expect three channels, a fixed square
size and their own mean/std. Every backbone goes through `resize_gray` and `normalize`, so
the feature cache can hash exactly what the network saw.

Taught in: 03_vv_attention.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from semnb.errors import SemnbInputError


def as_gray_unit(image: np.ndarray, index: int = 0) -> np.ndarray:
    """One image as float32 gray in [0, 1]: integer images are scaled by their range, RGB is averaged.

    Taught in: 03_vv_attention.
    """
    array = np.asarray(image)
    if array.dtype.kind in "ui":  # 8- or 16-bit images: scale by the type's range
        array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        is_gray = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
        array = rgb[..., 0] if is_gray else rgb.mean(axis=-1)  # gray saved as RGB stays bit-identical
    if array.ndim != 2 or min(array.shape) < 1:
        raise SemnbInputError(f"images[{index}]", f"has shape {np.shape(image)}",
                              "pass 2-D gray images (H, W) or RGB images (H, W, 3)")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise SemnbInputError(f"images[{index}]", "holds NaN or infinite values", "clean or re-read the image")
    if array.min() < -1e-3 or array.max() > 1 + 1e-3:
        raise SemnbInputError(f"images[{index}]", f"has values in [{array.min():.3g}, {array.max():.3g}]",
                              "scale float images to [0, 1] (semnb.data loaders do this)")
    return np.clip(array, 0.0, 1.0)


def resize_gray(pixels: Sequence[np.ndarray] | np.ndarray, size: int) -> torch.Tensor:
    """Images resized to `size` x `size` (antialiased bilinear): a float32 tensor [B, 1, size, size].

    Non-square images are stretched, not cropped, so a defect near the border stays visible
    and maps line up with the whole image.

    Taught in: 03_vv_attention.
    """
    if isinstance(pixels, np.ndarray) and (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] in (3, 4))):
        pixels = [pixels]  # one image; a 3-D array is otherwise a stack [B, H, W]
    if len(pixels) == 0:
        raise SemnbInputError("pixels", "is empty", "pass at least one image")
    out = []
    for i, image in enumerate(pixels):
        gray = torch.from_numpy(as_gray_unit(image, i))[None, None]
        if gray.shape[-2:] != (size, size):
            gray = F.interpolate(gray, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(gray.clamp_(0.0, 1.0))
    return torch.cat(out)


def normalize(gray: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[B, 1, H, W] gray in [0, 1] -> [B, 3, H, W] normalised with the network's mean and std.

    Taught in: 03_vv_attention.
    """
    mean_t = torch.tensor(mean, dtype=gray.dtype, device=gray.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=gray.dtype, device=gray.device).view(1, 3, 1, 1)
    return (gray.expand(-1, 3, -1, -1) - mean_t) / std_t

"""Pieces shared by more than one method: map upsampling and smoothing, image scores,
nearest-patch distance, PatchCore's locally aware features and greedy coreset, torch thread control.

Why one module: the few-shot segmentation baselines, SEM-CLIP itself and the label-free defect
locator of the clustering package all score patches the same way; written once, they agree.

Taught in: 04_segmentation.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from semnb.errors import SemnbInputError

_QUERY_CHUNK = 2048  # query patches per distance block


def upsample_and_smooth(patch_maps: torch.Tensor, grid: tuple[int, int], size: int, sigma: float = 4.0) -> torch.Tensor:
    """Patch maps [B, h*w] or [B, h, w] -> [B, size, size]: bilinear upsampling, then a Gaussian (sigma in pixels).

    Computed in float32 on the maps' device.

    Taught in: 04_segmentation.
    """
    maps = patch_maps.reshape(-1, 1, *grid).float()
    maps = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
    if sigma > 0:
        radius = max(1, int(math.ceil(3 * sigma)))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=maps.device)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        kernel = kernel / kernel.sum()
        maps = F.pad(maps, (radius, radius, radius, radius), mode="replicate")
        maps = F.conv2d(maps, kernel.view(1, 1, 1, -1))
        maps = F.conv2d(maps, kernel.view(1, 1, -1, 1))
    return maps[:, 0]


def image_scores(maps: torch.Tensor, top_fraction: float = 0.01) -> torch.Tensor:
    """Image-level defect score [B]: the mean of the top `top_fraction` of each map's pixels.

    Taught in: 04_segmentation.
    """
    flat = maps.reshape(maps.shape[0], -1)
    k = max(1, int(round(top_fraction * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(dim=1)


def nearest_distance(queries: torch.Tensor, memory: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """Distance [Q] of each query row [Q, d] to its nearest memory row [M, d]: Euclidean, or (1 - cos) / 2.

    Computed on the inputs' device (a GPU computes PatchCore's distances far faster), in
    blocks of queries to bound memory.

    Taught in: 04_segmentation.
    """
    if memory.shape[0] == 0:
        raise SemnbInputError("support", "holds no defect-free patch for the memory", "add defect-free support images")
    out = []
    for start in range(0, queries.shape[0], _QUERY_CHUNK):
        block = queries[start:start + _QUERY_CHUNK]
        if metric == "cosine":
            out.append((1 - (F.normalize(block, dim=-1) @ F.normalize(memory, dim=-1).T).amax(dim=1)) / 2)
        else:
            out.append(torch.cdist(block, memory).amin(dim=1))
    return torch.cat(out)


def locally_aware(tokens: torch.Tensor, grid: tuple[int, int], size: int = 3) -> torch.Tensor:
    """Each patch token [B, N, d] averaged with its size x size neighbours (borders: the neighbours that exist).

    Taught in: 04_segmentation.
    """
    b, n, d = tokens.shape
    maps = tokens.transpose(1, 2).reshape(b, d, *grid)
    pooled = F.avg_pool2d(maps, size, stride=1, padding=size // 2, count_include_pad=False)
    return pooled.reshape(b, d, n).transpose(1, 2)


def greedy_coreset(features: torch.Tensor, n_keep: int, seed: int = 0, projection_dim: int = 128) -> torch.Tensor:
    """Indices of `n_keep` rows chosen by greedy k-center on a random projection (PatchCore's coreset).

    Each step adds the row farthest from those already chosen, so the kept rows cover the memory.
    Computed on the features' device (the indices come back there); the projection and the
    first row are drawn on the CPU, so a seed picks the same rows on every device.

    Taught in: 04_segmentation.
    """
    m, d = features.shape
    n_keep = int(min(max(n_keep, 1), m))
    generator = torch.Generator().manual_seed(int(seed))
    if d > projection_dim:
        projection = torch.randn(d, projection_dim, generator=generator, device="cpu") / projection_dim ** 0.5
        features = features @ projection.to(features.device)
    chosen = [torch.randint(m, (1,), generator=generator, device="cpu").to(features.device)]
    nearest = torch.cdist(features, features[chosen[0]]).squeeze(1)
    for _ in range(n_keep - 1):
        nxt = nearest.argmax().reshape(1)  # stays on the device: no GPU-to-CPU wait per step
        chosen.append(nxt)
        nearest = torch.minimum(nearest, torch.cdist(features, features[nxt]).squeeze(1))
    return torch.cat(chosen)


def middle_levels(num_levels: int) -> list[int]:
    """The levels PatchCore would take: those between the first and the last (one level: itself).

    Taught in: 04_segmentation.
    """
    inner = list(range(1, num_levels - 1))
    return inner or [num_levels - 1]


def patchcore_features(patch_z: Sequence[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """[B, N, sum d]: the middle levels' locally aware, layer-normalised tokens, concatenated.

    Taught in: 04_segmentation.
    """
    picked = [patch_z[j] for j in middle_levels(len(patch_z))]
    return torch.cat([F.layer_norm(locally_aware(t, grid), t.shape[-1:]) for t in picked], dim=-1)



@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Use `threads` torch threads inside the block (None: leave as is), and restore the previous setting after.

    Why: small networks (the SSL encoder, the STM ProtoNet) spend more time synchronising
    threads than computing on a busy or small machine (measured for the ProtoNet: 1.1 s vs
    0.08 s per episode on a shared 2-core machine with all threads vs one).

    Taught in: 06_ssl_clustering.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)

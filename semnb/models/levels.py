"""`EncodedLevels`: the multi-level image features every few-shot method starts from.

SEM-CLIP (arXiv 2502.14884, section 3.2) reads features out of m encoding blocks, not just
the last layer: level j holds the class token and the patch tokens after block j, on the
vanilla path (Z_j) and on the V-V path (V_j). The CNN backbone fills the same container
from its stages, without a V path and without text.

Taught in: 03_vv_attention.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass
class EncodedLevels:
    """Features of B images at m levels (float32; on the CPU as backbones return them, `to` moves them).

    cls: m tensors [B, D_j], the class token (CNN: the level's global average).
    patch_z: m tensors [B, N, D_j], the vanilla path's patch tokens, N = h * w in row-major order.
    patch_v: m tensors [B, N, D_j], the V-V path's patch tokens, or None for backbones without one.
    embedding: [B, E], the backbone's plain image embedding (CLIP: `encode_image`; CNN: pooled head).
    grid: (h, w) of the patch tokens; the same for every level.
    projector: maps [..., D] tokens of any level to the joint text-image space (None without text).

    Taught in: 03_vv_attention.
    """

    cls: list[torch.Tensor]
    patch_z: list[torch.Tensor]
    patch_v: list[torch.Tensor] | None
    embedding: torch.Tensor
    grid: tuple[int, int]
    projector: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def num_levels(self) -> int:
        return len(self.cls)

    @property
    def num_images(self) -> int:
        return int(self.embedding.shape[0])

    @property
    def dims(self) -> list[int]:
        """Token width of each level (all equal for CLIP)."""
        return [int(c.shape[-1]) for c in self.cls]

    @property
    def has_text(self) -> bool:
        return self.projector is not None

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens of any level -> the joint space where text embeddings live (CLIP: ln_post, proj).

        Taught in: 03_vv_attention.
        """
        if self.projector is None:
            raise ValueError("this backbone has no text tower, so there is no joint space to project to")
        return self.projector(tokens)

    def similarity_maps(self, text: torch.Tensor, level: int = -1, path: str = "z") -> torch.Tensor:
        """Cosine similarity of each patch, projected to the joint space, to each text vector.

        text: [C, E] unit vectors (e.g. class or normal/defect embeddings). Returns [B, C, h, w].
        `path` is "z" (vanilla) or "v" (V-V). This is the raw readout that defect maps start from.

        Taught in: 03_vv_attention.
        """
        tokens = {"z": self.patch_z, "v": self.patch_v}.get(path)
        if tokens is None:
            raise ValueError(f"path must be 'z' or 'v' (and 'v' needs a V-V backbone), got {path!r}")
        patches = F.normalize(self.project(tokens[level]), dim=-1)  # [B, N, E]
        sims = patches @ F.normalize(text, dim=-1).T  # [B, N, C]
        return sims.transpose(1, 2).reshape(self.num_images, -1, *self.grid)

    def to(self, device: torch.device | str) -> EncodedLevels:
        """The same features on another device (the backbone returns them on the CPU).

        Taught in: 03_vv_attention.
        """
        return replace(self, cls=_moved(self.cls, device), patch_z=_moved(self.patch_z, device),
                       patch_v=None if self.patch_v is None else _moved(self.patch_v, device),
                       embedding=self.embedding.to(device))

    def cpu(self) -> EncodedLevels:
        return self.to("cpu")

    def subset(self, indices: Sequence[int] | torch.Tensor) -> EncodedLevels:
        """The features of some images only (e.g. the support set of an episode).

        Taught in: 03_vv_attention.
        """
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.embedding.device)
        return replace(self, cls=[t[idx] for t in self.cls], patch_z=[t[idx] for t in self.patch_z],
                       patch_v=None if self.patch_v is None else [t[idx] for t in self.patch_v],
                       embedding=self.embedding[idx])

    @staticmethod
    def concat(parts: Sequence[EncodedLevels]) -> EncodedLevels:
        """Join batches encoded by the same backbone, in order.

        Taught in: 03_vv_attention.
        """
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        return replace(first, cls=_join(parts, "cls"), patch_z=_join(parts, "patch_z"),
                       patch_v=None if first.patch_v is None else _join(parts, "patch_v"),
                       embedding=torch.cat([p.embedding for p in parts]))


def _join(parts: Sequence[EncodedLevels], name: str) -> list[torch.Tensor]:
    """Concatenate one per-level field over batches, level by level."""
    return [torch.cat([getattr(p, name)[j] for p in parts]) for j in range(parts[0].num_levels)]


def _moved(tensors: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    return [t.to(device) for t in tensors]

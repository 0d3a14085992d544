"""The dual-path CLIP image encoder: vanilla Q-K-V attention plus a V-V branch (SEM-CLIP eq. 1-7).

Why V-V: in CLIP's last layers the query-key attention of a patch is spread over a few
"global" tokens, so patch tokens describe the whole image and text-similarity maps light up
the background (CLIP Surgery, arXiv 2304.05653). Attention of values to values,
softmax(V V^T / sqrt(d)) V, makes each token attend to tokens like itself, so a defect patch
stays a defect patch and its map stays on the defect.

How, without new parameters: the vanilla path is open_clip's own forward pass, untouched.
A forward hook on each of the L blocks takes the block's input x, computes the V-V branch
from ln_1(x) with the block's own in_proj (V rows) and out_proj weights, and drops the MLP.
The L blocks form m encoding blocks of n (ViT-B/16+: 4 x 3). Level j keeps Z_j, the vanilla
tokens after its last block, and V_j, the sum of its n V-V outputs.

Taught in: 03_vv_attention.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from semnb.errors import SemnbInputError
from semnb.hardware import CPU, Compute
from semnb.models.backbone import Backbone
from semnb.models.levels import EncodedLevels

_TEXT_CHUNK = 256


def default_groups(layers: int) -> tuple[int, int]:
    """(m, n) for L blocks: the most levels out of 4, 3, 2 that divide L (12 -> 4 x 3, 6 -> 3 x 2).

    Taught in: 03_vv_attention.
    """
    for m in (4, 3, 2):
        if layers % m == 0:
            return m, layers // m
    return 1, layers


def check_dual_path_support(visual: nn.Module) -> None:
    """Refuse, with a clear message, the open_clip image towers this encoder does not handle.

    Taught in: 03_vv_attention.
    """
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    supported = (
        blocks is not None
        and getattr(visual, "attn_pool", None) is None
        and getattr(visual, "pool_type", "tok") == "tok"
        and not getattr(visual, "final_ln_after_pool", False)
        and all(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) and b.attn._qkv_same_embed_dim
                for b in blocks)
    )
    if not supported:
        raise SemnbInputError("backbone", "this open_clip image tower is not a plain CLIP ViT "
                              "(class-token pooling, nn.MultiheadAttention blocks)",
                              "use a ViT model such as ViT-B-16-plus-240 or ViT-B-16")


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, D] -> [B, heads, T, D / heads]."""
    b, n, d = t.shape
    return t.view(b, n, heads, d // heads).transpose(1, 2)


def _merge(t: torch.Tensor) -> torch.Tensor:
    """[B, heads, T, d] -> [B, T, heads * d]."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def qkv(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-head queries, keys and values [B, heads, T, d] of a block for its input x [B, T, D].

    Taught in: 03_vv_attention.
    """
    attn = block.attn
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return _heads(q, attn.num_heads), _heads(k, attn.num_heads), _heads(v, attn.num_heads)


def vv_branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The V-V branch of one block for its input x [B, T, D]: out_proj(softmax(V V^T / sqrt(d)) V).

    Uses only the value rows of the block's in_proj, then its out_proj and layer scale; no MLP.

    Taught in: 03_vv_attention.
    """
    attn = block.attn
    width = attn.embed_dim
    bias = attn.in_proj_bias[2 * width:] if attn.in_proj_bias is not None else None
    v = _heads(F.linear(block.ln_1(x), attn.in_proj_weight[2 * width:], bias), attn.num_heads)
    mixed = F.scaled_dot_product_attention(v, v, v)  # scale 1/sqrt(d) per head
    return block.ls_1(attn.out_proj(_merge(mixed)))


def attention_maps(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-averaged attention matrices [B, T, T] of one block: softmax(QK^T/sqrt d) and softmax(VV^T/sqrt d).

    Row t says where token t looks. Taught in: 03_vv_attention.
    """
    q, k, v = qkv(block, x)
    scale = q.shape[-1] ** -0.5
    qk = (q @ k.transpose(-2, -1) * scale).softmax(dim=-1).mean(dim=1)
    vv = (v @ v.transpose(-2, -1) * scale).softmax(dim=-1).mean(dim=1)
    return qk, vv


class _BlockTaps:
    """Forward hooks that collect Z_j and V_j during one forward pass of the image tower.

    Block i belongs to level i // n. Its output is kept if it ends a level (Z_j); its V-V
    branch is added to the level's running sum (V_j, in float32). Hooks see tensors in the
    transformer's own layout; `batch_first` is read at run time so both [B, T, D] and
    [T, B, D] layouts give [B, T, D] records.
    """

    def __init__(self, transformer: nn.Module, groups: tuple[int, int], vv: bool):
        m, self.n = groups
        self.batch_first = getattr(transformer, "batch_first", True)
        self.z: list[torch.Tensor | None] = [None] * m
        self.v: list[torch.Tensor | None] | None = [None] * m if vv else None
        self._handles = [block.register_forward_hook(partial(self._record, i))
                         for i, block in enumerate(transformer.resblocks)]

    def _nld(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.batch_first else t.transpose(0, 1)

    def _record(self, index: int, block: nn.Module, args: tuple, output: torch.Tensor) -> None:
        level, position = divmod(index, self.n)
        if position == self.n - 1:
            self.z[level] = self._nld(output)
        if self.v is not None:
            out = vv_branch(block, self._nld(args[0])).float()
            self.v[level] = out if self.v[level] is None else self.v[level] + out

    def __enter__(self) -> _BlockTaps:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()


def dual_path_forward(visual: nn.Module, pixels: torch.Tensor, groups: tuple[int, int],
                      vv: bool = True) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor] | None]:
    """Run the image tower once: (pooled embedding [B, E], Z_j [B, T, D] per level, V_j or None).

    The embedding is exactly open_clip's `encode_image` output; with `vv=False` no V-V work is done.

    Taught in: 03_vv_attention.
    """
    with _BlockTaps(visual.transformer, groups, vv) as taps:
        embedding = visual(pixels)
    if isinstance(embedding, tuple):  # towers built with output_tokens=True
        embedding = embedding[0]
    return embedding, taps.z, taps.v


def window_indices(grid: tuple[int, int], size: int) -> torch.Tensor:
    """Patch indices [W, size * size] (row-major) of every size x size window of the grid, stride 1 (CPU).

    Taught in: 04_segmentation (WinCLIP+).
    """
    h, w = grid
    rows = torch.arange(h - size + 1, device="cpu")[:, None] + torch.arange(size, device="cpu")[None]
    cols = torch.arange(w - size + 1, device="cpu")[:, None] + torch.arange(size, device="cpu")[None]
    cells = rows[:, None, :, None] * w + cols[None, :, None, :]  # [h', w', size, size]
    return cells.reshape(-1, size * size)


def window_embeddings(visual: nn.Module, pixels: torch.Tensor, sizes: Sequence[int] = (2, 3)) -> dict[int, torch.Tensor]:
    """WinCLIP's window embeddings: for each window size, [B, W, E], the class token and the window's patch
    tokens alone (all others masked out) through the whole image tower, pooled and projected.

    Taught in: 04_segmentation (WinCLIP+).
    """
    tokens = visual._embeds(pixels)  # [B, 1 + N, D]: class token, patches, positions, ln_pre (per token)
    b, _, d = tokens.shape
    out = {}
    for size in sizes:
        idx = window_indices(tuple(visual.grid_size), size).to(tokens.device) + 1
        w = idx.shape[0]
        windows = tokens[:, idx].reshape(b * w, -1, d)
        cls = tokens[:, :1].expand(b, w, d).reshape(b * w, 1, d)
        pooled, _ = visual._pool(visual.transformer(torch.cat([cls, windows], dim=1)))
        out[size] = (pooled @ visual.proj).reshape(b, w, -1)
    return out


class ClipBackbone(Backbone):
    """An open_clip CLIP model read out as a dual-path, multi-level encoder, with its text tower.

    Taught in: 03_vv_attention (levels, V-V) and 02_prompts (text).
    """

    has_text = True

    def __init__(self, model: nn.Module, name: str, weights: str, model_name: str,
                 compute: Compute = CPU, groups: tuple[int, int] | None = None):
        import open_clip  # here, not at the top: importing it costs seconds (see clip_loader)

        visual = model.visual
        check_dual_path_support(visual)
        super().__init__(name, weights, visual.image_size[0], compute)
        self.model = model.eval().requires_grad_(False).to(compute.device)  # a frozen feature extractor
        self.visual = visual
        self.tokenizer = open_clip.get_tokenizer(model_name)
        layers = len(visual.transformer.resblocks)
        self.groups = groups or default_groups(layers)
        if self.groups[0] * self.groups[1] != layers:
            raise SemnbInputError("groups", f"{self.groups[0]} x {self.groups[1]} does not cover {layers} blocks",
                                  f"choose m x n = {layers}")
        preprocess = getattr(visual, "preprocess_cfg", {})
        self.mean = tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD))

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.visual.grid_size)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [..., D] of any level or path -> joint space [..., E]: ln_post then proj (section 3.3).

        Differentiable in its input (CLIP's own weights stay frozen), so a trained layer may precede it.
        Runs on the model's device and returns on the tokens' device.

        Taught in: 03_vv_attention.
        """
        with self.autocast():
            out = self.visual.ln_post(tokens.to(self.device, self.visual.proj.dtype))
            return (out @ self.visual.proj).float().to(tokens.device)

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    @torch.no_grad()
    def encode_windows(self, pixels, sizes: Sequence[int] = (2, 3), batch_size: int = 8) -> dict[int, torch.Tensor]:
        """WinCLIP's window embeddings of every image (`window_embeddings`), [B, W, E] per size, float32 on the CPU.

        Taught in: 04_segmentation (WinCLIP+).
        """
        parts: dict[int, list[torch.Tensor]] = {s: [] for s in sizes}
        for start in range(0, len(pixels), batch_size):
            x = self.compute.to(self.network_input(pixels[start:start + batch_size]))
            with self.autocast():
                for size, emb in window_embeddings(self.visual, x, sizes).items():
                    parts[size].append(emb.float().cpu())
        return {size: torch.cat(p) for size, p in parts.items()}

    def _encode_levels(self, pixels: torch.Tensor) -> EncodedLevels:
        embedding, z, v = dual_path_forward(self.visual, pixels, self.groups)
        return EncodedLevels(
            cls=[t[:, 0].float() for t in z],
            patch_z=[t[:, 1:].float() for t in z],
            patch_v=[t[:, 1:].float() for t in v],
            embedding=embedding.float(),
            grid=self.grid,
            projector=self.project,
        )

    @torch.no_grad()
    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings [P, E] of the prompts, in order.

        Taught in: 02_prompts.
        """
        if isinstance(prompts, str) or len(prompts) == 0:
            raise SemnbInputError("prompts", f"got {prompts!r}", "pass a non-empty list of strings")
        out = []
        with self.autocast():
            for start in range(0, len(prompts), _TEXT_CHUNK):
                tokens = self.tokenizer(list(prompts[start:start + _TEXT_CHUNK])).to(self.device)
                out.append(self.model.encode_text(tokens).float().cpu())
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def attention_maps(self, pixels, block: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
        """Q-K and V-V attention [B, T, T] (head mean) of one block (default: the last), token 0 = CLS.

        Taught in: 03_vv_attention.
        """
        x = self.compute.to(self.network_input(pixels))
        target = self.visual.transformer.resblocks[block]
        captured: list[torch.Tensor] = []
        batch_first = getattr(self.visual.transformer, "batch_first", True)

        def grab(module, args):
            captured.append(args[0] if batch_first else args[0].transpose(0, 1))

        handle = target.register_forward_pre_hook(grab)
        try:
            with self.autocast():
                self.visual(x)
        finally:
            handle.remove()
        qk, vv = attention_maps(target, captured[0].float())
        return qk.float().cpu(), vv.float().cpu()

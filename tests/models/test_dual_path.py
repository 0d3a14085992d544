"""The dual-path encoder against an independent computation written with plain torch ops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semnb.models import load_backbone
from semnb.models.dual_path import (
    default_groups,
    dual_path_forward,
    window_embeddings,
    window_indices,
)

SIZE = 64  # 4 x 4 patches of 16 px


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("semnb-tiny", image_size=SIZE, seed=0)


@pytest.fixture(scope="module")
def pixels(tiny):
    rng = np.random.default_rng(0)
    return tiny.network_input(rng.random((2, SIZE, SIZE)).astype(np.float32))


def _layer_norm(x, ln):
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _weights(q, k, heads):
    """Per-head softmax(q k^T / sqrt(d)), a list of [B, T, T]."""
    d = q.shape[-1] // heads
    return [torch.softmax(q[..., h * d:(h + 1) * d] @ k[..., h * d:(h + 1) * d].transpose(-2, -1) / math.sqrt(d), dim=-1)
            for h in range(heads)]


def _attend(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v, one head at a time, heads side by side."""
    d = q.shape[-1] // heads
    return torch.cat([w @ v[..., h * d:(h + 1) * d] for h, w in enumerate(_weights(q, k, heads))], dim=-1)


def reference(visual, pixels, groups):
    """The ViT forward and the V-V branch spelled out from the weights (no open_clip calls)."""
    p = visual.conv1.weight.shape[-1]
    x = F.conv2d(pixels, visual.conv1.weight, stride=p).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = _layer_norm(torch.cat([cls, x], dim=1) + visual.positional_embedding, visual.ln_pre)
    outputs, vvs, maps = [], [], None
    for block in visual.transformer.resblocks:
        attn, width = block.attn, block.attn.embed_dim
        h = _layer_norm(x, block.ln_1)
        w, b = attn.in_proj_weight, attn.in_proj_bias
        q, k, v = (h @ w[i * width:(i + 1) * width].T + b[i * width:(i + 1) * width] for i in range(3))
        maps = (sum(_weights(q, k, attn.num_heads)) / attn.num_heads, sum(_weights(v, v, attn.num_heads)) / attn.num_heads)
        vvs.append(_attend(v, v, v, attn.num_heads) @ attn.out_proj.weight.T + attn.out_proj.bias)
        x = x + _attend(q, k, v, attn.num_heads) @ attn.out_proj.weight.T + attn.out_proj.bias
        m = _layer_norm(x, block.ln_2)
        m = F.gelu(m @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias)
        x = x + m @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias
        outputs.append(x)
    m, n = groups
    z = [outputs[(j + 1) * n - 1] for j in range(m)]
    v_levels = [sum(vvs[j * n:(j + 1) * n]) for j in range(m)]
    embedding = _layer_norm(x[:, 0], visual.ln_post) @ visual.proj
    return embedding, z, v_levels, maps  # maps: head-mean (Q-K, V-V) attention of the last block


def test_tiny_model_is_grouped_like_the_paper(tiny):
    assert len(tiny.visual.transformer.resblocks) == 6 and tiny.groups == (3, 2)
    assert default_groups(12) == (4, 3)  # ViT-B/16+: m = 4 encoding blocks of n = 3


def test_without_vv_the_embedding_is_open_clips_encode_image(tiny, pixels):
    with torch.inference_mode():
        embedding, z, v = dual_path_forward(tiny.visual, pixels, tiny.groups, vv=False)
        expected = tiny.model.encode_image(pixels)
    assert v is None and len(z) == 3
    torch.testing.assert_close(embedding, expected, rtol=1e-5, atol=1e-6)


def test_levels_and_vv_match_the_independent_computation(tiny, pixels):
    with torch.inference_mode():
        ref_embedding, ref_z, ref_v, _ = reference(tiny.visual, pixels, tiny.groups)
        levels = tiny.encode_levels(pixels)
    torch.testing.assert_close(levels.embedding, ref_embedding, rtol=1e-4, atol=1e-5)
    for j in range(3):
        torch.testing.assert_close(levels.cls[j], ref_z[j][:, 0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(levels.patch_z[j], ref_z[j][:, 1:], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(levels.patch_v[j], ref_v[j][:, 1:], rtol=1e-4, atol=1e-5)
    # the V-V path is a different view of the image, not a copy of the vanilla one
    assert not torch.allclose(levels.patch_v[-1], levels.patch_z[-1], atol=1e-2)


def test_vv_branch_leaves_the_vanilla_path_and_hooks_untouched(tiny, pixels):
    with torch.inference_mode():
        embedding, _, v = dual_path_forward(tiny.visual, pixels, tiny.groups, vv=True)
        torch.testing.assert_close(embedding, tiny.model.encode_image(pixels), rtol=1e-5, atol=1e-6)
    assert v is not None
    assert all(not b._forward_hooks for b in tiny.visual.transformer.resblocks)


def test_projection_of_the_last_class_token_is_the_clip_embedding(tiny, pixels):
    levels = tiny.encode_levels(pixels)
    torch.testing.assert_close(levels.project(levels.cls[-1]), tiny.encode_image(pixels), rtol=1e-5, atol=1e-5)
    assert levels.project(levels.patch_v[0]).shape == (2, 16, tiny.model.visual.output_dim)
    assert levels.grid == (4, 4)


def test_sequence_first_attention_layout_gives_the_same_features(pixels):
    model = load_backbone("semnb-tiny", image_size=SIZE, seed=0)
    before = model.encode_levels(pixels)
    model.visual.transformer.batch_first = False  # the layout older open_clip versions used
    for block in model.visual.transformer.resblocks:
        block.attn.batch_first = False
    after = model.encode_levels(pixels)
    torch.testing.assert_close(after.embedding, before.embedding, rtol=1e-5, atol=1e-6)
    for j in range(3):
        torch.testing.assert_close(after.patch_z[j], before.patch_z[j], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(after.patch_v[j], before.patch_v[j], rtol=1e-5, atol=1e-6)


def test_attention_maps_match_the_independent_computation(tiny, pixels):
    qk, vv = tiny.attention_maps(pixels, block=-1)
    with torch.inference_mode():
        ref_qk, ref_vv = reference(tiny.visual, pixels, tiny.groups)[3]
    assert qk.shape == vv.shape == (2, 17, 17)
    torch.testing.assert_close(qk, ref_qk, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vv, ref_vv, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(qk, vv, atol=1e-3)


def test_bf16_features_stay_close_to_fp32(pixels):
    model = load_backbone("semnb-tiny", image_size=SIZE, seed=0)
    fp32 = model.encode_levels(pixels)
    model.precision = "bf16"
    bf16 = model.encode_levels(pixels)
    assert F.cosine_similarity(fp32.embedding, bf16.embedding, dim=-1).min() > 0.99
    assert F.cosine_similarity(fp32.patch_v[-1], bf16.patch_v[-1], dim=-1).min() > 0.98
    assert not torch.equal(fp32.embedding, bf16.embedding)  # bf16 really ran


def test_subset_and_concat_keep_image_order(tiny, pixels):
    levels = tiny.encode_levels(pixels)
    swapped = levels.subset([1, 0])
    joined = type(levels).concat([swapped.subset([1]), swapped.subset([0])])
    for j in range(3):
        torch.testing.assert_close(joined.patch_v[j], levels.patch_v[j])
    torch.testing.assert_close(joined.embedding, levels.embedding)


def test_features_can_feed_a_trained_layer_and_the_projection(tiny, pixels):
    levels = tiny.encode_levels(pixels)
    layer = torch.nn.Linear(64, 64)
    loss = levels.project(layer(levels.patch_z[0])).square().mean()
    loss.backward()  # works: features are ordinary tensors, gradients reach the layer only
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.model.parameters())


def test_windows_cover_the_grid_and_the_whole_grid_window_is_the_image_embedding():
    assert window_indices((3, 3), 2).tolist() == [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    model = load_backbone("semnb-tiny", device="cpu", image_size=64)
    pixels = [np.random.default_rng(i).random((64, 64)).astype(np.float32) for i in range(2)]
    windows = model.encode_windows(pixels, sizes=(2, 3))
    h, w = model.grid
    assert windows[2].shape[:2] == (2, (h - 1) * (w - 1)) and windows[3].shape[:2] == (2, (h - 2) * (w - 2))
    whole = window_embeddings(model.visual, model.network_input(pixels), (h,))[h][:, 0]
    torch.testing.assert_close(whole, model.encode_image(pixels), atol=1e-5, rtol=1e-5)

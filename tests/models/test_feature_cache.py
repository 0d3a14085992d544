"""The feature cache: keyed by content and settings, exact on reload, safe on disk."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from semnb.errors import SemnbInputError
from semnb.models import (
    FeatureCache,
    cached_text_embeddings,
    default_cache_dir,
    encode_images,
    load_backbone,
)

SIZE = 64


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("semnb-tiny", image_size=SIZE, seed=0)


@pytest.fixture
def images():
    return list(np.random.default_rng(0).random((3, 48, 48)).astype(np.float32))


def _files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_second_pass_reads_the_disk_and_gives_identical_features(tiny, images, tmp_path):
    cache = FeatureCache(tmp_path)
    first = encode_images(tiny, images, cache, batch_size=2)
    assert (cache.hits, cache.misses) == (0, 3) and len(_files(tmp_path)) == 3
    second = encode_images(tiny, images, cache, batch_size=2)
    assert (cache.hits, cache.misses) == (3, 3)
    for a, b in zip(first.patch_v + first.patch_z + first.cls, second.patch_v + second.patch_z + second.cls):
        assert torch.equal(a, b)
    assert second.grid == (4, 4) and second.has_text
    torch.testing.assert_close(second.project(second.cls[-1]), second.embedding, rtol=2e-3, atol=2e-3)


def test_cached_features_are_the_fresh_ones_rounded_to_float16(tiny, images, tmp_path):
    fresh = encode_images(tiny, images, cache=None)
    cached = encode_images(tiny, images, FeatureCache(tmp_path))
    assert torch.equal(cached.patch_v[1], fresh.patch_v[1].half().float())
    exact = encode_images(tiny, images, FeatureCache(tmp_path / "f32", store_dtype="float32"))
    assert torch.equal(exact.patch_v[1], fresh.patch_v[1])


def test_key_changes_with_image_precision_weights_and_size(tiny, images, tmp_path):
    cache = FeatureCache(tmp_path)
    encode_images(tiny, images[:1], cache)
    encode_images(tiny, images[1:2], cache)  # other content
    tiny.precision = "bf16"
    try:
        encode_images(tiny, images[:1], cache)  # other precision
    finally:
        tiny.precision = "fp32"
    encode_images(load_backbone("semnb-tiny", image_size=SIZE, seed=1), images[:1], cache)  # other weights
    encode_images(load_backbone("semnb-tiny", image_size=96, seed=0), images[:1], cache)  # other size
    assert cache.misses == 5 and cache.hits == 0 and len(_files(tmp_path)) == 5


def test_a_reordered_subset_is_served_from_the_cache(tiny, images, tmp_path):
    cache = FeatureCache(tmp_path)
    full = encode_images(tiny, images, cache)
    part = encode_images(tiny, [images[2], images[0]], cache)
    assert cache.hits == 2
    assert torch.equal(part.patch_z[0], full.subset([2, 0]).patch_z[0])


def test_unreadable_entry_is_recomputed_with_a_warning(tiny, images, tmp_path):
    cache = FeatureCache(tmp_path)
    first = encode_images(tiny, images[:1], cache)
    (entry,) = _files(tmp_path)
    entry.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="unreadable"):
        again = encode_images(tiny, images[:1], cache)
    assert torch.equal(again.embedding, first.embedding)
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_cache_files_hold_plain_arrays_only(tiny, images, tmp_path):
    encode_images(tiny, images[:1], FeatureCache(tmp_path))
    (entry,) = _files(tmp_path)
    with np.load(entry, allow_pickle=False) as data:
        assert {"embedding", "grid", "cls_0", "z_2", "v_2"} <= set(data.files)
        assert data["z_0"].dtype == np.float16 and data["z_0"].shape == (16, 64)


def test_default_directory_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMNB_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert FeatureCache().root == tmp_path / "c"
    with pytest.raises(SemnbInputError):
        FeatureCache(tmp_path, store_dtype="int8")


def test_text_embeddings_are_cached_per_prompt_list(tiny, tmp_path):
    cache = FeatureCache(tmp_path)
    a = cached_text_embeddings(tiny, ["a wafer", "a scratched wafer"], cache)
    b = cached_text_embeddings(tiny, ["a wafer", "a scratched wafer"], cache)
    c = cached_text_embeddings(tiny, ["a scratched wafer", "a wafer"], cache)
    assert cache.hits == 1 and cache.misses == 2
    assert torch.equal(a, b) and torch.equal(a[0], c[1])
    torch.testing.assert_close(a, tiny.encode_texts(["a wafer", "a scratched wafer"]), rtol=2e-3, atol=2e-3)


def test_bad_images_are_refused_with_the_index(tiny):
    with pytest.raises(SemnbInputError, match=r"images\[1\]"):
        encode_images(tiny, [np.zeros((8, 8)), np.full((8, 8), 3.0)])
    with pytest.raises(SemnbInputError, match="empty"):
        encode_images(tiny, [])


def test_uint8_rgb_and_float_gray_inputs_are_the_same_image(tiny, tmp_path):
    gray8 = (np.random.default_rng(3).random((40, 40)) * 255).astype(np.uint8)
    rgb8 = np.repeat(gray8[..., None], 3, axis=-1)
    cache = FeatureCache(tmp_path)
    encode_images(tiny, [gray8.astype(np.float32) / 255], cache)
    encode_images(tiny, [gray8, rgb8], cache)
    assert cache.misses == 1 and cache.hits == 2  # one content hash for all three spellings


def test_the_key_holds_the_precision_but_not_the_device(tiny, tmp_path):
    """Features made on a GPU serve a CPU run with the same weights and precision, and the other way round."""
    from dataclasses import replace

    from semnb.hardware import Compute

    cache = FeatureCache(tmp_path)
    on_cpu = cache.key(tiny, "image", b"pixels")
    saved = tiny.compute
    try:
        tiny.compute = Compute(torch.device("cuda:0"), "fp32")  # only the key is computed: no GPU needed
        assert cache.key(tiny, "image", b"pixels") == on_cpu
        tiny.compute = replace(tiny.compute, precision="bf16")
        assert cache.key(tiny, "image", b"pixels") != on_cpu
    finally:
        tiny.compute = saved


def test_worker_processes_and_a_halved_batch_give_the_same_features(tiny, images, monkeypatch):
    plain = encode_images(tiny, images, batch_size=2)
    with_workers = encode_images(tiny, images, batch_size=2, workers=2)
    encode = tiny.encode_levels
    calls = []

    def out_of_memory_above_one(pixels, **kwargs):
        calls.append(len(pixels))
        if len(pixels) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return encode(pixels, **kwargs)

    monkeypatch.setattr(tiny, "encode_levels", out_of_memory_above_one)
    with pytest.warns(RuntimeWarning, match="batches are halved to 1 image and retried"):
        halved = encode_images(tiny, images, batch_size=2)
    assert calls == [2, 1, 1, 1]  # halved once, then kept at 1 for the next batch
    for other in (with_workers, halved):
        for a, b in zip(plain.patch_z + plain.patch_v + [plain.embedding], other.patch_z + other.patch_v + [other.embedding]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

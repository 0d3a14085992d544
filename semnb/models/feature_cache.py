"""A disk cache of encoded features, so shots, seeds and ablations never re-encode an image.

Each image's features live in one `.npz` file whose name is a hash of everything that
decides them: the bytes of the resized image the network saw, the backbone name, the
weights really loaded, the precision, the image size and the level grouping. Change any
of these and the key changes; nothing is ever looked up by file name or position.

Features are stored as float16 by default (half the disk of float32, a rounding of about
5e-4 relative, far below the fp32/bf16 drift). Features are rounded the same way whether
they come from the disk or were just computed, so a first and a second run agree exactly.
Files are written atomically and read with `allow_pickle=False`.

Taught in: 03_vv_attention.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from semnb.errors import SemnbInputError
from semnb.hardware import ShrinkingBatches
from semnb.io_utils import atomic_path
from semnb.models.backbone import Backbone
from semnb.models.batches import Source, resized_batches
from semnb.models.levels import EncodedLevels
from semnb.models.pixels import normalize

CACHE_ENV = "SEMNB_CACHE_DIR"
FORMAT_VERSION = "1"
STORE_DTYPES = ("float16", "float32")


def default_cache_dir() -> Path:
    """$SEMNB_CACHE_DIR, else ~/.cache/semnb.

    Taught in: 03_vv_attention.
    """
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "semnb").expanduser()


class FeatureCache:
    """Features on disk under `root` (default: `default_cache_dir()`), one file per image or prompt set.

    Taught in: 03_vv_attention.
    """

    def __init__(self, root: str | os.PathLike | None = None, store_dtype: str = "float16"):
        if store_dtype not in STORE_DTYPES:
            raise SemnbInputError("store_dtype", f"got {store_dtype!r}", f"use one of {STORE_DTYPES}")
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.store_dtype = store_dtype
        self.hits = 0
        self.misses = 0

    def key(self, backbone: Backbone, kind: str, payload: bytes) -> str:
        """Hash of the payload and every backbone setting that changes the features.

        Taught in: 03_vv_attention.
        """
        digest = hashlib.sha256()
        for part in (FORMAT_VERSION, kind, backbone.name, backbone.weights, backbone.precision,
                     str(backbone.image_size), repr(getattr(backbone, "groups", None)), self.store_dtype):
            digest.update(part.encode("utf-8") + b"\0")
        digest.update(payload)
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The stored arrays, or None when absent or unreadable (then it is recomputed and rewritten).

        Taught in: 03_vv_attention.
        """
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError) as err:
            warnings.warn(f"feature cache file {path} is unreadable ({err}); recomputing it", stacklevel=2)
            return None

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> Path:
        """Write one entry atomically (a crash never leaves half a file behind).

        Taught in: 03_vv_attention.
        """
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        with atomic_path(self.path(key)) as tmp:
            tmp.write_bytes(buffer.getvalue())
        return self.path(key)


def _image_arrays(levels: EncodedLevels, i: int, cache: FeatureCache) -> dict[str, np.ndarray]:
    arrays = {"embedding": levels.embedding[i].numpy(), "grid": np.asarray(levels.grid, dtype=np.int64)}
    for j in range(levels.num_levels):
        arrays[f"cls_{j}"] = levels.cls[j][i].numpy()
        arrays[f"z_{j}"] = levels.patch_z[j][i].numpy()
        if levels.patch_v is not None:
            arrays[f"v_{j}"] = levels.patch_v[j][i].numpy()
    return {k: (v if k == "grid" else v.astype(cache.store_dtype)) for k, v in arrays.items()}


def _stack(items: Sequence[dict[str, np.ndarray]], name: str) -> torch.Tensor:
    return torch.from_numpy(np.stack([item[name] for item in items]).astype(np.float32))


def _levels_from_arrays(items: Sequence[dict[str, np.ndarray]], backbone: Backbone) -> EncodedLevels:
    m = sum(1 for k in items[0] if k.startswith("cls_"))
    has_v = "v_0" in items[0]
    return EncodedLevels(
        cls=[_stack(items, f"cls_{j}") for j in range(m)],
        patch_z=[_stack(items, f"z_{j}") for j in range(m)],
        patch_v=[_stack(items, f"v_{j}") for j in range(m)] if has_v else None,
        embedding=_stack(items, "embedding"),
        grid=tuple(int(g) for g in items[0]["grid"]),
        projector=backbone.project if backbone.has_text else None,
    )


def encode_images(backbone: Backbone, pixels: Source, cache: FeatureCache | None = None,
                  batch_size: int = 16, progress: bool = False, workers: int = 0) -> EncodedLevels:
    """Multi-level features of many images (arrays or files), in batches, through `cache` when given.

    Without a cache the features are exact float32; with one they are rounded to its storage
    type on every call, so cached and fresh results are identical. `workers` processes read
    and resize the next batches while the backbone encodes (`models.batches`); on
    out-of-memory the batch is halved and retried (`hardware.ShrinkingBatches`).

    Taught in: 03_vv_attention.
    """
    sizer = ShrinkingBatches(batch_size, what="image")
    batches = resized_batches(pixels, backbone.image_size, batch_size, workers,
                              pin_memory=backbone.device.type == "cuda")

    def encode(gray: torch.Tensor) -> EncodedLevels:
        return backbone.encode_levels(normalize(gray, backbone.mean, backbone.std))

    parts: list[EncodedLevels] = []
    items: list[dict[str, np.ndarray]] = []
    with torch.device("cpu"):  # the loader draws its workers' seed with a CPU tensor, whatever the default device
        batch_iterator = iter(batches)
    for gray in tqdm(batch_iterator, total=len(batches), desc=f"encode {backbone.name}", disable=not progress):
        if cache is None:
            parts += sizer.map(encode, gray)
        else:
            items += _through_cache(cache, backbone, gray, sizer, encode)
    return EncodedLevels.concat(parts) if cache is None else _levels_from_arrays(items, backbone)


def _through_cache(cache: FeatureCache, backbone: Backbone, gray: torch.Tensor, sizer: ShrinkingBatches,
                   encode: Callable[[torch.Tensor], EncodedLevels]) -> list[dict[str, np.ndarray]]:
    """One batch's stored arrays: read the ones the cache has, encode and store the others."""
    keys = [cache.key(backbone, "image", g.numpy().tobytes()) for g in gray]
    items: list[dict[str, np.ndarray] | None] = [cache.load(k) for k in keys]
    missing = [i for i, item in enumerate(items) if item is None]
    cache.hits += len(keys) - len(missing)
    cache.misses += len(missing)
    done = 0
    for levels in sizer.map(encode, gray[missing]):
        for row in range(levels.num_images):
            i = missing[done + row]
            items[i] = _image_arrays(levels, row, cache)
            cache.save(keys[i], items[i])
        done += levels.num_images
    return items


def cached_text_embeddings(backbone: Backbone, prompts: Sequence[str], cache: FeatureCache | None = None) -> torch.Tensor:
    """`backbone.encode_texts(prompts)`, stored in the cache under a hash of the prompt list.

    Taught in: 02_prompts.
    """
    if cache is None:
        return backbone.encode_texts(prompts)
    if isinstance(prompts, str) or len(prompts) == 0:
        raise SemnbInputError("prompts", f"got {prompts!r}", "pass a non-empty list of strings")
    key = cache.key(backbone, "text", json.dumps(list(prompts)).encode("utf-8"))
    stored = cache.load(key)
    if stored is None:
        array = backbone.encode_texts(prompts).numpy().astype(cache.store_dtype)
        cache.save(key, {"text": array})
        cache.misses += 1
    else:
        array = stored["text"]
        cache.hits += 1
    return F.normalize(torch.from_numpy(array.astype(np.float32)), dim=-1)

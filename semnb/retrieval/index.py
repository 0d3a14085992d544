"""A searchable, storable collection of image embeddings: exact or approximate faiss search, query expansion.

Why a store: encoding a collection is the slow part of retrieval (a CNN pass per image);
searching it is fast. So every image is embedded once, and the embeddings, paths, labels
and magnifications are kept on disk (`save`/`load`: an .npz of arrays and a .json of text,
no pickle) and reloaded without touching the model.

Search is Euclidean on the stored vectors (for standardised embeddings, all of one length,
this is the cosine ranking). `approximate=None` uses an exact `IndexFlatL2`; "hnsw" and "ivf"
build faiss's graph or inverted-file index, worth it only for large collections
(benchmarks/bench_retrieval_latency.py says from where).

Query expansion (average query expansion): the query is averaged with its 5 nearest
neighbours and searched again, which pulls in images that resemble the neighbours more than
the query itself (another magnification of the same structure, say).

Device: on a CUDA device, and where the installed faiss has GPU support, the exact and IVF
indexes search on the GPU (HNSW has no GPU version in faiss and stays on the CPU); otherwise
the CPU index, said once. What is saved is the embeddings, never a faiss index, so a saved
collection reloads on any machine, with or without a GPU.

Taught in: 07_retrieval.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import torch

from semnb.errors import SemnbInputError
from semnb.hardware import resolve_device
from semnb.io_utils import atomic_path, write_json_atomic

ARRAYS_FILE = "embeddings.npz"
TEXT_FILE = "index.json"
APPROXIMATE_KINDS = (None, "hnsw", "ivf")
FORMAT_VERSION = 1
GPU_KINDS = (None, "ivf")
"""The index kinds faiss can search on a GPU (HNSW cannot)."""
_GPU_RESOURCES: dict[int, object] = {}  # one faiss.StandardGpuResources per GPU: each reserves scratch memory
_SAID_NO_GPU_FAISS = False


class RetrievalIndex:
    """Embeddings [N, M] float32 with, per row, its path, label (-1 = none) and magnification (NaN = unknown).

    `device` (`auto`, `cpu`, `cuda`, `cuda:N`): where faiss searches (`self.device` says where
    it really does); the embeddings themselves always stay a numpy array.

    Taught in: 07_retrieval.
    """

    def __init__(self, embeddings, paths: Sequence[str | Path], labels=None, class_names: Sequence[str] = (),
                 magnifications=None, approximate: str | None = None, info: dict | None = None,
                 device: str | torch.device = "auto"):
        self.embeddings = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
        if self.embeddings.ndim != 2 or len(self.embeddings) == 0:
            raise SemnbInputError("embeddings", f"has shape {self.embeddings.shape}", "pass one embedding row per image")
        if not np.all(np.isfinite(self.embeddings)):
            raise SemnbInputError("embeddings", "contain NaN or infinite values", "re-encode the images")
        n = len(self.embeddings)
        self.paths = [str(p) for p in paths]
        self.labels = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        self.magnifications = (np.full(n, np.nan) if magnifications is None
                               else np.asarray(magnifications, dtype=np.float64))
        for name, values in (("paths", self.paths), ("labels", self.labels), ("magnifications", self.magnifications)):
            if len(values) != n:
                raise SemnbInputError(name, f"{len(values)} entries for {n} embeddings", "pass one entry per image")
        if approximate not in APPROXIMATE_KINDS:
            raise SemnbInputError("approximate", f"got {approximate!r}", "use None (exact), 'hnsw' or 'ivf'")
        self.class_names = list(class_names)
        self.approximate = approximate
        self.info = dict(info or {})
        self.device = faiss_device(device, approximate)
        self._index = build_faiss_index(self.embeddings, approximate, device=self.device)

    def __len__(self) -> int:
        return len(self.embeddings)

    def __repr__(self) -> str:
        kind = self.approximate or "exact"
        return f"RetrievalIndex({len(self)} images, {self.embeddings.shape[1]} dims, {kind} search on {self.device})"

    @property
    def dims(self) -> int:
        return int(self.embeddings.shape[1])

    # ---------------------------------------------------------------- search

    def search(self, queries, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest stored images of each query: (squared distances [Q, k], row ids [Q, k]), nearest first.

        `exclude[q]` is a row id that query q must not get back (itself, when the query is
        a stored image); -1 or None excludes nothing. A query from outside the collection
        needs no exclusion. Ids are -1 where fewer than k images exist.

        Taught in: 07_retrieval.
        """
        queries = self._queries(queries)
        k = self._check_k(k, exclude is not None)
        exclude = self._exclusions(exclude, len(queries))
        extra = int(np.any(exclude >= 0))
        distances, ids = self._index.search(queries, min(k + extra, len(self)))
        if extra:
            distances, ids = _drop_excluded(distances, ids, exclude, k)
        return distances[:, :k], ids[:, :k]

    def search_expanded(self, queries, k: int, exclude=None, n_expand: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Average query expansion: mean of the query and its `n_expand` nearest, then `search` again.

        Taught in: 07_retrieval.
        """
        queries = self._queries(queries)
        if n_expand < 1:
            return self.search(queries, k, exclude)
        _, neighbours = self.search(queries, n_expand, exclude)
        expanded = expand_queries(queries, self.embeddings, neighbours)
        return self.search(expanded, k, exclude)

    def labels_of(self, ids: np.ndarray) -> np.ndarray:
        """Labels of result ids (-1 for missing results)."""
        return np.where(ids >= 0, self.labels[np.maximum(ids, 0)], -1)

    # ---------------------------------------------------------------- storage

    def save(self, folder: str | Path) -> Path:
        """Write `embeddings.npz` (arrays) and `index.json` (paths, class names, info) into `folder`.

        Each file is written atomically; the JSON, written last, holds the SHA-256 of the
        .npz so `load` detects a pair from different runs.

        Taught in: 07_retrieval.
        """
        folder = Path(folder)
        with atomic_path(folder / ARRAYS_FILE) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, embeddings=self.embeddings, labels=self.labels, magnifications=self.magnifications)
            digest = _sha256(tmp)
        write_json_atomic(folder / TEXT_FILE, {
            "format": FORMAT_VERSION,
            "n_images": len(self),
            "dims": self.dims,
            "arrays_sha256": digest,
            "class_names": self.class_names,
            "approximate": self.approximate,
            "info": self.info,
            "paths": self.paths,
        })
        return folder

    @classmethod
    def load(cls, folder: str | Path, approximate: str | None = "stored",
             device: str | torch.device = "auto") -> RetrievalIndex:
        """Read a saved index (no model, no images needed); `approximate` overrides the stored kind.

        The faiss index is rebuilt from the stored embeddings on `device`, wherever it was saved.

        Taught in: 07_retrieval.
        """
        folder = Path(folder)
        arrays_path, text_path = folder / ARRAYS_FILE, folder / TEXT_FILE
        for path in (arrays_path, text_path):
            if not path.is_file():
                raise SemnbInputError(path, "is missing", "save the index with RetrievalIndex.save(folder) first")
        try:
            text = json.loads(text_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SemnbInputError(text_path, f"is not valid JSON ({error})", "save the index again") from error
        if text.get("arrays_sha256") != _sha256(arrays_path):
            raise SemnbInputError(arrays_path, f"does not match {text_path.name} (different runs or a damaged file)",
                                  "save the index again")
        with np.load(arrays_path, allow_pickle=False) as arrays:
            embeddings, labels, mags = arrays["embeddings"], arrays["labels"], arrays["magnifications"]
        kind = text.get("approximate") if approximate == "stored" else approximate
        return cls(embeddings, text["paths"], labels, text.get("class_names", []), mags, kind, text.get("info"),
                   device)

    # ---------------------------------------------------------------- checks

    def _queries(self, queries) -> np.ndarray:
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.dims:
            raise SemnbInputError("queries", f"have shape {queries.shape}, the index holds {self.dims}-d embeddings",
                                  "embed the queries with the model that built the index")
        if not np.all(np.isfinite(queries)):
            raise SemnbInputError("queries", "contain NaN or infinite values", "re-encode the query images")
        return np.ascontiguousarray(queries)

    def _check_k(self, k: int, excluding: bool) -> int:
        available = len(self) - int(excluding)
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= available:
            raise SemnbInputError("--k", f"asks for {k} results but the collection offers {available}",
                                  f"use 1 <= k <= {available}")
        return int(k)

    def _exclusions(self, exclude, n_queries: int) -> np.ndarray:
        if exclude is None:
            return np.full(n_queries, -1, np.int64)
        exclude = np.asarray(exclude, dtype=np.int64).reshape(-1)
        if len(exclude) != n_queries:
            raise SemnbInputError("exclude", f"{len(exclude)} ids for {n_queries} queries", "pass one id (or -1) per query")
        return exclude


def faiss_has_gpu() -> bool:
    """True where the installed faiss was built with GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def faiss_device(device: str | torch.device = "auto", approximate: str | None = None) -> torch.device:
    """Where faiss searches when asked for `device`: that CUDA device if faiss can search there, else the CPU.

    Says once per process when a CUDA device was asked for but faiss has no GPU support.

    Taught in: 07_retrieval.
    """
    device = resolve_device(device)
    if device.type != "cuda" or approximate not in GPU_KINDS:
        return torch.device("cpu")
    if not faiss_has_gpu():
        _say_no_gpu_faiss(device)
        return torch.device("cpu")
    return device


def build_faiss_index(embeddings: np.ndarray, approximate: str | None = None, hnsw_links: int = 32,
                      ivf_lists: int | None = None, seed: int = 0, device: str | torch.device = "cpu") -> faiss.Index:
    """An exact (`IndexFlatL2`) or approximate ("hnsw": `IndexHNSWFlat`; "ivf": `IndexIVFFlat`) faiss index.

    IVF: `ivf_lists` lists (default about 4*sqrt(N); k-means on the vectors, seeded), probing 1/16 of them.
    HNSW: `hnsw_links` neighbours per node, efSearch 64. Built on the CPU (the same seeded
    k-means everywhere), then copied to the GPU where `faiss_device(device)` says faiss can.

    Taught in: 07_retrieval.
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dims = embeddings.shape
    if approximate is None:
        index = faiss.IndexFlatL2(dims)
    elif approximate == "hnsw":
        index = faiss.IndexHNSWFlat(dims, hnsw_links)
        index.hnsw.efConstruction = 64
        index.hnsw.efSearch = 64
    elif approximate == "ivf":
        lists = ivf_lists or max(1, min(int(4 * np.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dims), dims, lists)
        index.cp.seed = int(seed)
        index.train(embeddings)
        index.nprobe = max(1, lists // 16)
    else:
        raise SemnbInputError("approximate", f"got {approximate!r}", "use None (exact), 'hnsw' or 'ivf'")
    index.add(embeddings)
    device = faiss_device(device, approximate)
    if device.type != "cuda":
        return index
    gpu = device.index or 0
    if gpu not in _GPU_RESOURCES:
        _GPU_RESOURCES[gpu] = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(_GPU_RESOURCES[gpu], gpu, index)


def _say_no_gpu_faiss(device: torch.device) -> None:
    """Warn once per process that the search stays on the CPU although a GPU was asked for."""
    global _SAID_NO_GPU_FAISS
    if not _SAID_NO_GPU_FAISS:
        _SAID_NO_GPU_FAISS = True
        warnings.warn(f"--device {device}: the installed faiss {faiss.__version__} has no GPU support, so retrieval "
                      "searches on the CPU (the embeddings are still computed on the GPU); install faiss-gpu "
                      "for GPU search", RuntimeWarning, stacklevel=3)


def expand_queries(queries: np.ndarray, embeddings: np.ndarray, neighbor_ids: np.ndarray) -> np.ndarray:
    """Each query averaged with the stored embeddings of its neighbours (ids -1 are skipped).

    Taught in: 07_retrieval.
    """
    valid = neighbor_ids >= 0
    summed = queries + np.einsum("qk,qkd->qd", valid.astype(np.float32), embeddings[np.maximum(neighbor_ids, 0)])
    return (summed / (1.0 + valid.sum(axis=1, keepdims=True))).astype(np.float32)


def _drop_excluded(distances: np.ndarray, ids: np.ndarray, exclude: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's excluded id from its results, keeping order; pad with -1 if short."""
    keep = ids != exclude[:, None]
    out_d = np.full((len(ids), k), np.inf, dtype=distances.dtype)
    out_i = np.full((len(ids), k), -1, dtype=ids.dtype)
    for q in range(len(ids)):
        kept_ids, kept_d = ids[q][keep[q]][:k], distances[q][keep[q]][:k]
        out_i[q, :len(kept_ids)], out_d[q, :len(kept_d)] = kept_ids, kept_d
    return out_d, out_i


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

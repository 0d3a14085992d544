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

An archive (millions of images, `semnb index build` over the shards of `semnb predict`) does
not fit that way: `ArchiveIndex` holds no embeddings but a faiss index (IVF-PQ codes, HNSW
below HNSW_MAX_VECTORS), built from the shards in chunks by `build_index_from_shards`, saved
with faiss.write_index and read back as it is, searched on the CPU.

Taught in: 07_retrieval.
"""
from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from semnb.errors import SemnbInputError
from semnb.hardware import resolve_device
from semnb.io_utils import atomic_path, file_sha256, write_json_atomic

ARRAYS_FILE = "embeddings.npz"
TEXT_FILE = "index.json"
APPROXIMATE_KINDS = (None, "hnsw", "ivf")
FORMAT_VERSION = 1
GPU_KINDS = (None, "ivf")
"""The index kinds faiss can search on a GPU (HNSW cannot)."""
_GPU_RESOURCES: dict[int, object] = {}  # one faiss.StandardGpuResources per GPU: each reserves scratch memory
_SAID_NO_GPU_FAISS = False


class NoveltyGate:
    """Per-query weight of an embedding's second half (semnb's general recipe: projection, then pooled features).

    Why: the trained projection ranks the labelled classes best, the pooled features rank
    classes nobody labelled best, and one fixed weight trades one against the other. So each
    query chooses: its novelty is the cosine distance of its first `dims` components (the
    projection) to the nearest of `reference` (the projections of the labelled training
    images); above `threshold` the query's second half is multiplied by `novel_scale`, else
    by `known_scale`. Inner products are linear in the query, so for a gallery whose
    embeddings all have one length, multiplying the query's half by a ranks exactly as a
    gallery and query built with that half's weight times sqrt(a) (a = 0: the projection
    alone); the stored vectors and the faiss index stay as they are. With query expansion
    the scale is chosen once from the query itself and applied to the neighbour search and to
    the expanded query (`RetrievalIndex.search_expanded`).
    `fit`: the threshold is the `quantile` of the reference's leave-one-out novelties.

    Taught in: 07_retrieval.
    """

    def __init__(self, reference, dims: int, threshold: float, second_norm: float, known_scale: float = 0.25,
                 novel_scale: float = 4.0):
        reference = np.asarray(reference, dtype=np.float32)
        if reference.ndim != 2 or len(reference) == 0 or not 0 < int(dims) <= reference.shape[1]:
            raise SemnbInputError("gate reference", f"has shape {reference.shape} for {dims} gated dims",
                                  "pass the labelled images' embeddings [N, M] with 0 < dims <= M")
        self.dims = int(dims)
        self.reference = _unit(reference[:, :self.dims])
        self.threshold, self.second_norm = float(threshold), float(second_norm)
        self.known_scale, self.novel_scale = float(known_scale), float(novel_scale)

    @classmethod
    def fit(cls, embeddings, dims: int, quantile: float = 0.7, known_scale: float = 0.25,
            novel_scale: float = 4.0) -> NoveltyGate | None:
        """The gate of labelled embeddings [N, M] (None when fewer than two: no leave-one-out novelty)."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if len(embeddings) < 2:
            return None
        if not 0 < quantile <= 1:
            raise SemnbInputError("gate quantile", f"got {quantile}", "use a fraction in (0, 1], e.g. 0.7")
        unit = _unit(embeddings[:, :dims])
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        threshold = float(np.quantile(1.0 - similarity.max(axis=1), quantile))
        second_norm = float((embeddings[:, dims:].astype(np.float64) ** 2).sum(axis=1).mean())
        return cls(embeddings, dims, threshold, second_norm, known_scale, novel_scale)

    def novelty(self, queries: np.ndarray) -> np.ndarray:
        """Cosine distance [Q] of each query's first `dims` components to the nearest reference."""
        return 1.0 - (_unit(queries[:, :self.dims]) @ self.reference.T).max(axis=1)

    def scales(self, queries: np.ndarray) -> np.ndarray:
        """The scale [Q, 1] of each query's second half."""
        return np.where(self.novelty(queries) > self.threshold, self.novel_scale, self.known_scale)[:, None]

    def apply(self, queries: np.ndarray, scales: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.hstack([queries[:, :self.dims], scales * queries[:, self.dims:]]),
                                    dtype=np.float32)

    def distances(self, queries: np.ndarray, squared: np.ndarray, scales: np.ndarray,
                  stored_second: np.ndarray | None = None) -> np.ndarray:
        """The faiss squared distances [Q, k] of the scaled queries -> squared distances in each query's metric.

        The query's metric weighs the second half's squared differences by its scale a, and
        |a q2 - g2|^2 = a |q2 - g2|^2 + (a^2 - a) |q2|^2 + (1 - a) |g2|^2, with |g2|^2 the
        stored second halves' squared length: `stored_second` [Q, k] of each result where the
        stored vectors are at hand, else `second_norm` (one length for standardised halves:
        an archive index holds only codes). So a query that is a stored image is at distance
        0, as without a gate.
        """
        second = (queries[:, self.dims:].astype(np.float64) ** 2).sum(axis=1, keepdims=True)
        stored = self.second_norm if stored_second is None else stored_second
        shift = (scales ** 2 - scales) * second + (1.0 - scales) * stored
        return np.where(np.isfinite(squared), np.maximum(squared - shift, 0.0), squared).astype(np.float32)

    def record(self) -> dict:
        """The gate's numbers but its reference (JSON)."""
        return {"dims": self.dims, "threshold": self.threshold, "second_norm": self.second_norm,
                "known_scale": self.known_scale, "novel_scale": self.novel_scale}


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class RetrievalIndex:
    """Embeddings [N, M] float32 with, per row, its path, label (-1 = none) and magnification (NaN = unknown).

    `device` (`auto`, `cpu`, `cuda`, `cuda:N`): where faiss searches (`self.device` says where
    it really does); the embeddings themselves always stay a numpy array.

    Taught in: 07_retrieval.
    """

    def __init__(self, embeddings, paths: Sequence[str | Path], labels=None, class_names: Sequence[str] = (),
                 magnifications=None, approximate: str | None = None, info: dict | None = None,
                 device: str | torch.device = "auto", gate: NoveltyGate | None = None):
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
        if gate is not None and gate.dims >= self.embeddings.shape[1]:
            raise SemnbInputError("gate", f"gates {gate.dims} of {self.embeddings.shape[1]} dims", "fit it on these embeddings")
        self.gate = gate
        self.device = faiss_device(device, approximate)
        self._index = build_faiss_index(self.embeddings, approximate, device=self.device)

    def __len__(self) -> int:
        return len(self.embeddings)

    def __repr__(self) -> str:
        kind = self.approximate or "exact"
        gated = ", novelty-gated queries" if self.gate else ""
        return f"RetrievalIndex({len(self)} images, {self.embeddings.shape[1]} dims, {kind} search on {self.device}{gated})"

    @property
    def dims(self) -> int:
        return int(self.embeddings.shape[1])

    # ---------------------------------------------------------------- search

    def search(self, queries, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest stored images of each query: (squared distances [Q, k], row ids [Q, k]), nearest first.

        `exclude[q]` is a row id that query q must not get back (itself, when the query is
        a stored image); -1 or None excludes nothing. A query from outside the collection
        needs no exclusion. Ids are -1 where fewer than k images exist. With a `gate`, each
        query's second half is scaled by its gate first, and the distances are in each query's
        metric (`NoveltyGate.distances`).

        Taught in: 07_retrieval.
        """
        queries = self._queries(queries)
        if self.gate is None:
            return self._search_vectors(queries, k, exclude)
        scales = self.gate.scales(queries)
        return self._gated_results(queries, *self._search_vectors(self.gate.apply(queries, scales), k, exclude), scales)

    def _search_vectors(self, queries: np.ndarray, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        k = self._check_k(k, exclude is not None)
        exclude = self._exclusions(exclude, len(queries))
        extra = int(np.any(exclude >= 0))
        distances, ids = self._index.search(queries, min(k + extra, len(self)))
        if extra:
            distances, ids = _drop_excluded(distances, ids, exclude, k)
        return distances[:, :k], ids[:, :k]

    def search_expanded(self, queries, k: int, exclude=None, n_expand: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Average query expansion: mean of the query and its `n_expand` nearest, then `search` again.

        With a `gate`, the scale chosen from the query itself weighs both searches: the
        neighbours are found with the scaled query, the expanded query (the plain mean) is
        scaled the same way; i.e. the expansion of a per-query pooled weight.

        Taught in: 07_retrieval.
        """
        queries = self._queries(queries)
        if n_expand < 1:
            return self.search(queries, k, exclude)
        if self.gate is None:
            _, neighbours = self.search(queries, n_expand, exclude)
            return self.search(expand_queries(queries, self.embeddings, neighbours), k, exclude)
        scales = self.gate.scales(queries)
        _, neighbours = self._search_vectors(self.gate.apply(queries, scales), n_expand, exclude)
        expanded = expand_queries(queries, self.embeddings, neighbours)
        return self._gated_results(expanded, *self._search_vectors(self.gate.apply(expanded, scales), k, exclude), scales)

    def _gated_results(self, queries: np.ndarray, squared: np.ndarray, ids: np.ndarray,
                       scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distances in each query's metric from the stored vectors' own lengths, results re-sorted by them.

        Why re-sort: the scaled query ranks exactly as its metric where every stored second
        half has one length; standardised halves have it up to their epsilon, so near-ties
        can come back out of order.
        """
        stored_second = (self.embeddings[np.maximum(ids, 0), self.gate.dims:].astype(np.float64) ** 2).sum(-1)
        distances = self.gate.distances(queries, squared, scales, stored_second)
        order = np.argsort(distances, axis=1, kind="stable")
        return np.take_along_axis(distances, order, 1), np.take_along_axis(ids, order, 1)

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
                gate = {} if self.gate is None else {"gate_reference": self.gate.reference}
                np.savez(handle, embeddings=self.embeddings, labels=self.labels, magnifications=self.magnifications,
                         **gate)
            digest = file_sha256(tmp)
        write_json_atomic(folder / TEXT_FILE, {
            "format": FORMAT_VERSION,
            "n_images": len(self),
            "dims": self.dims,
            "arrays_sha256": digest,
            "class_names": self.class_names,
            "approximate": self.approximate,
            "info": self.info,
            "gate": None if self.gate is None else self.gate.record(),
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
        if text.get("arrays_sha256") != file_sha256(arrays_path):
            raise SemnbInputError(arrays_path, f"does not match {text_path.name} (different runs or a damaged file)",
                                  "save the index again")
        with np.load(arrays_path, allow_pickle=False) as arrays:
            embeddings, labels, mags = arrays["embeddings"], arrays["labels"], arrays["magnifications"]
            gate = NoveltyGate(arrays["gate_reference"], **text["gate"]) if text.get("gate") else None
        kind = text.get("approximate") if approximate == "stored" else approximate
        return cls(embeddings, text["paths"], labels, text.get("class_names", []), mags, kind, text.get("info"),
                   device, gate)

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


# ---------------------------------------------------------------- an archive's index (millions of images)

ARCHIVE_INDEX_FILE = "index.faiss"
ARCHIVE_PATHS_FILE = "paths.parquet"
ARCHIVE_TEXT_FILE = "archive.json"
ARCHIVE_FORMAT = 1
ARCHIVE_KINDS = ("auto", "exact", "hnsw", "ivfpq")
TARGET_RECALL = 0.95
"""recall@10 against exact search that `build_archive_index` tunes nprobe (IVF-PQ) or efSearch (HNSW) to reach."""
HNSW_MAX_VECTORS = 1_000_000
"""`kind="auto"` builds HNSW below this many vectors, IVF-PQ from here on (the measurement: `build_archive_index`)."""
ID_BYTES = 8
PQ_MIN_TRAIN = 39 * 256  # faiss wants 39 training points per centroid; a sub-quantiser has 256
N_RECALL_QUERIES = 500
RECALL_K = 10
HNSW_EF_SEARCH = (16, 32, 64, 128, 256, 512)
HNSW_LINKS = 32
REFINE_FACTOR = 4


def ivfpq_plan(n: int, dims: int) -> dict:
    """The IVF-PQ settings for `n` vectors of `dims` dimensions, by rule (why: see `build_archive_index`).

    - nlist (inverted lists): the power of two nearest 4*sqrt(n), halved until every list has
      39 training points (faiss's k-means minimum): 1e5 -> 1024, 1e6 -> 4096;
    - m = the largest divisor of `dims` not above dims / 2 sub-quantisers of 8 bits (a code
      byte per 2 dimensions) and as many again for the refinement code (`IndexIVFPQR`: a
      second PQ of what the first leaves, re-ranking the REFINE_FACTOR * k best candidates):
      2 * m bytes + 8 of id per vector, 136 at 128-d. Measured at 1e5 128-d clustered vectors,
      1 thread (recall@10 vs exact at nprobe 2..16): PQ 16 / 32 / 64 bytes .47 / .69 / .89 and
      PQ 32 + refine 32 .88, all flat in nprobe (the codes limit them); PQ 64 + refine 64 .98;
    - training sample: min(n, max(64 * nlist, 39 * 256)) vectors, drawn at random.

    Taught in: 07_retrieval.
    """
    if n < PQ_MIN_TRAIN:
        raise SemnbInputError("--kind ivfpq", f"needs at least {PQ_MIN_TRAIN} vectors to train its codes, got {n}",
                              "use --kind hnsw or exact (or auto) for a collection this small")
    nlist = 2 ** int(round(np.log2(4 * np.sqrt(n))))
    while nlist > 1 and 39 * nlist > n:
        nlist //= 2
    m = max(d for d in range(1, dims + 1) if dims % d == 0 and d <= max(1, dims // 2))
    return {"nlist": nlist, "m": m, "m_refine": m, "bits": 8, "refine_factor": REFINE_FACTOR,
            "train_sample": min(n, max(64 * nlist, PQ_MIN_TRAIN))}


class ArchiveIndex:
    """A faiss index over an archive's embeddings, with each vector's image path; searched, saved, reloaded.

    Unlike `RetrievalIndex` it never holds the embeddings themselves (an IVF-PQ index keeps
    `record["bytes_per_vector"]`: codes + 8 bytes of id per vector), and it is saved as the faiss index itself, so
    loading reads the codes back instead of encoding millions of vectors again.
    `record`: how it was built (kind, settings, measured recall, build time).

    Taught in: 07_retrieval.
    """

    def __init__(self, index: faiss.Index, paths, record: dict):
        import pyarrow as pa

        self.index = index
        self.paths = paths if isinstance(paths, pa.ChunkedArray) else pa.chunked_array([pa.array(paths, pa.string())])
        self.record = dict(record)
        if len(self.paths) != index.ntotal:
            raise SemnbInputError("paths", f"{len(self.paths)} paths for {index.ntotal} vectors",
                                  "build the index again")

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        return (f"ArchiveIndex({len(self)} vectors, {self.index.d} dims, {self.record.get('kind')}, "
                f"{self.record.get('bytes_per_vector')} bytes/vector)")

    def search(self, queries, k: int = 10, gate: NoveltyGate | None = None) -> tuple[list[list[str | None]], np.ndarray]:
        """The k nearest archived images of each query: (paths [Q][k], squared distances [Q, k]), nearest first.

        `gate`: the query gate of the model whose predictions built the index (as
        `RetrievalIndex` applies it), so an archive answers as the model's own gallery does.

        Taught in: 07_retrieval.
        """
        queries = np.asarray(queries, dtype=np.float32)
        queries = queries[None] if queries.ndim == 1 else queries
        if queries.ndim != 2 or queries.shape[1] != self.index.d:
            raise SemnbInputError("queries", f"have shape {queries.shape}, the index holds {self.index.d}-d vectors",
                                  "embed the queries with the model whose predictions built the index")
        if not np.all(np.isfinite(queries)):
            raise SemnbInputError("queries", "contain NaN or infinite values", "re-encode the query images")
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= len(self):
            raise SemnbInputError("--k", f"asks for {k} results but the index holds {len(self)}",
                                  f"use 1 <= k <= {len(self)}")
        if gate is None:
            distances, ids = self.index.search(np.ascontiguousarray(queries), int(k))
        else:
            scales = gate.scales(queries)
            distances, ids = self.index.search(gate.apply(queries, scales), int(k))
            distances = gate.distances(queries, distances, scales)
        found = self.paths.take(np.maximum(ids, 0).reshape(-1)).to_pylist()
        paths = [[found[q * k + j] if ids[q, j] >= 0 else None for j in range(k)] for q in range(len(ids))]
        return paths, distances

    def save(self, folder: str | Path) -> Path:
        """`index.faiss` (faiss.write_index), `paths.parquet` and `archive.json` (the record and both files' SHA-256).

        Taught in: 07_retrieval.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = Path(folder)
        digests = {}
        with atomic_path(folder / ARCHIVE_INDEX_FILE) as tmp:
            faiss.write_index(self.index, str(tmp))
            digests[ARCHIVE_INDEX_FILE] = file_sha256(tmp)
        with atomic_path(folder / ARCHIVE_PATHS_FILE) as tmp:
            pq.write_table(pa.table({"path": self.paths}), tmp)
            digests[ARCHIVE_PATHS_FILE] = file_sha256(tmp)
        write_json_atomic(folder / ARCHIVE_TEXT_FILE, {"format": ARCHIVE_FORMAT, "n_vectors": len(self),
                                                       "dims": int(self.index.d), "sha256": digests, **self.record})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ArchiveIndex:
        """Read a saved archive index (faiss.read_index: the stored codes, nothing re-encoded, no image read).

        Taught in: 07_retrieval.
        """
        import pyarrow.parquet as pq

        folder = Path(folder)
        text_path = folder / ARCHIVE_TEXT_FILE
        for name in (ARCHIVE_TEXT_FILE, ARCHIVE_INDEX_FILE, ARCHIVE_PATHS_FILE):
            if not (folder / name).is_file():
                raise SemnbInputError(folder / name, "is missing", "build the index with `semnb index build` first")
        try:
            text = json.loads(text_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SemnbInputError(text_path, f"is not valid JSON ({error})", "build the index again") from error
        for name, digest in text.get("sha256", {}).items():
            if digest != file_sha256(folder / name):
                raise SemnbInputError(folder / name, f"does not match {ARCHIVE_TEXT_FILE} (another build or a damaged "
                                                     "file)", "build the index again")
        index = faiss.read_index(str(folder / ARCHIVE_INDEX_FILE))
        _apply_search_setting(index, text.get("search_setting"))
        record = {key: value for key, value in text.items() if key not in ("format", "n_vectors", "dims", "sha256")}
        return cls(index, pq.read_table(folder / ARCHIVE_PATHS_FILE).column("path"), record)


def build_archive_index(chunks, n: int, kind: str = "auto", seed: int = 0, progress: bool = False) -> ArchiveIndex:
    """Index the vectors that `chunks()` yields as (paths, float32 [c, d]) blocks, in two passes; memory flat in n.

    `chunks` is called twice (so it must yield the same rows each time): pass 1 keeps only a
    random training sample and a held-out query sample, pass 2 adds every vector and, per
    block, the exact nearest neighbours of the held-out queries. `n` is the number of rows
    (an upper bound is fine). Then nprobe (IVF-PQ) or efSearch (HNSW) is set to the smallest
    value whose recall@10 against exact search on the held-out queries (stored rows, their own
    row excluded) reaches TARGET_RECALL, and that recall is stored in `record`.

    `kind`: "exact" (IndexFlatL2), "hnsw" (IndexHNSWFlat, 32 links, efConstruction 64: the
    full vectors plus the graph), "ivfpq" (IndexIVFPQR by `ivfpq_plan`: code bytes + 8 id bytes
    per vector), or "auto": HNSW below HNSW_MAX_VECTORS (1e6), IVF-PQ from there. Why, measured
    by benchmarks/bench_index.py (128-d clustered vectors, build on 2 threads, 1000 single
    queries on 1 thread, this shared 2-core machine at load 4-8), HNSW vs IVF-PQ:
    1e4: build 5.2 s vs 216 s, median query 0.033 vs 0.122 ms, recall@10 .98 vs .98;
    1e5: build 50 s vs 172 s, median query 0.087 vs 0.079 ms, recall@10 .97 vs .96;
    bytes/vector 784 vs 144 (serialised index / N). HNSW builds faster and answers as fast at
    both sizes, so it is kept up to 1e6; from there its memory (0.8 GB per million vectors,
    5.4x IVF-PQ's) is what limits an archive, and its build at 1e6 was not measured.

    Taught in: 07_retrieval.
    """
    if kind not in ARCHIVE_KINDS:
        raise SemnbInputError("--kind", f"got {kind!r}", f"use one of {', '.join(ARCHIVE_KINDS)}")
    if kind == "auto":
        kind = "hnsw" if n < HNSW_MAX_VECTORS else "ivfpq"
    start = time.perf_counter()
    _, first = next(iter(chunks()), (None, np.empty((0, 0), np.float32)))
    plan = ivfpq_plan(n, first.shape[1]) if kind == "ivfpq" else {}
    rng = np.random.default_rng(seed)
    n_queries = min(N_RECALL_QUERIES, max(1, n // 10))
    rows = rng.permutation(n)
    query_rows, train_rows = np.sort(rows[:n_queries]), np.sort(rows[n_queries:n_queries + plan.get("train_sample", 0)])
    queries, query_ids, sample = _sample_pass(chunks, query_rows, train_rows)
    dims = queries.shape[1]
    if kind == "exact":
        index = faiss.IndexFlatL2(dims)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dims, HNSW_LINKS)
        index.hnsw.efConstruction = 64
    else:
        index = faiss.IndexIVFPQR(faiss.IndexFlatL2(dims), dims, plan["nlist"], plan["m"], plan["bits"],
                                  plan["m_refine"], plan["bits"])
        index.k_factor = REFINE_FACTOR
        for clustering in (index.cp, index.pq.cp, index.refine_pq.cp):
            clustering.seed = int(seed)
        index.train(sample)
    del sample
    paths, truth = _add_pass(chunks, index, queries, progress)
    build_s = time.perf_counter() - start
    exact_ids = _drop_excluded(*truth, query_ids, RECALL_K)[1]
    setting, recall = _tune_search(index, kind, queries, query_ids, exact_ids)
    bytes_per_vector = {"exact": 4 * dims, "hnsw": 4 * dims + 2 * HNSW_LINKS * 4,
                        "ivfpq": plan.get("m", 0) + plan.get("m_refine", 0) + ID_BYTES}[kind]
    record = {"kind": kind, "build_s": round(build_s, 2), "bytes_per_vector": bytes_per_vector,
              "search_setting": setting, f"recall@{RECALL_K}": round(recall, 4), "recall_queries": len(query_ids),
              "target_recall": TARGET_RECALL, "seed": int(seed), **plan}
    if recall < TARGET_RECALL:
        warnings.warn(f"the {kind} index reaches recall@{RECALL_K} {recall:.3f} < {TARGET_RECALL} against exact search "
                      "at its widest search setting; use --kind exact where every neighbour matters", RuntimeWarning,
                      stacklevel=2)
    return ArchiveIndex(index, paths, record)


def _sample_pass(chunks, query_rows: np.ndarray, train_rows: np.ndarray):
    """Pass 1: (held-out query vectors, their row ids, training vectors)."""
    seen, queries, query_ids, sample = 0, [], [], []
    for _, block in chunks():
        block_rows = np.arange(seen, seen + len(block))
        in_queries = np.isin(block_rows, query_rows, assume_unique=True)
        queries.append(block[in_queries])
        query_ids.append(block_rows[in_queries])
        sample.append(block[np.isin(block_rows, train_rows, assume_unique=True)])
        seen += len(block)
    if seen == 0:
        raise SemnbInputError("embeddings", "none found", "predict with a retrieval model first (it writes an "
                                                          "`embedding` column)")
    return (np.ascontiguousarray(np.concatenate(queries)), np.concatenate(query_ids),
            np.ascontiguousarray(np.concatenate(sample)))


def _add_pass(chunks, index: faiss.Index, queries: np.ndarray, progress: bool):
    """Pass 2: add every block; keep the exact RECALL_K + 1 nearest rows of each query across blocks."""
    import pyarrow as pa

    paths, offset = [], 0
    best_d = np.full((len(queries), RECALL_K + 1), np.inf, np.float32)
    best_i = np.full((len(queries), RECALL_K + 1), -1, np.int64)
    for block_paths, block in tqdm(chunks(), desc="index", disable=not progress):
        index.add(block)
        paths.append(block_paths.cast(pa.string()) if isinstance(block_paths, pa.Array)
                     else pa.array(block_paths, pa.string()))
        exact = faiss.IndexFlatL2(block.shape[1])
        exact.add(block)
        d, i = exact.search(queries, min(RECALL_K + 1, len(block)))
        best_d, best_i = np.concatenate([best_d, d], 1), np.concatenate([best_i, np.where(i >= 0, i + offset, -1)], 1)
        order = np.argsort(best_d, axis=1, kind="stable")[:, :RECALL_K + 1]
        best_d, best_i = np.take_along_axis(best_d, order, 1), np.take_along_axis(best_i, order, 1)
        offset += len(block)
    return pa.chunked_array(paths, pa.string()), (best_d, best_i)


def _tune_search(index: faiss.Index, kind: str, queries, query_ids, exact_ids) -> tuple[int | None, float]:
    """The smallest nprobe / efSearch reaching TARGET_RECALL (else the widest tried), and its recall@10."""
    from semnb import metrics

    if kind == "exact":
        return None, 1.0
    settings = HNSW_EF_SEARCH if kind == "hnsw" else [2 ** p for p in range(int(np.log2(index.nlist)) + 1)]
    best = (settings[-1], 0.0)
    for setting in settings:
        _apply_search_setting(index, setting)
        found = _drop_excluded(*index.search(queries, RECALL_K + 1), query_ids, RECALL_K)[1]
        recall = metrics.neighbor_recall(exact_ids, found)
        if recall >= TARGET_RECALL:
            return setting, recall
        if recall > best[1] + 1e-3:
            best = (setting, recall)
        elif best[1] > 0:  # no gain from a wider search: the codes, not the search, limit recall
            break
    _apply_search_setting(index, best[0])
    return best


def _apply_search_setting(index: faiss.Index, setting: int | None) -> None:
    if setting is None:
        return
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = int(setting)
    else:
        faiss.extract_index_ivf(index).nprobe = int(setting)


def read_embedding_shards(shards, chunk_rows: int = 50_000):
    """(list of parquet files, number of rows, chunks()): the `path` and `embedding` of predictions shards.

    `shards`: a `semnb predict` output folder (its `parts/` shards, else its *.parquet files),
    or parquet files. chunks() yields (paths, float32 [c, d]) `chunk_rows` rows at a time,
    rows without an embedding (images that could not be read) left out.

    Taught in: 07_retrieval.
    """
    import pyarrow.parquet as pq

    if isinstance(shards, (str, Path)) and Path(shards).is_dir():
        folder = Path(shards)
        files = sorted((folder / "parts").glob("*.parquet")) or sorted(folder.glob("*.parquet"))
    else:
        files = [Path(shards)] if isinstance(shards, (str, Path)) else [Path(f) for f in shards]
    missing = [f for f in files if not f.is_file()]
    if not files or missing:
        raise SemnbInputError(str(missing[0] if missing else shards), "holds no predictions parquet shards",
                              "pass the --out folder of `semnb predict` run with a retrieval model")
    for f in files:
        names = pq.ParquetFile(f).schema_arrow.names
        if "embedding" not in names or "path" not in names:
            raise SemnbInputError(f, "has no `embedding` (or `path`) column", "predict with a retrieval model")
    n = sum(pq.ParquetFile(f).metadata.num_rows for f in files)

    def chunks():
        for f in files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=chunk_rows, columns=["path", "embedding"]):
                yield _embedding_block(batch, f)

    return files, n, chunks


def _embedding_block(batch, source: Path):
    """A record batch's valid rows as (paths, float32 [c, d]); refuses embeddings of mixed length."""
    import pyarrow.compute as pc

    embedding = batch.column("embedding")
    valid = embedding.is_valid()
    embedding, paths = embedding.filter(valid), batch.column("path").filter(valid)
    lengths = pc.list_value_length(embedding).to_numpy()
    if len(lengths) and lengths.min() != lengths.max():
        raise SemnbInputError(source, f"holds embeddings of {lengths.min()} to {lengths.max()} dimensions",
                              "index the predictions of one model only")
    dims = int(lengths[0]) if len(lengths) else 0
    vectors = embedding.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(lengths), dims)
    return paths, vectors


def build_index_from_shards(shards, out_dir: str | Path, kind: str = "auto", chunk_rows: int = 50_000,
                            seed: int = 0, progress: bool = False) -> ArchiveIndex:
    """Index the embeddings of `semnb predict` shards (a folder or parquet files) into `out_dir`, read in chunks.

    The `semnb index build PREDICTIONS_DIR --out INDEX_DIR --kind ...` step: memory holds one
    chunk, the training sample and the index, never all embeddings. Reload with
    `ArchiveIndex.load(out_dir)`.

    Taught in: 07_retrieval.
    """
    files, n, chunks = read_embedding_shards(shards, chunk_rows)
    archive = build_archive_index(chunks, n, kind, seed, progress)
    archive.record["shards"] = [str(f) for f in files]
    archive.save(out_dir)
    return archive

"""Retrieval speed: embedding throughput and query latency, exact vs approximate faiss search.

Prints
1. embedding throughput (images/s) of the retrieval embedding (EfficientNet-Lite0, GAP,
   projection, standardising layer) on synthetic TEM images, per image size;
2. per-query latency of exact search (`IndexFlatL2`, the baseline) against approximate
   search (IVF inverted lists; HNSW graph up to --hnsw-max vectors, its build is slow on a
   shared CPU) over N stored M-dim vectors, with build time, batch throughput, recall@10
   against exact search and the latency with query expansion (two searches). The vectors are
   random but clustered (N/100 clusters, like images of many kinds of structure) and
   standardised like the embeddings; on unclustered random vectors every ANN index loses
   recall, on real embeddings it depends on how well they cluster;
3. where approximate search becomes worth it: the smallest N at which exact search with
   query expansion costs more than 10 % of embedding the query image (before that, search
   time hardly matters) and an approximate index answers at least 2x faster with
   recall@10 >= 0.9.

Run:  .venv/bin/python benchmarks/bench_retrieval_latency.py [--sizes 10000,100000,1000000] [--threads 1]
The machine is shared: run it when it is quiet, and report the thread count it prints.
"""
from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
import torch

from semnb import metrics
from semnb.data.synth_tem import ALL_CLASSES, generate_tem_image
from semnb.retrieval.embedding import (
    EmbeddingNet,
    RetrievalConfig,
    TrainedEmbedding,
    load_split_backbone,
)
from semnb.retrieval.index import build_faiss_index


def embedding_throughput(image_size: int, n_images: int, batch_size: int, seed: int) -> float:
    """Images per second through every layer of the (untrained) retrieval embedding, images already in memory."""
    rng = np.random.default_rng(seed)
    images = [generate_tem_image(ALL_CLASSES[i % len(ALL_CLASSES)], 10 ** rng.uniform(4, 6), 256, seed=i).image / 255.0
              for i in range(n_images)]
    backbone = load_split_backbone("efficientnet-lite0")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = EmbeddingNet(backbone, 1280, RetrievalConfig().dims)
    model = TrainedEmbedding("ours", net, image_size)
    model.encode(images[:batch_size], batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    model.encode(images, batch_size=batch_size)
    return n_images / (time.perf_counter() - start)


def clustered_vectors(n: int, centres: np.ndarray, rng: np.random.Generator, spread: float = 1.0) -> np.ndarray:
    """Random members of random clusters, each row standardised (zero mean, unit std) like an embedding."""
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        count = min(100_000, n - start)
        block = centres[rng.integers(0, len(centres), count)]
        block = block + spread * rng.standard_normal(block.shape, dtype=np.float32)
        block -= block.mean(axis=1, keepdims=True)
        block /= block.std(axis=1, keepdims=True)
        out[start:start + count] = block
    return out


def time_queries(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[float, float, np.ndarray]:
    """(median ms per single query, ms per query in one batch, ids of the batch search)."""
    index.search(queries[:1], k)  # warm-up
    singles = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None], k)
        singles.append(time.perf_counter() - start)
    start = time.perf_counter()
    _, ids = index.search(queries, k)
    batch = (time.perf_counter() - start) / len(queries)
    return 1e3 * float(np.median(singles)), 1e3 * batch, ids


def query_latency(sizes: list[int], dims: int, n_queries: int, k: int, kinds: list[str], hnsw_max: int,
                  seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        centres = rng.standard_normal((max(1, n // 100), dims), dtype=np.float32)
        stored = clustered_vectors(n, centres, rng)
        queries = clustered_vectors(n_queries, centres, rng)
        truth = None
        for kind in kinds:
            if kind == "hnsw" and n > hnsw_max:
                print(f"N={n:>9,d}  hnsw: skipped (building it takes too long on a shared CPU; --hnsw-max {hnsw_max:,d})")
                continue
            start = time.perf_counter()
            # about 4*sqrt(N) lists, at least 39 training points each, at most 1024 so k-means stays affordable
            lists = max(1, min(1024, int(4 * np.sqrt(n)), n // 39))
            index = build_faiss_index(stored, None if kind == "exact" else kind, ivf_lists=lists, seed=seed)
            build_s = time.perf_counter() - start
            single_ms, batch_ms, ids = time_queries(index, queries, k)
            if kind == "exact":
                truth = ids
            recall = metrics.neighbor_recall(truth, ids)
            rows.append({"n": n, "kind": kind, "build_s": build_s, "single_ms": single_ms, "batch_ms": batch_ms,
                         "expanded_ms": 2 * single_ms, f"recall_at_{k}": recall})
            print(f"N={n:>9,d} {kind:>5}: build {build_s:7.2f} s | single query {single_ms:8.3f} ms "
                  f"(with query expansion {2 * single_ms:8.3f} ms) | batched {batch_ms:7.3f} ms/query | "
                  f"recall@{k} {recall:.3f}", flush=True)
            del index
        del stored
    return rows


def crossover(rows: list[dict], k: int, embed_ms: float) -> str:
    """Where approximate search pays: exact search (with query expansion) is no longer small next to
    embedding the query (> 10 % of it) and an approximate index is >= 2x faster at recall >= 0.9."""
    lines = []
    verdict = None
    for n in sorted({r["n"] for r in rows}):
        exact = next(r for r in rows if r["n"] == n and r["kind"] == "exact")
        share = exact["expanded_ms"] / embed_ms
        lines.append(f"N={n:>9,d}: exact search with query expansion {exact['expanded_ms']:8.3f} ms = "
                     f"{100 * share:5.1f} % of embedding the query ({embed_ms:.1f} ms)")
        better = [r for r in rows if r["n"] == n and r["kind"] != "exact" and r[f"recall_at_{k}"] >= 0.9
                  and 2 * r["single_ms"] <= exact["single_ms"]]
        if verdict is None and share > 0.1 and better:
            best = min(better, key=lambda r: r["single_ms"])
            verdict = (f"approximate search ({best['kind']}) pays from N={n:,d}: {best['single_ms']:.3f} ms vs exact "
                       f"{exact['single_ms']:.3f} ms per query at recall@{k} {best[f'recall_at_{k}']:.3f}; below that, "
                       "exact search costs little next to embedding the query")
    lines.append(verdict or "approximate search did not pay at the sizes measured (exact search small next to "
                            "embedding the query, or approximate recall below 0.9)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="Stored vectors, comma-separated.")
    parser.add_argument("--dims", type=int, default=RetrievalConfig().dims)
    parser.add_argument("--kinds", default="exact,ivf,hnsw", help="exact is the baseline and must come first.")
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="Largest N for which HNSW is built.")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--image-sizes", default="128,224")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch and faiss threads (default: their own).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    print(f"threads: torch {torch.get_num_threads()}, faiss {faiss.omp_get_max_threads()} (shared CPU: figures vary)")

    rates = {}
    for size in [int(s) for s in args.image_sizes.split(",") if s]:
        rates[size] = embedding_throughput(size, args.n_images, 32, args.seed)
        print(f"embedding throughput, efficientnet-lite0 at {size}px: {rates[size]:6.1f} images/s "
              f"({args.n_images} images, batch 32)", flush=True)

    kinds = [k for k in args.kinds.split(",") if k]
    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    rows = query_latency(sizes, args.dims, args.queries, args.k, kinds, args.hnsw_max, args.seed)
    embed_ms = 1e3 / rates[min(rates)] if rates else float("nan")
    print(crossover(rows, args.k, embed_ms))


if __name__ == "__main__":
    main()

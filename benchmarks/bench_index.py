"""The archive index at scale: build time, memory, single-query latency and recall@10 of HNSW vs IVF-PQ.

Prints, per collection size N and index kind (`semnb.retrieval.index.build_archive_index`,
the index `semnb index build` writes): build time (two passes over the vectors, training on
a sample, nprobe / efSearch tuned to recall@10 >= .95 on held-out stored rows), bytes per
vector (the serialised faiss index / N: codes, ids and list or graph overhead), the median and
p95 latency of single queries (one `search` call per query, k = 10) with faiss on 1 and on
2 threads, and recall@10 of those queries against exact search (IndexFlatL2).

Vectors: 128-d, clustered (N/100 Gaussian clusters, each row standardised like an embedding),
from `bench_retrieval_latency.clustered_vectors`; the queries are new members of the same
clusters, never stored. Unclustered random vectors are harder for every approximate index.

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_index.py [--sizes 100000,1000000]
      [--kinds hnsw,ivfpq] [--threads 1,2] [--queries 1000]
The machine is shared: the load average is printed with each row.
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import faiss
import numpy as np
from bench_retrieval_latency import clustered_vectors

from semnb import metrics
from semnb.retrieval.index import build_archive_index


def array_chunks(paths: np.ndarray, vectors: np.ndarray, rows: int = 100_000):
    """The (paths, vectors) blocks `build_archive_index` reads, from arrays in memory."""
    return lambda: ((paths[s:s + rows], vectors[s:s + rows]) for s in range(0, len(vectors), rows))


def latencies_ms(index: faiss.Index, queries: np.ndarray, k: int) -> np.ndarray:
    """Milliseconds of each single-query search (after one warm-up)."""
    index.search(queries[:1], k)
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        start = time.perf_counter()
        index.search(q[None], k)
        out[i] = (time.perf_counter() - start) * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--kinds", default="hnsw,ivfpq")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--dims", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    print(f"faiss {faiss.__version__}, {os.cpu_count()} CPUs, {args.dims}-d clustered vectors, k=10, "
          f"{args.queries} single queries; build on {max(threads)} threads")
    for n in (int(s) for s in args.sizes.split(",")):
        rng = np.random.default_rng(args.seed)
        centres = rng.standard_normal((max(1, n // 100), args.dims), dtype=np.float32) * 2
        vectors = clustered_vectors(n, centres, rng)
        queries = clustered_vectors(args.queries, centres, rng)
        faiss.omp_set_num_threads(max(threads))
        exact = faiss.IndexFlatL2(args.dims)
        exact.add(vectors)
        truth = exact.search(queries, 10)[1]
        del exact
        paths = np.array([f"img{i}.png" for i in range(n)])
        chunks = array_chunks(paths, vectors)
        for kind in args.kinds.split(","):
            faiss.omp_set_num_threads(max(threads))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                archive = build_archive_index(chunks, n, kind, seed=args.seed)
            index, record = archive.index, archive.record
            bytes_per_vector = len(faiss.serialize_index(index)) / n
            recall = metrics.neighbor_recall(truth, index.search(queries, 10)[1])
            for t in threads:
                faiss.omp_set_num_threads(t)
                ms = latencies_ms(index, queries, 10)
                print(f"N={n:>8} {kind:>5} threads={t} build={record['build_s']:.1f}s "
                      f"setting={record['search_setting']} {bytes_per_vector:.0f} B/vector "
                      f"(rule {record['bytes_per_vector']}) median={np.median(ms):.3f}ms p95={np.percentile(ms, 95):.3f}ms "
                      f"recall@10={recall:.3f} (build-time {record['recall@10']:.3f}) "
                      f"load={os.getloadavg()[0]:.1f}", flush=True)
            del archive, index


if __name__ == "__main__":
    main()

"""The retrieval store: faiss search equals brute force, query expansion, save/reload without re-encoding."""
from __future__ import annotations

import json
import warnings

import faiss
import numpy as np
import pytest
import torch

import semnb.retrieval.index as index_module
from semnb import metrics
from semnb.errors import SemnbInputError
from semnb.retrieval.index import (
    ARRAYS_FILE,
    TEXT_FILE,
    NoveltyGate,
    RetrievalIndex,
    expand_queries,
)


def _clustered(n=300, dims=16, clusters=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dims)) * 3
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + rng.normal(size=(n, dims))).astype(np.float32), labels


def _brute_force(queries, stored, k, exclude=None):
    """Reference: squared Euclidean distances, stable argsort, excluded ids removed."""
    d = ((queries[:, None, :].astype(np.float64) - stored[None, :, :]) ** 2).sum(-1)
    out = []
    for q in range(len(queries)):
        order = np.argsort(d[q], kind="stable")
        if exclude is not None:
            order = order[order != exclude[q]]
        out.append(order[:k])
    return np.array(out), d


def test_exact_search_equals_brute_force_numpy():
    stored, labels = _clustered()
    index = RetrievalIndex(stored, [f"img{i}.png" for i in range(len(stored))], labels)
    queries = _clustered(n=20, seed=1)[0]
    distances, ids = index.search(queries, 10)
    expected, d = _brute_force(queries, stored, 10)
    assert np.array_equal(ids, expected)
    assert np.allclose(distances, np.take_along_axis(d, expected, axis=1), rtol=1e-4, atol=1e-3)


def test_stored_queries_never_get_themselves_back():
    stored, labels = _clustered()
    index = RetrievalIndex(stored, [str(i) for i in range(len(stored))], labels)
    rows = np.arange(0, 300, 7)
    _, ids = index.search(stored[rows], 8, exclude=rows)
    assert not np.any(ids == rows[:, None])
    expected, _ = _brute_force(stored[rows], stored, 8, exclude=rows)
    assert np.array_equal(ids, expected)


def test_query_expansion_is_the_average_with_the_five_nearest_then_search():
    stored, labels = _clustered()
    index = RetrievalIndex(stored, [str(i) for i in range(len(stored))], labels)
    rows = np.array([3, 50, 120])
    _, ids = index.search_expanded(stored[rows], 10, exclude=rows, n_expand=5)

    first, _ = _brute_force(stored[rows], stored, 5, exclude=rows)
    manual = np.stack([(stored[r] + stored[first[q]].sum(axis=0)) / 6.0 for q, r in enumerate(rows)])
    expected, _ = _brute_force(manual.astype(np.float32), stored, 10, exclude=rows)
    assert np.array_equal(ids, expected)
    assert np.allclose(expand_queries(stored[rows], stored, first), manual, atol=1e-5)


def _halves(n=120, seed=0):
    """Embeddings of equal length: a standardised 8-d first half and a second half of another length, per row."""
    rng = np.random.default_rng(seed)
    first, second = rng.normal(size=(n, 8)), rng.normal(size=(n, 12))
    first = (first - first.mean(1, keepdims=True)) / first.std(1, keepdims=True)
    second = (second - second.mean(1, keepdims=True)) / second.std(1, keepdims=True) * 0.5
    return np.hstack([first, second]).astype(np.float32), rng.integers(0, 4, n)


def test_novelty_gate_on_a_hand_made_example():
    reference = np.array([[1, 0, 5], [0, 1, 5], [1, 1, 5]], np.float32)  # only the first 2 dims are gated
    gate = NoveltyGate.fit(reference, dims=2, quantile=1.0, known_scale=0.5, novel_scale=3.0)
    # leave-one-out cosine distances: rows 0 and 1 are 45 degrees from row 2, row 2 from both
    assert gate.threshold == pytest.approx(1 - np.sqrt(0.5))
    queries = np.array([[2, 0, 1], [-1, 0, 1]], np.float32)
    np.testing.assert_allclose(gate.novelty(queries), [0.0, 1.0], atol=1e-6)  # [-1, 0]: nearest is [0, 1], 90 degrees
    np.testing.assert_array_equal(gate.scales(queries), [[0.5], [3.0]])
    np.testing.assert_allclose(gate.apply(queries, gate.scales(queries)), [[2, 0, 0.5], [-1, 0, 3]])
    assert gate.second_norm == pytest.approx(25.0)
    # faiss's squared distance of the scaled query -> the query's metric: |a q2 - g2|^2 - (a^2 - a) q2^2 - (1 - a) g2^2
    scaled_self = (3.0 * 5 - 5) ** 2  # a stored image [.., 5] as the query, scale 3: faiss sees (3*5 - 5)^2
    np.testing.assert_allclose(gate.distances(np.array([[1, 0, 5]], np.float32), np.array([[scaled_self]]),
                                              np.array([[3.0]])), [[0.0]], atol=1e-4)
    assert NoveltyGate.fit(reference[:1], dims=2) is None  # one labelled image: no leave-one-out novelty


def test_a_gated_query_ranks_as_the_pooled_weight_sqrt_of_its_scale_with_and_without_expansion():
    stored, labels = _halves()
    scale = 2.25  # equivalent to weighting the second half by 1.5 in gallery and query alike
    second_norm = float((stored[:, 8:] ** 2).sum(1).mean())  # one length for every row (standardised halves)
    always = NoveltyGate(stored[:10], dims=8, threshold=-1.0, second_norm=second_norm, novel_scale=scale)  # all "novel"
    gated = RetrievalIndex(stored, [str(i) for i in range(len(stored))], labels, gate=always)
    reweighted = np.hstack([stored[:, :8], 1.5 * stored[:, 8:]])
    plain = RetrievalIndex(reweighted, [str(i) for i in range(len(stored))], labels)
    rows = np.arange(0, 120, 9)
    (d_gated, i_gated), (d_plain, i_plain) = gated.search(stored[rows], 10, exclude=rows), plain.search(reweighted[rows], 10, exclude=rows)
    assert np.array_equal(i_gated, i_plain)
    np.testing.assert_allclose(d_gated, d_plain, rtol=1e-4, atol=1e-3)  # distances in the query's own metric
    assert np.array_equal(gated.search_expanded(stored[rows], 10, exclude=rows)[1],
                          plain.search_expanded(reweighted[rows], 10, exclude=rows)[1])
    never = NoveltyGate(stored[:10], dims=8, threshold=9.0, second_norm=second_norm, known_scale=0.0)  # every query is "known": first half only
    first = RetrievalIndex(stored[:, :8], [str(i) for i in range(len(stored))], labels)
    known = RetrievalIndex(stored, [str(i) for i in range(len(stored))], labels, gate=never)
    assert np.array_equal(known.search_expanded(stored[rows], 10, exclude=rows)[1],
                          first.search_expanded(stored[rows, :8], 10, exclude=rows)[1])


def test_the_gate_scale_comes_from_the_query_before_expansion():
    stored, labels = _halves()
    gate = NoveltyGate.fit(stored[labels == 0], dims=8, quantile=0.5)
    index = RetrievalIndex(stored, [str(i) for i in range(len(stored))], labels, gate=gate)
    rows = np.arange(0, 120, 5)
    scales = gate.scales(stored[rows])
    _, first = index._search_vectors(gate.apply(stored[rows], scales), 5, exclude=rows)
    manual = gate.apply(expand_queries(stored[rows], stored, first), scales)
    expected, _ = _brute_force(manual, stored, 10, exclude=rows)
    assert np.array_equal(index.search_expanded(stored[rows], 10, exclude=rows)[1], expected)
    assert 0 < scales.mean() < gate.novel_scale  # some queries known, some novel


def test_a_query_from_outside_the_collection_needs_no_exclusion():
    stored, labels = _clustered()
    index = RetrievalIndex(stored, [str(i) for i in range(len(stored))], labels)
    outside = stored[17] + 0.01
    distances, ids = index.search(outside, 3)
    assert ids[0, 0] == 17 and distances[0, 0] < 0.01


def test_save_and_load_round_trip_without_images_or_model(tmp_path):
    stored, labels = _clustered()
    mags = np.geomspace(1e4, 1e6, len(stored))
    paths = [str(tmp_path / "never_created" / f"{i}.png") for i in range(len(stored))]
    index = RetrievalIndex(stored, paths, labels, ["a", "b", "c", "d", "e", "f"], mags, info={"method": "ours"})
    index.save(tmp_path / "store")
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [ARRAYS_FILE, TEXT_FILE]  # no temp files

    again = RetrievalIndex.load(tmp_path / "store")  # the image files do not exist: nothing is re-encoded
    assert np.array_equal(again.embeddings, stored)
    assert np.array_equal(again.labels, labels)
    assert np.array_equal(again.magnifications, mags)
    assert again.paths == paths and again.class_names == index.class_names and again.info == {"method": "ours"}
    queries = stored[:5]
    assert np.array_equal(again.search(queries, 7, exclude=np.arange(5))[1], index.search(queries, 7, exclude=np.arange(5))[1])
    # the arrays are a plain npz (no pickle) and the text is JSON
    with np.load(tmp_path / "store" / ARRAYS_FILE, allow_pickle=False) as arrays:
        assert set(arrays.files) == {"embeddings", "labels", "magnifications"}
    assert json.loads((tmp_path / "store" / TEXT_FILE).read_text())["n_images"] == len(stored)


def test_a_saved_gate_reloads_and_searches_the_same(tmp_path):
    stored, labels = _halves()
    gate = NoveltyGate.fit(stored[labels == 1], dims=8, quantile=0.8)
    index = RetrievalIndex(stored, [str(i) for i in range(len(stored))], labels, gate=gate)
    again = RetrievalIndex.load(index.save(tmp_path / "gated"))
    assert again.gate.record() == gate.record()
    rows = np.arange(0, 120, 3)
    assert np.array_equal(again.search_expanded(stored[rows], 9, exclude=rows)[1],
                          index.search_expanded(stored[rows], 9, exclude=rows)[1])


def test_load_detects_arrays_from_another_run(tmp_path):
    stored, labels = _clustered()
    RetrievalIndex(stored, [str(i) for i in range(300)], labels).save(tmp_path / "a")
    RetrievalIndex(stored * 2, [str(i) for i in range(300)], labels).save(tmp_path / "b")
    (tmp_path / "a" / ARRAYS_FILE).write_bytes((tmp_path / "b" / ARRAYS_FILE).read_bytes())
    with pytest.raises(SemnbInputError, match="does not match"):
        RetrievalIndex.load(tmp_path / "a")
    with pytest.raises(SemnbInputError, match="missing"):
        RetrievalIndex.load(tmp_path / "nothing_here")


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_search_finds_most_exact_neighbours(kind):
    stored, labels = _clustered(n=2000, dims=32, clusters=10)
    exact = RetrievalIndex(stored, [str(i) for i in range(2000)], labels)
    approx = RetrievalIndex(stored, [str(i) for i in range(2000)], labels, approximate=kind)
    queries = stored[:50] + 0.05
    truth, found = exact.search(queries, 10)[1], approx.search(queries, 10)[1]
    assert metrics.neighbor_recall(truth, found) > 0.8


def test_bad_input_is_named():
    stored, labels = _clustered(n=20)
    index = RetrievalIndex(stored, [str(i) for i in range(20)], labels)
    with pytest.raises(SemnbInputError, match="--k"):
        index.search(stored[:1], 20, exclude=[0])  # only 19 others exist
    with pytest.raises(SemnbInputError, match="queries"):
        index.search(np.zeros((1, 3)), 2)
    with pytest.raises(SemnbInputError, match="labels"):
        RetrievalIndex(stored, [str(i) for i in range(20)], labels[:5])
    with pytest.raises(SemnbInputError, match="embeddings"):
        RetrievalIndex(np.full((3, 4), np.nan), ["a", "b", "c"])


def _pretend_cuda(monkeypatch, gpu_faiss: bool):
    """A machine with CUDA GPUs, and a faiss with or without GPU support (CI has neither)."""
    monkeypatch.setattr(index_module, "resolve_device", lambda spec: torch.device(str(spec).replace("auto", "cuda:0")))
    monkeypatch.setattr(index_module, "faiss_has_gpu", lambda: gpu_faiss)
    monkeypatch.setattr(index_module, "_SAID_NO_GPU_FAISS", False)
    monkeypatch.setattr(index_module, "_GPU_RESOURCES", {})


def test_a_cuda_device_with_a_cpu_only_faiss_searches_on_the_cpu_and_says_so_once(monkeypatch):
    _pretend_cuda(monkeypatch, gpu_faiss=False)
    stored, labels = _clustered()
    with pytest.warns(RuntimeWarning, match="no GPU support"):
        index = RetrievalIndex(stored, [str(i) for i in range(len(stored))], labels, device="cuda:0")
    assert index.device == torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not per index
        again = RetrievalIndex(stored, [str(i) for i in range(len(stored))], labels, device="cuda:0")
    assert np.array_equal(again.search(stored[:5], 4)[1], _brute_force(stored[:5], stored, 4)[0])


def test_with_a_gpu_faiss_exact_and_ivf_move_to_the_gpu_and_hnsw_stays(monkeypatch, tmp_path):
    _pretend_cuda(monkeypatch, gpu_faiss=True)
    copies, resources = [], []
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: resources.append(1) or "resources", raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, gpu, cpu_index: copies.append((res, gpu)) or cpu_index,
                        raising=False)
    stored, labels = _clustered(n=400)
    paths = [str(i) for i in range(len(stored))]
    exact = RetrievalIndex(stored, paths, labels, device="cuda:1")
    ivf = RetrievalIndex(stored, paths, labels, approximate="ivf", device="cuda:1")
    hnsw = RetrievalIndex(stored, paths, labels, approximate="hnsw", device="cuda:1")
    assert exact.device == ivf.device == torch.device("cuda:1") and hnsw.device == torch.device("cpu")
    assert copies == [("resources", 1), ("resources", 1)] and len(resources) == 1  # one set of GPU resources
    exact.save(tmp_path / "store")  # the embeddings are saved, never the GPU index: it reloads anywhere
    assert RetrievalIndex.load(tmp_path / "store", device="cpu").device == torch.device("cpu")


# ---------------------------------------------------------------- the archive index (issue 16)

ARCHIVE_N, ARCHIVE_DIMS = 20_000, 16


def _archive_vectors(n=ARCHIVE_N, dims=ARCHIVE_DIMS, seed=0):
    """Clustered like embeddings: n/100 clusters, standardised rows (as benchmarks/bench_index.py)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), dims), dtype=np.float32) * 2
    x = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, dims), dtype=np.float32)
    x -= x.mean(axis=1, keepdims=True)
    return (x / x.std(axis=1, keepdims=True)).astype(np.float32), centres


def _array_chunks(vectors, rows=4096):
    return lambda: ((np.array([f"img{i}.png" for i in range(s, s + len(vectors[s:s + rows]))]), vectors[s:s + rows])
                    for s in range(0, len(vectors), rows))


@pytest.fixture(scope="module")
def ivfpq_archive():
    vectors, centres = _archive_vectors()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # faiss: too few training points for a few lists
        archive = index_module.build_archive_index(_array_chunks(vectors), len(vectors), kind="ivfpq")
    return archive, vectors, centres


def test_ivfpq_reaches_the_target_recall_at_its_chosen_nprobe_on_new_queries(ivfpq_archive):
    archive, vectors, centres = ivfpq_archive
    plan = index_module.ivfpq_plan(ARCHIVE_N, ARCHIVE_DIMS)
    assert archive.record["kind"] == "ivfpq" and isinstance(archive.index, faiss.IndexIVFPQR)
    assert archive.record["nlist"] == plan["nlist"] == 512 and archive.index.pq.M == plan["m"] == 8
    assert archive.record["recall@10"] >= 0.95 and archive.record["recall_queries"] == 500
    assert archive.record["bytes_per_vector"] == 2 * 8 + 8  # code + refinement code + id
    # queries the build never saw, checked against numpy brute force
    rng = np.random.default_rng(7)
    queries = centres[rng.integers(0, len(centres), 200)] + rng.standard_normal((200, ARCHIVE_DIMS), dtype=np.float32)
    queries = ((queries - queries.mean(1, keepdims=True)) / queries.std(1, keepdims=True)).astype(np.float32)
    paths, distances = archive.search(queries, 10)
    found = np.array([[int(p[3:-4]) for p in row] for row in paths])
    exact = faiss.IndexFlatL2(ARCHIVE_DIMS)  # equals numpy brute force: test_exact_search_equals_brute_force_numpy
    exact.add(vectors)
    truth = exact.search(queries, 10)[1]
    assert metrics.neighbor_recall(truth, found) >= 0.93
    assert np.all(np.diff(distances, axis=1) >= 0)


def test_a_saved_archive_index_reloads_without_re_encoding_and_answers_identically(ivfpq_archive, tmp_path, monkeypatch):
    archive, vectors, _ = ivfpq_archive
    archive.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["archive.json", "index.faiss", "paths.parquet"]
    for name in ("train", "add"):  # loading reads the stored codes: nothing is trained or encoded again
        monkeypatch.setattr(faiss.IndexIVFPQR, name, lambda *a, **k: pytest.fail("re-encoded at load"))
    again = index_module.ArchiveIndex.load(tmp_path / "idx")
    assert np.array_equal(faiss.serialize_index(again.index), faiss.serialize_index(archive.index))  # the same codes
    assert again.index.nprobe == archive.index.nprobe == archive.record["search_setting"]
    assert again.record == archive.record
    a_paths, a_d = archive.search(vectors[:50], 10)
    b_paths, b_d = again.search(vectors[:50], 10)
    assert a_paths == b_paths and np.array_equal(a_d, b_d)
    (tmp_path / "idx" / "paths.parquet").write_bytes(b"damaged")
    with pytest.raises(SemnbInputError, match="does not match"):
        index_module.ArchiveIndex.load(tmp_path / "idx")


def _write_shards(folder, vectors, per_shard, unreadable=()):
    """Shards as `semnb predict` writes them: parts/part-k.parquet, a row per image, embedding None if unreadable."""
    import pandas as pd

    (folder / "parts").mkdir(parents=True)
    for k, start in enumerate(range(0, len(vectors), per_shard)):
        rows = [{"index": i, "path": f"img{i}.png", "score": np.nan,
                 "embedding": None if i in unreadable else vectors[i].tolist()}
                for i in range(start, min(start + per_shard, len(vectors)))]
        pd.DataFrame(rows).to_parquet(folder / "parts" / f"part-{k:06d}.parquet", index=False)


def test_shards_are_read_in_chunks_and_rows_without_an_embedding_are_left_out(tmp_path, monkeypatch):
    vectors, _ = _archive_vectors(n=3000, dims=16)
    _write_shards(tmp_path / "pred", vectors, per_shard=1000, unreadable={5, 2500})
    files, n, chunks = index_module.read_embedding_shards(tmp_path / "pred", chunk_rows=256)
    assert len(files) == 3 and n == 3000
    blocks = list(chunks())
    assert max(len(b) for _, b in blocks) <= 256 and len(blocks) == 3 * 4  # 1000 rows a shard: 4 chunks each
    added = []
    real_add = index_module._add_pass
    monkeypatch.setattr(index_module, "_add_pass", lambda c, *a: added.extend(len(b) for _, b in c()) or real_add(c, *a))
    archive = index_module.build_index_from_shards(tmp_path / "pred", tmp_path / "idx", kind="auto", chunk_rows=256)
    assert max(added) <= 256 and sum(added) == 2998
    assert archive.record["kind"] == "hnsw" and len(archive) == 2998  # auto: HNSW below HNSW_MAX_VECTORS
    keep = [i for i in range(3000) if i not in (5, 2500)]
    paths, distances = index_module.ArchiveIndex.load(tmp_path / "idx").search(vectors[[0, 6, 2999]], 1)
    assert [p[0] for p in paths] == ["img0.png", "img6.png", "img2999.png"] and np.all(distances < 1e-4)
    exact = index_module.build_index_from_shards(tmp_path / "pred", tmp_path / "exact", kind="exact", chunk_rows=256)
    assert exact.record["recall@10"] == 1.0 and exact.paths.to_pylist() == [f"img{i}.png" for i in keep]


def test_bad_shards_and_sizes_are_named(tmp_path):
    with pytest.raises(SemnbInputError, match="no predictions parquet"):
        index_module.read_embedding_shards(tmp_path)
    import pandas as pd

    (tmp_path / "a").mkdir()
    pd.DataFrame({"path": ["x.png"], "score": [0.5]}).to_parquet(tmp_path / "a" / "predictions.parquet")
    with pytest.raises(SemnbInputError, match="embedding"):
        index_module.read_embedding_shards(tmp_path / "a")
    (tmp_path / "b").mkdir()
    pd.DataFrame({"path": ["x.png", "y.png"], "embedding": [[0.0, 1.0], [1.0]]}).to_parquet(tmp_path / "b" / "p.parquet")
    _, n, chunks = index_module.read_embedding_shards(tmp_path / "b")
    with pytest.raises(SemnbInputError, match="one model"):
        list(chunks())
    vectors, _ = _archive_vectors(n=1000, dims=8)
    with pytest.raises(SemnbInputError, match="at least"):
        index_module.build_archive_index(_array_chunks(vectors), 1000, kind="ivfpq")
    with pytest.raises(SemnbInputError, match="--kind"):
        index_module.build_archive_index(_array_chunks(vectors), 1000, kind="lsh")
    archive = index_module.build_archive_index(_array_chunks(vectors), 1000, kind="exact")
    with pytest.raises(SemnbInputError, match="--k"):
        archive.search(vectors[:1], 1001)
    with pytest.raises(SemnbInputError, match="queries"):
        archive.search(np.zeros((1, 3)), 2)

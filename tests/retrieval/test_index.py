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
from semnb.retrieval.index import ARRAYS_FILE, TEXT_FILE, RetrievalIndex, expand_queries


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

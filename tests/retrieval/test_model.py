"""The fitted retrieval model: round trip, determinism, a retrieval sanity bound, search and bad input.

Most tests use `semnb-tiny-cnn` on 32-px images (fast); the sanity bound uses EfficientNet-Lite0
(ImageNet, offline) at 64 px, since a random CNN trained for a few epochs retrieves little.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from semnb.data.synth_tem import LABELLED_CLASSES, generate_tem_image, stratified_magnifications
from semnb.errors import SemnbInputError
from semnb.retrieval.embedding import TINY_CNN, RetrievalConfig
from semnb.retrieval.index import NoveltyGate
from semnb.retrieval.model import GALLERY, RetrievalModel, default_method, fit_retrieve

SIZE = 32
TINY = RetrievalConfig(image_size=SIZE, epochs=3, views=2, dims=16, batch_size=16, per_class=4)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tem_set(n_per_class: int, seed: int, size: int, n_classes: int = 4) -> tuple[list[np.ndarray], np.ndarray]:
    """Synthetic TEM cross-sections, `n_per_class` of each of the first `n_classes` labelled classes."""
    rng = np.random.default_rng(seed)
    pixels, labels = [], []
    for c, cls in enumerate(LABELLED_CLASSES[:n_classes]):
        for j, mag in enumerate(stratified_magnifications(n_per_class, rng, (3e4, 3e5))):
            image = generate_tem_image(cls, mag, size, seed=seed * 1000 + c * 100 + j).image
            pixels.append(image.astype(np.float32) / 255.0)
            labels.append(c)
    return pixels, np.array(labels)


def fit_tiny(pixels, labels, **options) -> RetrievalModel:
    return fit_retrieve(pixels, labels, backbone=TINY_CNN, config=TINY, device="cpu", precision="fp32", **options)


@pytest.fixture(scope="module")
def collection():
    pixels, labels = tem_set(6, seed=1, size=48, n_classes=3)
    labels[::4] = -1  # some images unlabelled: the autoencoder epochs still see them
    return pixels, labels


@pytest.fixture(scope="module")
def model(collection):
    pixels, labels = collection
    torch.set_num_threads(1)
    return fit_tiny(pixels, labels, class_names=["locos", "sti", "gate_spacer"],
                    names=[f"run/{i:02d}.png" for i in range(len(pixels))])


def test_default_method_follows_the_labels():
    assert default_method(np.array([0, 0, 1, 1, -1])) == "ours"
    assert default_method(np.array([0, 0, 1, -1, -1])) == "autoencoder"  # class 1 has one image: no triplets
    assert default_method(np.full(4, -1)) == "autoencoder"


def test_fit_holds_the_gallery_with_names_labels_and_settings(model, collection):
    pixels, labels = collection
    assert model.method == "ours"
    assert model.gallery.shape == (len(pixels), TINY.dims + 64)  # the projection, then the tiny CNN's 64 pooled
    assert model.names[3] == "run/03.png"
    np.testing.assert_array_equal(model.labels, labels)
    settings = json.loads(json.dumps(model.settings()))
    for key in ("method", "image_size", "precision", "backbone", "backbone_weights"):
        assert key in settings
    assert settings["precision"] == "fp32" and settings["image_size"] == SIZE
    assert settings["gallery_labels"] == labels.tolist()
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in model.tensors().values())
    assert not any("frozen" in key for key in model.tensors())  # rebuilt from the backbone, not stored


def test_the_query_gate_is_fit_on_the_labelled_gallery_and_rebuilt_the_same_at_restore(model, collection):
    _, labels = collection
    gate = model.index.gate
    assert gate is not None and gate.dims == TINY.dims  # the projection half decides the novelty
    np.testing.assert_allclose(gate.reference, NoveltyGate.fit(model.gallery[labels >= 0], TINY.dims).reference)
    settings = json.loads(json.dumps(model.settings()))
    restored = RetrievalModel.restore(settings, model.tensors(), device="cpu")
    assert restored.index.gate.record() == gate.record()
    del settings["config"]["gate_quantile"]  # a model saved before the gate existed searches without it
    assert RetrievalModel.restore(settings, model.tensors(), device="cpu").index.gate is None


def test_unlabelled_fit_defaults_to_the_autoencoder_and_names_images():
    pixels, _ = tem_set(3, seed=3, size=32, n_classes=2)
    model = fit_tiny(pixels, None)
    assert model.method == "autoencoder"
    assert model.names[:2] == ["image_0", "image_1"]
    assert model.class_names == [] and np.all(model.labels == -1)
    assert model.settings()["dims"] is None  # the label-free methods keep the backbone's channels


def test_round_trip_predicts_and_searches_exactly_the_same(model, collection):
    pixels, _ = collection
    settings, tensors = json.loads(json.dumps(model.settings())), model.tensors()
    safetensors = pytest.importorskip("safetensors.torch")
    tensors = safetensors.load(safetensors.save(tensors))  # what the model folder writes and reads
    restored = RetrievalModel.restore(settings, tensors, device="cpu")
    np.testing.assert_array_equal(restored.gallery, model.gallery)
    queries = [pixels[0], pixels[7][:40, :30]]
    for before, after in zip(model.predict(queries), restored.predict(queries)):
        assert before.score is None and after.score is None
        np.testing.assert_array_equal(before.embedding, after.embedding)
    for expand in (False, True):
        assert restored.search(queries, k=4, expand=expand) == model.search(queries, k=4, expand=expand)


def test_same_seed_same_model_other_seed_other_model(model, collection):
    pixels, labels = collection
    names = model.names
    again = fit_tiny(pixels, labels, class_names=model.class_names, names=names)
    first, second = model.tensors(), again.tensors()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    np.testing.assert_array_equal(model.predict(pixels[:3])[2].embedding, again.predict(pixels[:3])[2].embedding)
    other = fit_tiny(pixels, labels, seed=1)
    assert not np.array_equal(other.gallery, model.gallery)


def test_predict_takes_any_size_and_an_empty_batch(model):
    rng = np.random.default_rng(0)
    images = [rng.random((40, 57), dtype=np.float32), rng.random((SIZE, SIZE), dtype=np.float32),
              rng.random((90, 20), dtype=np.float32)]
    predictions = model.predict(images)
    assert len(predictions) == 3
    for p in predictions:
        assert p.embedding.shape == (TINY.dims + 64,) and p.embedding.dtype == np.float32
        assert np.isclose(np.sqrt(np.mean(p.embedding[:TINY.dims] ** 2)), 1.0, atol=1e-3)  # standardised projection
    assert model.predict([]) == []


def test_search_returns_names_nearest_first_and_a_gallery_image_finds_itself(model, collection):
    pixels, _ = collection
    results = model.search([pixels[5], pixels[11]], k=3)
    assert len(results) == 2 and all(len(r) == 3 for r in results)
    for row, own in zip(results, (5, 11)):
        name, distance = row[0]
        assert name == model.names[own] and distance == pytest.approx(0.0, abs=1e-3)
        assert [d for _, d in row] == sorted(d for _, d in row)


def test_top_results_share_the_query_class_far_more_often_than_chance():
    gallery, labels = tem_set(8, seed=1, size=64)
    queries, query_labels = tem_set(4, seed=2, size=64)  # new images of the same classes
    config = RetrievalConfig(image_size=64, epochs=3, views=2, dims=16, batch_size=16, per_class=4)
    model = fit_retrieve(gallery, labels, backbone="efficientnet-lite0", config=config, device="cpu",
                         precision="fp32")
    assert model.method == "ours"
    k = 5
    row_of = {name: i for i, name in enumerate(model.names)}
    hits = [[labels[row_of[name]] == query_labels[q] for name, _ in result]
            for q, result in enumerate(model.search(queries, k=k))]
    precision = float(np.mean(hits))
    chance = float(np.mean((np.bincount(labels) / len(labels))[query_labels]))  # a random gallery image's class
    assert precision >= 2 * chance, f"precision@{k} {precision:.2f} vs chance {chance:.2f}"


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_search_refuses_k_below_one_or_not_a_whole_number(model, collection, k):
    with pytest.raises(SemnbInputError, match="--k"):
        model.search([collection[0][0]], k=k)


def test_search_clamps_k_beyond_the_gallery_with_a_warning(model, collection):
    pixels, _ = collection
    with pytest.warns(UserWarning, match="only 18 images"):
        results = model.search([pixels[0]], k=50, expand=True)
    assert len(results[0]) == len(pixels)
    assert sorted(name for name, _ in results[0]) == sorted(model.names)


def test_fit_refuses_an_empty_gallery():
    with pytest.raises(SemnbInputError, match="needs a gallery"):
        fit_tiny([], None)


@pytest.mark.parametrize("options, match", [
    ({"labels": [0, 1]}, "labels: 2 entries for 4 images"),
    ({"names": ["a"]}, "names: 1 entries for 4 images"),
    ({"labels": [0, 0, 1, -2]}, "labels: holds -2"),
    ({"labels": [0, 0, 1, 1], "class_names": ["only"]}, "class_names"),
    ({"method": "kmeans"}, "unknown retrieval method"),
    ({"method": "ours", "labels": [0, 0, 0, -1]}, "two classes"),
])
def test_fit_refuses_bad_input(options, match):
    pixels, _ = tem_set(2, seed=4, size=32, n_classes=2)
    options = {"labels": None, **options}
    with pytest.raises(SemnbInputError, match=match):
        fit_tiny(pixels, options.pop("labels"), **options)


def test_fit_refuses_a_clip_backbone():
    pixels, _ = tem_set(2, seed=4, size=32, n_classes=2)
    with pytest.raises(SemnbInputError, match="not a convolutional backbone"):
        fit_retrieve(pixels, backbone="semnb-tiny", config=TINY, device="cpu")


def test_restore_refuses_incomplete_or_foreign_state(model):
    settings, tensors = model.settings(), model.tensors()
    no_names = {k: v for k, v in settings.items() if k != "names"}
    with pytest.raises(SemnbInputError, match="lack names.*incomplete or from another version"):
        RetrievalModel.restore(no_names, tensors, device="cpu")
    with pytest.raises(SemnbInputError, match=f"lack {GALLERY}"):
        RetrievalModel.restore(settings, {k: v for k, v in tensors.items() if k != GALLERY}, device="cpu")
    no_projection = {k: v for k, v in tensors.items() if "projection" not in k}
    with pytest.raises(SemnbInputError, match="network weights.*incomplete"):
        RetrievalModel.restore(settings, no_projection, device="cpu")
    short = {**tensors, GALLERY: tensors[GALLERY][:-1]}
    with pytest.raises(SemnbInputError, match="gallery holds"):
        RetrievalModel.restore(settings, short, device="cpu")


def test_restore_refuses_a_backbone_with_other_weights(model):
    # the tiny CNN's frozen layers are drawn from the seed: another seed is another backbone
    settings = {**model.settings(), "seed": model.seed + 1}
    with pytest.raises(SemnbInputError, match="was fit on backbone"):
        RetrievalModel.restore(settings, model.tensors(), device="cpu")


def test_label_free_model_round_trips_with_its_config():
    pixels, _ = tem_set(3, seed=3, size=32, n_classes=2)
    model = fit_tiny(pixels, None, method="frozen")
    restored = RetrievalModel.restore(json.loads(json.dumps(model.settings())), model.tensors(), device="cpu")
    assert restored.config == model.config and restored.method == "frozen"
    assert model.index.gate is None  # no pooled half to weigh
    np.testing.assert_array_equal(restored.predict(pixels[:2])[1].embedding, model.predict(pixels[:2])[1].embedding)

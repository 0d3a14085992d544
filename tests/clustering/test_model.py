"""The fitted clustering model: fit on unlabelled images, restore exactly, assign new images to centroids."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from semnb import metrics
from semnb.clustering.model import ClusterModel, fit_cluster
from semnb.errors import SemnbInputError
from tests.clustering.ssl_images import stripes_and_dots

N_IMAGES = 32
GROUPS = np.arange(N_IMAGES) % 2  # stripes_and_dots: odd images stripes, even images dots
FIT = {"epochs": 3, "image_size": 64, "k_range": (2, 4), "device": "cpu", "precision": "fp32"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small networks on a shared CPU run several times faster on one torch thread (as `one_torch_thread`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return list(stripes_and_dots(N_IMAGES, size=64))


@pytest.fixture(scope="module")
def ssl_model(images) -> ClusterModel:
    return fit_cluster(images, k="auto", **FIT)


def _same(a, b) -> bool:
    return [(p.cluster, p.label, p.distance, p.score) for p in a] == [(p.cluster, p.label, p.distance, p.score)
                                                                     for p in b]


def test_restore_from_settings_and_tensors_predicts_exactly_the_same(ssl_model, images):
    settings = json.loads(json.dumps(ssl_model.settings()))
    assert settings == ssl_model.settings()
    tensors = ssl_model.tensors()
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in tensors.values())
    assert "ssl.conv_head.weight" in tensors and "ssl.blocks.0._depthwise_conv.weight" in tensors
    restored = ClusterModel.restore(settings, tensors, device="cpu")
    before, after = ssl_model.predict(images), restored.predict(images)
    assert _same(before, after)
    assert np.array_equal(ssl_model.embed(images), restored.embed(images))


def test_the_same_seed_fits_the_same_model_and_another_seed_another(ssl_model, images):
    again = fit_cluster(images, k="auto", **FIT)
    first, second = ssl_model.tensors(), again.tensors()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert _same(ssl_model.predict(images), again.predict(images))
    other = fit_cluster(images, k="auto", seed=1, **FIT).tensors()
    assert not torch.equal(first["ssl.conv_head.weight"], other["ssl.conv_head.weight"])


def test_clusters_agree_with_two_very_different_groups_far_better_than_chance(ssl_model, images):
    clusters = np.array([p.cluster for p in ssl_model.predict(images)])
    k = ssl_model.settings()["k"]
    chance = metrics.random_assignment_nmi(GROUPS, k)
    assert metrics.nmi(GROUPS, clusters) >= chance + 0.5, (metrics.nmi(GROUPS, clusters), chance)


def test_auto_k_is_the_highest_silhouette_and_every_k_is_recorded(ssl_model, images):
    settings = ssl_model.settings()
    scores = settings["k_scores"]
    assert list(scores) == ["2", "3", "4"] and "silhouette" in settings["k_rule"]
    assert settings["k"] == int(max(scores, key=scores.get))
    # the centroids are those of the k-means clustering: the fit images fall back into its clusters
    clusters = [p.cluster for p in ssl_model.predict(images)]
    assert np.bincount(clusters, minlength=settings["k"]).tolist() == settings["cluster_sizes"]
    assert ssl_model.tensors()["centroids"].shape == (settings["k"], settings["embedding_dim"])


def test_a_given_k_is_used_as_given(images):
    model = fit_cluster(images[:8], k=3, **{**FIT, "epochs": 1})
    settings = model.settings()
    assert settings["k"] == 3 and settings["k_rule"] == "given by the user" and list(settings["k_scores"]) == ["3"]
    assert {p.label for p in model.predict(images[:8])} <= {"cluster_0", "cluster_1", "cluster_2"}


def test_distance_is_euclidean_to_the_nearest_centroid_in_the_standardised_embedding(ssl_model, images):
    space = ssl_model.embed(images[:6])
    centroids = ssl_model.tensors()["centroids"].numpy()
    distances = np.linalg.norm(space[:, None] - centroids[None], axis=2)
    for prediction, row in zip(ssl_model.predict(images[:6]), distances):
        assert prediction.cluster == row.argmin() and prediction.label == f"cluster_{row.argmin()}"
        assert prediction.distance == pytest.approx(row.min(), rel=1e-9) and prediction.score == prediction.distance


def test_predict_takes_images_of_any_size(ssl_model, images):
    enlarged = [np.kron(image, np.ones((2, 2), dtype=np.float32)) for image in images[:6]]
    other = [images[0][:40], np.full((90, 50), 0.5, dtype=np.float32)]
    assert [p.cluster for p in ssl_model.predict(enlarged)] == [p.cluster for p in ssl_model.predict(images[:6])]
    assert len(ssl_model.predict(other)) == 2
    assert ssl_model.predict([]) == []


def test_the_papers_ssl_fits_saves_and_restores_exactly(images):
    model = fit_cluster(images[:12], k=2, method="ssl_paper", **{**FIT, "epochs": 1})
    tensors = model.tensors()
    assert "ssl.encoder.linear.weight" in tensors and model.settings()["embedding_dim"] == 128
    restored = ClusterModel.restore(model.settings(), tensors, device="cpu")
    assert _same(model.predict(images[:12]), restored.predict(images[:12]))
    with pytest.raises(SemnbInputError, match="incomplete or from another version"):  # paper weights are not a tail
        ClusterModel.restore({**model.settings(), "method": "ssl", "weight_decay": 0.0}, tensors, device="cpu")


def test_imagenet_features_need_no_training_and_refuse_other_backbone_weights(images):
    model = fit_cluster(images[:8], k=2, method="imagenet", image_size=32, device="cpu", precision="fp32")
    settings = json.loads(json.dumps(model.settings()))
    assert settings["backbone"] == "efficientnet-lite0" and "ImageNet" in settings["backbone_weights"]
    assert not any(name.startswith("ssl.") for name in model.tensors())
    restored = ClusterModel.restore(settings, model.tensors(), device="cpu")
    predictions = model.predict(images[:8])
    assert _same(predictions, restored.predict(images[:8]))
    clusters = np.array([p.cluster for p in predictions])
    assert metrics.nmi(GROUPS[:8], clusters) >= metrics.random_assignment_nmi(GROUPS[:8], 2) + 0.5
    with pytest.raises(SemnbInputError, match="was fit on backbone"):
        ClusterModel.restore({**settings, "backbone_weights": "other weights"}, model.tensors(), device="cpu")


@pytest.mark.parametrize("n, options, message", [
    (2, {}, "only 2 images"),
    (5, {"k": 6}, "6 clusters for 5 images"),
    (5, {"k": 1}, "1 clusters for 5 images"),
    (5, {"k": "three"}, "'three' clusters"),
    (5, {"k_range": (1, 4)}, "--k-range"),
    (5, {"k_range": (4, 3)}, "--k-range"),
    (5, {"k_range": (2,)}, "--k-range"),
    (5, {"k_range": "2-4"}, "--k-range"),
    (5, {"k_range": (5, 8)}, "only 5 images"),
    (5, {"method": "glcm"}, "--method"),
])
def test_bad_fit_input_names_the_option_and_the_fix(images, n, options, message):
    with pytest.raises(SemnbInputError, match=message) as caught:
        fit_cluster(images[:n], **{**FIT, **options})
    assert caught.value.fix


def _without(mapping: dict, key: str) -> dict:
    return {name: value for name, value in mapping.items() if name != key}


@pytest.mark.parametrize("change", ["settings key", "method", "centroids", "network", "one weight", "shape"])
def test_restore_refuses_an_incomplete_or_foreign_model(ssl_model, change):
    settings, tensors = ssl_model.settings(), ssl_model.tensors()
    if change == "settings key":
        settings = _without(settings, "image_size")
    elif change == "method":
        settings["method"] = "glcm"
    elif change == "centroids":
        tensors = _without(tensors, "centroids")
    elif change == "network":
        tensors = {name: t for name, t in tensors.items() if not name.startswith("ssl.")}
    elif change == "one weight":
        tensors = _without(tensors, "ssl.conv_head.weight")
    else:
        tensors["centroids"] = tensors["centroids"][:, :5]
    with pytest.raises(SemnbInputError, match="incomplete or from another version"):
        ClusterModel.restore(settings, tensors, device="cpu")


def test_fit_restore_and_predict_place_every_tensor_on_the_device_asked_for(images, implicit_device_is_meta):
    with implicit_device_is_meta():  # a tensor made without an explicit device would be meta and fail
        model = fit_cluster(images[:6], k=2, **{**FIT, "epochs": 1})
        restored = ClusterModel.restore(model.settings(), model.tensors(), device="cpu")
        predictions = restored.predict(images[:6])
    assert all(p.device.type == "cpu" for p in restored.network.parameters())
    assert _same(predictions, model.predict(images[:6]))


def test_an_ssl_model_keeps_the_trunk_size_it_was_fit_at(images, monkeypatch):
    """Fit above the working size: restore reads at the recorded trunk_size; a folder without one (saved before
    round 2) reads at its image_size, as it was fitted then."""
    from semnb.clustering import model as cluster_model

    monkeypatch.setattr(cluster_model, "WORKING_SIZE", 32)
    images = images[:12]
    fitted = fit_cluster(images, k=2, **{**FIT, "epochs": 1})
    settings, tensors = fitted.settings(), fitted.tensors()
    assert settings["trunk_size"] == 32 and settings["image_size"] == 64
    assert np.array_equal(ClusterModel.restore(settings, tensors, device="cpu").embed(images), fitted.embed(images))
    older = {key: value for key, value in settings.items() if key != "trunk_size"}
    assert not np.allclose(ClusterModel.restore(older, tensors, device="cpu").embed(images), fitted.embed(images))


def test_a_folder_saved_with_the_old_tail_key_names_restores_exactly(ssl_model, images):
    """Before the shared `EfficientNetTail` the head batch norm was saved as "ssl.bn.*"; such folders still load."""
    legacy = {name.replace("ssl.bn_head.", "ssl.bn.", 1): t for name, t in ssl_model.tensors().items()}
    assert "ssl.bn.weight" in legacy and not any(name.startswith("ssl.bn_head.") for name in legacy)
    restored = ClusterModel.restore(ssl_model.settings(), legacy, device="cpu")
    assert np.array_equal(ssl_model.embed(images), restored.embed(images))

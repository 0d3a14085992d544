"""STM from k labels: the few-shot pixel map, crops, prototypes, the ProtoNet, the class support."""
import warnings

import numpy as np
import pytest

from semnb import stm
from semnb.data.synth_stm import generate_stm_scan
from semnb.errors import SemnbInputError
from semnb.metrics import accuracy, pixel_auroc
from semnb.stm.preprocess import preprocess_scan
from tests.stm.pits import lattice_with_pits


def test_pixel_support_is_labelled_defects_and_their_clean_ring():
    scan, mask = lattice_with_pits()
    support = stm.sample_pixel_support(mask, shots=2, seed=3, ring=5)
    assert support.defect.any() and not (support.defect & ~mask).any()
    assert support.lattice.any() and not (support.lattice & mask).any()
    assert len(support.component_ids) == 2
    again = stm.sample_pixel_support(mask, shots=2, seed=3, ring=5)
    assert np.array_equal(support.region, again.region)
    with pytest.raises(SemnbInputError, match="--shots"):
        stm.sample_pixel_support(mask, shots=100, seed=0)


def test_fewshot_pixel_map_from_two_labelled_defects():
    scan, mask = lattice_with_pits(seed=4)
    z = preprocess_scan(scan)
    defect_map = stm.unsupervised_defect_map(z)
    support = stm.sample_pixel_support(mask, shots=2, seed=0)
    assert stm.support_polarity(defect_map.residual, support) == "dark"
    features = stm.pixel_features(z, defect_map.residual, defect_map.lattice.period, "dark")
    scores = stm.fewshot_pixel_map(features, support)
    query = ~support.region
    assert pixel_auroc(scores[query][None], mask[query][None]) > 0.95
    # fewshot_map of an analysed scan is the same map, oriented by the labelled defects
    analysis = stm.ScanAnalysis(z=z, defect_map=defect_map)
    assert np.array_equal(stm.fewshot_map(analysis, support), scores)


def test_dihedral_views_and_prototypes():
    crops = np.random.default_rng(0).normal(size=(3, 2, 6, 6))
    views = stm.dihedral(crops)
    assert views.shape == (8, 3, 2, 6, 6)
    assert np.array_equal(views[0], crops) and np.array_equal(views[1], np.rot90(crops, 1, axes=(-2, -1)))
    assert len({v.tobytes() for v in views[:, 0]}) == 8
    labels = np.array(["a", "a", "b"])
    classifier = stm.PrototypeClassifier().fit(crops, labels)
    flat = stm.flatten_embedding(views.reshape(-1, 2, 6, 6)).reshape(8, 3, -1)
    assert np.allclose(classifier.prototypes_[0], flat[:, :2].reshape(-1, flat.shape[-1]).mean(0))
    assert list(classifier.predict(crops[2:])) == ["b"]


def test_brightness_embedding_is_the_raw_channel_unscaled():
    crops = np.random.default_rng(1).normal(size=(4, 2, 5, 5)) * 7.0 + 3.0
    embedded = stm.brightness_embedding(crops)
    assert embedded.shape == (4, 25)
    assert np.array_equal(embedded, crops[:, 1].reshape(4, -1))


def _surface_crops(surface, seeds):
    xs, ys = [], []
    for seed in seeds:
        scan = generate_stm_scan(surface, 160, seed=seed)
        z = preprocess_scan(scan.raw)
        defect_map = stm.unsupervised_defect_map(z)
        xs.append(stm.defect_crops(z, defect_map.residual,
                                   scan.defects[["x", "y"]].to_numpy(), defect_map.lattice.period))
        ys += list(scan.defects["cls"])
    return np.concatenate(xs), np.array(ys)


def test_fewshot_classification_is_well_above_chance_on_synthetic_defects():
    crops, labels = _surface_crops("ge001", seeds=(0, 1, 2))
    rng = np.random.default_rng(0)
    support = np.concatenate([rng.choice(np.flatnonzero(labels == c), 1, replace=False) for c in np.unique(labels)])
    query = np.setdiff1d(np.arange(len(labels)), support)
    predicted = stm.PrototypeClassifier().fit(crops[support], labels[support]).predict(crops[query])
    assert accuracy(labels[query], predicted) > 0.6  # chance: 0.25


def test_protonet_trains_deterministically_and_embeds():
    crops, labels = _surface_crops("si001", seeds=(0,))
    a = stm.train_protonet(crops, labels, episodes=3, seed=1)
    b = stm.train_protonet(crops, labels, episodes=3, seed=1)
    assert np.array_equal(a.embed(crops[:4]), b.embed(crops[:4]))
    assert a.embed(crops[:4]).shape == (4, 288)
    with pytest.raises(SemnbInputError, match="two classes"):
        stm.train_protonet(crops[:2], np.array(["x", "y"]), episodes=1)


def test_class_support_draws_shots_per_class_and_leaves_small_classes_out():
    labels = np.array(["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"])
    support, query, left_out = stm.sample_class_support(labels, shots=2, seed=0)
    assert left_out == {"c": 2, "d": 1}  # no defect of theirs would be left to query
    assert sorted(labels[support]) == ["a", "a", "b", "b"]
    assert sorted(np.concatenate([support, query])) == list(range(8)) and not set(support) & set(query)
    again = stm.sample_class_support(labels, shots=2, seed=0)
    assert np.array_equal(support, again[0]) and np.array_equal(query, again[1])
    assert not np.array_equal(support, stm.sample_class_support(labels, shots=2, seed=3)[0])
    none, nothing, all_out = stm.sample_class_support(labels, shots=5, seed=0)
    assert len(none) == len(nothing) == 0 and set(all_out) == {"a", "b", "c", "d"}


def test_protonet_places_every_tensor_on_the_device_asked_for(implicit_device_is_meta):
    crops, labels = _surface_crops("si001", seeds=(0,))
    with implicit_device_is_meta():  # a tensor made without an explicit device would be meta and fail
        net = stm.train_protonet(crops, labels, episodes=2, seed=1, device="cpu", precision="fp32")
        embedded = net.embed(crops[:4])
        predicted = stm.PrototypeClassifier(net.embed).fit(crops[:8], labels[:8]).predict(crops[8:12])
    assert all(p.device.type == "cpu" for p in net.net.parameters()) and net.compute.precision == "fp32"
    assert isinstance(embedded, np.ndarray) and embedded.shape == (4, 288) and len(predicted) == 4
    plain = stm.train_protonet(crops, labels, episodes=2, seed=1, device="cpu", precision="fp32")
    assert np.array_equal(embedded, plain.embed(crops[:4]))  # the context changes nothing on the CPU


def test_protonet_in_bf16_runs_on_a_cpu_without_bf16_arithmetic():
    from semnb.hardware import SlowPrecisionWarning

    crops, labels = _surface_crops("si001", seeds=(0,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowPrecisionWarning)  # said where the CPU lacks AMX / AVX512-BF16
        net = stm.train_protonet(crops, labels, episodes=2, seed=1, device="cpu", precision="bf16")
    embedded = net.embed(crops[:4])
    assert net.compute.precision == "bf16" and embedded.dtype == np.float64 and np.isfinite(embedded).all()

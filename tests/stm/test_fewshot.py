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
    # logistic_map of an analysed scan is the same map, oriented by the labelled defects
    analysis = stm.ScanAnalysis(z=z, defect_map=defect_map)
    assert np.array_equal(stm.logistic_map(analysis, support), scores)


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


def test_filter_bank_is_the_image_then_eight_filters_per_scale():
    image = np.random.default_rng(2).normal(size=(40, 48))
    period = 8.0
    bank = stm.filter_bank(image, period)
    assert bank.shape == (40, 48, 1 + 8 * len(stm.FEATURE_SCALES))
    assert np.array_equal(bank[..., 0], image)  # the raw levelled height is a feature
    from scipy import ndimage

    sigma = stm.FEATURE_SCALES[2] * period  # 2 px: Gaussian, sigma^2 LoG, DoG(sigma, 1.6 sigma), sigma |grad|
    g = ndimage.gaussian_filter(image, sigma)
    first = 1 + 8 * 2
    assert np.allclose(bank[..., first], g)
    assert np.allclose(bank[..., first + 1], sigma**2 * ndimage.gaussian_laplace(image, sigma))
    assert np.allclose(bank[..., first + 2], g - ndimage.gaussian_filter(image, 1.6 * sigma))
    assert np.allclose(bank[..., first + 3], sigma * ndimage.gaussian_gradient_magnitude(image, sigma))
    # sigma^2 times the eigenvalues of the Hessian [[Hrr, Hrc], [Hrc, Hcc]]: their sum is the trace, their
    # product the determinant; structure-tensor eigenvalues are >= 0, sorted
    from skimage.feature import hessian_matrix

    hrr, hrc, hcc = hessian_matrix(image, sigma, order="rc", use_gaussian_derivatives=True)
    e1, e2 = bank[..., first + 4], bank[..., first + 5]
    assert np.allclose(e1 + e2, sigma**2 * (hrr + hcc)) and np.allclose(e1 * e2, sigma**4 * (hrr * hcc - hrc**2))
    assert (bank[..., first + 4] >= bank[..., first + 5]).all()
    assert (bank[..., first + 7] >= -1e-12).all() and (bank[..., first + 6] >= bank[..., first + 7]).all()


def test_cue_map_is_the_mean_of_pixel_ranks():
    a = np.array([[0.0, 10.0], [5.0, 1.0]])
    b = np.array([[4.0, 3.0], [2.0, 1.0]])
    combined = stm.cue_map({"a": a, "b": b}, ["a", "b"])
    assert np.allclose(combined, np.array([[1 + 4, 4 + 3], [3 + 2, 2 + 1]]) / 4 / 2)
    assert np.array_equal(stm.cue_map({"a": a}, ["a"]), np.array([[1, 4], [3, 2]]) / 4)
    with pytest.raises(SemnbInputError, match="empty"):
        stm.cue_map({"a": a}, [])


def test_select_cues_keeps_the_lattice_map_when_it_is_as_good():
    scan, mask = lattice_with_pits(seed=4)
    analysis = stm.analyze_scan(scan)
    support = stm.sample_pixel_support(mask, shots=1, seed=0)
    cues = stm.unsupervised_cues(analysis)
    assert set(cues) == {"lattice", "height:bright", "height:dark", "blob:bright", "blob:dark", "raw:bright", "raw:dark"}
    assert np.array_equal(cues["raw:bright"], scan - np.median(scan))
    assert stm.height_agreement(cues)[1] < stm.CUE_AGREEMENT  # the tilt hides the pits from the height
    assert stm.select_cues(cues, support) == ["lattice"]  # dark pits on a tilted lattice: brightness cannot tell
    # where the lattice map fails on the labelled pixels, the cues that tell them apart are taken
    noise = np.random.default_rng(0).normal(size=mask.shape)
    failed = dict(cues, lattice=noise, **{"height:dark": np.where(mask, 100.0, 0.0) + noise})
    chosen = stm.select_cues(failed, support)
    assert "lattice" not in chosen and "height:dark" in chosen and "height:bright" not in chosen


def _bright_spots_and_a_faint_label():
    """Cues on 64x64 where every defect is a bright spot but the one labelled defect is faint:
    the "lattice" map and "height" see the spots, the labelled pixels stand out in no cue."""
    rng = np.random.default_rng(0)
    spots = np.zeros((64, 64), bool)
    for y in range(2, 45, 14):
        for x in range(2, 45, 14):
            spots[y:y + 4, x:x + 4] = True  # 16 spots, 6% of the pixels
    noise = rng.normal(size=(2, 64, 64))
    height = np.where(spots, 5.0, 0.0) + noise[0]
    cues = {"lattice": np.where(spots, 4.0, 0.0) + noise[1]}
    for name, image in (("height", height), ("blob", height), ("raw", height)):
        cues.update({f"{name}:bright": image, f"{name}:dark": -image})
    defect = np.zeros((64, 64), bool)
    defect[54:58, 54:58] = True  # the faint labelled defect: lattice-level height
    lattice = np.zeros((64, 64), bool)
    lattice[50:62, 50:62] = True
    lattice &= ~defect
    return cues, stm.PixelSupport(defect=defect, lattice=lattice, region=defect | lattice, component_ids=np.zeros(1, int))


def test_select_cues_trusts_the_scan_over_one_faint_label():
    # on crops of the real TiO2 scan such a label made the lattice map or the dark orientation
    # win on the support (a 256x128 quarter: map .32 vs brightness .88)
    cues, support = _bright_spots_and_a_faint_label()
    side, agreement = stm.height_agreement(cues)
    assert side == "bright" and agreement > 0.95
    assert stm.select_cues(cues, support) == ["height:bright", "blob:bright", "raw:bright"]
    # without the agreement (the lattice map sees something else), the faint label stands out
    # in no cue (support AUROC < SUPPORT_MIN) and the long tail of the blob filter orients
    cues["lattice"] = np.random.default_rng(1).normal(size=(64, 64))
    assert stm.height_agreement(cues)[1] < stm.CUE_AGREEMENT
    assert stm.select_cues(cues, support) == ["height:bright", "blob:bright", "raw:bright"]
    flipped = {name: -image if name != "lattice" else image for name, image in cues.items()}
    assert stm.select_cues(flipped, support) == ["height:dark", "blob:dark", "raw:dark"]


def test_forest_map_beats_brightness_from_one_labelled_defect():
    scan, mask = lattice_with_pits(seed=4)
    analysis = stm.analyze_scan(scan)
    support = stm.sample_pixel_support(mask, shots=1, seed=0)
    scores = stm.fewshot_map(analysis, support, seed=0)
    query = ~support.region
    assert 0 < scores.min() and scores.max() <= 1
    assert pixel_auroc(scores[query][None], mask[query][None]) > 0.95
    assert pixel_auroc(scan[query][None], mask[query][None]) < 0.6
    assert np.array_equal(scores, stm.fewshot_map(analysis, support, seed=0))  # same seed, same map
    high, low = stm.pseudo_labels(scores, ~support.region, seed=0)
    assert len(high) == min(stm.PSEUDO_ROWS, int(np.ceil(stm.PSEUDO_TOP * query.sum())))
    assert not support.region.ravel()[np.r_[high, low]].any()


def test_relative_height_keeps_the_amplitude_that_z_scores_remove():
    yy, xx = np.mgrid[0:16, 0:16] - 7.5
    bump = np.exp(-(xx**2 + yy**2) / 2)
    rows = 0.3 * np.sin(2 * np.pi * xx / 4)  # the lattice around the defect (0 on average at its centre)
    low, high = rows + 0.4 * bump, rows + 0.75 * bump  # an oxygen vacancy and a hydroxyl
    crops = np.stack([np.stack([low + 2.0, low]), np.stack([1.3 * high - 1.0, 1.3 * high])])  # other terrace, tip gain
    relative = stm.relative_height(crops)
    assert np.allclose(np.median(relative, axis=(-2, -1)), 0)
    ring = np.ones((16, 16), bool)
    ring[3:-3, 3:-3] = False
    assert np.allclose(relative[:, 0][:, ring].std(axis=1), 1.0)  # in units of the lattice contrast around it
    peak = relative[:, 1, 7:9, 7:9].mean(axis=(-2, -1)) - relative[:, 1][:, ring].mean(axis=1)
    assert peak[1] / peak[0] == pytest.approx(0.75 / 0.4, rel=0.05)  # the tip gain of 1.3 is gone
    z_scored = stm.z_scored(crops)
    assert np.allclose(z_scored.std(axis=(-2, -1)), 1.0)
    assert np.array_equal(stm.flatten_embedding(crops), z_scored.reshape(2, -1))


def _bump_crops(amplitudes, n=24, seed=0):
    """Crops whose detail channel is the same lattice of unit corrugation and whose residual is a
    centred Gaussian bump of the given amplitude (each plus a little noise): after z-scoring
    they differ only by noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2
    bump = np.exp(-(xx**2 + yy**2) / (2 * 2.0**2))
    crops = np.empty((len(amplitudes), 2, n, n))
    for i, a in enumerate(amplitudes):
        crops[i, 0] = np.cos(2 * np.pi * xx / 8) + 0.01 * rng.standard_normal((n, n))
        crops[i, 1] = a * bump + 0.01 * rng.standard_normal((n, n))
    return crops


def test_amplitude_features_read_height_sign_and_area():
    a = stm.amplitude_features(_bump_crops([0.4, 0.8, -0.8]))
    assert a.shape == (3, 5)
    assert a[1, 0] == pytest.approx(2 * a[0, 0], rel=0.05) and a[2, 0] == pytest.approx(-a[1, 0], rel=0.05)
    assert a[0, 2] == pytest.approx(a[1, 2], abs=0.01)  # the same area at another height
    views = stm.dihedral(_bump_crops([0.8]))[:, 0]
    assert np.allclose(stm.amplitude_features(views), stm.amplitude_features(views[:1]), atol=1e-9)


def test_amplitude_embedding_separates_classes_that_differ_only_in_height():
    amplitudes = np.r_[np.full(10, 0.4), np.full(10, 0.75)] * np.random.default_rng(1).uniform(0.9, 1.1, 20)
    crops, labels = _bump_crops(amplitudes, seed=2), np.repeat(["vacancy", "hydroxyl"], 10)
    support, query = np.array([0, 10]), np.setdiff1d(np.arange(20), [0, 10])
    shape_only = stm.PrototypeClassifier(stm.flatten_embedding).fit(crops[support], labels[support])
    with_amplitude = stm.PrototypeClassifier(stm.AmplitudeEmbedding(stm.flatten_embedding, crops))
    with_amplitude.fit(crops[support], labels[support])
    assert accuracy(labels[query], with_amplitude.predict(crops[query])) == 1.0
    assert accuracy(labels[query], shape_only.predict(crops[query])) < 0.8
    with pytest.raises(SemnbInputError, match="reference"):
        stm.AmplitudeEmbedding(stm.flatten_embedding, crops[:1])

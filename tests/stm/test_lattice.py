"""STM methods: lattice, unsupervised map, defect list, few-shot maps and classes, `eval stm`."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from semnb import stm
from semnb.cli import main
from semnb.data.synth_stm import generate_stm_scan, write_stm_dataset
from semnb.errors import SemnbInputError
from semnb.metrics import accuracy, pixel_auroc
from semnb.stm.evaluate import evaluate_stm, find_labelled_scans
from semnb.stm.preprocess import preprocess_scan


def _lattice_with_pits(size=128, period=8.0, seed=0, depth=1.2):
    """Bright rows at 30 degrees with dark pits (vacancies) on lattice sites, plus a tilt.

    Built so that brightness fails: the defects are the darkest features, the tilt spans
    more height than the pits, and the unsupervised map must see them as deviations.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    angle = np.deg2rad(30)
    u = (np.cos(angle) * xx + np.sin(angle) * yy) / period
    v = (-np.sin(angle) * xx + np.cos(angle) * yy) / period
    du = u - np.round(u)
    scan = np.exp(-du**2 / (2 * 0.2**2)) * (0.8 + 0.2 * np.cos(2 * np.pi * v))
    rng = np.random.default_rng(seed)
    mask = np.zeros(scan.shape, bool)
    centres = []
    for _ in range(40):
        x, y = rng.uniform(period, size - period, size=2)
        if len(centres) == 10 or any(np.hypot(x - a, y - b) < 3 * period for a, b in centres):
            continue
        centres.append((x, y))
        cu = np.round((np.cos(angle) * x + np.sin(angle) * y) / period)
        cv = np.round((-np.sin(angle) * x + np.cos(angle) * y) / period)
        pit = np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * 0.3**2))
        scan -= depth * pit
        mask |= pit > 0.3
    scan += 0.02 * rng.standard_normal(scan.shape) + 3.0 * xx / size
    return scan, mask


def test_lattice_translations_map_the_lattice_onto_itself():
    scan, _ = _lattice_with_pits()
    z = preprocess_scan(scan)
    lattice = stm.estimate_lattice(z)
    assert 6.5 < lattice.period < 9.5  # rows 8 px apart
    residual = stm.lattice_residual(z, lattice)
    assert np.median(np.abs(residual)) < 0.2 * np.median(np.abs(z))
    # half a row spacing across the rows is no lattice translation: the residual is large
    across = 4.0 * np.array([[np.cos(np.pi / 6), np.sin(np.pi / 6)], [-np.cos(np.pi / 6), -np.sin(np.pi / 6)]])
    wrong = stm.Lattice(translations=across, correlation=np.ones(2), period=8.0)
    assert np.median(np.abs(stm.lattice_residual(z, wrong))) > 0.5 * np.median(np.abs(z))


def test_unsupervised_map_finds_dark_pits_where_brightness_fails():
    scan, mask = _lattice_with_pits()
    defect_map = stm.unsupervised_defect_map(preprocess_scan(scan))
    assert pixel_auroc(defect_map.score, mask) > 0.95
    assert pixel_auroc(scan, mask) < 0.6  # brightness ranks the pits among the lattice
    assert defect_map.polarity in ("dark", "both")


def test_unsupervised_map_is_deterministic():
    scan = preprocess_scan(generate_stm_scan("si001", 128, seed=1).raw)
    a, b = stm.unsupervised_defect_map(scan), stm.unsupervised_defect_map(scan)
    assert np.array_equal(a.score, b.score) and np.array_equal(a.lattice.translations, b.lattice.translations)


def test_defect_list_matches_a_hand_made_mask():
    mask = np.zeros((40, 60), bool)
    mask[5:10, 10:20] = True  # 5 x 10 rectangle
    yy, xx = np.mgrid[0:40, 0:60]
    mask |= (yy - 25) ** 2 + (xx - 40) ** 2 <= 16  # disc of radius 4
    mask[30, 5] = mask[31, 6] = True  # diagonal neighbours: one 8-connected component
    mask[0, 59] = True  # a speck
    table = stm.defect_list(mask, min_area=2)
    assert len(table) == 3
    rect = table.loc[table["area"] == 50].iloc[0]
    assert (rect["x"], rect["y"]) == (14.5, 7.0)
    disc = table.loc[(table["x"] - 40).abs() < 1].iloc[0]
    disc_pixels = (yy - 25) ** 2 + (xx - 40) ** 2 <= 16
    assert disc["area"] == disc_pixels.sum()
    assert (disc["x"], disc["y"]) == pytest.approx((xx[disc_pixels].mean(), yy[disc_pixels].mean()))
    pair = table.loc[table["area"] == 2].iloc[0]
    assert (pair["x"], pair["y"]) == (5.5, 30.5)
    assert len(stm.defect_list(mask, min_area=1)) == 4


def test_detect_defects_lists_the_planted_pits():
    scan, mask = _lattice_with_pits()
    found = stm.detect_defects(stm.unsupervised_defect_map(preprocess_scan(scan)))
    truth = stm.defect_list(mask)
    hits = sum(np.hypot(found["x"] - t.x, found["y"] - t.y).min() < 3 for t in truth.itertuples())
    assert hits >= 0.8 * len(truth)
    assert len(found) <= 1.5 * len(truth)


def test_pixel_support_is_labelled_defects_and_their_clean_ring():
    scan, mask = _lattice_with_pits()
    support = stm.sample_pixel_support(mask, shots=2, seed=3, ring=5)
    assert support.defect.any() and not (support.defect & ~mask).any()
    assert support.lattice.any() and not (support.lattice & mask).any()
    assert len(support.component_ids) == 2
    again = stm.sample_pixel_support(mask, shots=2, seed=3, ring=5)
    assert np.array_equal(support.region, again.region)
    with pytest.raises(SemnbInputError, match="--shots"):
        stm.sample_pixel_support(mask, shots=100, seed=0)


def test_fewshot_pixel_map_from_two_labelled_defects():
    scan, mask = _lattice_with_pits(seed=4)
    z = preprocess_scan(scan)
    defect_map = stm.unsupervised_defect_map(z)
    support = stm.sample_pixel_support(mask, shots=2, seed=0)
    assert stm.support_polarity(defect_map.residual, support) == "dark"
    features = stm.pixel_features(z, defect_map.residual, defect_map.lattice.period, "dark")
    scores = stm.fewshot_pixel_map(features, support)
    query = ~support.region
    assert pixel_auroc(scores[query][None], mask[query][None]) > 0.95


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


def test_scan_and_mask_of_different_sizes_name_both_files(tmp_path):
    np.save(tmp_path / "scan_a.npy", np.zeros((32, 32), np.float32))
    np.save(tmp_path / "scan_a_mask.npy", np.zeros((16, 32), np.uint8))
    with pytest.raises(SemnbInputError) as error:
        find_labelled_scans(tmp_path)
    assert "scan_a_mask.npy" in str(error.value) and "scan_a.npy" in str(error.value)


def test_folder_without_masks_is_an_error_and_unmasked_scans_are_reported(tmp_path):
    np.save(tmp_path / "lonely.npy", np.zeros((32, 32), np.float32))
    with pytest.raises(SemnbInputError, match="X_mask.npy"):
        find_labelled_scans(tmp_path)
    scan, mask = _lattice_with_pits(64)
    np.save(tmp_path / "pits.npy", scan)
    np.save(tmp_path / "pits_mask.npy", mask.astype(np.uint8))
    scans, warnings = find_labelled_scans(tmp_path)
    assert [s.name for s in scans] == ["pits"] and "lonely.npy" in warnings[0]


def test_eval_stm_cli_writes_the_results_contract(tmp_path):
    data = write_stm_dataset(tmp_path / "stm", n_per_class=1, size=160, seed=0)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["eval", "stm", "--data", str(data), "--shots", "1", "--seeds", "0",
                                       "--episodes", "3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    obj = json.loads(out.read_text())
    assert obj["task"] == "stm" and obj["n_images"] == 3 and obj["shots"] == 1
    assert list(obj["results"])[:3] == ["fewshot", "unsupervised", "brightness"]
    for method in ("fewshot", "unsupervised", "brightness"):
        assert 0 <= obj["results"][method]["pixel_auroc"] <= 1
    assert 0 <= obj["results"]["fewshot"]["accuracy"] <= 1
    assert "ge001" in obj["weights"]


def test_eval_is_deterministic(tmp_path):
    scan, mask = _lattice_with_pits(96)
    np.save(tmp_path / "pits.npy", scan)
    np.save(tmp_path / "pits_mask.npy", mask.astype(np.uint8))
    a = evaluate_stm(tmp_path, shots=2, seeds=[0, 1], progress=False)
    b = evaluate_stm(tmp_path, shots=2, seeds=[0, 1], progress=False)
    assert a.results == b.results
    assert a.results["unsupervised"]["pixel_auroc"] > a.results["brightness"]["pixel_auroc"]


def test_real_tio2_scan_if_present(shared_data, tmp_path):
    source = shared_data / "stm"
    if not (source / "m235_left_mask.npy").is_file():
        pytest.skip("m235_left is not in the shared data")
    for name in ("m235_left.npy", "m235_left_mask.npy"):
        (tmp_path / name).symlink_to(source / name)
    result = evaluate_stm(tmp_path, shots=5, seeds=[0], progress=False)
    assert result.results["fewshot"]["pixel_auroc"] > 0.9
    assert result.results["unsupervised"]["pixel_auroc"] > 0.8

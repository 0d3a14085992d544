"""STM without labels: the lattice, its residual, the unsupervised map, the defect list."""
import numpy as np
import pytest

from semnb import stm
from semnb.data.synth_stm import generate_stm_scan
from semnb.errors import SemnbInputError
from semnb.metrics import pixel_auroc
from semnb.stm.preprocess import preprocess_scan
from tests.stm.pits import lattice_with_pits


def test_lattice_translations_map_the_lattice_onto_itself():
    scan, _ = lattice_with_pits()
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
    scan, mask = lattice_with_pits()
    defect_map = stm.unsupervised_defect_map(preprocess_scan(scan))
    assert pixel_auroc(defect_map.score, mask) > 0.95
    assert pixel_auroc(scan, mask) < 0.6  # brightness ranks the pits among the lattice
    assert defect_map.polarity in ("dark", "both")


def test_unsupervised_map_is_deterministic():
    scan = preprocess_scan(generate_stm_scan("si001", 128, seed=1).raw)
    a, b = stm.unsupervised_defect_map(scan), stm.unsupervised_defect_map(scan)
    assert np.array_equal(a.score, b.score) and np.array_equal(a.lattice.translations, b.lattice.translations)


def test_analyze_scan_is_preprocessing_then_the_unsupervised_map():
    scan, _ = lattice_with_pits(64)
    analysis = stm.analyze_scan(scan)
    assert np.array_equal(analysis.z, preprocess_scan(scan))
    assert np.array_equal(analysis.defect_map.score, stm.unsupervised_defect_map(preprocess_scan(scan)).score)


def test_lattice_functions_need_a_few_unit_cells():
    # preprocessing takes any scan of at least 2x2; the lattice needs at least 8x8
    small = np.random.default_rng(0).normal(size=(6, 40))
    assert preprocess_scan(small).shape == small.shape
    with pytest.raises(SemnbInputError, match="at least 8x8"):
        stm.dominant_period(small)
    with pytest.raises(SemnbInputError, match="NaN"):
        stm.estimate_lattice(np.full((16, 16), np.nan))
    with pytest.raises(SemnbInputError, match="real heights"):
        stm.unsupervised_defect_map(np.ones((16, 16), complex))


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
    scan, mask = lattice_with_pits()
    found = stm.detect_defects(stm.unsupervised_defect_map(preprocess_scan(scan)))
    truth = stm.defect_list(mask)
    hits = sum(np.hypot(found["x"] - t.x, found["y"] - t.y).min() < 3 for t in truth.itertuples())
    assert hits >= 0.8 * len(truth)
    assert len(found) <= 1.5 * len(truth)


@pytest.mark.parametrize("seed", [5, 3964924996])
def test_period_survives_two_steps_and_a_tip_change(seed):
    # two steps (and for seed 5 a tip change): a Gaussian background gave 38 and 62 px for 12 px rows
    scan = generate_stm_scan("ge001", 256, seed=seed)
    assert scan.artefacts["n_steps"] == 2
    z = preprocess_scan(scan.raw)
    assert abs(stm.dominant_period(z) - scan.row_period) < 0.1 * scan.row_period
    defect_map = stm.unsupervised_defect_map(z)
    assert pixel_auroc(defect_map.score[None], scan.mask[None], num_thresholds=None) > 0.95  # 0.65 and 0.58 with the wrong period


@pytest.mark.parametrize("surface, seed, n_steps, before", [
    ("tio2_110", 2613022947, None, 35.2),  # `semnb data synth --kind stm --seed 0`'s tio2_110_003
    ("ge001", 18, 2, 25.6), ("tio2_110", 8, 2, 19.1)])
def test_half_frequency_is_taken_only_along_or_across_the_lattice(surface, seed, n_steps, before):
    # two close steps put a fringe spot at about half the lattice frequency, in their own
    # direction; taking any half-frequency spot (the Si dimer-row rule) gave `before` px
    scan = generate_stm_scan(surface, 256, seed=seed, n_steps=n_steps)
    assert scan.artefacts["n_steps"] == 2
    assert abs(stm.dominant_period(preprocess_scan(scan.raw)) - scan.row_period) < 0.1 * scan.row_period


def _alternating_rows(period, brighter, width, size=256):
    """Rows `period` apart (Gaussian profile, sigma period / width), every other one
    `1 + brighter` high and the rest `1 - brighter`, plus noise: TiO2(110) as on the lower part
    of m235_left, whose every other row is brighter."""
    x = np.mgrid[0:size, 0:size][1].astype(float)
    k = np.round(x / period)
    z = (1 + brighter * np.where(k % 2 == 0, 1.0, -1.0)) * np.exp(-((x - k * period) ** 2) / (2 * (period / width) ** 2))
    return z + 0.1 * np.random.default_rng(0).standard_normal(z.shape)


@pytest.mark.parametrize("brighter, width", [(0.1, 3), (0.2, 5)])
def test_a_brighter_every_other_row_does_not_double_the_period(monkeypatch, brighter, width):
    # the spot at half the row frequency scores >= 20% of the rows' spot here, so the Si
    # dimer-row rule alone took it (32 px, as the bottom 256 rows of m235_left gave 64 px);
    # the rows repeat in the autocorrelation, a dimer row's two lobes do not
    z = _alternating_rows(16.0, brighter, width)
    assert abs(stm.dominant_period(z) - 16.0) < 0.5
    monkeypatch.setattr(stm.lattice, "HALF_REPEAT", np.inf)
    assert abs(stm.dominant_period(z) - 32.0) < 1.0
    monkeypatch.undo()
    si = generate_stm_scan("si001", 256, seed=8)  # the lobes' spot is the best one: still the row spacing
    assert abs(stm.dominant_period(preprocess_scan(si.raw)) - si.row_period) < 0.1 * si.row_period


def test_residual_takes_copies_from_the_region_only():
    z = np.random.default_rng(0).normal(size=(12, 12))
    lattice = stm.Lattice(translations=np.array([[1.0, 0.0], [-1.0, 0.0]]), correlation=np.ones(2), period=2.0)
    region = np.ones_like(z, bool)
    region[:, 6] = False  # pixel (r, 5) loses its copy from column 6: its template is column 4 alone
    residual = stm.lattice_residual(z, lattice, region=region)
    assert np.allclose(residual[:, 5], z[:, 5] - z[:, 4])
    assert np.allclose(residual[:, 3], z[:, 3] - 0.5 * (z[:, 2] + z[:, 4]))  # both copies, their median
    assert np.allclose(stm.lattice_residual(z, lattice), stm.lattice_residual(z, lattice, region=np.ones_like(region)))


def test_a_small_terrace_falls_back_to_the_scans_lattice_and_says_so():
    scan, _ = lattice_with_pits()
    z = preprocess_scan(scan)
    lattice = stm.estimate_lattice(z)
    one = np.ones(z.shape, int)
    residual, used = stm.terrace_residual(z, one, lattice)
    assert np.array_equal(residual, stm.lattice_residual(z, lattice)) and used[0].source.startswith("scan (the only")
    two = one.copy()
    two[:12, :12] = 2  # a corner of about 2 unit cells
    _, used = stm.terrace_residual(z, two, lattice)
    assert [t.source.split(" ")[0] for t in used] == ["terrace", "scan"] and "too small" in used[1].source
    assert used[1].lattice is lattice and used[0].cells > stm.MIN_TERRACE_CELLS


@pytest.mark.parametrize("surface, seed", [("tio2_110", 0), ("tio2_110", 4), ("ge001", 2)])
def test_a_lattice_per_terrace_survives_two_steps(surface, seed):
    # the scan's one lattice fits one terrace: unsupervised AUROC .88, .56, .94 with it
    scan = generate_stm_scan(surface, 256, seed=seed, n_steps=2)
    z = preprocess_scan(scan.raw)
    per_terrace = stm.unsupervised_defect_map(z)
    assert [t.source for t in per_terrace.terrace_lattices].count("terrace") >= 2
    one_lattice = stm.unsupervised_defect_map(z, lattice=per_terrace.lattice)
    auroc = [pixel_auroc(m.score[None], scan.mask[None], num_thresholds=None) for m in (per_terrace, one_lattice)]
    assert auroc[0] > 0.8 and auroc[0] > auroc[1] + 0.04, auroc

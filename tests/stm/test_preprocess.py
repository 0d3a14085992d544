"""STM preprocessing: plane levelling, line flattening, robust normalisation."""
import numpy as np
import pytest

from semnb.errors import SemnbInputError
from semnb.stm.preprocess import (
    fit_plane,
    flatten_lines,
    plane_level,
    preprocess_scan,
    robust_normalize,
)


def _grid(h=40, w=50):
    return np.mgrid[0:h, 0:w].astype(float)


def test_plane_level_removes_an_exact_plane():
    yy, xx = _grid()
    plane = 3.0 + 0.25 * xx - 0.7 * yy
    assert np.abs(plane_level(plane)).max() < 1e-9


def test_plane_level_keeps_the_pattern_on_a_tilted_plane():
    yy, xx = _grid()
    pattern = np.sin(2 * np.pi * xx / 7) * np.cos(2 * np.pi * yy / 5)  # zero mean, no tilt
    levelled = plane_level(pattern + 1.5 - 0.1 * xx + 0.05 * yy)
    # the least-squares plane of the pattern itself is tiny, so the pattern comes back
    assert np.abs(levelled - pattern).max() < 0.05


def test_weights_keep_a_large_bump_out_of_the_plane_fit():
    yy, xx = _grid()
    plane = 0.3 * xx + 0.1 * yy
    bump = np.zeros_like(plane)
    bump[5:15, 5:15] = 50.0
    assert np.abs(fit_plane(plane + bump, weights=(bump == 0)) - plane).max() < 1e-9
    assert np.abs(fit_plane(plane + bump) - plane).max() > 1.0  # unweighted, the bump tilts the fit


def test_median_diff_removes_per_line_offsets_exactly():
    yy, xx = _grid(60, 40)
    pattern = np.sin(2 * np.pi * xx / 9)  # the same on every line: differences are exactly zero
    offsets = np.random.default_rng(0).normal(0, 2.0, size=60)
    flat = flatten_lines(pattern + offsets[:, None])
    assert np.abs((flat - flat.mean()) - (pattern - pattern.mean())).max() < 1e-9


def test_median_diff_removes_offset_jumps_on_a_slanted_lattice_with_a_defect():
    yy, xx = _grid(128, 128)
    lattice = np.sin(2 * np.pi * (xx + 0.6 * yy) / 8)  # rows at an angle to the scan lines
    lattice[50:60, 50:60] += 4.0  # a defect the line medians must not follow
    offsets = np.random.default_rng(1).normal(0, 0.5, size=128)
    offsets[40:70] += 3.0  # a jump that lasts 30 lines, as after a tip change
    flat = plane_level(flatten_lines(lattice + offsets[:, None]))
    line_offset_after = np.median(flat - plane_level(lattice), axis=1)
    assert np.std(line_offset_after) < 0.05 * np.std(offsets)


def test_polynomial_removes_offset_and_slope_of_each_line():
    yy, xx = _grid(30, 64)
    rng = np.random.default_rng(2)
    lines = rng.normal(size=(30, 1)) + rng.normal(size=(30, 1)) * xx
    assert np.abs(flatten_lines(lines, method="polynomial", order=1)).max() < 1e-9


def test_robust_normalize_ignores_outliers():
    z = np.random.default_rng(3).normal(5.0, 2.0, size=(100, 100))
    z[:3, :3] = 1e6  # a few spikes
    out = robust_normalize(z)
    assert abs(np.median(out)) < 1e-9
    assert 0.9 < np.median(np.abs(out)) * 1.4826 < 1.1
    assert 0.9 < np.std(out[10:, 10:]) < 1.1


def test_preprocess_is_deterministic_and_rejects_bad_input():
    z = np.random.default_rng(4).normal(size=(20, 20))
    assert np.array_equal(preprocess_scan(z), preprocess_scan(z))
    bad = z.copy()
    bad[0, 0] = np.nan
    with pytest.raises(SemnbInputError, match="NaN"):
        preprocess_scan(bad)
    with pytest.raises(SemnbInputError, match="unknown line flattening"):
        flatten_lines(z, method="mean")
    with pytest.raises(SemnbInputError, match="2-D"):
        plane_level(np.zeros(10))

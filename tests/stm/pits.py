"""A hand-made STM scan with known defects, shared by the STM and scan-loader tests."""
import numpy as np


def lattice_with_pits(size=128, period=8.0, seed=0, depth=1.2):
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

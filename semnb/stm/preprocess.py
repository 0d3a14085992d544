"""Clean a raw STM topograph before any method looks at it: plane, scan lines, scale.

Why: a raw scan carries the sample's tilt (a plane), a height offset per scan line (the
feedback loop settles differently on every line) and arbitrary height units. None of this
is surface structure, and each of these artefacts alone can hide a defect or fake one.

- `plane_level`: subtract the least-squares plane z = c0 + c1*x + c2*y (optionally fitted on
  the lattice pixels only, so big defects do not tilt the fit).
- `flatten_lines`: remove a per-line offset. "median_diff" chains the median of the
  differences between neighbouring lines (robust to defects and steps); "polynomial" fits and subtracts a low-order polynomial per
  line (also removes a per-line slope, but flattens anything constant along a line).
- `robust_normalize`: (z - median) / (1.4826 * MAD), so every scan has a lattice contrast
  near 1 whatever its height units, and defects cannot set the scale.
- `preprocess_scan`: lines, then plane, then scale; what every STM method in semnb starts
  from. Lines first, because the plane fit then also takes out the slow drift that line
  flattening leaves (see `flatten_lines`).

Rows of atoms that run exactly along the fast-scan direction look like line offsets and are
weakened by any line flattening; scans are usually taken with the rows at an angle.

Taught in: 08_stm.
"""
from __future__ import annotations

import numpy as np

from semnb.errors import SemnbInputError

MAD_TO_STD = 1.4826
"""MAD times this estimates the standard deviation of Gaussian data."""

LINE_METHODS = ("median_diff", "polynomial")


def check_scan(scan, name: str = "scan", min_side: int = 2) -> np.ndarray:
    """`scan` as a float64 HxW array, or a `SemnbInputError` that says what is wrong with it.

    The one validation of every STM function: 2-D, both sides at least `min_side` pixels
    (the lattice functions need a few unit cells and ask for 8), real numbers, all finite.

    Taught in: 08_stm.
    """
    arr = np.asarray(scan)
    if arr.ndim != 2 or min(arr.shape) < min_side:
        raise SemnbInputError(name, f"expected a 2-D topograph of at least {min_side}x{min_side}, got shape {arr.shape}",
                              f"pass one HxW scan (H, W >= {min_side})")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise SemnbInputError(name, f"expected real heights, got dtype {arr.dtype}", "pass a float array")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise SemnbInputError(name, "contains NaN or infinite values", "fill or crop the bad pixels first")
    return arr


def fit_plane(scan, weights: np.ndarray | None = None) -> np.ndarray:
    """The least-squares plane c0 + c1*x + c2*y through the scan, as an HxW array.

    `weights` (HxW, >= 0) selects the pixels the fit uses, e.g. `~defect_mask`.

    Taught in: 08_stm.
    """
    z = check_scan(scan)
    h, w = z.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    design = np.stack([np.ones(z.size), xx.ravel(), yy.ravel()], axis=1)
    sqrt_w = np.ones(z.size) if weights is None else np.sqrt(np.clip(np.asarray(weights, float).ravel(), 0, None))
    if weights is not None and np.asarray(weights).shape != z.shape:
        raise SemnbInputError("weights", f"shape {np.asarray(weights).shape} differs from the scan's {z.shape}",
                              "pass one weight per pixel")
    coef, *_ = np.linalg.lstsq(design * sqrt_w[:, None], z.ravel() * sqrt_w, rcond=None)
    return (design @ coef).reshape(h, w)


def plane_level(scan, weights: np.ndarray | None = None) -> np.ndarray:
    """Subtract the least-squares plane (sample tilt); an exact plane becomes exactly zero.

    Taught in: 08_stm.
    """
    return check_scan(scan) - fit_plane(scan, weights)


def flatten_lines(scan, method: str = "median_diff", order: int = 1) -> np.ndarray:
    """Remove the height offset of each scan line (rows of the array are scan lines).

    "median_diff": offset_i = offset_{i-1} + median(line_i - line_{i-1}) (Gwyddion's
    "median of differences"); robust to defects and steps, and one bad line shifts nothing
    after it. Each median is slightly biased where defects enter or leave a line and the
    running sum adds the biases up into a slow drift across lines, mostly a slope, which the
    plane fit that follows in `preprocess_scan` removes. "polynomial": subtract a polynomial
    of degree `order` fitted to each line (Gwyddion's "polynomial" row align).

    Taught in: 08_stm.
    """
    z = check_scan(scan)
    if method == "median_diff":
        steps = np.median(np.diff(z, axis=0), axis=1)
        offsets = np.concatenate([[0.0], np.cumsum(steps)])
        flat = z - offsets[:, None]
        return flat - np.median(flat)
    if method == "polynomial":
        if order < 0:
            raise SemnbInputError("order", f"got {order}", "use 0 (offset only) or a higher degree")
        x = np.linspace(-1.0, 1.0, z.shape[1])
        design = np.vander(x, order + 1)
        coef, *_ = np.linalg.lstsq(design, z.T, rcond=None)
        return z - (design @ coef).T
    raise SemnbInputError("method", f"unknown line flattening {method!r}", f"use one of {', '.join(LINE_METHODS)}")


def robust_normalize(scan) -> np.ndarray:
    """(z - median) / (1.4826 * MAD): unit lattice contrast, zero median; a flat scan gives zeros.

    Taught in: 08_stm.
    """
    z = check_scan(scan)
    centred = z - np.median(z)
    mad = np.median(np.abs(centred))
    if mad == 0:
        spread = np.std(centred)
        return centred / spread if spread > 0 else centred
    return centred / (MAD_TO_STD * mad)


def preprocess_scan(scan, line_method: str = "median_diff") -> np.ndarray:
    """Flatten scan lines, plane level, robust normalise: the input every STM method uses.

    Taught in: 08_stm.
    """
    return robust_normalize(plane_level(flatten_lines(scan, method=line_method)))

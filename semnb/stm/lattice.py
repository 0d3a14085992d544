"""STM defects without labels: the lattice, its residual, the unsupervised defect map, the defect list.

A crystal surface repeats itself: the height at x equals the height at x + t for every
lattice translation t. So the surface a pixel should show can be predicted from the same
pixel in neighbouring unit cells, and a defect is where the scan disagrees with that
prediction:

1. `estimate_lattice` finds the lattice translations as the strongest peaks of the scan's
   autocorrelation (computed by FFT, refined to sub-pixel), whatever the surface: rows,
   dimers, c(4x2) zig-zags or two rotated domains (their common translations win).
2. `lattice_residual`: the scan minus the median of the scan shifted by those translations
   (a local lattice template). The median ignores a neighbour cell that holds a defect.
3. `unsupervised_defect_map`: the residual, smoothed over a tenth of a period and expressed in
   robust z units. Its sign says bright or dark; `polarity="auto"` keeps one sign when the
   scan's deviations are clearly one-sided and |residual| otherwise. Step edges
   (`step_edges`) are found first; each terrace is brought to one level
   (`level_terraces`), gets its own lattice when it is large enough (`terrace_residual`;
   smaller ones fall back to the scan's lattice, named in `DefectMap.terrace_lattices`),
   and the step pixels themselves are neutralised in the map.
4. `detect_defects` / `defect_list`: threshold, connected components
   (skimage.measure.label) and their centres and areas (skimage.measure.regionprops), as
   a table.

`analyze_scan` runs preprocessing and the unsupervised map once per scan; the few-shot
methods (`semnb.stm.fewshot`) start from its `ScanAnalysis`.

Taught in: 08_stm.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.measure import label, regionprops

from semnb.errors import SemnbInputError
from semnb.stm.preprocess import MAD_TO_STD, check_scan, preprocess_scan

MIN_SIDE = 8
"""The smallest scan side (pixels) the lattice and few-shot functions accept."""

# ---------------------------------------------------------------------------------------------
# The lattice
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lattice:
    """Translations (dx, dy in pixels, sub-pixel) that map the scan's lattice onto itself.

    `correlation[i]` is the normalised autocorrelation at translation i (1 = perfect copy);
    `period` is the scan's dominant period (`dominant_period`), the length scale used to
    smooth maps and to cut crops (for Ge(001) it can be half the row spacing; it is
    consistent from scan to scan of one surface, which is what the crops need).
    """

    translations: np.ndarray
    correlation: np.ndarray
    period: float


def estimate_lattice(scan: np.ndarray, max_translations: int = 16, reach: float = 3.0) -> Lattice:
    """Find the lattice translations from the autocorrelation of the scan's lattice detail.

    Why the autocorrelation (not Fourier peaks): its peaks are translations that really map
    the scan onto itself, so a c(4x2) zig-zag or two domains rotated by 90 degrees (whose
    common translations correlate best) need no knowledge of the surface.

    Steps: `dominant_period` p0 sets the scale; the scan is band-passed at that scale and
    clipped (`_lattice_detail`); a lag counts as a candidate when it lies between 0.4*p0
    and `reach`*p0 and the autocorrelation dips by at least 0.25 on the straight path from
    zero lag to it (so merely smooth directions, e.g. along a featureless row, do not count).
    Candidates are taken greedily by correlation minus a small length penalty (0.05 per p0:
    on a row ridge the nearest point wins), each in a +/- pair, suppressing lags within
    0.5*p0 of one already taken, until `max_translations`.

    Taught in: 08_stm.
    """
    z = check_scan(scan, min_side=MIN_SIDE)
    h, w = z.shape
    p0 = dominant_period(z)
    acf = _autocorrelation(_lattice_detail(z, p0))
    limit = min(reach * p0, min(h, w) / 2.0 - 2)
    cy, cx = h // 2, w // 2
    dy, dx = np.mgrid[-cy:h - cy, -cx:w - cx]
    distance = np.hypot(dx, dy)
    candidate = (distance >= 0.4 * p0) & (distance <= limit) & (_valley_depth(acf, limit) >= 0.25) & (acf > 0)
    if not candidate.any():
        raise SemnbInputError("scan", "no lattice found (no autocorrelation peak stands out of its surroundings)",
                              "pass a scan that shows at least a few unit cells of the surface")
    ys, xs = np.nonzero(candidate)
    score = acf[ys, xs] - 0.05 * distance[ys, xs] / p0
    chosen: list[tuple[float, float]] = []
    values: list[float] = []
    for i in np.argsort(-score, kind="stable"):
        if len(chosen) + 2 > max_translations:
            break
        lag = (xs[i] - cx, ys[i] - cy)
        if any(np.hypot(lag[0] - a, lag[1] - b) < 0.5 * p0 for a, b in chosen):
            continue
        ty, tx = _refine_peak(acf, ys[i], xs[i])
        chosen += [(tx - cx, ty - cy), (cx - tx, cy - ty)]
        values += [float(acf[ys[i], xs[i]])] * 2
    translations = np.array(chosen, dtype=np.float64)
    return Lattice(translations=translations, correlation=np.array(values), period=p0)


def _valley_depth(acf: np.ndarray, limit: float) -> np.ndarray:
    """For each lag: its autocorrelation minus the lowest value on the straight path from zero lag.

    Computed on a polar grid (a running minimum outwards along 720 rays) and looked up per pixel.
    """
    h, w = acf.shape
    cy, cx = h // 2, w // 2
    radii = np.arange(0.0, limit + 1.0, 0.5)
    angles = np.linspace(0.0, 2 * np.pi, 720, endpoint=False)
    rr, aa = np.meshgrid(radii, angles)
    polar = ndimage.map_coordinates(acf, [cy + rr * np.sin(aa), cx + rr * np.cos(aa)], order=1, mode="nearest")
    lowest = np.minimum.accumulate(polar, axis=1)
    dy, dx = np.mgrid[-cy:h - cy, -cx:w - cx]
    ray = np.round(np.mod(np.arctan2(dy, dx), 2 * np.pi) / (2 * np.pi) * 720).astype(int) % 720
    step = np.minimum(np.round(np.hypot(dx, dy) / 0.5).astype(int), len(radii) - 1)
    return acf - lowest[ray, step]


HALF_SPOT_ANGLE = 10.0
"""`dominant_period`: a spot at half the best frequency counts within this many degrees of
the best spot's direction or of its right angle."""


HALF_REPEAT = 0.1
"""`dominant_period`: the best spot's period is a repeat of the scan (not a harmonic of a row's
shape) when the autocorrelation along it climbs back by at least this much (1 = zero lag) from
its lowest point to that lag; a repeat is kept even when a strong spot lies at half its frequency."""


def dominant_period(scan: np.ndarray) -> float:
    """The strongest lattice period of the scan (pixels), from its power spectrum.

    The slow background is removed first by a median filter (`_terrace_background`), not a
    Gaussian: a median follows a step edge, a Gaussian leaves each step as a line, and two
    parallel steps then put fringe spots in the spectrum that won over the lattice (two
    synthetic Ge(001) scans with two steps gave 38 and 62 px for 12 px rows).

    Why not simply the highest peak: step edges, the slow background and the tip-change line
    put power on streaks through zero frequency that fall off smoothly with |f|, whereas a
    lattice puts it on sharp spots. Each frequency is scored by its power times its radial
    contrast (its power over the mean power at 0.6 and 1.6 times its radius, same direction),
    so a spot beats a streak. Periods from 4 pixels to a quarter of the smaller side count.
    When a spot at half that frequency scores at least 20% of the best (the two lobes of a Si
    dimer row make a strong harmonic of the row spacing), that one is taken, but only along
    the best spot's direction or at right angles to it (within HALF_SPOT_ANGLE; a Si(001)
    domain on the next terrace turns its rows by 90 degrees): the fringe of two close parallel
    steps can also sit at half the frequency, in the steps' direction (synthetic TiO2(110)
    syn0 tio2_110_003: 35 px for 16 px rows), and only when the best spot's period is not
    itself a repeat of the scan (`_repeat_rise` < HALF_REPEAT): a TiO2(110) crop whose every
    other row is brighter (the bottom 256 rows of m235_left) otherwise gave 64 px for 32 px
    rows. The levelled detail is clipped at 2.5 robust standard deviations first, so that the
    steps it still holds cannot dominate.

    Taught in: 08_stm.
    """
    z = check_scan(scan, min_side=MIN_SIDE)
    h, w = z.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    detail = _robust_clip(z - _terrace_background(z))
    spectrum = np.fft.fft2(detail * window)
    power = ndimage.gaussian_filter(np.fft.fftshift(np.abs(spectrum) ** 2), 0.7)
    cy, cx = h // 2, w // 2
    fy, fx = np.meshgrid((np.arange(h) - cy) / h, (np.arange(w) - cx) / w, indexing="ij")
    radius = np.hypot(fx, fy)

    def power_at(scale):
        return ndimage.map_coordinates(power, [cy + scale * fy * h, cx + scale * fx * w], order=1, cval=0.0)

    contrast = power / (0.5 * (power_at(0.6) + power_at(1.6)) + 1e-12 * power.max())
    score = np.where((radius >= 4.0 / min(h, w)) & (radius <= 0.25), power * contrast, 0.0)
    best = np.unravel_index(np.argmax(score), score.shape)
    # the best spot may be a harmonic (two lobes per Si dimer row, dimers at half the row
    # spacing): prefer a strong spot at half the frequency, so scans agree on the scale
    half = (np.abs(radius - radius[best] / 2) <= 0.15 * radius[best] / 2) & (score >= 0.2 * score[best])
    cosine = np.abs(fx * fx[best] + fy * fy[best]) / np.maximum(radius * radius[best], 1e-12)
    angle = np.deg2rad(HALF_SPOT_ANGLE)
    half &= (cosine >= np.cos(angle)) | (cosine <= np.sin(angle))
    if half.any() and _repeat_rise(detail, 1.0 / radius[best], (fy[best] / radius[best], fx[best] / radius[best])) < HALF_REPEAT:
        best = np.unravel_index(np.argmax(np.where(half, score, 0.0)), score.shape)
    return float(1.0 / radius[best])


def _repeat_rise(detail: np.ndarray, period: float, direction: tuple[float, float]) -> float:
    """How far the autocorrelation of `detail` along `direction` (unit dy, dx) climbs from its
    lowest point between zero lag and `period` back up to `period` (0 when it only falls).

    Why: two lobes per Si(001) dimer row put the strongest spot at half the row spacing, but the
    scan does not repeat at that lag (its autocorrelation falls all the way: rise 0.000 on every
    synthetic Si and Ge scan that needs the half-frequency rule); a TiO2(110) crop whose every
    other row is brighter has its strongest spot at the row spacing, which does repeat (rise
    .36-.44 on the 256-row crops of m235_left that gave 64 px for 32 px rows).
    """
    h, w = detail.shape
    lags = np.linspace(0.0, period, 17)[1:]
    acf = ndimage.map_coordinates(_autocorrelation(detail), [h // 2 + lags * direction[0], w // 2 + lags * direction[1]],
                                  order=1)
    return float(acf[-1] - acf.min())


def _terrace_background(z: np.ndarray) -> np.ndarray:
    """The scan's slow background, steps kept sharp: a 9x9 median filter on every f-th pixel
    (f = smaller side // 64, so the window spans about 1/7 of the smaller side; the lattice
    averages out when its period is below that), interpolated back to the scan's pixels.
    Why subsampled: a median over the full-resolution window costs seconds per call (scipy)."""
    h, w = z.shape
    f = max(1, min(h, w) // 64)
    background = ndimage.median_filter(z[::f, ::f], size=9, mode="reflect")
    if f == 1:
        return background
    ys, xs = np.mgrid[0:h, 0:w] / f
    return ndimage.map_coordinates(background, [ys, xs], order=1, mode="nearest")


def _lattice_detail(z: np.ndarray, period: float) -> np.ndarray:
    """The scan band-passed at the lattice scale (negative Laplacian of Gaussian, sigma a
    quarter period), clipped at 2.5 robust standard deviations: terraces, step edges and
    defects are minorities that cannot dominate the autocorrelation."""
    return _robust_clip(-ndimage.gaussian_laplace(z, max(0.25 * period, 0.7)))


def _robust_clip(image: np.ndarray, k: float = 2.5) -> np.ndarray:
    """image minus its median, clipped at k robust standard deviations (MAD)."""
    centred, spread = _centred_spread(image)
    return np.clip(centred, -k * spread, k * spread) if spread > 0 else centred


def _centred_spread(image: np.ndarray) -> tuple[np.ndarray, float]:
    """(image minus its median, its robust standard deviation 1.4826 MAD): the scale every map here is read in."""
    centred = image - np.median(image)
    return centred, float(MAD_TO_STD * np.median(np.abs(centred)))


def _autocorrelation(image: np.ndarray) -> np.ndarray:
    """Normalised circular-free autocorrelation, zero lag at the array centre, 1 at zero lag."""
    h, w = image.shape
    padded = np.zeros((2 * h, 2 * w))
    padded[:h, :w] = image - image.mean()
    spectrum = np.fft.rfft2(padded)
    full = np.fft.irfft2(spectrum * np.conj(spectrum), s=padded.shape)
    # overlap counts: each lag averages over the pixels the two copies share
    ones = np.zeros_like(padded)
    ones[:h, :w] = 1.0
    o = np.fft.rfft2(ones)
    overlap = np.fft.irfft2(o * np.conj(o), s=padded.shape)
    full = np.fft.fftshift(full / np.maximum(overlap, 1.0))
    full = full[h - h // 2:h - h // 2 + h, w - w // 2:w - w // 2 + w]
    return full / full[h // 2, w // 2]


def _refine_peak(acf: np.ndarray, y: int, x: int) -> tuple[float, float]:
    """Sub-pixel peak position by a parabola through the peak and its two neighbours, per axis."""
    h, w = acf.shape

    def offset(minus, centre, plus):
        curvature = minus - 2 * centre + plus
        return 0.0 if curvature >= 0 else float(np.clip(0.5 * (minus - plus) / curvature, -0.5, 0.5))

    oy = offset(acf[y - 1, x], acf[y, x], acf[y + 1, x]) if 0 < y < h - 1 else 0.0
    ox = offset(acf[y, x - 1], acf[y, x], acf[y, x + 1]) if 0 < x < w - 1 else 0.0
    return y + oy, x + ox


def lattice_residual(scan: np.ndarray, lattice: Lattice, region: np.ndarray | None = None) -> np.ndarray:
    """The scan minus its lattice template: the median of the scan shifted by each translation.

    Why the median: in a neighbour cell that holds another defect the shifted copy is wrong,
    and the median ignores such minorities. Copies shifted past the border are left out, and
    so are copies that land outside `region` (bool HxW, e.g. one terrace: a copy from the
    next terrace shows another domain or another height). Pixels with no copy left keep
    their own height (residual 0).

    Taught in: 08_stm.
    """
    z = check_scan(scan, min_side=MIN_SIDE)
    h, w = z.shape
    if region is not None and np.shape(region) != z.shape:
        raise SemnbInputError("region", f"shape {np.shape(region)} differs from the scan's {z.shape}",
                              "pass one bool per pixel of the scan")
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    copies = np.empty((len(lattice.translations), h, w))
    for i, (tx, ty) in enumerate(lattice.translations):
        coords = [ys + ty, xs + tx]
        copies[i] = ndimage.map_coordinates(z, coords, order=1, mode="constant", cval=np.nan)
        if region is not None:
            inside = ndimage.map_coordinates(np.asarray(region, np.float64), coords, order=1, mode="constant", cval=0.0)
            copies[i][inside < 0.999] = np.nan
    with warnings.catch_warnings():  # pixels whose every copy falls outside: kept as they are below
        warnings.simplefilter("ignore", RuntimeWarning)
        template = np.nanmedian(copies, axis=0) if np.isnan(copies).any() else np.median(copies, axis=0)
    template = np.where(np.isnan(template), z, template)
    return z - template


MIN_TERRACE_CELLS = 64.0
"""A terrace gets its own lattice (`terrace_residual`) when it holds at least this many unit
cells (period^2, 8 x 8 cells) and its bounding box is at least 4 periods on each side."""


@dataclass(frozen=True)
class TerraceLattice:
    """The lattice one terrace used: `label` (its value in `DefectMap.terraces`), `cells` (its
    area in unit cells), `lattice` and `source`: "terrace" (estimated on the terrace alone) or
    "scan (...)" (the scan's lattice, with the reason the terrace's own was not used)."""

    label: int
    cells: float
    lattice: Lattice
    source: str


def terrace_residual(scan: np.ndarray, terraces: np.ndarray, lattice: Lattice,
                     min_cells: float = MIN_TERRACE_CELLS) -> tuple[np.ndarray, list[TerraceLattice]]:
    """The lattice residual with one lattice per terrace: (residual HxW, one `TerraceLattice` each).

    `terraces` labels the terraces (1..n, 0 = step pixels; `step_edges` + skimage `label`),
    `lattice` is the scan's. Each terrace of at least `min_cells` unit cells gets its own
    lattice (`estimate_lattice` on its bounding box, the other terraces there set to 0, the
    level `level_terraces` gives every terrace) and its residual from copies on the terrace only
    (`lattice_residual` with `region`); a smaller terrace, or one where no lattice stands out,
    falls back to the scan's lattice (copies still from the terrace only, when its box is at
    least MIN_SIDE pixels) and says so in its `source`. Step pixels take the scan's lattice.
    With one terrace this is `lattice_residual` with the scan's lattice.

    Why: across a step Si(001) and Ge(001) rotate their dimer rows by 90 degrees, so the
    scan's lattice (the translations common to both domains, or those of the bigger one)
    predicts one terrace badly; and a template copy from the next terrace is never right.

    Taught in: 08_stm.
    """
    z = check_scan(scan, min_side=MIN_SIDE)
    n = int(terraces.max())
    if n <= 1:
        cells = float((terraces == 1).sum()) / lattice.period**2
        return lattice_residual(z, lattice), ([TerraceLattice(1, cells, lattice, "scan (the only terrace)")] if n else [])
    residual = lattice_residual(z, lattice)
    used = []
    for k, box in enumerate(ndimage.find_objects(terraces), start=1):
        if box is None:
            continue
        here = terraces[box] == k
        cells = float(here.sum()) / lattice.period**2
        sides = min(here.shape) / lattice.period
        own, source = lattice, "terrace"
        if cells < min_cells or sides < 4 or min(here.shape) < MIN_SIDE:
            source = f"scan (terrace of {cells:.0f} cells, {sides:.1f} periods across: too small for its own lattice)"
        else:
            try:
                own = estimate_lattice(np.where(here, z[box], 0.0))
            except SemnbInputError:
                source = "scan (no lattice stands out on the terrace alone)"
        if min(here.shape) >= MIN_SIDE:
            residual[box][here] = lattice_residual(z[box], own, region=here)[here]
        used.append(TerraceLattice(k, cells, own, source))
    return residual, used


# ---------------------------------------------------------------------------------------------
# Unsupervised defect map and defect list
# ---------------------------------------------------------------------------------------------


@dataclass
class DefectMap:
    """The unsupervised result: `score` (HxW, robust z units, high = defect), the signed
    `residual`, the scan's `lattice` (its period is the scale of the crops and features),
    the `polarity` it chose ("bright", "dark", "both"), `steps`, the step-edge pixels whose
    score was neutralised, `terraces` (labels 1..n between the steps, 0 on them) and
    `terrace_lattices`, the lattice each terrace used (`terrace_residual`)."""

    score: np.ndarray
    residual: np.ndarray
    lattice: Lattice
    polarity: str
    steps: np.ndarray
    terraces: np.ndarray | None = None
    terrace_lattices: tuple[TerraceLattice, ...] = ()


def unsupervised_defect_map(scan: np.ndarray, polarity: str = "auto", lattice: Lattice | None = None,
                            smooth: float = 0.1) -> DefectMap:
    """Defect score per pixel from the deviation from the periodic lattice, with no labels.

    `scan` should be preprocessed (`semnb.stm.preprocess.preprocess_scan`). The residual is
    smoothed by a Gaussian of `smooth` lattice periods and divided by its robust spread
    (1.4826 * MAD). polarity: "bright" scores protrusions, "dark" depressions, "both" |z|;
    "auto" keeps one side when it has 4 times as many pixels beyond 3 robust standard
    deviations as the other side and 50 times as many beyond 6 (the scan's defects are then
    all of that contrast, e.g. adsorbates on TiO2), else "both" (e.g. Si with adatoms and
    vacancies). A heuristic: pass the polarity when you know it.
    Pixels on step edges (`step_edges`) get the map's median score. Without a `lattice` each
    terrace between the steps gets its own (`terrace_residual`, the scan's lattice where a
    terrace is too small); a `lattice` given is used on every terrace.

    Taught in: 08_stm.
    """
    if polarity not in ("auto", "bright", "dark", "both"):
        raise SemnbInputError("polarity", f"got {polarity!r}", "use auto, bright, dark or both")
    z = check_scan(scan, min_side=MIN_SIDE)
    steps = step_edges(z, dominant_period(z) if lattice is None else lattice.period)
    z = level_terraces(z, steps)
    terraces = label(~steps, connectivity=1)
    if lattice is None:
        lattice = estimate_lattice(z)
        residual, used = terrace_residual(z, terraces, lattice)
    else:
        residual, used = lattice_residual(z, lattice), []
    smoothed = ndimage.gaussian_filter(residual, max(smooth * lattice.period, 0.5))
    centred, spread = _centred_spread(smoothed)
    zres = centred / spread if spread > 0 else centred
    if polarity == "auto":
        polarity = _one_sided(zres) or _one_sided(-zres, "dark") or "both"
    score = zres if polarity == "bright" else -zres if polarity == "dark" else np.abs(zres)
    score = np.where(steps, np.median(score), score)
    return DefectMap(score=score, residual=residual, lattice=lattice, polarity=polarity, steps=steps,
                     terraces=terraces, terrace_lattices=tuple(used))


def _one_sided(zres: np.ndarray, name: str = "bright") -> str | None:
    """`name` when this side dominates: 4x the pixels beyond 3 robust std and 50x beyond 6."""
    moderate, strong = np.mean(zres > 3.0), np.mean(zres > 6.0)
    other_moderate, other_strong = np.mean(zres < -3.0), np.mean(zres < -6.0)
    return name if moderate > 4.0 * other_moderate and strong > 50.0 * other_strong else None


def level_terraces(scan: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Subtract from each terrace (a connected region between step edges) its median height;
    step pixels take the level of the nearest terrace.

    Why: the lattice template of a pixel near a step borrows copies from the next terrace,
    one step height away; with every terrace at the same level those copies fit again.

    Taught in: 08_stm.
    """
    z = check_scan(scan, min_side=MIN_SIDE)
    if not steps.any():
        return z
    terraces = label(~steps, connectivity=1)
    if terraces.max() == 0:
        return z
    levels = ndimage.median(z, labels=terraces, index=np.arange(1, terraces.max() + 1))
    nearest = ndimage.distance_transform_edt(terraces == 0, return_distances=False, return_indices=True)
    owner = terraces[nearest[0], nearest[1]]
    return z - np.asarray(levels)[owner - 1]


def step_edges(scan: np.ndarray, period: float, threshold: float = 3.0, min_length: float = 6.0) -> np.ndarray:
    """Pixels on or next to a step edge between terraces (bool HxW).

    Why: across a step the shifted copies of the lattice template come from another
    terrace, so the residual lights up along every step although nothing is wrong there.
    A step is where the scan, smoothed over one period (which averages the lattice away),
    changes height steeply along a long line: the Gaussian gradient magnitude at sigma =
    one period above `threshold` robust standard deviations, in connected regions at least
    `min_length` periods long (a point defect makes a short ring, a step crosses the scan).
    Defects sitting on a step are lost with it.

    Taught in: 08_stm.
    """
    z = check_scan(scan, min_side=MIN_SIDE)
    gradient = ndimage.gaussian_gradient_magnitude(z, max(period, 1.0))
    centred, spread = _centred_spread(gradient)
    if spread == 0:
        return np.zeros(z.shape, bool)
    regions = label(centred > threshold * spread, connectivity=2)
    long = [r.label for r in regionprops(regions) if r.axis_major_length >= min_length * period]
    return np.isin(regions, long)


def defect_list(binary: np.ndarray, min_area: int = 1) -> pd.DataFrame:
    """Connected components of a defect mask as a table: one row per defect.

    Columns: defect_id (1..n, the component label), x and y (centroid column and row, in
    pixels), area (pixels), bbox (min_row, min_col, max_row, max_col) as four columns.
    Components smaller than `min_area` pixels are dropped (noise specks). 8-connected.

    Taught in: 08_stm.
    """
    mask = np.asarray(binary)
    if mask.ndim != 2:
        raise SemnbInputError("binary", f"expected a 2-D mask, got shape {mask.shape}", "pass one HxW boolean mask")
    labels = label(mask.astype(bool), connectivity=2)
    rows = []
    for region in regionprops(labels):
        if region.area < min_area:
            continue
        y, x = region.centroid
        r0, c0, r1, c1 = region.bbox
        rows.append({"defect_id": region.label, "x": float(x), "y": float(y), "area": int(region.area),
                     "min_row": r0, "min_col": c0, "max_row": r1, "max_col": c1})
    return pd.DataFrame(rows, columns=["defect_id", "x", "y", "area", "min_row", "min_col", "max_row", "max_col"])


def detect_defects(defect_map: DefectMap, threshold: float = 4.0, min_area_cells: float = 0.05) -> pd.DataFrame:
    """The defect list of an unsupervised map: pixels with score > `threshold` (robust z),
    components of at least `min_area_cells` unit cells (period**2).

    Taught in: 08_stm.
    """
    min_area = max(1, int(round(min_area_cells * defect_map.lattice.period**2)))
    return defect_list(defect_map.score > threshold, min_area=min_area)


# ---------------------------------------------------------------------------------------------
# One scan, analysed once
# ---------------------------------------------------------------------------------------------


@dataclass
class ScanAnalysis:
    """Everything computed once per scan: the preprocessed scan `z`, the unsupervised
    `defect_map` (lattice, residual, score) and the `raw` scan as read (None when not kept):
    its brightness is one of the few-shot map's cues."""

    z: np.ndarray
    defect_map: DefectMap
    raw: np.ndarray | None = None


def analyze_scan(raw: np.ndarray, polarity: str = "auto") -> ScanAnalysis:
    """Preprocess one raw scan (`preprocess_scan`) and compute its unsupervised defect map.

    Why one object: the few-shot map, the defect crops and the evaluation all need the
    levelled scan, the residual and the period; computed once, shared by all of them.

    Taught in: 08_stm.
    """
    z = preprocess_scan(raw)
    if np.ptp(z) == 0:
        raise SemnbInputError("scan", "is flat: every pixel has the same height once levelled, so it shows no lattice",
                              "pass a topograph that shows the surface (check the channel exported)")
    return ScanAnalysis(z=z, defect_map=unsupervised_defect_map(z, polarity=polarity), raw=check_scan(raw))

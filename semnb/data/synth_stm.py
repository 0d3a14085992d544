"""Synthetic STM topographs of Si(001), Ge(001) and TiO2(110) with labelled point defects.

Why: real STM scans with pixel masks and per-defect classes are rare (the shared folder has
one labelled scan), and three surfaces are needed to test whether a method trained on two
surfaces adapts to the third from one label per class. This generator draws scans whose
every defect pixel and class is known, with the artefacts that make real scans hard.

A scan is rendered in three steps:

1. Surface. Terraces separated by 1-2 wavy step edges; each terrace is one height level
   higher. Si(001) shows 2x1 dimer rows (bean-shaped dimers, half a row period apart) that
   turn by 90 degrees on every terrace (2x1 <-> 1x2 domains); Ge(001) shows buckled dimers
   in a c(4x2) zig-zag that also turn by 90 degrees; TiO2(110) shows bright Ti rows with
   dark bridging-oxygen rows between them, parallel on every terrace. Rows are drawn at a
   random angle (never along the scan lines, as an operator would choose).
2. Defects on lattice sites, away from step edges and from each other, four classes per
   surface (`SURFACES[s].classes`): on Si/Ge a dangling bond (small bright lobe), a single
   and a double dimer vacancy (one or two missing dimers, dark) and an adatom (large bright
   blob); on TiO2 a hydroxyl and an oxygen vacancy (bright spots of two strengths on the
   dark rows), an adatom (large bright blob on a Ti row) and a dark feature (a depression
   on a Ti row). The pixel mask is where the defect changes the height by more than 30%
   of its peak (vacancies: where more than half of the dimer is missing).
3. Artefacts of a real microscope, in this order: thermal drift (a shear and stretch of the
   coordinates, so masks follow it), a tip change (from one scan line on, a blunter tip
   blurs the image and changes its contrast and brightness), 1/f noise in scan time (the
   pixels in raster order, power spectrum ~ 1/f) plus white noise, one height offset per
   scan line (with a few jumps) and a tilted plane.

Everything is drawn from `numpy.random.default_rng` seeded by (seed, surface, index): the
same call gives the same scan, bit for bit. A 256x256 scan takes a few tens of ms.

Taught in: 08_stm.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from semnb.data.synth_writer import staged_set
from semnb.errors import SemnbInputError

MANIFEST = "manifest.csv"
DEFECTS_CSV = "defects.csv"


@dataclass(frozen=True)
class SurfaceSpec:
    """How one surface looks: row period in pixels at 256 px, defect classes, step height."""

    name: str
    row_period_256: float
    classes: tuple[str, ...]
    step_height: float
    domains_rotate: bool


SURFACES: dict[str, SurfaceSpec] = {
    "si001": SurfaceSpec("Si(001)", 10.0, ("dangling_bond", "single_vacancy", "double_vacancy", "adatom"), 1.4, True),
    "ge001": SurfaceSpec("Ge(001)", 12.0, ("dangling_bond", "single_vacancy", "double_vacancy", "adatom"), 1.4, True),
    "tio2_110": SurfaceSpec("TiO2(110)", 16.0, ("hydroxyl", "oxygen_vacancy", "adatom", "dark_feature"), 3.2, False),
}
"""Surface kinds the generator knows, by the name used in files and manifests."""

MASK_LEVEL = 0.3
"""A pixel belongs to a defect where the defect changes the height by > 30% of its peak."""


@dataclass
class StmScan:
    """One synthetic scan. `raw` is what a microscope would save; the rest is ground truth.

    raw: float32 HxW heights (arbitrary units, with artefacts); clean: the same surface
    without artefacts; mask: bool HxW, True on defect pixels; instances: int32 HxW, 0 on the
    lattice and k on defect k-1; defects: DataFrame (defect_id, x, y, cls) with x = column
    and y = row of the defect centre in pixels; row_period: lattice row spacing in pixels.
    """

    surface: str
    raw: np.ndarray
    clean: np.ndarray
    mask: np.ndarray
    instances: np.ndarray
    defects: pd.DataFrame
    row_period: float
    class_names: tuple[str, ...]
    artefacts: dict = field(default_factory=dict)


def surface_names() -> list[str]:
    """The surface kinds `generate_stm_scan` draws.

    Taught in: 08_stm.
    """
    return list(SURFACES)


def generate_stm_scan(surface: str, size: int = 256, seed: int = 0, n_defects: int | None = None,
                      artefacts: bool = True, n_steps: int | None = None) -> StmScan:
    """Draw one synthetic STM scan of `surface` ("si001", "ge001", "tio2_110").

    n_defects: None draws about one defect per 30 lattice cells (at least 8); n_steps: None
    draws 0-2 step edges; artefacts=False gives the clean surface as `raw` (for tests and
    for teaching each artefact separately). Deterministic in (surface, size, seed).

    Taught in: 08_stm.
    """
    if surface not in SURFACES:
        raise SemnbInputError("surface", f"unknown surface {surface!r}", f"use one of {', '.join(SURFACES)}")
    if size < 32:
        raise SemnbInputError("size", f"got {size}", "use at least 32 pixels")
    spec = SURFACES[surface]
    surface_index = list(SURFACES).index(surface)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), surface_index, int(size)]))
    period = spec.row_period_256 * size / 256.0

    drift = _draw_drift(rng, artefacts)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    su, sv = _apply_drift(drift, xs, ys)  # surface coordinates of every pixel

    steps = _draw_steps(rng, size, n_steps)
    terrace = _terrace_index(steps, su, sv)
    angle0 = np.deg2rad(rng.uniform(10.0, 35.0)) * rng.choice([-1, 1])
    n_terraces = len(steps) + 1
    orientations = [angle0 + (np.pi / 2 * k if spec.domains_rotate else 0.0) for k in range(n_terraces)]
    phases = rng.uniform(0.0, 1.0, size=(n_terraces, 2))

    height = np.zeros((size, size))
    for k in range(n_terraces):
        here = terrace == k
        u, v = _lattice_coords(su, sv, orientations[k], phases[k], period)
        height[here] = _LATTICE[surface](u[here], v[here]) + spec.step_height * k
    # a step edge is a little rounded, as a finite tip sees it
    height = ndimage.gaussian_filter(height, 0.6)

    count = n_defects if n_defects is not None else max(8, int(round((size / period) ** 2 / 30.0)))
    sites = _draw_sites(rng, count, size, period, steps, terrace, drift)
    mask = np.zeros((size, size), bool)
    instances = np.zeros((size, size), np.int32)
    rows = []
    for defect_id, (x, y) in enumerate(sites):
        cls = spec.classes[int(rng.integers(len(spec.classes)))]
        k = int(terrace[int(round(y)), int(round(x))])
        frame = (orientations[k], phases[k], period)
        cx, cy = _snap_to_site(x, y, drift, frame, _SITE_OFFSET.get(cls, 0.0) * rng.choice([-1, 1]))
        u, v = _lattice_coords(su, sv, *frame)
        cu, cv = _lattice_coords(*_apply_drift(drift, np.array([cx]), np.array([cy])), *frame)
        change, footprint = _DEFECTS[surface](cls, u - cu[0], v - cv[0], height, spec.step_height * k, rng)
        height = height + change
        new = footprint & ~mask
        mask |= new
        instances[new] = defect_id + 1
        rows.append({"defect_id": defect_id, "x": float(cx), "y": float(cy), "cls": cls})

    clean = height.copy()
    info: dict = {"n_steps": len(steps), "shear": drift[0], "stretch": drift[1], "tip_change_line": -1}
    if artefacts:
        height, info = _add_artefacts(rng, height, period, info)
    defects = pd.DataFrame(rows, columns=["defect_id", "x", "y", "cls"])
    return StmScan(surface=surface, raw=height.astype(np.float32), clean=clean.astype(np.float32), mask=mask,
                   instances=instances, defects=defects, row_period=float(period), class_names=spec.classes,
                   artefacts=info)


def write_stm_dataset(out_dir: str | Path, n_per_class: int = 4, size: int = 256, seed: int = 0) -> Path:
    """Write `n_per_class` synthetic scans of every surface kind: the layout `semnb eval stm` reads.

    Files: `<surface>_<i>.npy` (float32 raw topograph), `<surface>_<i>_mask.npy` (uint8,
    1 = defect), `defects.csv` (scan, defect_id, x, y, class; x = column and y = row of
    the defect centre in pixels) and `manifest.csv` (scan, surface, surface_name, size,
    row_period_px, n_defects, n_steps, tip_change_line, seed). The set appears whole or
    not at all (`staged_set`): `out_dir` must be new, empty, or an earlier synthetic STM
    set, which is replaced whole, so no scan of an earlier, larger set stays behind.

    Taught in: 08_stm.
    """
    if int(n_per_class) < 1:
        raise SemnbInputError("--n-per-class", f"got {n_per_class}", "use at least 1 scan per surface")
    settings = dict(n_per_class=int(n_per_class), size=size, seed=seed, surfaces=list(SURFACES))
    with staged_set(out_dir, "stm", settings) as staging:
        manifest, defects = [], []
        for surface in SURFACES:
            for i in range(int(n_per_class)):
                scan_seed = int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])
                scan = generate_stm_scan(surface, size=size, seed=scan_seed)
                name = f"{surface}_{i:03d}"
                (staging / f"{name}.npy").write_bytes(_npy_bytes(scan.raw))
                (staging / f"{name}_mask.npy").write_bytes(_npy_bytes(scan.mask.astype(np.uint8)))
                table = scan.defects.rename(columns={"cls": "class"})
                table.insert(0, "scan", name)
                defects.append(table)
                manifest.append({"scan": name, "surface": surface, "surface_name": SURFACES[surface].name,
                                 "size": size, "row_period_px": round(scan.row_period, 3),
                                 "n_defects": len(scan.defects), "n_steps": scan.artefacts["n_steps"],
                                 "tip_change_line": scan.artefacts["tip_change_line"], "seed": scan_seed})
        defects_text = pd.concat(defects, ignore_index=True).to_csv(index=False, float_format="%.3f")
        (staging / DEFECTS_CSV).write_bytes(defects_text.encode("utf-8"))
        (staging / MANIFEST).write_bytes(pd.DataFrame(manifest).to_csv(index=False).encode("utf-8"))
    return Path(out_dir)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# ------------------------------------------------------------------ geometry


def _draw_drift(rng, artefacts: bool) -> tuple[float, float]:
    """Thermal drift during a scan: x shifts in proportion to the line (shear), y stretches."""
    if not artefacts:
        return 0.0, 0.0
    return float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.05, 0.05))


def _apply_drift(drift, xs, ys):
    shear, stretch = drift
    return xs + shear * ys, ys * (1.0 + stretch)


def _lattice_coords(su, sv, angle, phase, period):
    """(u, v) in row periods: u across the rows, v along them; integer u is a row centre."""
    c, s = np.cos(angle), np.sin(angle)
    u = (c * su + s * sv) / period + phase[0]
    v = (-s * su + c * sv) / period + phase[1]
    return u, v


def _lattice_to_surface(u, v, angle, phase, period):
    """Inverse of `_lattice_coords`."""
    c, s = np.cos(angle), np.sin(angle)
    big_u, big_v = (u - phase[0]) * period, (v - phase[1]) * period
    return c * big_u - s * big_v, s * big_u + c * big_v


def _surface_to_pixel(drift, su, sv):
    """Inverse of `_apply_drift`."""
    shear, stretch = drift
    y = sv / (1.0 + stretch)
    return su - shear * y, y


def _snap_to_site(x, y, drift, frame, u_offset):
    """Move a pixel position to the nearest lattice site (row centre + `u_offset`, dimer position)."""
    u, v = _lattice_coords(*_apply_drift(drift, np.array([x]), np.array([y])), *frame)
    u_site = np.round(u - u_offset) + u_offset
    v_site = np.round(2 * v) / 2
    sx, sy = _surface_to_pixel(drift, *_lattice_to_surface(u_site, v_site, *frame))
    return float(sx[0]), float(sy[0])


def _draw_steps(rng, size: int, n_steps: int | None) -> list[tuple]:
    """Parallel wavy step edges: (normal angle, offset from centre, wave amplitude, length, phase)."""
    count = int(rng.integers(0, 3)) if n_steps is None else int(n_steps)
    normal = rng.uniform(0, np.pi)
    offsets = np.sort(rng.uniform(-0.3, 0.3, size=count)) * size + size / 2 if count else []
    return [(normal, float(offset), rng.uniform(2, 8) * size / 256, rng.uniform(0.4, 1.0) * size,
             rng.uniform(0, 2 * np.pi)) for offset in offsets]


def _step_side(step, su, sv):
    """Signed distance (pixels) past a step line that meanders; > 0 is the upper terrace."""
    normal, offset, amplitude, wavelength, wave_phase = step
    along = -np.sin(normal) * su + np.cos(normal) * sv
    across = np.cos(normal) * su + np.sin(normal) * sv - offset * (np.cos(normal) + np.sin(normal))
    return across - amplitude * np.sin(2 * np.pi * along / wavelength + wave_phase)


def _terrace_index(steps, su, sv) -> np.ndarray:
    index = np.zeros(su.shape, np.int64)
    for step in steps:
        index += (_step_side(step, su, sv) > 0).astype(np.int64)
    return index


def _draw_sites(rng, count, size, period, steps, terrace, drift):
    """Defect positions inside the image, off step edges and apart from each other."""
    margin, min_gap, step_gap = 1.2 * period, 2.6 * period, 1.5 * period
    sites: list[tuple[float, float]] = []
    for _ in range(count * 40):
        if len(sites) == count:
            break
        x, y = rng.uniform(margin, size - 1 - margin, size=2)
        su, sv = _apply_drift(drift, np.array([x]), np.array([y]))
        if any(abs(_step_side(s, su, sv)[0]) < step_gap for s in steps):
            continue
        if any((x - a) ** 2 + (y - b) ** 2 < min_gap**2 for a, b in sites):
            continue
        sites.append((float(x), float(y)))
    return sites


# ------------------------------------------------------------------ lattices (u, v in row periods)


def _wrap(t):
    """Distance to the nearest integer, signed, in (-0.5, 0.5]."""
    return t - np.round(t)


def _si001(u, v):
    """2x1 dimer rows: two lobes per dimer across the row, one dimer every half period along it."""
    du, dv = _wrap(u), _wrap(2 * v) / 2
    lobes = np.exp(-((du - 0.18) ** 2) / (2 * 0.12**2)) + np.exp(-((du + 0.18) ** 2) / (2 * 0.12**2))
    return 0.5 * lobes * (0.55 + 0.45 * np.exp(-(dv**2) / (2 * 0.12**2)))


def _ge001(u, v):
    """c(4x2): buckled dimers, the raised atom alternating sides along a row and between rows."""
    row = np.round(u)
    dimer = np.round(2 * v)
    side = np.where((row + dimer) % 2 == 0, 1.0, -1.0)
    du, dv = _wrap(u), _wrap(2 * v) / 2
    up = np.exp(-((du - 0.2 * side) ** 2 + dv**2) / (2 * 0.13**2))
    down = np.exp(-((du + 0.2 * side) ** 2 + dv**2) / (2 * 0.13**2))
    row = np.exp(-(du**2) / (2 * 0.25**2))  # the dimer row itself, brighter than the trough
    return 0.45 * up + 0.1 * down + 0.2 * row


def _tio2_110(u, v):
    """Bright Ti rows with a weak modulation along them; dark bridging-oxygen rows between."""
    du = _wrap(u)
    return 0.6 * np.exp(-(du**2) / (2 * 0.2**2)) * (0.9 + 0.1 * np.cos(2 * np.pi * v / 0.45))


_LATTICE = {"si001": _si001, "ge001": _ge001, "tio2_110": _tio2_110}


# ------------------------------------------------------------------ defects (du, dv in row periods)


def _blob(du, dv, amplitude, sigma_u, sigma_v):
    return amplitude * np.exp(-(du**2) / (2 * sigma_u**2) - dv**2 / (2 * sigma_v**2))


def _bright(du, dv, amplitude, sigma_u, sigma_v):
    change = _blob(du, dv, amplitude, sigma_u, sigma_v)
    return change, np.abs(change) > MASK_LEVEL * abs(amplitude)


def _vacancy(du, dv, height, floor, n_dimers, depth):
    """Missing dimers: inside a soft window the height drops to below the trough between rows."""
    half_length = 0.25 * n_dimers
    window = 1.0 / (1.0 + np.exp((np.abs(du) - 0.45) / 0.05)) / (1.0 + np.exp((np.abs(dv) - half_length) / 0.05))
    return window * (floor - depth - height), window > 0.5


def _semiconductor_defect(cls, du, dv, height, floor, rng):
    if cls == "dangling_bond":
        return _bright(du, dv, 0.9 * rng.uniform(0.85, 1.15), 0.16, 0.16)
    if cls == "single_vacancy":
        return _vacancy(du, dv, height, floor, 1, 0.2 * rng.uniform(0.8, 1.2))
    if cls == "double_vacancy":
        return _vacancy(du, dv, height, floor, 2, 0.2 * rng.uniform(0.8, 1.2))
    return _bright(du, dv, 1.4 * rng.uniform(0.85, 1.15), 0.42, 0.32)  # adatom


def _tio2_defect(cls, du, dv, height, floor, rng):
    if cls == "hydroxyl":
        return _bright(du, dv, 0.75 * rng.uniform(0.9, 1.1), 0.2, 0.24)
    if cls == "oxygen_vacancy":
        return _bright(du, dv, 0.4 * rng.uniform(0.9, 1.1), 0.17, 0.18)
    if cls == "adatom":
        return _bright(du, dv, 1.2 * rng.uniform(0.85, 1.15), 0.38, 0.38)
    return _bright(du, dv, -0.7 * rng.uniform(0.85, 1.15), 0.25, 0.45)  # dark feature


_SITE_OFFSET = {"dangling_bond": 0.18, "hydroxyl": 0.5, "oxygen_vacancy": 0.5}
"""Where a defect sits across its row (row periods): on one lobe of a dimer, or on the dark row."""

_DEFECTS = {"si001": _semiconductor_defect, "ge001": _semiconductor_defect, "tio2_110": _tio2_defect}


# ------------------------------------------------------------------ artefacts


def _add_artefacts(rng, height, period, info):
    size = height.shape[0]
    # tip change: from a random line on, a blunter tip (blur) and another contrast/brightness
    if rng.uniform() < 0.7:
        line = int(rng.integers(size // 5, 4 * size // 5))
        blunt = ndimage.gaussian_filter(height, 0.12 * period * rng.uniform(0.7, 1.5))
        gain, shift = rng.uniform(0.7, 1.3), rng.uniform(-0.6, 0.6)
        height = height.copy()
        height[line:] = gain * blunt[line:] + shift
        info["tip_change_line"] = line
    # 1/f noise in scan time (raster order), then white noise
    height = height + 0.06 * _one_over_f(rng, size * size).reshape(size, size)
    height = height + 0.03 * rng.standard_normal(height.shape)
    # one offset per scan line (row), with a few jumps that persist for some lines
    offsets = 0.08 * rng.standard_normal(size)
    for _ in range(int(rng.integers(1, 4))):
        start = int(rng.integers(0, size))
        offsets[start:start + int(rng.integers(1, size // 8 + 2))] += rng.normal(0, 0.5)
    height = height + offsets[:, None]
    # tilted sample plane
    slope = rng.uniform(-1, 1, size=2) * 6.0 / size
    ys, xs = np.mgrid[0:size, 0:size]
    height = height + slope[0] * xs + slope[1] * ys + rng.uniform(-2, 2)
    return height, info


def _one_over_f(rng, n: int) -> np.ndarray:
    """Unit-variance noise with power spectral density ~ 1/f (pink), by shaping white noise."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freq = np.fft.rfftfreq(n)
    freq[0] = freq[1]
    noise = np.fft.irfft(spectrum / np.sqrt(freq), n)
    return (noise - noise.mean()) / noise.std()

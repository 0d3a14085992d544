"""Synthetic TEM cross-sections of semiconductor structures, at magnifications over two decades.

Why: retrieval has to find "the same kind of structure" whatever the magnification. At 10kx a
field of view of about 12 um shows a structure repeated many times, each copy a few pixels
wide; at 1Mx the frame is 120 nm wide and one feature fills it. A retrieval model that only
matches scale (or texture) fails here, which is what the IMAGO retrieval paper's data shows.

Each image is a bright-field-TEM-like rendering of a 2-D material map: heavier or denser
material is darker (copper and tungsten darkest, oxide and the epoxy above the sample
brightest). Each class is a function of physical coordinates (nm; x along the wafer, y depth,
y > 0 below the original silicon surface), sampled on a rotated, shifted pixel grid, 2x
supersampled, blurred by a point-spread function, then given random contrast, brightness,
gamma, a thickness gradient and noise. Every geometric size is jittered per image.

Labelled classes (`LABELLED_CLASSES`): LOCOS isolation, shallow trench isolation, gate
spacers, copper damascene vias, 3-D memory cell stacks. `UNLABELLED_CLASSES` (FinFET fins,
deep-trench capacitors) are written without a label: the collection holds structures that
no label names, as a real image archive does.

Taught in: 07_retrieval.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from semnb.data.synth_writer import staged_set
from semnb.errors import SemnbInputError

LABELLED_CLASSES = ("locos", "sti", "gate_spacer", "cu_via", "memory_stack")
UNLABELLED_CLASSES = ("finfet", "deep_trench")
ALL_CLASSES = LABELLED_CLASSES + UNLABELLED_CLASSES

MAG_RANGE = (1.0e4, 1.0e6)
"""Magnifications drawn log-uniformly between these (two decades)."""

FOV_NM_AT_1X = 1.2e8
"""Field of view in nm at magnification 1: 12 um at 10kx, 120 nm at 1Mx."""

SUPERSAMPLE = 2
MANIFEST = "manifest.csv"

# Bright-field TEM intensities in [0, 1]: denser / heavier material is darker.
GLUE, OXIDE, LOW_K, NITRIDE, SI, POLY = 0.88, 0.72, 0.76, 0.56, 0.47, 0.40
SILICIDE, BARRIER, CU, W = 0.22, 0.28, 0.15, 0.10


@dataclass(frozen=True)
class TemImage:
    """One rendered cross-section: `image` uint8 HxW, its class name and its magnification."""

    image: np.ndarray
    cls: str
    magnification: float


# ---------------------------------------------------------------------------------------------
# Geometry helpers (all on arrays of physical coordinates in nm)
# ---------------------------------------------------------------------------------------------


def _local(x: np.ndarray, pitch: float) -> np.ndarray:
    """Position within the repeating cell, in [-pitch/2, pitch/2)."""
    return np.mod(x + pitch / 2, pitch) - pitch / 2


def _cell(x: np.ndarray, pitch: float) -> np.ndarray:
    """Index of the repeating cell that holds x."""
    return np.floor((x + pitch / 2) / pitch).astype(np.int64)


def _grains(x: np.ndarray, y: np.ndarray, grain_nm: float, salt: int) -> np.ndarray:
    """Polycrystalline contrast in [-1, 1]: each grain (a skewed cell of ~grain_nm) gets its own tone.

    Two offset lattices are averaged so grains do not look like a square grid.
    """
    out = np.zeros_like(x)
    for k, (shear, offset) in enumerate(((0.37, 0.0), (-0.29, 0.5))):
        ix = np.floor((x + shear * y) / grain_nm + offset).astype(np.int64)
        iy = np.floor(y / grain_nm + offset).astype(np.int64)
        h = (ix * 73856093) ^ (iy * 19349663) ^ ((salt + k) * 83492791)
        out += (np.mod(h, 1021) / 510.0) - 1.0
    return out / 2.0


# ---------------------------------------------------------------------------------------------
# One renderer per class: (x, y, jitter) -> intensity. `j(a, b)` draws one jittered size.
# ---------------------------------------------------------------------------------------------


def _locos(x, y, j):
    pitch, width, thick, beak = j(1300, 1600), j(600, 800), j(340, 420), j(70, 110)
    poly = j(120, 180)
    t = thick * 0.5 * (1 + np.tanh((width / 2 - np.abs(_local(x, pitch))) / beak))
    top, bottom = -np.maximum(0.55 * t, 12.0), 0.45 * t  # oxide grows above and below the surface
    img = np.where(y > 0, SI, GLUE)
    img = np.where((y > top) & (y < bottom), OXIDE, img)
    img = np.where((y <= top) & (y > top - poly), POLY, img)  # conformal poly film on top
    return img


def _sti(x, y, j):
    pitch, top_w, bottom_w, depth, liner = j(380, 460), j(150, 190), j(90, 120), j(280, 360), j(8, 12)
    xl = np.abs(_local(x, pitch))
    half = (top_w + (bottom_w - top_w) * np.clip(y / depth, 0, 1)) / 2
    trench = (y > 0) & (y < depth) & (xl < half)
    img = np.where(y > 0, SI, np.where(y > -j(8, 14), OXIDE, GLUE))
    img = np.where(trench, OXIDE, img)
    near_wall = trench & ((xl > half - liner) | (y > depth - liner))
    return np.where(near_wall, NITRIDE, img)


def _gate_spacer(x, y, j):
    pitch, length, height, spacer, cap = j(240, 290), j(60, 80), j(100, 125), j(28, 40), j(14, 22)
    ild = j(180, 260)
    xl = np.abs(_local(x, pitch))
    img = np.where(y > 0, SI, np.where(y > -height - ild, OXIDE, GLUE))
    img = np.where((y > 0) & (y < 15) & (xl > length / 2 + spacer), SILICIDE, img)  # source/drain contact
    rise = np.clip(-y / height, 0, 1)
    spacer_w = spacer * np.sqrt(np.clip(1 - rise**2, 0, 1))  # rounded D-shaped spacer
    in_height = (y < 0) & (y > -height)
    img = np.where(in_height & (xl >= length / 2) & (xl < length / 2 + spacer_w), NITRIDE, img)
    img = np.where(in_height & (xl < length / 2), POLY + 0.04 * _grains(x, y, 18, 3), img)
    img = np.where((y <= -height) & (y > -height - cap) & (xl < length / 2), SILICIDE, img)
    return img


def _cu_via(x, y, j):
    pitch, line_w, barrier = j(160, 200), j(70, 90), j(5, 8)
    m1, stop, via_h, m2 = j(80, 100), j(15, 25), j(90, 110), j(110, 140)
    via_top, via_bottom = j(65, 80), j(50, 60)
    xl, cell = _local(x, pitch), _cell(x, pitch)
    img = np.where(y > j(220, 280), SI, LOW_K)
    img = np.where((y > 0) & (np.abs(xl) < 18) & (cell % 2 == 0) & (y < 250), W, img)  # W contacts
    m1_top = -m1
    via_lo, via_hi = m1_top - stop, m1_top - stop - via_h
    m2_lo, m2_hi = via_hi, via_hi - m2
    img = np.where((y < m1_top) & (y > via_lo), NITRIDE, img)  # etch-stop cap
    img = np.where((y < m2_hi) & (y > m2_hi - stop), NITRIDE, img)
    img = np.where(y < m2_hi - stop - j(150, 300), GLUE, img)
    copper = CU + 0.05 * _grains(x, y, 45, 7)
    line = (y < 0) & (y > m1_top) & (np.abs(xl) < line_w / 2)
    frac = np.clip((y - via_hi) / (via_lo - via_hi), 0, 1)
    via = (y <= via_lo) & (y > via_hi) & (cell % 2 == 0) & (np.abs(xl) < (via_top + (via_bottom - via_top) * frac) / 2)
    xl2 = _local(x, 2 * pitch)  # M2 lines run over every other M1 line
    upper = (y <= m2_lo) & (y > m2_hi) & (np.abs(xl2) < 0.62 * pitch)
    metal = line | via | upper
    img = np.where(metal, copper, img)
    # barrier liner: a shell `barrier` nm thick around the copper lines (the vias share it)
    line_shell = (y < barrier) & (y > m1_top) & (np.abs(xl) < line_w / 2 + barrier)
    upper_shell = (y <= m2_lo + barrier) & (y > m2_hi) & (np.abs(xl2) < 0.62 * pitch + barrier)
    return np.where((line_shell | upper_shell) & ~metal, BARRIER, img)


def _memory_stack(x, y, j):
    layer, ox_frac, n_layers = j(56, 68), j(0.45, 0.55), int(round(j(28, 36)))
    hole_pitch, top_d, bottom_d = j(150, 190), j(110, 130), j(75, 95)
    ono, channel = j(16, 22), j(10, 14)
    height = layer * n_layers
    img = np.where(y > j(100, 140), SI, np.where(y > 0, POLY, GLUE))
    in_stack = (y <= 0) & (y > -height)
    tungsten = np.mod(-y, layer) >= ox_frac * layer
    img = np.where(in_stack, np.where(tungsten, W, OXIDE), img)
    img = np.where((y <= -height) & (y > -height - j(250, 350)), OXIDE, img)  # cap oxide
    depth_frac = np.clip(-y / height, 0, 1)
    radius = (bottom_d + (top_d - bottom_d) * depth_frac) / 2
    r = np.abs(_local(x, hole_pitch))
    hole = (y <= 30) & (y > -height) & (r < radius)
    img = np.where(hole, NITRIDE, img)
    img = np.where(hole & (r < radius - ono), POLY, img)
    return np.where(hole & (r < radius - ono - channel), OXIDE, img)


def _finfet(x, y, j):
    pitch, fin_top, fin_bottom, fin_h = j(38, 48), j(7, 10), j(12, 16), j(42, 55)
    gate_h, cap, sti = j(50, 70), j(25, 35), j(100, 140)
    xl = np.abs(_local(x, pitch))
    half = (fin_top + (fin_bottom - fin_top) * np.clip((y + fin_h) / (fin_h + sti), 0, 1)) / 2
    fin = (y > -fin_h) & (xl < half)
    img = np.where(y > sti, SI, np.where(y > 0, OXIDE, W))  # metal gate fills above the STI
    img = np.where((y <= -fin_h - gate_h) & (y > -fin_h - gate_h - cap), NITRIDE, img)
    img = np.where(y <= -fin_h - gate_h - cap, OXIDE, img)
    img = np.where(y <= -fin_h - gate_h - cap - j(200, 300), GLUE, img)
    high_k = (y > -fin_h - 2.5) & (xl < half + 2.5) & (y < 0)
    img = np.where(high_k, SILICIDE, img)
    return np.where(fin, SI, img)


def _deep_trench(x, y, j):
    pitch, width, depth, bottle, collar = j(440, 520), j(160, 200), j(4000, 5000), j(1.3, 1.6), j(1000, 1400)
    liner, collar_t = j(5, 8), j(20, 30)
    xl = np.abs(_local(x, pitch))
    half = width / 2 * np.where(y > collar + 400, bottle, 1.0)
    half = half * np.where(y > depth - 300, np.sqrt(np.clip((depth - y) / 300, 0, 1)), 1.0)  # rounded bottom
    trench = (y > 0) & (y < depth) & (xl < half)
    img = np.where(y > 0, SI, np.where(y > -j(80, 120), OXIDE, GLUE))
    img = np.where(trench, POLY + 0.04 * _grains(x, y, 30, 11), img)
    wall = trench & (xl > half - np.where(y < collar, collar_t, liner))
    return np.where(wall, np.where(y < collar, OXIDE, NITRIDE), img)


_RENDERERS: dict[str, Callable] = {
    "locos": _locos,
    "sti": _sti,
    "gate_spacer": _gate_spacer,
    "cu_via": _cu_via,
    "memory_stack": _memory_stack,
    "finfet": _finfet,
    "deep_trench": _deep_trench,
}

# Where the frame centre falls (nm, x_lo, x_hi, y_lo, y_hi; x relative to the centre of cell 0):
# on the edges that make each structure recognisable, so a 120 nm field at 1Mx is not blank.
_FOCUS = {
    "locos": (250, 450, -200, 150),
    "sti": (0, 100, 0, 330),
    "gate_spacer": (0, 80, -130, 10),
    "cu_via": (-60, 60, -350, 0),
    "memory_stack": (-80, 80, -1800, -100),
    "finfet": (-20, 20, -110, 20),
    "deep_trench": (0, 120, 0, 4000),
}


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def generate_tem_image(cls: str, magnification: float, size: int = 256, seed: int = 0) -> TemImage:
    """Render one TEM cross-section of class `cls` at `magnification` (field of view 1.2e8 / mag nm).

    Deterministic: the same (cls, magnification, size, seed) gives the same pixels. What
    varies with the seed: every size of the structure (about +-10 %), the frame's position,
    a rotation within +-12 degrees, blur, contrast, brightness, gamma, a thickness gradient
    and noise.

    Taught in: 07_retrieval.
    """
    if cls not in _RENDERERS:
        raise SemnbInputError("cls", f"unknown TEM class {cls!r}", f"use one of {', '.join(ALL_CLASSES)}")
    if not np.isfinite(magnification) or magnification <= 0:
        raise SemnbInputError("magnification", f"got {magnification!r}", "use a positive magnification, e.g. 1e5")
    if int(size) < 16:
        raise SemnbInputError("size", f"got {size}", "use at least 16 pixels")
    size = int(size)
    rng = np.random.default_rng(seed)

    def jitter(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    fov = FOV_NM_AT_1X / float(magnification)
    angle = np.deg2rad(rng.uniform(-12, 12))
    x_lo, x_hi, y_lo, y_hi = _FOCUS[cls]
    x0 = rng.uniform(x_lo, x_hi) + rng.uniform(-0.2, 0.2) * fov
    y0 = rng.uniform(y_lo, y_hi) + rng.uniform(-0.2, 0.2) * fov
    n = size * SUPERSAMPLE
    u = (np.arange(n) + 0.5) / n - 0.5
    uu, vv = np.meshgrid(u, u)
    x = x0 + fov * (uu * np.cos(angle) - vv * np.sin(angle))
    y = y0 + fov * (uu * np.sin(angle) + vv * np.cos(angle))
    img = _RENDERERS[cls](x, y, jitter).astype(np.float64)

    img = img.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))
    img = ndimage.gaussian_filter(img, sigma=rng.uniform(0.4, 1.2))
    ramp = rng.uniform(-0.06, 0.06) * (uu[::SUPERSAMPLE, ::SUPERSAMPLE] + vv[::SUPERSAMPLE, ::SUPERSAMPLE])
    img = (img - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.08, 0.08) + ramp
    img = np.clip(img, 0, 1) ** rng.uniform(0.8, 1.25)
    img = img + rng.normal(0, rng.uniform(0.015, 0.06), img.shape)
    image = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return TemImage(image=image, cls=cls, magnification=float(magnification))


def stratified_magnifications(n: int, rng: np.random.Generator, mag_range: tuple[float, float] = MAG_RANGE) -> np.ndarray:
    """`n` magnifications spread evenly in log-scale over `mag_range` (one per stratum, shuffled).

    Why stratified: with few images per class, plain random draws can leave a decade empty;
    here every class covers the whole range.

    Taught in: 07_retrieval.
    """
    lo, hi = np.log10(mag_range[0]), np.log10(mag_range[1])
    strata = (np.arange(n) + rng.uniform(0, 1, n)) / n
    return 10 ** (lo + (hi - lo) * rng.permutation(strata))


def write_tem_dataset(out_dir: str | Path, n_per_class: int = 20, size: int = 256, seed: int = 0) -> Path:
    """Write the synthetic TEM retrieval set: PNGs under `images/` and `manifest.csv`.

    Layout (csv): `manifest.csv` with columns `path,label,magnification`; `path` is relative
    to the manifest's folder; `label` is the class name for the labelled classes and empty
    for the images of `UNLABELLED_CLASSES`; `magnification` is a number (e.g. 125000).
    File names never name the class of an unlabelled image. `n_per_class` images of every
    class, labelled or not. The set appears whole or not at all (`staged_set`): `out_dir`
    must be new, empty, or an earlier synthetic TEM set, which is replaced whole.

    Taught in: 07_retrieval.
    """
    if int(n_per_class) < 1:
        raise SemnbInputError("--n-per-class", f"got {n_per_class}", "use at least 1")
    n = int(n_per_class)
    settings = dict(n_per_class=n, size=size, seed=seed, classes=ALL_CLASSES)
    with staged_set(out_dir, "tem", settings) as staging:
        image_dir = staging / "images"
        image_dir.mkdir()
        # unlabelled images get shuffled numbers, so neither name nor order gives their class away
        unlabelled_numbers = iter(np.random.default_rng([seed, len(ALL_CLASSES)]).permutation(n * len(UNLABELLED_CLASSES)))
        rows = []
        for class_index, cls in enumerate(ALL_CLASSES):
            mags = stratified_magnifications(n, np.random.default_rng([seed, class_index, 0]))
            for i, mag in enumerate(mags):
                image_seed = np.random.SeedSequence([seed, class_index, i + 1]).generate_state(1)[0]
                tem = generate_tem_image(cls, mag, size=size, seed=int(image_seed))
                labelled = cls in LABELLED_CLASSES
                name = f"{cls}_{i:04d}.png" if labelled else f"unlabelled_{next(unlabelled_numbers):04d}.png"
                (image_dir / name).write_bytes(_png_bytes(tem.image))
                rows.append((f"images/{name}", cls if labelled else "", f"{tem.magnification:.1f}"))
        rows.sort(key=lambda row: row[0])
        (staging / MANIFEST).write_bytes(_manifest_bytes(rows))
    return Path(out_dir)


def _manifest_bytes(rows: list[tuple[str, str, str]]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text)  # the csv module's own line ends (\r\n), as the set has always had
    writer.writerow(["path", "label", "magnification"])
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()

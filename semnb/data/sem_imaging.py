"""A small model of a review SEM: turns a wafer surface into the picture the tool records.

What makes an SEM image look like one, in the order the tool makes it:
- secondary-electron contrast: edges and slopes emit more electrons (bright edges), deep
  narrow places fewer (dark trenches and pits), and a side-mounted detector lights the flanks
  that face it and leaves the far side of tall objects in shadow;
- charging: a broad glow where the insulator charges up, and tails along the scan direction;
- brightness and contrast drift over the frame;
- defocus (and astigmatism) blur;
- scan-line jitter: each scan row lands a little left or right;
- shot noise: the detector counts electrons, so the noise grows as the square root of the
  signal (Poisson statistics);
- an info banner of tool text with a scale bar at the bottom of some images.

Taught in: 01_sem_data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi
from scipy.signal import lfilter

from semnb.data.sem_backgrounds import Surface

_SCALE_BAR_NM = (10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000)
_MIN_SIGNAL_SPREAD = 0.6  # auto-contrast stretches at most this signal range to full scale
# The eight (row, col) pixel steps a side detector can lie along.
_DETECTOR_STEPS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))


@dataclass(frozen=True)
class Microscope:
    """One review-SEM set-up, drawn at random for each image (see `draw_microscope`)."""

    detector_step: tuple[int, int]  # pixel step pointing towards the side detector
    directional: float  # weight of the side detector's shading (0 = in-lens detector, symmetric)
    edge_gain: float  # strength of the secondary-electron edge effect
    topography_gain: float  # how much brighter tops are than trench floors
    shadow: float  # darkness of the detector's shadow behind tall objects
    # Defocus as a Gaussian sigma in pixels (rows, cols); unequal sigmas are astigmatism.
    blur: tuple[float, float]
    dose: float  # electrons counted per pixel at full brightness: sets the shot noise
    glow: float  # amplitude of the charging glow (0 = none)
    streak: float  # charging tails along the scan rows (sign: bright or dark tails)
    gain_tilt: float  # brightness drift from the top to the bottom of the frame
    flicker: float  # rms row-to-row gain change
    jitter: float  # rms row shift in pixels
    brightness: float
    contrast: float


def draw_microscope(rng: np.random.Generator, size: int) -> Microscope:
    """Draw the imaging conditions of one image, from a clean in-lens image to a noisy, charging one.

    Taught in: 01_sem_data.
    """
    scale = size / 256.0
    focus = rng.uniform(0.4, 1.5) * scale
    astigmatism = rng.uniform(1.0, 1.5) if rng.random() < 0.25 else 1.0
    side_detector = rng.random() < 0.6
    streak = float(rng.choice([-1.0, 1.0])) * rng.uniform(0.05, 0.2) if rng.random() < 0.3 else 0.0
    return Microscope(
        detector_step=_DETECTOR_STEPS[rng.integers(len(_DETECTOR_STEPS))],
        directional=rng.uniform(0.1, 0.35) if side_detector else rng.uniform(0.0, 0.06),
        edge_gain=rng.uniform(0.35, 0.8),
        topography_gain=rng.uniform(0.1, 0.35),
        shadow=rng.uniform(0.15, 0.4) if side_detector else 0.0,
        blur=(focus * astigmatism, focus / astigmatism),
        dose=float(np.exp(rng.uniform(np.log(20.0), np.log(200.0)))),
        glow=rng.uniform(0.1, 0.45) if rng.random() < 0.35 else 0.0,
        streak=streak,
        gain_tilt=rng.normal(0.0, 0.12),
        flicker=rng.uniform(0.0, 0.03),
        jitter=rng.uniform(0.0, 0.5) * max(scale, 0.5),
        brightness=rng.uniform(0.04, 0.2),
        contrast=rng.uniform(0.6, 0.85),
    )


def render_signal(surface: Surface, scope: Microscope, rng: np.random.Generator) -> np.ndarray:
    """Noise-free detector signal (float32, arbitrary units) of `surface` seen through `scope`.

    Taught in: 01_sem_data.
    """
    size, scale = surface.size, surface.scale
    height = surface.height
    slope_rows, slope_cols = np.gradient(height)
    slope = np.sqrt(slope_rows * slope_rows + slope_cols * slope_cols)
    edge = slope / (slope + 0.25)
    step_rows, step_cols = scope.detector_step
    step_length = float(np.hypot(step_rows, step_cols))
    facing = slope_rows * (-step_rows / step_length) + slope_cols * (-step_cols / step_length)
    # Tops give a little more signal than floors; below the floor (pits, grooves) electrons hardly escape.
    signal = (np.clip(height, 0.0, 2.0) - 0.5) * scope.topography_gain + 1.0
    signal *= surface.material
    if height.min() < 0:
        signal *= np.exp(0.7 * np.minimum(height, 0.0))
    signal += scope.edge_gain * edge
    signal += scope.directional * np.clip(2.0 * facing, -1.0, 1.0)
    if scope.shadow > 0:
        signal -= scope.shadow * _detector_shadow(height, scope.detector_step, scale)
    if scope.streak:
        signal += scope.streak * lfilter([0.15], [1.0, -0.85], edge, axis=1).astype(np.float32)
    positions = np.arange(size, dtype=np.float32)
    if scope.glow:
        centre = rng.uniform(0.0, size, 2)
        spread = rng.uniform(0.15, 0.5) * size
        glow_rows = np.exp(-((positions - centre[0]) ** 2) / (2 * spread**2))
        glow_cols = np.exp(-((positions - centre[1]) ** 2) / (2 * spread**2))
        signal += scope.glow * glow_rows[:, None] * glow_cols[None, :]
    # Brightness drifts over the time the frame takes, i.e. from row to row: a slow trend and a flicker.
    flicker = ndi.gaussian_filter1d(rng.standard_normal(size), 2.0).astype(np.float32)
    row_gain = (
        1.0
        + scope.gain_tilt * (positions / size - 0.5)
        + scope.flicker * flicker / (flicker.std() + 1e-6)
    )
    return ndi.gaussian_filter(signal * row_gain[:, None], scope.blur, truncate=3.0)


def _detector_shadow(height: np.ndarray, step: tuple[int, int], scale: float) -> np.ndarray:
    """How much of the view towards the detector is blocked by something taller (0 = none, 1 = full).

    A pixel is shadowed when a point k steps towards the detector stands higher than the line of
    sight rising at a fixed take-off angle; this darkens the far side of particles and lines.
    """
    rise_per_step = float(np.hypot(*step)) / (3.0 * scale)
    reach = int(np.ceil(8 * scale)) + 1
    size = height.shape[0]
    padded = np.pad(height, reach, mode="edge")
    horizon = np.full_like(height, -np.inf)  # highest sight line met on the way to the detector
    for k in range(1, reach + 1):
        row0, col0 = reach + k * step[0], reach + k * step[1]
        np.maximum(
            horizon, padded[row0 : row0 + size, col0 : col0 + size] - k * rise_per_step, out=horizon
        )
    return np.clip((horizon - height) / 0.6, 0.0, 1.0)


def scan_row_shifts(rng: np.random.Generator, size: int, scope: Microscope) -> np.ndarray:
    """Horizontal landing error of each scan row in pixels: small correlated wobble plus rare glitches.

    Taught in: 01_sem_data.
    """
    shifts = ndi.gaussian_filter1d(rng.normal(0.0, scope.jitter * 1.7, size), 1.0)
    if rng.random() < 0.2:  # a glitch: a band of rows lands a pixel or two off
        first, rows = rng.integers(0, size), rng.integers(1, max(2, size // 16))
        shifts[first : first + rows] += rng.choice([-1, 1]) * rng.uniform(1.0, 2.5)
    return shifts.astype(np.float32)


def shift_rows(image: np.ndarray, shifts: np.ndarray, interpolate: bool = True) -> np.ndarray:
    """Move row r of `image` right by `shifts[r]` pixels (edge values fill in); nearest pixel if not `interpolate`.

    The same shifts move the defect mask, so the mask stays on the defect. A row moves as a
    whole, so its source columns are one integer offset plus one fraction per row.

    Taught in: 01_sem_data.
    """
    height, width = image.shape
    columns = np.arange(width)
    row_starts = (np.arange(height) * width)[:, None]
    flat = image.ravel()
    if not interpolate:
        offsets = np.round(shifts).astype(np.intp)
        return flat[np.clip(columns - offsets[:, None], 0, width - 1) + row_starts]
    offsets = np.ceil(shifts).astype(np.intp)  # source column x - shift = (x - offset) + fraction
    fraction = (offsets - shifts).astype(np.float32)[:, None]
    left = np.clip(columns - offsets[:, None], 0, width - 1) + row_starts
    right = np.clip(columns - offsets[:, None] + 1, 0, width - 1) + row_starts
    left_values = flat[left]
    return left_values + fraction * (flat[right] - left_values)


def detect(signal: np.ndarray, scope: Microscope, rng: np.random.Generator) -> np.ndarray:
    """Auto-contrast the signal as the tool's brightness/contrast control does, count electrons, make 8-bit.

    Shot noise: a pixel expecting n electrons records a count of mean n and variance n, as
    Poisson counts have. The count is drawn from the normal distribution with that mean and
    variance (the Poisson's normal approximation, close at the 10 or more electrons of most
    pixels here): one standard normal number per pixel, whatever the image holds, so an image
    and its defect-free reference carry the very same noise (exact Poisson sampling uses a
    data-dependent count of random numbers and would not).

    Taught in: 01_sem_data.
    """
    low, high = (float(level) for level in np.quantile(signal[::3, ::3], [0.01, 0.99]))
    spread = max(high - low, _MIN_SIGNAL_SPREAD)  # a flat film is not stretched into a patchwork
    expected = np.clip(scope.brightness + scope.contrast * (signal - low) / spread, 0.0, None)
    expected *= scope.dose
    counts = expected + np.sqrt(expected) * rng.standard_normal(expected.shape, dtype=np.float32)
    return np.clip(counts * (255.0 / scope.dose) + 0.5, 0, 255).astype(np.uint8)


def banner_height(size: int) -> int:
    """Rows of the info banner for an image of `size` pixels (about 7 % of the height).

    Taught in: 01_sem_data.
    """
    return max(8, int(round(0.07 * size)))


def draw_banner(
    width: int, rows: int, pixel_size_nm: float, rng: np.random.Generator
) -> np.ndarray:
    """The tool's info strip: dark background, white text (voltage, working distance, magnification) and a scale bar.

    Taught in: 01_sem_data.
    """
    background = int(rng.integers(0, 30))
    strip = Image.new("L", (width, rows), background)
    draw = ImageDraw.Draw(strip)
    font = _font(max(6, int(rows * 0.62)))
    ink = int(rng.integers(220, 256))

    bar_nm = _scale_bar_nm(width * pixel_size_nm)
    bar_px = max(2, int(round(bar_nm / pixel_size_nm)))
    bar_label = f"{bar_nm // 1000} µm" if bar_nm >= 1000 else f"{bar_nm} nm"
    label_width = int(font.getlength(bar_label))
    margin = max(3, width // 40)
    bar_left = width - bar_px - label_width - 2 * margin  # where the bar's label starts
    text_top = (rows - font.size) // 2 - 1
    draw.text((bar_left, text_top), bar_label, fill=ink, font=font)
    bar_top, bar_thickness = rows // 2 - max(1, rows // 8), max(2, rows // 5)
    bar_box = [width - bar_px - margin, bar_top, width - margin - 1, bar_top + bar_thickness - 1]
    draw.rectangle(bar_box, fill=ink)

    mag_kx = 127e6 / (width * pixel_size_nm) / 1000.0  # magnification on a 127 mm wide display
    fields = [
        "SEM",
        f"HV {rng.choice([0.5, 0.8, 1.0, 2.0, 3.0, 5.0, 10.0]):.1f}kV",
        f"mag {mag_kx:.1f}kx",
        f"WD {rng.uniform(2.0, 10.0):.1f}mm",
        str(rng.choice(["SE", "BSE", "InLens", "ETD"])),
        f"#{rng.integers(1, 999):03d}",
    ]
    text_room = bar_left - 2 * margin
    while fields and font.getlength("  ".join(fields)) > text_room:
        fields.pop()
    draw.text((max(2, width // 60), text_top), "  ".join(fields), fill=ink, font=font)
    return np.asarray(strip)


def _scale_bar_nm(field_of_view_nm: float) -> int:
    """Longest round length that fits in about a fifth of the field of view."""
    fitting = [length for length in _SCALE_BAR_NM if length <= field_of_view_nm / 5]
    return fitting[-1] if fitting else _SCALE_BAR_NM[0]


@lru_cache(maxsize=16)
def _font(pixel_size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=pixel_size)

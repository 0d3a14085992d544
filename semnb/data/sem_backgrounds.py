"""Patterned wafer surfaces for the synthetic SEM generator: what lies under the beam.

A surface is two maps. `height` is the topography (0 = floor of a trench or a contact hole,
1 = top of the patterned layer; defects push it below 0 or above 1) and `material` is the
secondary-electron yield of what lies there (metal bright, oxide dull). Defects edit these
maps (`semnb.data.sem_defects`) and the microscope model renders them
(`semnb.data.sem_imaging`), so a defect changes the picture the way it changes the wafer.

Feature sizes are drawn in a 256-pixel frame and scaled with the image size, so a 128-pixel
image shows the same field of view as a 256-pixel one at half the resolution.

Taught in: 01_sem_data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

BACKGROUND_KINDS = ("lines", "contacts", "routing", "film")


@dataclass
class LineLayout:
    """A line/space array: lines run perpendicular to the unit normal at `normal_angle`.

    Line k's centre sits at across-coordinate u = col * cos + row * sin = offset + k * pitch.
    """

    normal_angle: float
    pitch: float
    width: float
    offset: float
    line_yield: float


@dataclass
class ContactLayout:
    """A contact-hole array: hole centres (row, col) in pixels and their radii."""

    centres: np.ndarray
    radii: np.ndarray
    film_yield: float


@dataclass
class RoutingLayout:
    """Manhattan metal wires; `wires` is the drawn layout (bool), `vertical` its track direction."""

    wires: np.ndarray
    vertical: bool
    pitch: float
    width: float
    metal_yield: float


@dataclass
class Surface:
    """The wafer surface before imaging: what defects edit and the SEM model renders."""

    height: np.ndarray
    material: np.ndarray
    kind: str
    layout: LineLayout | ContactLayout | RoutingLayout | None

    @property
    def size(self) -> int:
        return self.height.shape[0]

    @property
    def scale(self) -> float:
        """Image size relative to the 256-pixel frame feature sizes are drawn in."""
        return self.size / 256.0


@lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates of every pixel (float32, read-only, cached per size).

    Taught in: 01_sem_data.
    """
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    rows.flags.writeable = False
    cols.flags.writeable = False
    return rows, cols


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, zero mean and about unit standard deviation, correlated over ~`sigma` px.

    Fields wider than a couple of pixels are drawn on a grid `step` times coarser and enlarged
    bilinearly, which looks the same and costs far less.

    Taught in: 01_sem_data.
    """
    step = max(1, round(sigma))
    coarse_shape = (shape[0] // step + 2, shape[1] // step + 2)
    noise = rng.standard_normal(coarse_shape, dtype=np.float32)
    noise = ndi.gaussian_filter(noise, sigma / step, mode="wrap", truncate=3.0)
    noise = (noise - noise.mean()) / (noise.std() + 1e-6)
    if step == 1:
        return noise[: shape[0], : shape[1]]
    rows_index, rows_weight = _linear_interpolation(shape[0], step)
    cols_index, cols_weight = _linear_interpolation(shape[1], step)
    rows_done = noise[rows_index] + rows_weight[:, None] * (
        noise[rows_index + 1] - noise[rows_index]
    )
    left = rows_done[:, cols_index]
    return left + cols_weight * (rows_done[:, cols_index + 1] - left)


def _linear_interpolation(length: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of `length` fine positions: the coarse sample before it and the weight of the one after."""
    position = np.arange(length, dtype=np.float32) / step
    index = position.astype(np.intp)
    return index, (position - index).astype(np.float32)


def fractal_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float, octaves: int = 3
) -> np.ndarray:
    """Sum of `smooth_noise` octaves (each half the scale, 0.55 the amplitude): ragged, self-similar edges.

    Taught in: 01_sem_data.
    """
    total = np.zeros(shape, np.float32)
    for octave in range(octaves):
        total += 0.55**octave * smooth_noise(rng, shape, max(sigma / 2**octave, 0.6))
    return total / total.std()


def soft_step(signed_distance: np.ndarray, edge_width: float) -> np.ndarray:
    """0 outside, 1 inside, a linear ramp `edge_width` pixels wide across the boundary (a sidewall).

    Taught in: 01_sem_data.
    """
    return np.clip(signed_distance / edge_width + 0.5, 0.0, 1.0)


def local_window(
    size: int, centre: tuple[float, float], half: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """The square of pixels within `half` of `centre`, clipped to the image: (slices, rows, cols).

    Local shapes are computed on this window only, which keeps small defects cheap.

    Taught in: 01_sem_data.
    """
    top, left = (max(0, int(np.floor(c - half))) for c in centre)
    bottom, right = (min(size, int(np.ceil(c + half)) + 1) for c in centre)
    region = (slice(top, max(top, bottom)), slice(left, max(left, right)))
    rows, cols = pixel_grid(size)
    return region, rows[region], cols[region]


def add_disc(
    image: np.ndarray, centre: tuple[float, float], radius: float, amount: float, edge: float
) -> None:
    """Add `amount` inside a soft-edged disc to `image` in place (a via, a landing pad).

    Taught in: 01_sem_data.
    """
    region, rows, cols = local_window(image.shape[0], centre, radius + edge)
    distance = np.hypot(rows - centre[0], cols - centre[1])
    image[region] += amount * soft_step(radius - distance, edge)


def _wrap(values: np.ndarray, period: float) -> np.ndarray:
    """`values` shifted by whole periods into [-period/2, period/2): the offset from the nearest lattice site."""
    return values - np.floor(values / period + 0.5) * period


def make_background(kind: str, rng: np.random.Generator, size: int) -> Surface:
    """Draw a fresh defect-free surface of `kind` (one of BACKGROUND_KINDS).

    Taught in: 01_sem_data.
    """
    makers = {
        "lines": make_lines,
        "contacts": make_contacts,
        "routing": make_routing,
        "film": make_film,
    }
    return makers[kind](rng, size)


def make_lines(rng: np.random.Generator, size: int) -> Surface:
    """Line/space array (resist or etched lines) at one of several pitches and angles, with edge roughness.

    Taught in: 01_sem_data.
    """
    scale = size / 256.0
    normal_deg = rng.choice(
        [0.0, 90.0, 45.0, 135.0, 30.0, 120.0], p=[0.35, 0.35, 0.1, 0.1, 0.05, 0.05]
    )
    normal_angle = float(np.deg2rad(normal_deg + rng.normal(0.0, 0.8)))
    pitch = rng.uniform(11.0, 36.0) * scale
    width = pitch * rng.uniform(0.38, 0.6)
    layout = LineLayout(
        normal_angle, pitch, width, rng.uniform(0.0, pitch), line_yield=rng.uniform(0.45, 0.8)
    )
    positions = np.arange(size, dtype=np.float32)
    across_cols = (positions * np.cos(normal_angle)).astype(np.float32)
    across_rows = (positions * np.sin(normal_angle) - layout.offset).astype(np.float32)
    across = across_cols[None, :] + across_rows[:, None]
    distance_to_centre = np.abs(_wrap(across, pitch))
    roughness = (
        rng.uniform(0.25, 0.9)
        * scale
        * smooth_noise(rng, (size, size), rng.uniform(1.5, 4.0) * scale)
    )
    height = soft_step(width / 2 - distance_to_centre + roughness, rng.uniform(0.9, 1.8) * scale)
    floor_yield = rng.uniform(0.3, 0.55)
    material = floor_yield + (layout.line_yield - floor_yield) * height
    return Surface(height, material.astype(np.float32), "lines", layout)


def make_contacts(rng: np.random.Generator, size: int) -> Surface:
    """Contact-hole array on a square or staggered (hexagonal) lattice; hole sizes vary slowly over the field.

    Each pixel is measured against the nearest hole of its nearest lattice row, which keeps the
    whole array a handful of array operations.

    Taught in: 01_sem_data.
    """
    scale = size / 256.0
    pitch = rng.uniform(14.0, 38.0) * scale
    staggered = rng.random() < 0.4
    row_pitch = pitch * (3**0.5 / 2 if staggered else rng.uniform(1.0, 1.3))
    mean_radius = min(pitch, row_pitch) * rng.uniform(0.22, 0.32)
    origin = (rng.uniform(0.0, row_pitch), rng.uniform(0.0, pitch))

    def row_geometry(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest lattice row of each y: its distance from y and the column shift of its holes."""
        lattice_row = np.round((y - origin[0]) / row_pitch)
        return y - origin[0] - lattice_row * row_pitch, origin[1] + np.mod(
            lattice_row, 2
        ) * pitch / 2 * staggered

    positions = np.arange(size, dtype=np.float32)
    d_rows, row_shift = row_geometry(positions)
    d_cols = _wrap(positions[None, :] - row_shift[:, None], pitch)
    distance = np.sqrt(d_rows[:, None] ** 2 + (d_cols * rng.uniform(0.95, 1.08)) ** 2)
    radius = mean_radius * (1.0 + 0.05 * smooth_noise(rng, (size, size), pitch / 2))
    roughness = 0.35 * scale * smooth_noise(rng, (size, size), 1.5 * scale)
    height = soft_step(distance - radius + roughness, rng.uniform(1.0, 1.8) * scale)
    film_yield = rng.uniform(0.4, 0.7)
    material = rng.uniform(0.25, 0.45) + (film_yield - 0.25) * height

    centre_rows = origin[0] + np.arange(-1, int(size / row_pitch) + 2) * row_pitch
    _, shifts = row_geometry(centre_rows)
    centre_cols = np.arange(-1, int(size / pitch) + 2) * pitch
    centres = np.stack(
        np.broadcast_arrays(centre_rows[:, None], shifts[:, None] + centre_cols[None, :]), -1
    )
    centres = centres.reshape(-1, 2)
    nearest_pixel = np.clip(np.round(centres).astype(int), 0, size - 1)
    layout = ContactLayout(centres, radius[nearest_pixel[:, 0], nearest_pixel[:, 1]], film_yield)
    return Surface(height.astype(np.float32), material.astype(np.float32), "contacts", layout)


def make_routing(rng: np.random.Generator, size: int) -> Surface:
    """Metal routing: Manhattan wires on tracks with line ends, jogs to the next track, and vias.

    The wires are planned on a grid of cells one pitch wide (`_plan_routing`), then drawn,
    their corners rounded by blur (as lithography rounds them) and their edges roughened.

    Taught in: 01_sem_data.
    """
    scale = size / 256.0
    pitch = rng.uniform(16.0, 34.0) * scale
    width = pitch * rng.uniform(0.4, 0.58)
    origin = rng.uniform(0.0, pitch, 2) - pitch
    rectangles, via_cells = _plan_routing(rng, int(size / pitch) + 3, density=rng.uniform(0.5, 0.9))
    wires = np.zeros((size, size), bool)
    for track_a, track_b, cell_a, cell_b in rectangles:
        top, bottom = (
            int(round(origin[0] + t * pitch + w))
            for t, w in ((track_a, -width / 2), (track_b, width / 2))
        )
        left, right = (
            int(round(origin[1] + c * pitch + w))
            for c, w in ((cell_a, -width / 2), (cell_b, width / 2))
        )
        wires[max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0)] = True

    corner_blur = rng.uniform(0.8, 1.6) * scale
    smoothed = ndi.gaussian_filter(wires.astype(np.float32), corner_blur, truncate=3.0)
    roughness = 0.06 * smooth_noise(rng, (size, size), 2.0 * scale)
    height = np.clip((smoothed - 0.5 + roughness) * 2.5 * corner_blur / scale + 0.5, 0.0, 1.0)
    metal_yield = rng.uniform(0.6, 0.9)
    dielectric_yield = rng.uniform(0.25, 0.45)
    material = dielectric_yield + (metal_yield - dielectric_yield) * height
    for track, cell in via_cells:
        add_disc(
            material,
            (origin[0] + track * pitch, origin[1] + cell * pitch),
            0.38 * width,
            0.25,
            1.2 * scale,
        )

    vertical = bool(rng.random() < 0.5)
    if vertical:
        height, material, wires = height.T, material.T, wires.T
    layout = RoutingLayout(np.ascontiguousarray(wires), vertical, pitch, width, metal_yield)
    return Surface(
        np.ascontiguousarray(height, np.float32),
        np.ascontiguousarray(material, np.float32),
        "routing",
        layout,
    )


def _plan_routing(rng: np.random.Generator, n_cells: int, density: float):
    """Wire segments on an n_cells x n_cells grid of tracks, as rectangles (track_a, track_b, cell_a, cell_b).

    Walking along each track, a wire starts with probability `density`, runs for a random
    length, and either ends (sometimes on a via) or jogs down to the next track and goes on
    there. One free cell always separates two wires on a track, so a defect-free layout never
    shorts. Returns the rectangles and the (track, cell) of each via.
    """
    occupied = [[False] * (n_cells + 2) for _ in range(n_cells + 1)]
    rectangles, via_cells = [], []
    for track in range(n_cells):
        row, below = occupied[track], occupied[track + 1]
        cell = int(rng.integers(0, 3))
        while cell < n_cells:
            if rng.random() > density or row[cell - 1] or row[cell]:
                cell += 1
                continue
            last = min(cell + int(rng.integers(2, n_cells + 1)), n_cells) - 1
            end = cell
            while end < last and not (row[end + 1] or row[end + 2]):
                end += 1
            row[cell : end + 1] = [True] * (end + 1 - cell)
            rectangles.append((track, track, cell, end))
            if (
                rng.random() < 0.3
                and end + 2 < n_cells
                and not any(below[max(end - 1, 0) : end + 4])
            ):
                jog_end = min(end + int(rng.integers(1, 4)), n_cells - 1)
                below[end : jog_end + 1] = [True] * (jog_end + 1 - end)
                rectangles += [(track, track + 1, end, end), (track + 1, track + 1, end, jog_end)]
            elif rng.random() < 0.5:
                via_cells.append((track, end))
            cell = end + 2
    return rectangles, via_cells


def make_film(rng: np.random.Generator, size: int) -> Surface:
    """Bare film with polycrystalline grains: each grain a slightly different yield, grooved boundaries.

    Grains are the Voronoi cells of random seeds (nearest seed by a distance transform, found
    on a half-resolution grid: grains are several pixels wide, and the boundary blur hides the steps).

    Taught in: 01_sem_data.
    """
    scale = size / 256.0
    grain_size = rng.uniform(7.0, 28.0) * scale
    half = (size + 1) // 2
    n_grains = max(4, int((size / grain_size) ** 2))
    not_seed = np.ones(half * half, bool)
    not_seed[rng.integers(0, half * half, n_grains)] = False
    nearest_seed = ndi.distance_transform_edt(
        not_seed.reshape(half, half), return_distances=False, return_indices=True
    )
    grain_id = (nearest_seed[0] * half + nearest_seed[1]).astype(np.int32)
    grain_id = np.repeat(np.repeat(grain_id, 2, axis=0), 2, axis=1)[:size, :size]
    boundary = np.zeros((size, size), np.float32)
    boundary[1:] += grain_id[1:] != grain_id[:-1]
    boundary[:, 1:] += grain_id[:, 1:] != grain_id[:, :-1]
    groove = ndi.gaussian_filter(np.minimum(boundary, 1.0), 0.8 * scale, truncate=3.0)
    grain_yield = np.clip(rng.standard_normal(half * half, dtype=np.float32), -2.5, 2.5)[grain_id]
    material = rng.uniform(0.4, 0.7) + rng.uniform(0.02, 0.07) * grain_yield
    height = (
        1.0 - rng.uniform(0.2, 0.7) * groove + 0.05 * smooth_noise(rng, (size, size), 3.0 * scale)
    )
    return Surface(height.astype(np.float32), material.astype(np.float32), "film", None)

"""Wafer defects as they change the surface: each one edits height and material where it lies.

A defect is drawn into the surface before imaging, so the SEM model gives it the same edges,
shading, blur and noise as the pattern around it; its mask is then exactly the pixels it
changed (see `semnb.data.synth_sem`). Shapes follow real defect morphologies:

- bridge: unwanted connection between neighbouring lines (thin, thick, across several lines),
  plus line collapse and line break; shorts between wires; merged contact holes;
- copper_residue: irregular bright metal left behind (blob with ragged edges, flakes, stringer);
- hole: dark pit, void in a line, or a contact that did not open;
- infilm: particle buried under a film: a low, soft bump that bends the pattern around it;
- particle: tall bright blob (round, faceted or a cluster) that casts a shadow;
- scratch: long thin groove (straight or arc) or the fish-scale row of arc-shaped marks.

Feature sizes are in the 256-pixel frame times `surface.scale`.

Taught in: 01_sem_data.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from semnb.data.sem_backgrounds import (
    BACKGROUND_KINDS,
    ContactLayout,
    LineLayout,
    RoutingLayout,
    Surface,
    fractal_noise,
    local_window,
    smooth_noise,
    soft_step,
)

# Which backgrounds each class is drawn on, and how often (a bridge needs neighbours to connect).
BACKGROUND_WEIGHTS = {
    "good": {"lines": 0.35, "contacts": 0.2, "routing": 0.25, "film": 0.2},
    "bridge": {"lines": 0.6, "contacts": 0.15, "routing": 0.25},
    "copper_residue": {"lines": 0.35, "contacts": 0.1, "routing": 0.35, "film": 0.2},
    "hole": {"lines": 0.25, "contacts": 0.3, "routing": 0.2, "film": 0.25},
    "infilm": {"lines": 0.3, "contacts": 0.2, "routing": 0.25, "film": 0.25},
    "particle": {"lines": 0.35, "contacts": 0.2, "routing": 0.25, "film": 0.2},
    "scratch": {"lines": 0.3, "contacts": 0.15, "routing": 0.2, "film": 0.35},
}


def choose_background(cls: str, rng: np.random.Generator) -> str:
    """Draw the background kind an image of class `cls` is made on.

    Taught in: 01_sem_data.
    """
    weights = BACKGROUND_WEIGHTS[cls]
    kinds = [kind for kind in BACKGROUND_KINDS if kind in weights]
    return str(rng.choice(kinds, p=[weights[kind] for kind in kinds]))


def add_defect(cls: str, surface: Surface, rng: np.random.Generator, usable_rows: int) -> str:
    """Draw one defect of class `cls` into `surface` (in place), centred above row `usable_rows`; return its variant.

    Rows from `usable_rows` down are covered by the info banner, so no defect is centred there.

    Taught in: 01_sem_data.
    """
    painters = {
        "bridge": _add_bridge,
        "copper_residue": _add_copper_residue,
        "hole": _add_hole,
        "infilm": _add_infilm,
        "particle": _add_particle,
        "scratch": _add_scratch,
    }
    return painters[cls](surface, rng, usable_rows)


def _pick_centre(
    rng: np.random.Generator, size: int, usable_rows: int, margin: float
) -> tuple[float, float]:
    """A point at least `margin` pixels inside the usable image; usually near the middle.

    A review SEM drives to the coordinates the inspection tool reported, so most defects sit
    near the centre of the field; the rest anywhere.
    """
    margin = min(margin, usable_rows / 2 - 1, size / 2 - 1)
    row_range, col_range = (margin, usable_rows - margin), (margin, size - margin)
    if rng.random() < 0.6:
        row, col = rng.normal(usable_rows / 2, 0.12 * size), rng.normal(size / 2, 0.12 * size)
        return float(np.clip(row, *row_range)), float(np.clip(col, *col_range))
    return rng.uniform(*row_range), rng.uniform(*col_range)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _outline(rng, rows, cols, centre, radius, lobes, aspect=1.0, angle=0.0) -> np.ndarray:
    """Signed distance in pixels (positive inside) to an irregular closed outline around `centre`.

    The outline is an ellipse (`aspect` along `angle`) whose radius wobbles with a few random
    low harmonics of strength `lobes`.
    """
    d_rows, d_cols = rows - float(centre[0]), cols - float(centre[1])
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    along = d_cols * cos + d_rows * sin
    across = -d_cols * sin + d_rows * cos
    theta = np.arctan2(across, along)
    harmonics = np.arange(2, 6)
    amplitudes = rng.normal(0.0, lobes, harmonics.size) / harmonics
    phases = rng.uniform(0.0, 2 * np.pi, harmonics.size)
    wobble = (
        amplitudes[:, None, None] * np.cos(harmonics[:, None, None] * theta + phases[:, None, None])
    ).sum(0)
    return radius * (1.0 + wobble) - np.hypot(along / aspect, across)


# ---------------------------------------------------------------- particle and infilm


def _add_particle(surface: Surface, rng: np.random.Generator, usable_rows: int) -> str:
    """A foreign particle sitting on the surface: tall, bright, sharp-edged; the side detector shades it."""
    scale = surface.scale
    variant = str(rng.choice(["round", "faceted", "cluster"], p=[0.5, 0.25, 0.25]))
    if variant == "cluster":
        radius = max(_log_uniform(rng, 3.0, 8.0) * scale, 1.5)
        centre = _pick_centre(rng, surface.size, usable_rows, 4 * radius)
        for _ in range(int(rng.integers(2, 6))):
            offset = rng.normal(0.0, 1.3 * radius, 2)
            _stamp_particle(
                surface,
                rng,
                (centre[0] + offset[0], centre[1] + offset[1]),
                radius * rng.uniform(0.6, 1.2),
                faceted=False,
            )
    else:
        radius = max(_log_uniform(rng, 4.0, 24.0) * scale, 2.0)
        centre = _pick_centre(rng, surface.size, usable_rows, radius + 2)
        _stamp_particle(surface, rng, centre, radius, faceted=variant == "faceted")
    return variant


def _stamp_particle(
    surface: Surface, rng: np.random.Generator, centre, radius: float, faceted: bool
) -> None:
    """Set one particle on the surface: a dome (or a flat-topped polygon) of bright material."""
    scale = surface.scale
    region, rows, cols = local_window(surface.size, centre, 1.3 * radius + 2)
    if faceted:
        sides = int(rng.integers(5, 9))
        sector = 2 * np.pi / sides
        theta = np.arctan2(rows - centre[0], cols - centre[1]) - rng.uniform(0.0, sector)
        outline = radius * np.cos(np.pi / sides) / np.cos(np.mod(theta, sector) - sector / 2)
        inside = 1.0 - np.hypot(rows - centre[0], cols - centre[1]) / outline
        dome = np.clip(inside * 3.0, 0.0, 1.0)  # flat top, sloping facets
        cover = soft_step(inside * outline, 0.7 * scale)
    else:
        signed = _outline(
            rng,
            rows,
            cols,
            centre,
            radius,
            lobes=0.12,
            aspect=rng.uniform(1.0, 1.4),
            angle=rng.uniform(0, np.pi),
        )
        dome = np.sqrt(np.clip(signed / radius * 2.0, 0.0, 1.0))
        cover = soft_step(signed, 0.7 * scale)
    tall = rng.uniform(1.0, 2.2) * np.sqrt(radius / (6.0 * scale))
    surface.height[region] += tall * dome
    particle_yield = rng.uniform(0.5, 0.95) + 0.04 * smooth_noise(rng, cover.shape, 1.5 * scale)
    surface.material[region] += (particle_yield - surface.material[region]) * cover


def _add_infilm(surface: Surface, rng: np.random.Generator, usable_rows: int) -> str:
    """A particle buried under a film: a low bump with soft edges that bends the pattern over it."""
    scale = surface.scale
    variant = str(rng.choice(["buried", "elongated", "wide"], p=[0.5, 0.25, 0.25]))
    radius = max(_log_uniform(rng, 5.0, 14.0 if variant != "wide" else 24.0) * scale, 2.5)
    aspect = rng.uniform(1.6, 3.0) if variant == "elongated" else rng.uniform(1.0, 1.3)
    amplitude = rng.uniform(0.3, 0.7) if variant != "wide" else rng.uniform(0.25, 0.45)
    reach = 1.7 * radius
    centre = _pick_centre(rng, surface.size, usable_rows, radius)
    region, rows, cols = local_window(surface.size, centre, reach * aspect + 2)
    signed = _outline(
        rng, rows, cols, centre, reach, lobes=0.1, aspect=aspect, angle=rng.uniform(0, np.pi)
    )
    closeness = np.clip(signed / reach, 0.0, 1.0)  # 0 at the outer edge, 1 at the centre
    bump = amplitude * 0.5 * (1.0 - np.cos(np.pi * closeness))

    # The film drapes over the particle, pushing the pattern beneath outwards a little.
    push = (
        0.5 * amplitude * closeness**2
    )  # the pattern under the bump is magnified, hardly moved near its rim
    source = [
        rows - region[0].start - push * (rows - centre[0]),
        cols - region[1].start - push * (cols - centre[1]),
    ]
    for layer in (surface.height, surface.material):
        layer[region] = ndi.map_coordinates(layer[region], source, order=1, mode="nearest")
    surface.height[region] += bump
    surface.material[region] += rng.uniform(-0.05, 0.15) * bump / amplitude
    return variant


# ---------------------------------------------------------------- hole


def _add_hole(surface: Surface, rng: np.random.Generator, usable_rows: int) -> str:
    """A dark pit in the surface, a void inside a line or wire, or a contact hole that did not open."""
    choices = {
        "contacts": ["pit", "missing_contact"],
        "lines": ["pit", "void"],
        "routing": ["pit", "void"],
    }
    variant = str(rng.choice(choices.get(surface.kind, ["pit"])))
    if variant == "missing_contact":
        _close_contact(surface, rng, usable_rows)
    elif variant == "void":
        _add_void(surface, rng, usable_rows)
    else:
        radius = max(_log_uniform(rng, 3.0, 16.0) * surface.scale, 1.5)
        centre = _pick_centre(rng, surface.size, usable_rows, radius + 3)
        _dig_pit(
            surface, rng, centre, radius, aspect=rng.uniform(1.0, 1.6), angle=rng.uniform(0, np.pi)
        )
    return variant


def _dig_pit(
    surface: Surface, rng: np.random.Generator, centre, radius: float, aspect: float, angle: float
) -> None:
    """Lower the surface into a bowl below the trench floor."""
    scale = surface.scale
    region, rows, cols = local_window(surface.size, centre, radius * aspect + 2 * scale + 2)
    signed = _outline(rng, rows, cols, centre, radius, lobes=0.2, aspect=aspect, angle=angle)
    cover = soft_step(signed, 1.0 * scale)
    depth = rng.uniform(0.8, 2.0)
    bowl = -depth * (0.6 + 0.4 * np.clip(signed / radius, 0.0, 1.0))
    surface.height[region] = surface.height[region] * (1.0 - cover) + bowl * cover
    surface.material[region] *= 1.0 - rng.uniform(0.05, 0.3) * cover


def _close_contact(surface: Surface, rng: np.random.Generator, usable_rows: int) -> None:
    """Fill one contact hole (fully, or most of the way) so that it reads as missing."""
    layout: ContactLayout = surface.layout
    usable = (
        (layout.centres[:, 0] > layout.radii + 2)
        & (layout.centres[:, 0] < usable_rows - layout.radii - 2)
        & (layout.centres[:, 1] > layout.radii + 2)
        & (layout.centres[:, 1] < surface.size - layout.radii - 2)
    )
    hole = rng.choice(np.flatnonzero(usable))
    centre, radius = layout.centres[hole], layout.radii[hole]
    region, rows, cols = local_window(surface.size, centre, radius + 3 * surface.scale + 2)
    cover = soft_step(
        radius + 1.5 * surface.scale - np.hypot(rows - centre[0], cols - centre[1]), surface.scale
    )
    fill_height = rng.choice([1.0, rng.uniform(0.55, 0.85)])
    surface.height[region] += (
        np.maximum(surface.height[region], fill_height) - surface.height[region]
    ) * cover
    surface.material[region] += (layout.film_yield - surface.material[region]) * cover


def _add_void(surface: Surface, rng: np.random.Generator, usable_rows: int) -> None:
    """A void inside a line or a wire: a pit no wider than the line, drawn out along it."""
    if isinstance(surface.layout, LineLayout):
        width, angle = surface.layout.width, surface.layout.normal_angle + np.pi / 2
    else:
        layout: RoutingLayout = surface.layout
        width, angle = layout.width, (np.pi / 2 if layout.vertical else 0.0)
    on_line = np.argwhere(surface.height[: max(1, usable_rows - int(width)), :] > 0.97)
    centre = on_line[rng.integers(len(on_line))]
    radius = rng.uniform(0.25, 0.42) * width
    _dig_pit(surface, rng, centre, radius, aspect=rng.uniform(1.5, 5.0), angle=angle)


# ---------------------------------------------------------------- copper residue


def _add_copper_residue(surface: Surface, rng: np.random.Generator, usable_rows: int) -> str:
    """Metal left after polishing or etch: bright, thin, with ragged self-similar edges."""
    scale = surface.scale
    variant = str(rng.choice(["blob", "flakes", "stringer"], p=[0.5, 0.25, 0.25]))
    copper_yield = rng.uniform(0.95, 1.35)
    if variant == "blob":
        radius = max(_log_uniform(rng, 4.0, 18.0) * scale, 2.0)
        centre = _pick_centre(rng, surface.size, usable_rows, radius + 2)
        _spread_residue(surface, rng, centre, radius, 1.0, 0.0, copper_yield)
    elif variant == "flakes":
        spread = rng.uniform(6.0, 20.0) * scale
        centre = _pick_centre(rng, surface.size, usable_rows, spread + 4)
        for _ in range(int(rng.integers(3, 9))):
            offset = rng.normal(0.0, spread / 2, 2)
            _spread_residue(
                surface,
                rng,
                (centre[0] + offset[0], centre[1] + offset[1]),
                max(rng.uniform(1.5, 4.5) * scale, 1.2),
                1.0,
                0.0,
                copper_yield,
            )
    else:
        half_width = max(rng.uniform(1.5, 4.0) * scale, 1.2)
        aspect = rng.uniform(3.0, 8.0)
        centre = _pick_centre(rng, surface.size, usable_rows, half_width * aspect + 2)
        angle = rng.uniform(0.0, np.pi)
        if isinstance(surface.layout, LineLayout):  # a stringer lies along a space between lines
            layout = surface.layout
            angle = layout.normal_angle + np.pi / 2
            cos, sin = float(np.cos(layout.normal_angle)), float(np.sin(layout.normal_angle))
            across = centre[1] * cos + centre[0] * sin
            space_centre = (
                layout.offset
                + (np.floor((across - layout.offset) / layout.pitch) + 0.5) * layout.pitch
            )
            centre = (
                centre[0] + (space_centre - across) * sin,
                centre[1] + (space_centre - across) * cos,
            )
            half_width = min(half_width, 0.45 * (layout.pitch - layout.width) + scale)
        _spread_residue(surface, rng, centre, half_width, aspect, angle, copper_yield)
    return variant


def _spread_residue(
    surface: Surface, rng, centre, radius: float, aspect: float, angle: float, copper_yield: float
) -> None:
    scale = surface.scale
    region, rows, cols = local_window(surface.size, centre, 1.6 * radius * aspect + 2)
    signed = _outline(rng, rows, cols, centre, radius, lobes=0.3, aspect=aspect, angle=angle)
    ragged = fractal_noise(rng, signed.shape, max(radius * 0.35, 1.0), octaves=3)
    cover = soft_step(signed + rng.uniform(0.2, 0.4) * radius * ragged, 0.6 * scale)
    surface.height[region] += rng.uniform(0.15, 0.45) * cover
    mottled = copper_yield + 0.08 * smooth_noise(rng, cover.shape, 1.2 * scale)
    surface.material[region] += (mottled - surface.material[region]) * cover


# ---------------------------------------------------------------- scratch


def _add_scratch(surface: Surface, rng: np.random.Generator, usable_rows: int) -> str:
    """A long thin groove (straight, bent or dashed) or a fish-scale row of arc-shaped marks."""
    variant = str(rng.choice(["straight", "arc", "fish_scale"], p=[0.4, 0.35, 0.25]))
    if variant == "fish_scale":
        _add_fish_scale(surface, rng, usable_rows)
    else:
        _add_groove(surface, rng, usable_rows, bend=1.0 if variant == "arc" else 8.0)
    return variant


def _groove_profile(distance: np.ndarray, width: np.ndarray | float, depth: float) -> np.ndarray:
    """Height change across a scratch: a rounded groove about `width` pixels wide."""
    return -depth * np.exp(-((distance / width) ** 2))


def _add_groove(surface: Surface, rng: np.random.Generator, usable_rows: int, bend: float) -> None:
    """A scratch along an arc of a large circle (radius `bend` to 4 x `bend` image sizes)."""
    size, scale = surface.size, surface.scale
    length = rng.uniform(0.35, 1.2) * size
    bend_radius = _log_uniform(rng, bend, 4 * bend) * size
    start = _pick_centre(rng, size, usable_rows, 4 * scale)
    direction = rng.uniform(0.0, 2 * np.pi)
    circle_centre = (
        start[0] + bend_radius * np.cos(direction),
        start[1] - bend_radius * np.sin(direction),
    )
    start_angle = np.arctan2(start[0] - circle_centre[0], start[1] - circle_centre[1])

    n_samples = int(length) + 2
    along = np.linspace(-length / 2, length / 2, n_samples)
    width_along = max(rng.uniform(1.0, 2.8) * scale, 0.8) * (
        1.0 + 0.3 * smooth_noise(rng, (1, n_samples), 6.0)[0]
    )
    taper = np.clip((length / 2 - np.abs(along)) / (0.1 * length), 0.0, 1.0)
    if rng.random() < 0.3:  # an interrupted (dashed) scratch, as from a skipping grain
        taper *= np.clip(smooth_noise(rng, (1, n_samples), 5.0)[0] * 3 + 1.5, 0.0, 1.0)
    depth = rng.uniform(0.8, 2.0)

    # Only pixels near the circle can be touched: find them first, then work on those alone.
    region, rows, cols = local_window(size, start, length / 2 + 4 * scale)
    d_rows, d_cols = rows - circle_centre[0], cols - circle_centre[1]
    distance = np.abs(np.sqrt(d_rows**2 + d_cols**2) - bend_radius)
    near = distance < 3.0 * width_along.max()
    angle_from_start = np.arctan2(d_rows[near], d_cols[near]) - start_angle
    arc_position = bend_radius * (
        angle_from_start - 2 * np.pi * np.round(angle_from_start / (2 * np.pi))
    )
    width = np.interp(arc_position, along, np.maximum(width_along, 0.3 * scale))
    strength = np.interp(arc_position, along, taper, left=0.0, right=0.0)
    change = np.zeros(rows.shape, np.float32)
    change[near] = strength * _groove_profile(distance[near], width, depth)
    surface.height[region] += change
    surface.material[region] *= 1.0 - 0.15 * np.clip(-change, 0.0, 1.0)


def _add_fish_scale(surface: Surface, rng: np.random.Generator, usable_rows: int) -> None:
    """A row of crescent-shaped marks, all opening the same way, as a skipping pad grain leaves."""
    scale = surface.scale
    n_marks = int(rng.integers(4, 13))
    spacing = rng.uniform(4.0, 10.0) * scale
    arc_radius = max(rng.uniform(4.0, 12.0) * scale, 2.0)
    half_angle = np.deg2rad(rng.uniform(50.0, 85.0))
    width = max(rng.uniform(0.7, 1.5) * scale, 0.6)
    depth = rng.uniform(0.8, 1.6)
    direction = rng.uniform(0.0, 2 * np.pi)
    step = np.array([np.sin(direction), np.cos(direction)])  # (row, col)
    half_length = n_marks * spacing / 2
    centre = np.asarray(_pick_centre(rng, surface.size, usable_rows, half_length + arc_radius + 2))
    region, rows, cols = local_window(surface.size, centre, half_length + arc_radius + 3 * scale)
    change = np.zeros(rows.shape, np.float32)
    for mark in range(n_marks):
        mark_centre = (
            centre + (mark - (n_marks - 1) / 2) * spacing * step + rng.normal(0.0, 0.3 * scale, 2)
        )
        d_rows, d_cols = rows - mark_centre[0], cols - mark_centre[1]
        radial = np.hypot(d_rows, d_cols) + 1e-6
        facing = (
            d_rows * step[0] + d_cols * step[1]
        ) / radial  # cosine of the angle to the row's direction
        within_arc = np.clip((facing - np.cos(half_angle)) / 0.2, 0.0, 1.0)
        np.minimum(
            change,
            _groove_profile(np.abs(radial - arc_radius), width, depth) * within_arc,
            out=change,
        )
    surface.height[region] += change
    surface.material[region] *= 1.0 - 0.15 * np.clip(-change, 0.0, 1.0)


# ---------------------------------------------------------------- bridge


def _add_bridge(surface: Surface, rng: np.random.Generator, usable_rows: int) -> str:
    """Unwanted connection between neighbours; on line arrays also line collapse and line break."""
    if isinstance(surface.layout, ContactLayout):
        _merge_contacts(surface, rng, usable_rows)
        return "merged_contacts"
    if isinstance(surface.layout, RoutingLayout):
        return _short_wires(surface, rng, usable_rows)
    variant = str(
        rng.choice(["thin", "thick", "multi", "collapse", "break"], p=[0.25, 0.25, 0.2, 0.15, 0.15])
    )
    _bridge_lines(surface, rng, usable_rows, variant)
    return variant


def _bridge_lines(
    surface: Surface, rng: np.random.Generator, usable_rows: int, variant: str
) -> None:
    layout: LineLayout = surface.layout
    scale, pitch, width = surface.scale, layout.pitch, layout.width
    spaces = int(rng.integers(2, 5)) if variant == "multi" else 1
    extent = {
        "thin": max(rng.uniform(1.2, 3.5) * scale, 1.5),
        "thick": rng.uniform(0.6, 2.0) * pitch,
        "multi": rng.uniform(0.5, 1.5) * pitch,
        "collapse": rng.uniform(2.0, 5.0) * pitch,
        "break": rng.uniform(0.2, 0.8) * pitch + 2 * scale,
    }[variant]
    centre = _pick_centre(rng, surface.size, usable_rows, max(extent, spaces * pitch) / 2 + 2)
    region, rows, cols = local_window(
        surface.size, centre, max(extent, (spaces + 1) * pitch) / 2 + 3 * scale
    )
    cos, sin = float(np.cos(layout.normal_angle)), float(np.sin(layout.normal_angle))
    across = cols * cos + rows * sin - layout.offset
    along = (-cols * sin + rows * cos) - (-centre[1] * sin + centre[0] * cos)
    first_line = (
        np.floor((centre[1] * cos + centre[0] * sin - layout.offset) / pitch) - (spaces - 1) // 2
    )
    from_first = across - first_line * pitch
    ragged = 0.5 * scale * smooth_noise(rng, rows.shape, 1.5 * scale)
    sidewall = 1.2 * scale
    height, material = surface.height[region], surface.material[region]

    if variant in ("thin", "thick", "multi"):
        between = np.minimum(from_first, spaces * pitch - from_first)
        cover = soft_step(np.minimum(extent / 2 - np.abs(along) + ragged, between), sidewall)
        bridge_height = rng.uniform(0.55, 1.0)
        np.maximum(height, bridge_height * cover, out=height)
        material += (layout.line_yield - material) * cover
        return
    in_segment = soft_step(extent / 2 - np.abs(along) + ragged, 2 * sidewall)
    own_line = soft_step(
        pitch / 2 - np.abs(from_first), sidewall
    )  # the band of line k and its two half-spaces
    if variant == "break":
        cut = in_segment * own_line
        height *= 1.0 - cut
        material += (material.min() - material) * cut
        return
    # collapse: line k falls over towards line k+1 along the segment, lying lower and wider
    lean = (pitch - 0.5 * width) * np.cos(
        np.clip(along / extent * np.pi, -np.pi / 2, np.pi / 2)
    ) ** 2
    fallen = soft_step(0.65 * width - np.abs(from_first - lean) + ragged, sidewall) * in_segment
    height *= 1.0 - in_segment * own_line
    np.maximum(height, rng.uniform(0.55, 0.8) * fallen, out=height)
    material += (layout.line_yield - material) * fallen


def _merge_contacts(surface: Surface, rng: np.random.Generator, usable_rows: int) -> None:
    """Two neighbouring contact holes run into each other: the wall between them is gone."""
    layout: ContactLayout = surface.layout
    centres, radii = layout.centres, layout.radii
    inside = (
        (centres[:, 0] > 4)
        & (centres[:, 0] < usable_rows - radii - 4)
        & (centres[:, 1] > 4)
        & (centres[:, 1] < surface.size - 4)
    )
    first = rng.choice(np.flatnonzero(inside))
    gaps = np.hypot(*(centres - centres[first]).T)
    gaps[first] = np.inf
    second = int(np.argmin(gaps))
    a, b = centres[first], centres[second]
    half_width = rng.uniform(0.5, 1.0) * min(radii[first], radii[second])
    region, rows, cols = local_window(surface.size, (a + b) / 2, gaps[second] / 2 + half_width + 3)
    segment = b - a
    t = np.clip(
        ((rows - a[0]) * segment[0] + (cols - a[1]) * segment[1]) / (segment @ segment), 0.0, 1.0
    )
    distance = np.hypot(rows - a[0] - t * segment[0], cols - a[1] - t * segment[1])
    ragged = 0.4 * surface.scale * smooth_noise(rng, rows.shape, 1.5 * surface.scale)
    opening = soft_step(half_width - distance + ragged, 1.2 * surface.scale)
    surface.height[region] *= 1.0 - opening
    floor = surface.material[region].min()
    surface.material[region] += (floor - surface.material[region]) * opening


def _short_wires(surface: Surface, rng: np.random.Generator, usable_rows: int) -> str:
    """A short between two neighbouring wires: metal across the space, thin or thick."""
    layout: RoutingLayout = surface.layout
    scale = surface.scale
    # Work in the frame where wires run along rows; a transposed view writes through.
    wires, height, material = layout.wires, surface.height, surface.material
    if layout.vertical:
        wires, height, material = wires.T, height.T, material.T
    variant = str(rng.choice(["thin", "thick"]))
    half_width = (
        max(rng.uniform(1.0, 2.0) * scale, 0.8)
        if variant == "thin"
        else rng.uniform(0.3, 0.8) * layout.pitch
    )
    for column in rng.permutation(
        np.arange(int(half_width) + 2, surface.size - int(half_width) - 2)
    ):
        gaps = _gaps_between_wires(wires[:, column], max_gap=1.6 * layout.pitch)
        if layout.vertical:  # this frame's columns are the image's rows, which the banner limits
            gaps = gaps if column < usable_rows - half_width - 2 else []
        else:
            gaps = [(end, start) for end, start in gaps if start < usable_rows - 2]
        if gaps:
            end, start = gaps[rng.integers(len(gaps))]
            break
    else:
        raise RuntimeError(
            "routing layout without two neighbouring wires"
        )  # make_routing always draws several
    centre = ((end + start) / 2, float(column))
    region, rows, cols = local_window(
        surface.size, centre, (start - end) / 2 + half_width + 4 * scale
    )
    ragged = 0.5 * scale * smooth_noise(rng, rows.shape, 1.5 * scale)
    along = soft_step(half_width - np.abs(cols - column) + ragged, 1.2 * scale)
    across = soft_step((start - end) / 2 + 2 - np.abs(rows - centre[0]), 1.2 * scale)
    cover = along * across
    np.maximum(height[region], rng.uniform(0.6, 1.0) * cover, out=height[region])
    material[region] += (layout.metal_yield - material[region]) * cover
    return f"short_{variant}"


def _gaps_between_wires(profile: np.ndarray, max_gap: float) -> list[tuple[int, int]]:
    """(first empty row, first metal row after it) of each space between two wires along `profile`."""
    run_starts = np.flatnonzero(~profile[:-1] & profile[1:]) + 1
    run_ends = np.flatnonzero(profile[:-1] & ~profile[1:]) + 1
    pairs = [(end, run_starts[run_starts > end][0]) for end in run_ends if (run_starts > end).any()]
    return [(end, start) for end, start in pairs if start - end < max_gap]

"""Synthetic wafer-SEM defect images with pixel-accurate masks: the embedded default data of semnb.

One image is made in four steps, each in its own module:
1. a defect-free patterned surface (`sem_backgrounds`: line/space, contact holes, metal
   routing, grainy film);
2. one defect drawn into that surface (`sem_defects`); the mask is exactly the pixels whose
   height or material the defect changed;
3. the surface seen through a review SEM (`sem_imaging`: edge effect, detector shading and
   shadow, charging, drift, defocus, scan jitter, shot noise);
4. on some images, the tool's info banner over the bottom rows (the mask never covers it).

Every random step draws from a generator seeded by (seed, class), so the same call gives the
same bytes, and a set's images do not change when classes are added or removed.

Taught in: 01_sem_data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from semnb.data.sem_backgrounds import Surface, make_background
from semnb.data.sem_defects import add_defect, choose_background
from semnb.data.sem_imaging import (
    banner_height,
    detect,
    draw_banner,
    draw_microscope,
    render_signal,
    scan_row_shifts,
    shift_rows,
)
from semnb.errors import SemnbInputError

CLASSES = ("good", "bridge", "copper_residue", "hole", "infilm", "particle", "scratch")
SPLITS = ("test", "train")
BANNER_PROBABILITY = 0.4
MIN_SIZE, MAX_SIZE = 32, 4096
# A pixel belongs to the defect when the defect changed its height or its material by more than this.
HEIGHT_TOLERANCE = 0.08
YIELD_TOLERANCE = 0.04


@dataclass
class SemSample:
    """One synthetic SEM image with its defect mask and how it was made."""

    image: np.ndarray  # uint8, size x size
    mask: (
        np.ndarray
    )  # bool, size x size; True where the defect changed the wafer; all False for "good"
    cls: str
    background: str  # "lines", "contacts", "routing" or "film"
    variant: str  # the defect's form, e.g. "thin" bridge, "fish_scale" scratch; "none" for good
    pixel_size_nm: float
    banner_rows: int  # rows of tool text at the bottom; 0 when there is no banner
    seed: int  # generate_sem_image(cls, size, seed) makes this sample again
    reference: np.ndarray | None = None  # same view without the defect, when asked for

    @property
    def has_banner(self) -> bool:
        return self.banner_rows > 0


def generate_sem_image(
    cls: str, size: int = 256, seed: int = 0, reference: bool = False
) -> SemSample:
    """Make one synthetic SEM review image of class `cls` with its pixel mask.

    With `reference=True` the sample also carries the same field of view without the defect,
    imaged with the same microscope settings and the same noise: what a die-to-die comparison
    would see, and a check that the image changes only where the mask says.

    Taught in: 01_sem_data.
    """
    if cls not in CLASSES:
        raise SemnbInputError("cls", f"unknown class {cls!r}", f"use one of {', '.join(CLASSES)}")
    _check_whole_number(size, "size (--size)", MIN_SIZE, MAX_SIZE)
    _check_whole_number(seed, "seed (--seed)", 0, 2**63 - 1)
    streams = np.random.SeedSequence([int(seed), CLASSES.index(cls)]).spawn(4)
    layout_stream, background_stream, defect_stream, imaging_stream = streams
    layout_rng = np.random.default_rng(layout_stream)
    background_rng = np.random.default_rng(background_stream)

    banner_rows = banner_height(size) if layout_rng.random() < BANNER_PROBABILITY else 0
    field_of_view_nm = np.exp(layout_rng.uniform(np.log(600.0), np.log(3000.0)))
    pixel_size_nm = round(float(field_of_view_nm / size), 3)
    banner = draw_banner(size, banner_rows, pixel_size_nm, layout_rng) if banner_rows else None

    background = choose_background(cls, background_rng)
    surface = make_background(background, background_rng, size)
    clean = Surface(surface.height.copy(), surface.material.copy(), surface.kind, surface.layout)
    if cls == "good":
        variant, mask = "none", np.zeros((size, size), bool)
    else:
        variant = add_defect(
            cls, surface, np.random.default_rng(defect_stream), usable_rows=size - banner_rows
        )
        mask = (np.abs(surface.height - clean.height) > HEIGHT_TOLERANCE) | (
            np.abs(surface.material - clean.material) > YIELD_TOLERANCE
        )

    image, row_shifts = _image_surface(surface, banner, imaging_stream)
    mask = shift_rows(mask, row_shifts, interpolate=False)  # the scan jitter moves the defect too
    mask[size - banner_rows :] = False
    reference_image = _image_surface(clean, banner, imaging_stream)[0] if reference else None
    return SemSample(
        image,
        mask,
        cls,
        background,
        variant,
        pixel_size_nm,
        banner_rows,
        int(seed),
        reference_image,
    )


def _image_surface(
    surface: Surface, banner: np.ndarray | None, stream: np.random.SeedSequence
) -> tuple[np.ndarray, np.ndarray]:
    """The SEM picture of `surface`, banner pasted in, and the scan jitter's row shifts."""
    rng = np.random.default_rng(stream)
    scope = draw_microscope(rng, surface.size)
    signal = render_signal(surface, scope, rng)
    row_shifts = scan_row_shifts(rng, surface.size, scope)
    image = detect(shift_rows(signal, row_shifts), scope, rng)
    if banner is not None:
        image[-len(banner) :] = banner
    return image, row_shifts


def sample_seed(seed: int, cls: str, index: int, split: str = "test") -> int:
    """Seed of image `index` of class `cls` in a set made with `seed`: independent of the other classes.

    Taught in: 01_sem_data.
    """
    entropy = [int(seed), SPLITS.index(split), CLASSES.index(cls), int(index)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


def generate_sem_set(
    n_per_class: int,
    size: int = 256,
    seed: int = 0,
    classes: Sequence[str] = CLASSES,
    progress: bool = False,
    split: str = "test",
) -> Iterator[SemSample]:
    """Images of every class in `classes`, `n_per_class` each, class by class, made one at a time.

    Options are checked at once; the images are made as the iterator is read, so a large set
    never sits in memory. `split` ("test" or "train") picks a separate stream of seeds, so
    training images never repeat test images.

    Taught in: 01_sem_data.
    """
    check_set_options(n_per_class, size, seed)
    unknown = [cls for cls in classes if cls not in CLASSES]
    if unknown or not classes:
        raise SemnbInputError(
            "classes", f"unknown or no classes {unknown}", f"use some of {', '.join(CLASSES)}"
        )
    if split not in SPLITS:
        raise SemnbInputError("split", f"unknown split {split!r}", "use 'test' or 'train'")
    seeds = [
        (cls, sample_seed(seed, cls, index, split))
        for cls in classes
        for index in range(n_per_class)
    ]
    return _generate(seeds, size, f"synthetic SEM ({split})", progress)


def _generate(
    seeds: list[tuple[str, int]], size: int, title: str, progress: bool
) -> Iterator[SemSample]:
    """Make the images one by one; the progress bar appears when the first one is asked for."""
    for cls, sample in tqdm(seeds, desc=title, disable=not progress):
        yield generate_sem_image(cls, size, sample)


def check_set_options(
    n_per_class: int, size: int, seed: int, count_name: str = "n_per_class (--n-per-class)"
) -> None:
    """Raise SemnbInputError, naming the option, when an image count, image size or seed is out of range.

    Taught in: 01_sem_data.
    """
    _check_whole_number(n_per_class, count_name, 1, 10**7)
    _check_whole_number(size, "size (--size)", MIN_SIZE, MAX_SIZE)
    _check_whole_number(seed, "seed (--seed)", 0, 2**63 - 1)


def _check_whole_number(value, name: str, minimum: int, maximum: int) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not minimum <= value <= maximum
    ):
        raise SemnbInputError(
            name,
            f"must be a whole number from {minimum} to {maximum}, got {value!r}",
            f"pass a whole number in that range, e.g. {max(minimum, min(256, maximum))}",
        )

"""Find each image's most anomalous place without labels and crop a window around it.

Why: on wafer SEM images a defect covers 0.1 to 5 % of the image, so features of the whole
image describe the background pattern, and clustering groups backgrounds, not defects. A
window around the defect lets every clustering method see the defect's morphology.

How (PatchCore-style, the machinery of `semnb.components`):
1. every image is resized to `encode_size` and encoded by the default backbone
   (`semnb.models.DEFAULT_BACKBONE`, the ImageNet efficientnet-lite0);
   its middle levels' patch tokens become locally aware, layer-normalised patch features
   (`patchcore_features`);
2. a patch's anomaly score is its Euclidean distance to the nearest patch of a memory:
   - "self-referential": the patches of the same image outside the patch's own
     (2r + 1) x (2r + 1) neighbourhood. A periodic background repeats within the image, a
     defect does not. The neighbourhood is excluded because locally aware features of
     adjacent patches overlap; the outer ring of patches is not scored (set to the map's
     minimum) because the network's zero padding makes border and corner patches unique in
     their image, so they would always win (a defect there still falls inside the window,
     which is shifted inwards);
   - "normal memory + self", when defect-free images exist that are NOT among the images
     located (the MVTec layout's train/ images): the memory is those images' patches (an
     optional greedy coreset, seeded, keeps a fraction) together with the image's own
     patches as above, i.e. the smaller of the two distances. A background variant the few
     defect-free images lack (another pitch or orientation) is still explained by its own
     repeats;
   With no defect-free images the locator falls back to the self-referential score rather
   than raising an error: data sets of defect images only (class folders without a normal
   class) are common, and on the synthetic SEM sets it found defects about as often;
3. the patch map is upsampled and smoothed (`upsample_and_smooth`), its argmax is the
   defect's centre, mapped back to the image's own pixels;
4. a square window, `fraction` of the image's shorter side, centred there and shifted to lie
   inside the image, is cut from the image at full resolution.
Defect-free images held among the located ones are never put in the memory: they would
match themselves (distance 0), so their windows would all sit at one corner, a position set
by their label.

Why these choices (measured: `semnb data synth --kind sem --n-per-class 20 --size 256`, 120
defect images with masks, 20 train/ images; share of 1/4-side windows holding a defect pixel,
seed 0 set / seed 1 set): normal memory alone 0.51 / 0.38; self-referential alone (r = 2)
0.58 / 0.53; both (the default) 0.63 / 0.55. On the seed 0 set: r = 1 0.52, r = 3 0.62;
encoding at 512 px instead of 256 px 0.46 (normal memory alone) at 6x the time; no smoothing
0.53 (normal memory alone). The design was chosen on the seed 0 set and checked on seed 1.

Taught in: 06_ssl_clustering.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from semnb.components import (
    greedy_coreset,
    nearest_distance,
    patchcore_features,
    upsample_and_smooth,
)
from semnb.data.preprocess import resize
from semnb.errors import SemnbInputError
from semnb.models import DEFAULT_BACKBONE, encode_images, load_backbone

NORMAL_AND_SELF = "normal memory + self-referential"
SELF_REFERENTIAL = "self-referential"


@dataclass(frozen=True)
class CropConfig:
    """Every knob of the defect locator and the crop.

    fraction: window side as a fraction of the image's shorter side.
    encode_size: side the locator encodes at (a multiple of 32; patches are 16 px there).
    sigma: Gaussian smoothing of the anomaly map, in pixels at `encode_size`.
    coreset_fraction: share of the normal memory kept by the greedy coreset (1 keeps all).
    exclude_radius: self-referential score: patches within this many grid steps are not compared.
    seed: the coreset's random projection and first pick.

    Taught in: 06_ssl_clustering.
    """

    fraction: float = 0.25
    encode_size: int = 256
    sigma: float = 4.0
    coreset_fraction: float = 1.0
    exclude_radius: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise SemnbInputError("crop fraction", f"got {self.fraction}",
                                  "use a fraction of the image side in (0, 1], e.g. 0.25")
        if not 0 < self.coreset_fraction <= 1:
            raise SemnbInputError("coreset_fraction", f"got {self.coreset_fraction}", "use a fraction in (0, 1]")
        if self.encode_size < 64 or self.encode_size % 32:
            raise SemnbInputError("encode_size", f"got {self.encode_size}", "use a multiple of 32 of at least 64")
        if self.exclude_radius < 0:
            raise SemnbInputError("exclude_radius", f"got {self.exclude_radius}", "use 0 or more grid steps")


@dataclass
class DefectLocations:
    """Where the locator put each image's defect, in that image's own pixels.

    centers: [N, 2] (row, column) of the anomaly map's maximum.
    windows: [N, 4] (top, left, bottom, right) of the crop, bottom/right exclusive.
    peak_scores: [N] the anomaly map's maximum (distance units of the features).
    reference: NORMAL_AND_SELF or SELF_REFERENTIAL; memory_patches: patches in the normal memory (0 when none).
    """

    centers: np.ndarray
    windows: np.ndarray
    peak_scores: np.ndarray
    reference: str
    memory_patches: int = 0


def crop_window(center: Sequence[float], shape: Sequence[int], fraction: float) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a square of side `fraction` x the shorter side, centred on `center`, inside the image.

    Near a border the window is shifted inwards, not shrunk, so every crop has the same side.

    Taught in: 06_ssl_clustering.
    """
    if not 0 < fraction <= 1:
        raise SemnbInputError("crop fraction", f"got {fraction}", "use a fraction of the image side in (0, 1], e.g. 0.25")
    height, width = int(shape[0]), int(shape[1])
    side = max(1, int(round(fraction * min(height, width))))
    top = int(np.clip(round(center[0] - side / 2), 0, height - side))
    left = int(np.clip(round(center[1] - side / 2), 0, width - side))
    return top, left, top + side, left + side


def crop_images(pixels: Sequence[np.ndarray], windows: np.ndarray) -> list[np.ndarray]:
    """Each image cut to its window (top, left, bottom, right), at full resolution.

    Taught in: 06_ssl_clustering.
    """
    return [np.asarray(image)[top:bottom, left:right] for image, (top, left, bottom, right) in zip(pixels, np.asarray(windows))]


def self_referential_distance(features: torch.Tensor, grid: tuple[int, int], exclude_radius: int = 2) -> torch.Tensor:
    """[B, N]: each patch's distance to the nearest patch of the same image outside its neighbourhood.

    features: [B, N, d] patch features on a row-major `grid`. Patches within `exclude_radius`
    grid steps (Chebyshev) are skipped; a patch with nothing left to compare gets 0. The
    outer ring gets the inner patches' minimum (see the module docstring). Computed on the
    features' device.

    Taught in: 06_ssl_clustering.
    """
    device = features.device
    rows, cols = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device),
                                indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    near = ((rows[:, None] - rows[None]).abs() <= exclude_radius) & ((cols[:, None] - cols[None]).abs() <= exclude_radius)
    distances = torch.cdist(features, features).masked_fill(near, float("inf")).amin(dim=-1)
    distances = torch.nan_to_num(distances, posinf=0.0)
    inner = (rows > 0) & (rows < grid[0] - 1) & (cols > 0) & (cols < grid[1] - 1)
    if bool(inner.any()):
        floor = distances[:, inner].amin(dim=1, keepdim=True)
        distances = torch.where(inner, distances, floor)
    return distances


def locate_defects(pixels: Sequence[np.ndarray], normal_images: Sequence[np.ndarray] = (),
                   config: CropConfig | None = None, backbone=None, progress: bool = False, device: str = "auto",
                   precision: str = "auto") -> DefectLocations:
    """The most anomalous place of each gray image and the crop window around it (see the module docstring).

    `normal_images`: defect-free images that are not among `images` (empty: self-referential
    scores). `backbone`: a loaded `DEFAULT_BACKBONE` to reuse (loaded here onto `device` at
    `precision` when None). The patch distances, the coreset and the map smoothing are computed
    on the backbone's device; the windows on the CPU.

    Taught in: 06_ssl_clustering.
    """
    config = config or CropConfig()
    if len(pixels) == 0:
        raise SemnbInputError("pixels", "is empty", "pass at least one image")
    if backbone is None:
        backbone = load_backbone(DEFAULT_BACKBONE, image_size=config.encode_size, device=device, precision=precision)
    compute = backbone.compute
    if backbone.image_size != config.encode_size:
        raise SemnbInputError("backbone", f"encodes at {backbone.image_size} px, the config asks for "
                              f"{config.encode_size}", "load it with image_size=config.encode_size")
    queries, grid = _patch_features(pixels, backbone, config.encode_size, progress, "locate: encode images")
    queries = compute.to(queries)
    patch_maps = torch.cat([self_referential_distance(queries[s:s + 16], grid, config.exclude_radius)
                            for s in range(0, len(queries), 16)])
    reference, memory_patches = SELF_REFERENTIAL, 0
    if len(normal_images):
        bank, _ = _patch_features(normal_images, backbone, config.encode_size, progress, "locate: encode normal images")
        bank = compute.to(bank.reshape(-1, bank.shape[-1]))
        if config.coreset_fraction < 1 and len(bank) > 1:
            bank = bank[greedy_coreset(bank, int(round(config.coreset_fraction * len(bank))), config.seed)]
        memory_patches = len(bank)
        normal = nearest_distance(queries.reshape(-1, queries.shape[-1]), bank).reshape(queries.shape[:2])
        patch_maps = torch.minimum(patch_maps, normal)
        reference = NORMAL_AND_SELF
    maps = upsample_and_smooth(patch_maps, grid, config.encode_size, config.sigma)
    peak, where = (t.cpu() for t in maps.reshape(len(maps), -1).max(dim=1))
    rows, cols = (where // config.encode_size).numpy(), (where % config.encode_size).numpy()
    centers, windows = [], []
    for image, row, col in zip(pixels, rows, cols):
        height, width = np.asarray(image).shape[:2]
        center = ((row + 0.5) * height / config.encode_size, (col + 0.5) * width / config.encode_size)
        centers.append(center)
        windows.append(crop_window(center, (height, width), config.fraction))
    return DefectLocations(np.asarray(centers), np.asarray(windows, dtype=np.int64), peak.numpy(), reference,
                           memory_patches)


def _patch_features(pixels: Sequence[np.ndarray], backbone, size: int, progress: bool,
                    desc: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """PatchCore-style features [B, N, d] of gray images, each resized (stretched) to size x size, and their grid."""
    resized = np.stack([resize(np.asarray(image, dtype=np.float32), size) for image in
                        tqdm(pixels, desc=desc, disable=not progress)])
    levels = encode_images(backbone, resized, progress=progress)
    return patchcore_features(levels.patch_z, levels.grid), levels.grid

"""Read one image or mask file into the single in-memory form every method uses.

Images become float32 grayscale HxW in [0, 1]; masks become bool HxW. Anything wrong with a
file (missing, corrupt, unsupported, wrong size, too small, over the pixel limit) raises
`SemnbInputError` naming that file; data that is read but suspect (NaN pixels, an empty mask
of a defect image) gives one `SuspectDataWarning` naming the file.

Taught in: 01_sem_data.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from semnb.errors import SemnbInputError

PIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_EXTENSIONS = (".tif", ".tiff")
NUMPY_EXTENSIONS = (".npy",)
IMAGE_EXTENSIONS = PIL_EXTENSIONS + TIFF_EXTENSIONS + NUMPY_EXTENSIONS

# Image formats a microscopist may well drop into a folder but that semnb does not read:
# the folder loaders report these instead of silently leaving them out.
UNSUPPORTED_IMAGE_EXTENSIONS = (
    ".gif",
    ".webp",
    ".jp2",
    ".heic",
    ".dm3",
    ".dm4",
    ".mrc",
    ".ser",
    ".emd",
)

MASK_SUFFIX = "_mask"

# ITU-R BT.601 luma weights, the ones Pillow uses for RGB -> L, applied to every format alike.
_LUMA = np.array([0.299, 0.587, 0.114])

_CONVERT_FIX = "convert it to 8- or 16-bit PNG/TIFF or to a 2-D float .npy"

# What Pillow, tifffile and numpy raise on a corrupt or truncated file (SyntaxError: Pillow's
# damaged PNG chunks).
_READ_ERRORS = (OSError, ValueError, SyntaxError, tifffile.TiffFileError)

# A single row or column of pixels is no image: every method would see a constant or a line.
MIN_SIDE = 2

# Pillow refuses files over twice its MAX_IMAGE_PIXELS as possible decompression bombs; semnb
# keeps that limit (read when a file is opened) unless this environment variable sets another.
MAX_PIXELS_ENV = "SEMNB_MAX_IMAGE_PIXELS"


class SuspectDataWarning(UserWarning):
    """Data semnb reads but that is probably not what its owner meant; the message names the file.

    Why a class of its own: callers that report warnings (`load_scans`, the results JSON) pick
    these out by category.
    """


@contextmanager
def suspect_data_to(notes: list[str]) -> Iterator[list[str]]:
    """Within the block, each `SuspectDataWarning` is appended to `notes` (once per message), not printed.

    Why: a command that reports warnings (the results JSON's `warnings`, `ScanSet.warnings`)
    gives the user each suspect file once, among its other warnings; other warnings pass on.

    Taught in: 08_stm.
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SuspectDataWarning)
            yield notes
    finally:
        _pass_on(caught, notes)


def _pass_on(caught: list[warnings.WarningMessage], notes: list[str]) -> None:
    for warning in caught:
        if not issubclass(warning.category, SuspectDataWarning):
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
        elif str(warning.message) not in notes:
            notes.append(str(warning.message))


def is_mask_file(path: str | Path) -> bool:
    """True for `X_mask.ext`: a pixel mask that belongs to image `X`, not an image itself."""
    return Path(path).stem.endswith(MASK_SUFFIX)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as float32 grayscale HxW in [0, 1].

    Why one function: every method sees the same numbers whatever the file format.
    8-bit data is divided by 255 and 16-bit by 65535 (so contrast between files is kept);
    float and signed data (STM topographs in .npy) are stretched by min/max. RGB is mixed to
    luminance and alpha is ignored. A multi-page TIFF gives its first page.

    Taught in: 01_sem_data.
    """
    path = Path(path)
    array = _read_array(path, _read_pil, "the image", "the file")
    image = _to_gray_unit(_to_unit_range(array, path), path)
    _check_size(path, *image.shape)
    return image


def read_mask(
    path: str | Path,
    shape: tuple[int, int] | None = None,
    image_path: str | Path | None = None,
    defect_class: str | None = None,
) -> np.ndarray:
    """Read a pixel mask as bool HxW (True = defect).

    Why the threshold rule: 8-bit masks drawn as 0/255 may carry compression noise, so they are
    cut at > 127; 8-bit label maps stored as 0/1/2... (max <= 127) and every other type
    (16-bit instance maps, .npy, bool) count any value > 0 as defect. When `shape` is given a
    mask of another size is an error that names the mask and its image (`image_path`). When
    the image is of a defect class (`defect_class`), a mask that marks no pixel is a
    `SuspectDataWarning`: the image then counts as defect-free in every pixel score.

    Taught in: 01_sem_data.
    """
    path = Path(path)
    array = _read_array(path, _read_pil_mask, "the mask", "the mask file")
    if array.ndim == 3:
        array = array[..., :3].max(axis=-1)
    if array.ndim != 2:
        raise SemnbInputError(
            path,
            f"mask has shape {array.shape}, expected a 2-D array",
            "save one 2-D mask per image",
        )
    is_8bit = array.dtype.kind == "u" and array.dtype.itemsize == 1
    threshold = 127 if is_8bit and array.max() > 127 else 0
    mask = array > threshold
    if shape is not None:
        check_mask_shape(path, mask.shape, image_path, tuple(shape))
    if defect_class is not None and not mask.any():
        image_name = f"{image_path}, " if image_path is not None else ""
        warnings.warn(SuspectDataWarning(
            f"{path}: the mask of {image_name}an image of defect class {defect_class!r}, marks no "
            "defect pixel (all zero); the image counts as defect-free in the pixel scores. "
            "Fix: draw the defect in the mask (or move the image to the normal class)"),
            stacklevel=2)
    return mask


def check_mask_shape(
    mask_path: Path,
    mask_shape: tuple[int, int],
    image_path: Path | None,
    image_shape: tuple[int, int],
) -> None:
    """Raise the one error for a mask whose size differs from its image, naming both files."""
    if tuple(mask_shape) == tuple(image_shape):
        return
    image_name = f"its image {image_path}" if image_path is not None else "its image"
    mask_size = f"{mask_shape[0]}x{mask_shape[1]}"
    image_size = f"{image_shape[0]}x{image_shape[1]}"
    raise SemnbInputError(
        mask_path,
        f"mask is {mask_size} (HxW) but {image_name} is {image_size}",
        "save the mask at the image's size (resize it with nearest-neighbour), "
        "or pair it with the right image",
    )


def image_shape(path: str | Path, verify: bool = True) -> tuple[int, int]:
    """Height and width of an image or mask file from its header, without decoding the pixels.

    Why: loaders check thousands of files at load time cheaply, so a bad file fails there and
    not deep inside a method. `verify=True` also runs Pillow's integrity check (PNG checksums).

    Taught in: 01_sem_data.
    """
    path = Path(path)
    suffix = _check_supported(path)
    try:
        if suffix in TIFF_EXTENSIONS:
            with tifffile.TiffFile(path) as tiff:
                page = tiff.pages[0]
                shape = int(page.imagelength), int(page.imagewidth)
            _check_size(path, *shape)
            return shape
        if suffix in NUMPY_EXTENSIONS:
            shape = _gray_shape(_npy_header_shape(path), path)
            _check_size(path, *shape)
            return shape
        with _open_pil(path) as image:
            width, height = image.size
            if verify:
                image.verify()
        _check_size(path, height, width)
        return int(height), int(width)
    except SemnbInputError:
        raise
    except _READ_ERRORS as error:
        raise SemnbInputError(
            path, f"cannot read the file header ({error})", f"replace the file or {_CONVERT_FIX}"
        ) from error


def _check_supported(path: Path) -> str:
    if not path.is_file():
        raise SemnbInputError(
            path,
            "file not found",
            "check the path (relative paths in a CSV are taken from the CSV's folder)",
        )
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise SemnbInputError(
            path,
            f"unsupported file type {suffix or '(none)'}",
            f"use one of {', '.join(IMAGE_EXTENSIONS)}, or {_CONVERT_FIX}",
        )
    return suffix


def _read_array(
    path: Path, read_pil: Callable[[Path], np.ndarray], what: str, replace: str
) -> np.ndarray:
    """Decode a TIFF, .npy or Pillow file as stored; a file that will not decode is one error.

    Images and masks differ only in how Pillow files are read (`read_pil`) and in the words
    of the error (`what` could not be read; `replace` names what to replace).
    """
    suffix = _check_supported(path)
    try:
        if suffix in TIFF_EXTENSIONS:
            return _read_tiff(path)
        if suffix in NUMPY_EXTENSIONS:
            return np.load(path, allow_pickle=False)
        return read_pil(path)
    except SemnbInputError:
        raise
    except _READ_ERRORS as error:
        raise SemnbInputError(
            path, f"cannot read {what} ({error})", f"replace {replace} or {_CONVERT_FIX}"
        ) from error


def max_image_pixels() -> int:
    """The most pixels semnb decodes from a PNG, JPEG or BMP file: `SEMNB_MAX_IMAGE_PIXELS`, or Pillow's limit.

    Why a limit: a small compressed file can claim billions of pixels and fill the memory
    (a decompression bomb); a user who trusts a large image raises it in the environment.

    Taught in: 01_sem_data.
    """
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 2**63 - 1
    if not value.isdigit() or int(value) < 1:
        raise SemnbInputError(
            MAX_PIXELS_ENV,
            f"{value!r} is not a whole number of pixels",
            "set it to a positive whole number such as 400000000, or unset it for the default",
        )
    return int(value)


@contextmanager
def _open_pil(path: Path) -> Iterator[Image.Image]:
    """`Image.open` under semnb's pixel limit: a file over it is one SemnbInputError with the fix."""
    limit = max_image_pixels()
    pillow_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # Pillow's own check warns or raises a bare error; semnb's is below
    try:
        image = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    with image:
        width, height = image.size
        if width * height > limit:
            raise SemnbInputError(
                path,
                f"is {width}x{height} = {width * height:,} pixels, over the limit of {limit:,} "
                "pixels that guards against decompression bombs",
                f"if you trust the file, raise the limit: set the environment variable "
                f"{MAX_PIXELS_ENV}={width * height} (or more); or save the image smaller or in tiles",
            )
        yield image


def _check_size(path: Path, height: int, width: int) -> None:
    if min(height, width) < MIN_SIDE:
        raise SemnbInputError(
            path,
            f"is {height}x{width} (HxW) pixels: a single row or column of pixels is no image",
            f"use images of at least {MIN_SIDE}x{MIN_SIDE} pixels, or remove the file",
        )


def _read_pil(path: Path) -> np.ndarray:
    with _open_pil(path) as image:
        image.load()
        if image.mode in ("1", "L", "I", "F") or image.mode.startswith("I;16"):
            return np.asarray(image)
        if image.mode in ("LA", "La"):
            return np.asarray(image.getchannel("L"))
        return np.asarray(image.convert("RGB"))  # palette, RGBA, CMYK, ...: alpha is dropped here


def _read_pil_mask(path: Path) -> np.ndarray:
    with _open_pil(path) as image:
        # A palette mask holds class indices; other colour masks are mixed to gray.
        keep = image.mode in ("1", "L", "P", "I", "F") or image.mode.startswith("I;16")
        return np.asarray(image if keep else image.convert("L"))


def _read_tiff(path: Path) -> np.ndarray:
    """First page of a TIFF with any sample axis (RGB planes) moved last."""
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        array = page.asarray()
        axes = page.axes
    if "S" in axes and array.ndim == len(axes):
        array = np.moveaxis(array, axes.index("S"), -1)
    return np.squeeze(array)


def _to_unit_range(array: np.ndarray, path: Path) -> np.ndarray:
    """Scale to [0, 1]: fixed ranges for unsigned 8/16-bit and bool, min/max otherwise."""
    kind, size = array.dtype.kind, array.dtype.itemsize  # kind/size also match big-endian data
    if kind == "b":
        return array.astype(np.float64)
    if kind == "u" and size == 1:
        return array / 255.0
    if kind == "u" and size == 2:
        return array / 65535.0
    if kind == "i" and size == 4 and array.size and array.min() >= 0 and array.max() <= 65535:
        return array / 65535.0  # Pillow opens some 16-bit images as 32-bit "I"
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise SemnbInputError(path, f"holds {array.dtype} data, not numbers", _CONVERT_FIX)
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        raise SemnbInputError(
            path, "has no finite pixel values", "replace the file; every pixel is NaN or infinite"
        )
    if not finite.all():
        warnings.warn(SuspectDataWarning(
            f"{path}: {values.size - finite.sum()} of {values.size} pixel values are NaN or "
            "infinite; they are read as the lowest value (0). Fix: fill or crop them away "
            "if they are not meant as the lowest value"),
            stacklevel=3)
    low, high = values[finite].min(), values[finite].max()
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.where(finite, scaled, 0.0)


def _to_gray_unit(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3] @ _LUMA
    elif array.ndim == 3 and array.shape[-1] == 2:
        array = array[..., 0]  # gray + alpha
    if array.ndim != 2:
        raise SemnbInputError(
            path,
            f"image has shape {array.shape}, expected a 2-D gray or an RGB image",
            "save one 2-D image per file",
        )
    return np.clip(array, 0.0, 1.0).astype(np.float32)


def _npy_header_shape(path: Path) -> tuple[int, ...]:
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _fortran_order, dtype = read_header(handle)
    if dtype.hasobject:
        raise SemnbInputError(
            path,
            "holds Python objects, which semnb does not unpickle",
            "save a plain numeric array with numpy.save",
        )
    return shape


def _gray_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int]:
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] in (2, 3, 4)):
        return int(shape[0]), int(shape[1])
    raise SemnbInputError(
        path, f"array has shape {shape}, expected HxW or HxWx3", "save one 2-D image per file"
    )

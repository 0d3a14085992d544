"""Preprocessing of SEM images: crop the instrument border and info banner, resize, normalise.

Review SEM images carry a strip of tool text (magnification, voltage, scale bar) at the bottom;
a model that sees it finds "defects" in the text, so it is cut off before anything else.

Taught in: 01_sem_data.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from semnb.errors import SemnbInputError

RESIZE_METHODS = {
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}
NORMALIZE_METHODS = ("percentile", "zscore", "minmax")

# Banner detection thresholds, on intensities in [0, 1].
_FLAT_TOLERANCE = 0.08  # a banner background pixel is within this of the banner level (JPEG-safe)
_TEXT_CONTRAST = 0.25  # a text pixel differs from the banner level by more than this
_MIN_FLAT = 0.3  # a banner row is at least this much background ...
_MIN_TWO_LEVEL = 0.85  # ... and at least this much background-or-text (few mid-tones)
_MAX_GAP = 3  # rows of bold glyphs or frame lines the banner run may step over
_LEVEL_ROWS = 8  # the banner background level is the median of this many bottom rows
_MAX_TEXT = 0.3  # text is sparse: at most this fraction of the banner's pixels
_BODY_ROWS = 8  # rows above the banner compared with it
_MAX_BODY_FLAT = 0.25  # the body above may hold at most this fraction of banner-level pixels


def detect_banner(img: np.ndarray, max_fraction: float = 0.4, min_rows: int = 4) -> int:
    """Number of rows of an info banner at the bottom of `img`, or 0 when there is none.

    Why row statistics: a banner is a flat strip (dark or light) with sparse high-contrast
    text, so each of its rows holds two levels only, background and text, while rows of the
    specimen hold mid-tones (texture, edges, noise). The banner is the run of such two-level
    rows up from the bottom edge. It counts only if it holds some sparse text (bright
    particles on a black background are not text), is `min_rows` to `max_fraction` of the
    height tall, and differs sharply from the body above it: few body pixels sit at the
    banner's background level, which keeps a particle on a flat TEM background from passing
    for a banner. The price: a dark banner under a body whose dark regions share its grey
    level is missed; give `crop_border(banner=rows)` then. A plain strip without text is not
    a banner (crop it with `border`).

    Taught in: 01_sem_data.
    """
    img = _as_2d_float(img, "img")
    height = img.shape[0]
    level = float(np.median(img[-_LEVEL_ROWS:]))
    distance = np.abs(img - level)
    flat = (distance <= _FLAT_TOLERANCE).mean(axis=1)
    text = (distance > _TEXT_CONTRAST).mean(axis=1)
    top = _bottom_run_top((flat >= _MIN_FLAT) & (flat + text >= _MIN_TWO_LEVEL))
    if top is None:
        return 0
    rows = height - top
    has_sparse_text = text[top:].max() >= 0.01 and text[top:].mean() <= _MAX_TEXT
    body_flat = flat[max(0, top - _BODY_ROWS) : top].mean()
    if (
        rows < min_rows
        or rows > max_fraction * height
        or not has_sparse_text
        or body_flat > _MAX_BODY_FLAT
    ):
        return 0
    return _through_separator(img, top, rows, level)


def _bottom_run_top(banner_like: np.ndarray) -> int | None:
    """First row of the run of banner-like rows at the bottom, stepping over gaps of up to
    `_MAX_GAP` rows (also below the run: a frame line at the very bottom).

    None when no run starts near the bottom or the run reaches the top of the image.
    """
    top, gap = None, 0
    for row in range(len(banner_like) - 1, -1, -1):
        if banner_like[row]:
            top, gap = row, 0
        elif gap < _MAX_GAP:
            gap += 1
        else:
            return top
    return None


def _through_separator(img: np.ndarray, top: int, rows: int, level: float) -> int:
    """Extend a banner over up to `_MAX_GAP` uniform rows just above it whose level differs
    from both the banner and the body above: a separator line, not a flat body."""
    body_level = np.median(img[max(0, top - _MAX_GAP - _BODY_ROWS) : max(1, top - _MAX_GAP)])
    for row in range(top - 1, max(top - 1 - _MAX_GAP, -1), -1):
        line = img[row]
        line_level = np.median(line)
        is_uniform = np.mean(np.abs(line - line_level) <= _FLAT_TOLERANCE) >= 0.95
        stands_out = min(abs(line_level - level), abs(line_level - body_level)) > _TEXT_CONTRAST
        if not (is_uniform and stands_out):
            break
        rows += 1
    return rows


def crop_border(
    img: np.ndarray, border: int | tuple[int, int, int, int] = 0, banner: int | str = "auto"
) -> np.ndarray:
    """Cut the info banner off the bottom, then `border` pixels off every side.

    `banner` is "auto" (found by `detect_banner`), a row count, or 0; `border` is one width for
    all sides or (top, bottom, left, right) for an instrument frame.

    Taught in: 01_sem_data.
    """
    img = _as_2d_float(img, "img")
    if banner == "auto":
        banner_rows = detect_banner(img)
    elif isinstance(banner, (int, np.integer)) and banner >= 0:
        banner_rows = int(banner)
    else:
        raise SemnbInputError("banner", f"got {banner!r}", 'use "auto", 0, or a number of rows')
    top, bottom, left, right = (border,) * 4 if np.isscalar(border) else border
    if min(top, bottom, left, right) < 0:
        raise SemnbInputError("border", f"got {border!r}", "use widths of 0 or more pixels")
    height, width = img.shape
    bottom_edge = height - banner_rows - bottom
    if bottom_edge - top < 1 or width - right - left < 1:
        raise SemnbInputError(
            "border",
            f"cropping {border!r} and a {banner_rows}-row banner leaves nothing of a {height}x{width} image",
            "use a smaller border or banner",
        )
    return img[top:bottom_edge, left : width - right]


def resize(img: np.ndarray, size: int | tuple[int, int], method: str = "bicubic") -> np.ndarray:
    """Resize to `size` x `size` (or (height, width)) with Pillow's anti-aliased resampling.

    "bicubic" for images, "area" (box average: each output pixel is the mean of the input
    pixels it covers) for strong downscaling, "nearest" for masks and label maps: a bool
    input comes back bool, a float input float32 clipped to the input's range (bicubic
    overshoots at edges).

    Taught in: 01_sem_data.
    """
    if method not in RESIZE_METHODS:
        raise SemnbInputError(
            "method", f"unknown resize method {method!r}", f"use one of {', '.join(RESIZE_METHODS)}"
        )
    height, width = (size, size) if np.isscalar(size) else size
    if int(height) < 1 or int(width) < 1:
        raise SemnbInputError("size", f"got {size!r}", "use a positive size in pixels")
    img = np.asarray(img)
    if img.ndim != 2:
        raise SemnbInputError("img", f"has shape {img.shape}", "pass one 2-D gray image or mask")
    if img.shape == (height, width):
        return img.copy()
    is_mask = img.dtype == np.bool_
    values = img.astype(np.float32)
    resized = np.asarray(
        Image.fromarray(values).resize((int(width), int(height)), RESIZE_METHODS[method])
    )
    if is_mask:
        return resized > 0.5
    return np.clip(resized, values.min(), values.max()).astype(np.float32)


def normalize_intensity(
    img: np.ndarray, method: str = "percentile", low: float = 1, high: float = 99
) -> np.ndarray:
    """Put intensities on a common scale so brightness and contrast drift between tools cancel.

    "percentile": map the `low`..`high` percentiles to 0..1 and clip (robust to hot pixels and
    text); "minmax": map min..max to 0..1; "zscore": zero mean, unit standard deviation
    (unbounded). A constant image comes back as zeros.

    Taught in: 01_sem_data.
    """
    img = _as_2d_float(img, "img")
    if method == "percentile":
        if not 0 <= low < high <= 100:
            raise SemnbInputError(
                "low/high", f"got low={low}, high={high}", "use 0 <= low < high <= 100"
            )
        bottom, top = np.percentile(img, [low, high])
        return _scale_clipped(img, bottom, top)
    if method == "minmax":
        return _scale_clipped(img, img.min(), img.max())
    if method == "zscore":
        std = img.std()
        return ((img - img.mean()) / std).astype(np.float32) if std > 0 else np.zeros_like(img)
    raise SemnbInputError(
        "normalize", f"unknown method {method!r}", f"use one of {', '.join(NORMALIZE_METHODS)}"
    )


def preprocess(
    img: np.ndarray,
    size: int | tuple[int, int] | None = None,
    border: int | tuple[int, int, int, int] = 0,
    banner: int | str = "auto",
    normalize: str | None = "percentile",
) -> np.ndarray:
    """The standard chain: crop banner and border, resize, then normalise (None skips it).

    Normalising after the crop keeps bright banner text out of the percentiles.

    Taught in: 01_sem_data.
    """
    out = crop_border(img, border=border, banner=banner)
    if size is not None:
        out = resize(out, size)
    if normalize is not None:
        out = normalize_intensity(out, normalize)
    return out


def _scale_clipped(img: np.ndarray, bottom: float, top: float) -> np.ndarray:
    if top <= bottom:
        return np.zeros_like(img)
    return np.clip((img - bottom) / (top - bottom), 0.0, 1.0).astype(np.float32)


def _as_2d_float(img: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 2 or img.size == 0:
        raise SemnbInputError(
            what,
            f"has shape {img.shape}",
            "pass one non-empty 2-D gray image (semnb.data.read_image gives one)",
        )
    return img

"""Preprocessing: banner detection and cropping, resizing, intensity normalisation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from semnb.data import crop_border, detect_banner, normalize_intensity, preprocess, resize
from semnb.errors import SemnbInputError

H, W, BANNER = 128, 192, 16


def specimen(kind: str, seed: int = 0) -> np.ndarray:
    """A small SEM-like body: textured noise, line/space arrays, or dark particles on flat film."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    if kind == "texture":
        body = 0.5 + 0.1 * rng.standard_normal((H, W))
    elif kind == "vertical_lines":
        body = 0.3 + 0.4 * ((x // 8) % 2)
    elif kind == "horizontal_lines":
        body = 0.3 + 0.4 * ((y // 8) % 2)
    else:  # "particles": the flat background of a TEM image, which must not pass for a banner
        body = np.full((H, W), 0.85)
        for cy, cx in rng.integers(10, [H - 10, W - 10], size=(12, 2)):
            body[(y - cy) ** 2 + (x - cx) ** 2 < 64] = 0.15
    return np.clip(body + 0.02 * rng.standard_normal((H, W)), 0, 1).astype(np.float32)


def with_banner(
    img: np.ndarray,
    rows: int = BANNER,
    dark: bool = True,
    separator: bool = False,
    frame: bool = False,
) -> np.ndarray:
    """Draw an SEM info banner: a flat strip with tool text and a scale bar, optionally with a
    separator line above it or a frame line along its bottom edge."""
    pixels = (img * 255).astype(np.uint8)
    pixels[-rows:] = 10 if dark else 235
    canvas = Image.fromarray(pixels)
    draw = ImageDraw.Draw(canvas)
    ink = 245 if dark else 15
    draw.text((4, H - rows + 3), "HV 5.0kV WD 4.1mm x50k", fill=ink)
    draw.line([(W - 40, H - 5), (W - 8, H - 5)], fill=ink, width=2)
    if separator:
        draw.line([(0, H - rows - 1), (W, H - rows - 1)], fill=255)
    if frame:
        draw.line([(0, H - 1), (W, H - 1)], fill=128)
    return np.asarray(canvas, dtype=np.float32) / 255


def jpeg(img: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray((img * 255).astype(np.uint8)).save(buffer, "JPEG", quality=75)
    return np.asarray(Image.open(buffer), dtype=np.float32) / 255


@pytest.mark.parametrize("kind", ["texture", "vertical_lines", "horizontal_lines", "particles"])
def test_no_banner_is_found_in_plain_specimens(kind):
    assert detect_banner(specimen(kind)) == 0


# Not (particles, light): a light banner on a light flat background has no edge to find.
@pytest.mark.parametrize(
    "kind, dark",
    [
        (kind, dark)
        for kind in ("texture", "vertical_lines", "horizontal_lines")
        for dark in (True, False)
    ]
    + [("particles", True)],
)
def test_drawn_banner_is_found_to_the_row(kind, dark):
    assert detect_banner(with_banner(specimen(kind), dark=dark)) == BANNER


def test_banner_survives_jpeg_and_includes_its_separator_and_frame_lines():
    assert detect_banner(jpeg(with_banner(specimen("texture")))) == BANNER
    assert detect_banner(with_banner(specimen("texture"), separator=True)) == BANNER + 1
    assert detect_banner(with_banner(specimen("texture"), frame=True)) == BANNER


def test_scale_bar_on_flat_film_is_not_a_banner():
    """Dark scale-bar text on the film itself: the film continues above, so no sharp edge."""
    rng = np.random.default_rng(2)
    img = np.full((H, W), 0.85, dtype=np.float32) + 0.01 * rng.standard_normal((H, W)).astype(
        np.float32
    )
    img[: H - BANNER, W // 2 :] = np.linspace(
        0.45, 0.75, W - W // 2
    )  # a smooth particle beside the film
    canvas = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    ImageDraw.Draw(canvas).text((W - 50, H - 13), "200 nm", fill=20)
    assert detect_banner(np.asarray(canvas, dtype=np.float32) / 255) == 0


def test_dense_bright_objects_at_the_bottom_are_not_text():
    img = specimen("texture")
    img[-20:] = 0.05
    img[-20:, (np.arange(W) % 10) < 4] = (
        0.8  # 40% bright: objects on a black background, not sparse text
    )
    assert detect_banner(img) == 0


def test_plain_strip_without_text_is_not_a_banner():
    img = specimen("texture")
    img[-BANNER:] = 0.02
    assert detect_banner(img) == 0


def test_crop_border_removes_banner_then_border():
    img = with_banner(specimen("texture"))
    cropped = crop_border(img, banner="auto")
    assert cropped.shape == (H - BANNER, W)
    np.testing.assert_array_equal(cropped, img[: H - BANNER])
    framed = crop_border(img, border=3, banner=BANNER)
    np.testing.assert_array_equal(framed, img[3 : H - BANNER - 3, 3 : W - 3])
    sides = crop_border(img, border=(1, 2, 3, 4), banner=0)
    assert sides.shape == (H - 3, W - 7)
    with pytest.raises(SemnbInputError, match="border"):
        crop_border(img, border=100)
    with pytest.raises(SemnbInputError, match="banner"):
        crop_border(img, banner="top")


def test_resize_methods():
    img = np.arange(16, dtype=np.float32).reshape(4, 4) / 15
    area = resize(img, 2, method="area")
    np.testing.assert_allclose(
        area, img.reshape(2, 2, 2, 2).mean(axis=(1, 3)), atol=1e-6
    )  # box means
    bicubic = resize(specimen("vertical_lines"), (50, 70))
    assert bicubic.shape == (50, 70) and bicubic.dtype == np.float32
    assert (
        bicubic.min() >= specimen("vertical_lines").min()
        and bicubic.max() <= specimen("vertical_lines").max()
    )
    mask = np.zeros((4, 6), dtype=bool)
    mask[1, 2] = True
    bigger = resize(mask, (8, 12), method="nearest")
    assert bigger.dtype == np.bool_ and bigger.sum() == 4 and bigger[2:4, 4:6].all()
    with pytest.raises(SemnbInputError, match="lanczos"):
        resize(img, 2, method="lanczos")


def test_normalize_intensity_methods():
    rng = np.random.default_rng(1)
    img = rng.uniform(0.3, 0.5, (40, 40)).astype(np.float32)
    img[0, 0] = 1.0  # a hot pixel that percentile scaling ignores
    low, high = np.percentile(img, [1, 99])
    out = normalize_intensity(img, "percentile")
    assert out.min() == 0 and out.max() == 1
    np.testing.assert_allclose(out[5, 5], (img[5, 5] - low) / (high - low), atol=1e-5)
    assert np.mean(out >= 1) < 0.02 and np.mean(out <= 0) < 0.02
    z = normalize_intensity(img, "zscore")
    assert abs(z.mean()) < 1e-5 and z.std() == pytest.approx(1, abs=1e-4)
    minmax = normalize_intensity(img, "minmax")
    assert minmax.min() == 0 and minmax.max() == 1 and minmax[0, 0] == 1
    assert not normalize_intensity(np.full((5, 5), 0.7), "percentile").any()
    with pytest.raises(SemnbInputError, match="normalize"):
        normalize_intensity(img, "histogram")


def test_preprocess_chain_crops_resizes_and_normalises():
    img = with_banner(specimen("texture"))
    out = preprocess(img, size=64)
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert out.min() == 0 and out.max() == 1
    kept = preprocess(img, banner=0, normalize=None)
    np.testing.assert_array_equal(kept, img)

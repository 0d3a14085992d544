"""Reading one image or mask (`semnb.data.image_io`): huge, degenerate and suspect files."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from semnb.cli import main
from semnb.data.image_io import (
    MAX_PIXELS_ENV,
    SuspectDataWarning,
    image_shape,
    read_image,
    read_mask,
    suspect_data_to,
)
from semnb.errors import SemnbInputError


@pytest.fixture
def small_pillow_limit(monkeypatch):
    """Pillow's decompression-bomb limit at 100 pixels (it refuses twice that), so a 20x20 PNG is a 'bomb'."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)


def test_an_image_over_the_pixel_limit_is_one_error_with_the_limit_and_the_fix(tmp_path, write_png,
                                                                              small_pillow_limit):
    path = write_png(tmp_path / "huge.png", np.full((20, 20), 0.5))
    for read in (read_image, image_shape, read_mask):
        with pytest.raises(SemnbInputError) as error:
            read(path)
        message = str(error.value)
        assert str(path) in message and "20x20 = 400 pixels" in message and "limit of 200 pixels" in message
        assert f"{MAX_PIXELS_ENV}=400" in message
    assert Image.MAX_IMAGE_PIXELS == 100  # Pillow's own setting is left as it was


def test_the_environment_variable_raises_the_limit(tmp_path, write_png, small_pillow_limit, monkeypatch):
    path = write_png(tmp_path / "huge.png", np.full((20, 20), 0.5))
    monkeypatch.setenv(MAX_PIXELS_ENV, "400")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and Pillow's DecompressionBombWarning is not shown either
        assert read_image(path).shape == (20, 20) and image_shape(path) == (20, 20)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(SemnbInputError, match=f"{MAX_PIXELS_ENV}: 'lots' is not a whole number"):
        read_image(path)


def test_eval_on_a_folder_with_a_huge_image_is_one_line_and_exit_2(tmp_path, write_png):
    for name in ("a", "b"):
        write_png(tmp_path / "data" / "good" / f"{name}.png", np.full((20, 20), 0.5))
        write_png(tmp_path / "data" / "crack" / f"{name}.png", np.full((20, 20), 0.2))
    json_path = tmp_path / "out.json"
    result = CliRunner().invoke(main, ["eval", "classify", "--data", str(tmp_path / "data"),
                                       "--json", str(json_path)], env={MAX_PIXELS_ENV: "399"})
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("semnb: error: ") and "a.png" in lines[0]
    assert f"{MAX_PIXELS_ENV}=400" in lines[0]
    assert not json_path.exists()


@pytest.mark.parametrize("shape", [(1, 1), (1, 30), (30, 1)])
def test_a_single_pixel_row_or_column_is_refused(tmp_path, write_png, shape):
    png = write_png(tmp_path / "tiny.png", np.full(shape, 0.5))
    np.save(tmp_path / "tiny.npy", np.full(shape, 0.5, np.float32))
    for path in (png, tmp_path / "tiny.npy"):
        for read in (read_image, image_shape):
            with pytest.raises(SemnbInputError, match=f"tiny.*is {shape[0]}x{shape[1]} .*no image"):
                read(path)
    np.save(tmp_path / "small.npy", np.zeros((2, 2), np.float32))
    assert read_image(tmp_path / "small.npy").shape == (2, 2)


def test_nan_pixels_are_read_with_one_warning_naming_the_file(tmp_path):
    scan = np.arange(16, dtype=np.float32).reshape(4, 4)
    scan[1, 1:4] = np.nan
    np.save(tmp_path / "holes.npy", scan)
    with pytest.warns(SuspectDataWarning, match=r"holes\.npy: 3 of 16 pixel values are NaN") as caught:
        image = read_image(tmp_path / "holes.npy")
    assert len(caught) == 1 and (image[1, 1:4] == 0).all() and image.max() == 1
    np.save(tmp_path / "clean.npy", np.nan_to_num(scan))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(tmp_path / "clean.npy")


def test_an_empty_mask_of_a_defect_image_is_a_warning_naming_both_files(tmp_path, write_png):
    empty = write_png(tmp_path / "000_mask.png", np.zeros((8, 8)))
    with pytest.warns(SuspectDataWarning) as caught:
        mask = read_mask(empty, shape=(8, 8), image_path=tmp_path / "000.png", defect_class="scratch")
    message = str(caught[0].message)
    assert not mask.any() and "000_mask.png" in message and "000.png" in message and "'scratch'" in message
    drawn = np.zeros((8, 8))
    drawn[2:4, 2:4] = 1
    write_png(tmp_path / "001_mask.png", drawn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_mask(empty)  # an empty mask of a defect-free image is what it should be
        assert read_mask(tmp_path / "001_mask.png", defect_class="scratch").sum() == 4


def test_suspect_data_warnings_are_collected_once_and_others_pass_on(tmp_path):
    scan = np.ones((4, 4), np.float32)
    scan[0, 0] = np.nan
    np.save(tmp_path / "holes.npy", scan)
    notes = ["an earlier warning"]
    with pytest.warns(RuntimeWarning, match="not semnb's"):
        with suspect_data_to(notes):
            read_image(tmp_path / "holes.npy")
            read_image(tmp_path / "holes.npy")
            warnings.warn("not semnb's", RuntimeWarning, stacklevel=1)
    assert len(notes) == 2 and notes[1].startswith(f"{tmp_path / 'holes.npy'}: 1 of 16 pixel values")

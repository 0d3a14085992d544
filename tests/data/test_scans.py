"""Reading a folder of labelled STM scans (`semnb.data.load_scans`)."""
import warnings

import numpy as np
import pytest

from semnb.data import load_scans
from semnb.errors import SemnbInputError
from tests.stm.pits import lattice_with_pits


def test_scan_and_mask_of_different_sizes_name_both_files(tmp_path):
    np.save(tmp_path / "scan_a.npy", np.zeros((32, 32), np.float32))
    np.save(tmp_path / "scan_a_mask.npy", np.zeros((16, 32), np.uint8))
    with pytest.raises(SemnbInputError) as error:
        load_scans(tmp_path)
    assert "scan_a_mask.npy" in str(error.value) and "scan_a.npy" in str(error.value)


def test_folder_without_masks_is_an_error_and_unmasked_scans_are_reported(tmp_path):
    np.save(tmp_path / "lonely.npy", np.zeros((32, 32), np.float32))
    with pytest.raises(SemnbInputError, match="X_mask.npy"):
        load_scans(tmp_path)
    scan, mask = lattice_with_pits(64)
    np.save(tmp_path / "pits.npy", scan)
    np.save(tmp_path / "pits_mask.npy", mask.astype(np.uint8))
    scans = load_scans(tmp_path)
    warnings = scans.warnings
    assert [s.name for s in scans] == ["pits"] and "lonely.npy" in warnings[0]


def test_surfaces_and_defect_classes_come_from_the_tables(tmp_path):
    scan, mask = lattice_with_pits(64)
    for name in ("b", "a"):
        np.save(tmp_path / f"{name}.npy", scan)
        np.save(tmp_path / f"{name}_mask.npy", mask.astype(np.uint8))
    (tmp_path / "manifest.csv").write_text("scan,surface\na,si001\nb,tio2_110\n")
    (tmp_path / "defects.csv").write_text("scan,defect_id,x,y,class\na,1,10.5,20,adatom\na,2,30,40,vacancy\n")
    scans = load_scans(tmp_path)
    warnings = scans.warnings
    assert [s.name for s in scans] == ["a", "b"] and warnings == []
    assert [s.surface for s in scans] == ["si001", "tio2_110"]
    assert list(scans[0].defects["class"]) == ["adatom", "vacancy"] and len(scans[1].defects) == 0
    assert scans[0].mask.dtype == bool and scans[0].raw.shape == (64, 64)
    (tmp_path / "defects.csv").write_text("scan,defect_id,x,y,class\na,1,99,20,adatom\n")
    with pytest.raises(SemnbInputError, match="outside scan a"):
        load_scans(tmp_path)
    (tmp_path / "defects.csv").write_text("scan,x,y\na,1,2\n")
    with pytest.raises(SemnbInputError, match="class"):
        load_scans(tmp_path)


def test_a_path_that_is_no_folder_is_an_error(tmp_path):
    with pytest.raises(SemnbInputError, match="is not a folder"):
        load_scans(tmp_path / "missing")


def test_nan_pixels_of_a_scan_are_a_warning_of_the_set_naming_the_file(tmp_path):
    scan, mask = lattice_with_pits(64)
    scan = scan.astype(np.float32)
    scan[5, :10] = np.nan  # a dropped part of a scan line
    np.save(tmp_path / "dropout.npy", scan)
    np.save(tmp_path / "dropout_mask.npy", mask.astype(np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # it goes to the set's warnings (and the results JSON), not to stderr
        scans = load_scans(tmp_path)
    assert len(scans.warnings) == 1 and "dropout.npy: 10 of 4096 pixel values are NaN" in scans.warnings[0]
    assert (scans[0].raw[5, :10] == 0).all() and "1 warning(s)" in repr(scans)


def test_a_one_pixel_scan_is_refused(tmp_path):
    np.save(tmp_path / "dot.npy", np.ones((1, 1), np.float32))
    np.save(tmp_path / "dot_mask.npy", np.ones((1, 1), np.uint8))
    with pytest.raises(SemnbInputError, match=r"dot\.npy: is 1x1 \(HxW\) pixels"):
        load_scans(tmp_path)

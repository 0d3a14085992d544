"""Reading a folder of labelled STM scans (`semnb.data.load_scans`)."""
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

"""Synthetic STM scans: determinism, ground truth consistent with the image, the writer."""
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from semnb.cli import main
from semnb.data import synth_stm
from semnb.data.synth_stm import SURFACES, generate_stm_scan, write_stm_dataset
from semnb.data.synth_writers import WRITERS
from semnb.errors import SemnbInputError
from semnb.stm.lattice import dominant_period
from semnb.stm.preprocess import preprocess_scan
from tests.data.trees import file_tree


@pytest.mark.parametrize("surface", list(SURFACES))
def test_same_seed_same_scan_other_seed_other_scan(surface):
    a, b = generate_stm_scan(surface, 96, seed=5), generate_stm_scan(surface, 96, seed=5)
    assert np.array_equal(a.raw, b.raw) and np.array_equal(a.mask, b.mask)
    pd.testing.assert_frame_equal(a.defects, b.defects)
    assert not np.array_equal(a.raw, generate_stm_scan(surface, 96, seed=6).raw)


@pytest.mark.parametrize("surface", list(SURFACES))
def test_every_defect_has_its_pixels_class_and_centre(surface):
    scan = generate_stm_scan(surface, 128, seed=1)
    n = len(scan.defects)
    assert n >= 8
    assert set(scan.defects["cls"]) <= set(SURFACES[surface].classes)
    assert np.array_equal(np.unique(scan.instances), np.arange(n + 1))  # every defect owns pixels
    assert np.array_equal(scan.mask, scan.instances > 0)
    for row in scan.defects.itertuples():
        ys, xs = np.nonzero(scan.instances == row.defect_id + 1)
        # the listed centre lies within a pixel or two of the defect's own pixels' centroid
        assert np.hypot(xs.mean() - row.x, ys.mean() - row.y) < 2.5


def test_clean_scan_has_no_artefacts_and_the_mask_marks_height_changes():
    scan = generate_stm_scan("tio2_110", 128, seed=2, artefacts=False, n_steps=0)
    assert np.array_equal(scan.raw, scan.clean)
    undisturbed = generate_stm_scan("tio2_110", 128, seed=2, artefacts=False, n_steps=0, n_defects=0)
    changed = np.abs(scan.clean - undisturbed.clean) > 0.05
    # defect pixels are where the height changed; little changes outside the mask
    assert changed[scan.mask].mean() > 0.9
    assert changed[~scan.mask].mean() < 0.05


@pytest.mark.parametrize("surface", list(SURFACES))
def test_the_lattice_period_is_the_drawn_one(surface):
    scan = generate_stm_scan(surface, 256, seed=3)
    period = dominant_period(preprocess_scan(scan.raw))
    assert abs(period - scan.row_period) < 0.15 * scan.row_period


def test_artefacts_tilt_and_offset_the_raw_scan():
    scan = generate_stm_scan("si001", 128, seed=4)
    # tilt and line offsets make the raw scan vary far more than the clean surface does
    assert np.std(scan.raw) > 2 * np.std(scan.clean)


def test_writer_files_tables_and_registration(tmp_path):
    assert WRITERS["stm"] == "semnb.data.synth_stm:write_stm_dataset"
    out = write_stm_dataset(tmp_path / "stm", n_per_class=1, size=96, seed=0)
    manifest = pd.read_csv(out / "manifest.csv")
    defects = pd.read_csv(out / "defects.csv")
    assert list(manifest["surface"]) == list(SURFACES)
    assert list(defects.columns) == ["scan", "defect_id", "x", "y", "class"]
    for name in manifest["scan"]:
        scan, mask = np.load(out / f"{name}.npy"), np.load(out / f"{name}_mask.npy")
        assert scan.dtype == np.float32 and mask.shape == scan.shape and set(np.unique(mask)) <= {0, 1}
        assert (defects["scan"] == name).sum() == manifest.set_index("scan").loc[name, "n_defects"]
    assert not list(out.glob("*.tmp"))


def test_cli_writes_the_stm_kind(tmp_path):
    result = CliRunner().invoke(main, ["data", "synth", "--kind", "stm", "--out", str(tmp_path / "d"),
                                       "--n-per-class", "1", "--size", "64"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "manifest.csv").is_file()


def test_bad_surface_and_size_are_named():
    with pytest.raises(SemnbInputError, match="surface"):
        generate_stm_scan("gaas110")
    with pytest.raises(SemnbInputError, match="size"):
        generate_stm_scan("si001", size=16)


def test_writer_refuses_a_folder_that_is_not_an_stm_set(tmp_path):
    user = tmp_path / "scans"
    user.mkdir()
    np.save(user / "my_scan.npy", np.zeros((8, 8), np.float32))
    (user / "manifest.csv").write_text("scan,surface\nmy_scan,si001\n")
    before = file_tree(user)
    with pytest.raises(SemnbInputError, match="not a semnb synthetic set") as error:
        write_stm_dataset(user, n_per_class=1, size=64)
    assert error.value.what == str(user.absolute()) and "--out" in error.value.fix
    assert file_tree(user) == before
    # on the command line: exit status 2 and one line that names the folder
    result = CliRunner().invoke(main, ["data", "synth", "--kind", "stm", "--out", str(user),
                                       "--n-per-class", "1", "--size", "64"])
    assert result.exit_code == 2 and str(user) in result.output
    assert file_tree(user) == before
    assert [p.name for p in tmp_path.iterdir()] == ["scans"]  # no staging folder left


def test_writer_replaces_an_earlier_stm_set_whole(tmp_path):
    # issue 13: re-generating with fewer scans left the old ones, and `eval stm` used them
    target = write_stm_dataset(tmp_path / "stm", n_per_class=2, size=64, seed=3)
    write_stm_dataset(target, n_per_class=1, size=64, seed=3)
    fresh = write_stm_dataset(tmp_path / "fresh", n_per_class=1, size=64, seed=3)
    assert file_tree(target) == file_tree(fresh)
    assert not list(target.glob("*_001*.npy"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "stm"]


def test_a_failing_write_keeps_the_earlier_set_and_leaves_no_staging_folder(tmp_path, monkeypatch):
    # issue 13: an interrupted run left half a set that `eval stm` then used without a warning
    target = write_stm_dataset(tmp_path / "stm", n_per_class=1, size=64, seed=0)
    before = file_tree(target)
    real_npy, calls = synth_stm._npy_bytes, []

    def failing_npy(array):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as Ctrl-C midway
        return real_npy(array)

    monkeypatch.setattr(synth_stm, "_npy_bytes", failing_npy)
    with pytest.raises(KeyboardInterrupt):
        write_stm_dataset(target, n_per_class=2, size=64, seed=1)
    assert file_tree(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["stm"]

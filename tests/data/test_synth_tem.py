"""The synthetic TEM generator: deterministic, records class and magnification, spans two decades, loads as csv."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import ndimage

from semnb.data import load_dataset, synth_tem
from semnb.data.synth_tem import (
    ALL_CLASSES,
    FOV_NM_AT_1X,
    LABELLED_CLASSES,
    MANIFEST,
    UNLABELLED_CLASSES,
    generate_tem_image,
    stratified_magnifications,
    write_tem_dataset,
)
from semnb.data.synth_writers import write_synthetic
from semnb.errors import SemnbInputError
from tests.data.trees import file_tree


def test_same_seed_same_pixels_other_seed_other_pixels():
    a = generate_tem_image("cu_via", 1e5, size=48, seed=3)
    b = generate_tem_image("cu_via", 1e5, size=48, seed=3)
    c = generate_tem_image("cu_via", 1e5, size=48, seed=4)
    assert a.image.dtype == np.uint8 and a.image.shape == (48, 48)
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    assert (a.cls, a.magnification) == ("cu_via", 1e5)


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_every_class_renders_structure_not_a_blank_frame(cls):
    # smoothing removes the pixel noise (pure noise keeps a std of about 3 grey levels) but
    # not the structure: at 30kx the typical image of every class spans many grey levels
    spreads = [ndimage.gaussian_filter(generate_tem_image(cls, 3e4, size=64, seed=s).image.astype(float), 1.5).std()
               for s in range(5)]
    assert np.median(spreads) > 10


def test_field_of_view_follows_magnification():
    # 12 um at 10kx, 120 nm at 1Mx: two decades of scale
    assert FOV_NM_AT_1X / 1e4 == pytest.approx(12_000)
    assert FOV_NM_AT_1X / 1e6 == pytest.approx(120)


def test_low_magnification_shows_many_repeats_high_shows_one_feature():
    # memory stack word-line layers (~62 nm pitch) along a vertical line: at 300kx (400 nm
    # field) a column crosses several layers; at 1Mx (120 nm) about two. Count dark runs.
    def dark_runs(mag):
        counts = []
        for seed in range(4):
            img = generate_tem_image("memory_stack", mag, size=128, seed=seed).image.astype(float)
            column = np.median(img[:, 4:12], axis=1)  # left edge: away from the channel hole
            dark = column < np.percentile(column, 30)
            counts.append(int(np.sum(dark[1:] & ~dark[:-1])))
        return np.mean(counts)

    assert dark_runs(3e5) > dark_runs(1e6)


def test_stratified_magnifications_cover_two_decades():
    mags = stratified_magnifications(8, np.random.default_rng(0))
    logs = np.sort(np.log10(mags))
    assert logs.min() >= 4 and logs.max() <= 6
    assert logs.max() - logs.min() > 1.5  # one draw per eighth of the range
    assert np.all(np.floor((logs - 4) / 0.25) == np.arange(8))


def test_bad_input_names_the_option():
    with pytest.raises(SemnbInputError, match="cls"):
        generate_tem_image("finFET-typo", 1e5)
    with pytest.raises(SemnbInputError, match="magnification"):
        generate_tem_image("sti", -5)
    with pytest.raises(SemnbInputError, match="n-per-class"):
        write_tem_dataset("/tmp/never-written", n_per_class=0)


def test_writer_manifest_loads_as_csv_with_unlabelled_images(tmp_path):
    out = write_synthetic("tem", tmp_path / "tem", n_per_class=3, size=40, seed=2)
    with open(out / MANIFEST) as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "label", "magnification"]
    assert len(rows) == 3 * len(ALL_CLASSES)
    unlabelled = [r for r in rows if r["label"] == ""]
    assert len(unlabelled) == 3 * len(UNLABELLED_CLASSES)
    for row in unlabelled:  # names never give the hidden class away
        assert not any(cls in row["path"] for cls in ALL_CLASSES)
    assert not list(out.rglob("*.tmp"))

    images = load_dataset(out)
    assert images.layout == "csv"
    assert images.class_names == sorted(LABELLED_CLASSES)
    assert int(np.sum(images.labels == -1)) == 3 * len(UNLABELLED_CLASSES)
    mags = images.meta["magnification"].to_numpy(float)
    assert np.all((mags >= 1e4) & (mags <= 1e6))
    for cls in LABELLED_CLASSES:  # each class spans the range
        class_mags = mags[images.labels == images.class_names.index(cls)]
        assert np.log10(class_mags.max() / class_mags.min()) > 0.6


def test_writer_is_deterministic(tmp_path):
    a = write_tem_dataset(tmp_path / "a", n_per_class=2, size=32, seed=5)
    b = write_tem_dataset(tmp_path / "b", n_per_class=2, size=32, seed=5)
    assert (a / MANIFEST).read_text() == (b / MANIFEST).read_text()
    for path in sorted((a / "images").iterdir()):
        assert path.read_bytes() == (b / "images" / path.name).read_bytes()


def test_writer_refuses_a_folder_that_is_not_a_tem_set(tmp_path):
    # issue 13: the TEM kind overwrote a user's own manifest.csv with exit status 0
    user = tmp_path / "archive"
    (user / "images").mkdir(parents=True)
    (user / MANIFEST).write_text("path,label\nimages/mine.png,mine\n")
    before = file_tree(user)
    with pytest.raises(SemnbInputError, match="not a semnb synthetic set") as error:
        write_tem_dataset(user, n_per_class=1, size=32)
    assert error.value.what == str(user.absolute()) and "--out" in error.value.fix
    assert file_tree(user) == before
    stm_set = write_synthetic("stm", tmp_path / "stm", n_per_class=1, size=64, seed=0)
    before = file_tree(stm_set)
    with pytest.raises(SemnbInputError, match="holds a semnb synthetic stm set, not a tem set"):
        write_tem_dataset(stm_set, n_per_class=1, size=32)
    assert file_tree(stm_set) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive", "stm"]  # no staging folder left


def test_writer_replaces_an_earlier_tem_set_whole(tmp_path):
    target = write_tem_dataset(tmp_path / "tem", n_per_class=3, size=32, seed=1)
    write_tem_dataset(target, n_per_class=1, size=32, seed=1)
    fresh = write_tem_dataset(tmp_path / "fresh", n_per_class=1, size=32, seed=1)
    assert file_tree(target) == file_tree(fresh)  # none of the images of the larger set stays
    assert len(list((target / "images").iterdir())) == len(ALL_CLASSES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "tem"]


def test_a_failing_write_keeps_the_earlier_set_and_leaves_no_staging_folder(tmp_path, monkeypatch):
    target = write_tem_dataset(tmp_path / "tem", n_per_class=1, size=32, seed=0)
    before = file_tree(target)
    real_png, calls = synth_tem._png_bytes, []

    def failing_png(image):
        calls.append(1)
        if len(calls) == 4:
            raise OSError("disk full")
        return real_png(image)

    monkeypatch.setattr(synth_tem, "_png_bytes", failing_png)
    with pytest.raises(OSError, match="disk full"):
        write_tem_dataset(target, n_per_class=2, size=32, seed=1)
    assert file_tree(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["tem"]

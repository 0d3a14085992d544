"""Synthetic wafer-SEM generator and its MVTec-layout writer."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from semnb.data import load_dataset, synth_writer
from semnb.data.sem_backgrounds import BACKGROUND_KINDS
from semnb.data.sem_imaging import Microscope, banner_height, detect, shift_rows
from semnb.data.synth_sem import CLASSES, generate_sem_image, generate_sem_set, sample_seed
from semnb.data.synth_writer import MANIFEST_COLUMNS, MARKER_FILE, write_sem_dataset
from semnb.data.synth_writers import WRITERS, write_synthetic
from semnb.errors import SemnbInputError
from tests.data.trees import file_tree

DEFECTS = [cls for cls in CLASSES if cls != "good"]
SIZE = 96


@pytest.fixture(scope="module")
def samples() -> dict[str, list]:
    """Eight images per class at 96 px, each with its defect-free reference."""
    return {
        cls: [generate_sem_image(cls, SIZE, seed, reference=True) for seed in range(8)]
        for cls in CLASSES
    }


def _body(sample) -> np.ndarray:
    """Rows above the banner."""
    return np.arange(SIZE) < SIZE - sample.banner_rows


def test_same_seed_gives_same_bytes_and_another_seed_does_not():
    for cls in CLASSES:
        first, again, other = (generate_sem_image(cls, 64, seed) for seed in (5, 5, 6))
        assert first.image.tobytes() == again.image.tobytes()
        assert first.mask.tobytes() == again.mask.tobytes()
        assert (first.background, first.variant, first.pixel_size_nm) == (
            again.background,
            again.variant,
            again.pixel_size_nm,
        )
        assert first.image.tobytes() != other.image.tobytes()


def test_set_images_do_not_depend_on_which_other_classes_are_made():
    alone = list(generate_sem_set(2, 48, seed=3, classes=("hole",), progress=False))
    together = [s for s in generate_sem_set(2, 48, seed=3, progress=False) if s.cls == "hole"]
    assert [s.image.tobytes() for s in alone] == [s.image.tobytes() for s in together]
    assert [s.seed for s in alone] == [sample_seed(3, "hole", i) for i in range(2)]


def test_train_and_test_splits_draw_different_images():
    train = next(
        iter(generate_sem_set(1, 48, seed=0, classes=("good",), progress=False, split="train"))
    )
    test = next(
        iter(generate_sem_set(1, 48, seed=0, classes=("good",), progress=False, split="test"))
    )
    assert train.seed != test.seed
    assert train.image.tobytes() != test.image.tobytes()


def test_shapes_types_and_metadata(samples):
    for cls, group in samples.items():
        for sample in group:
            assert sample.image.shape == sample.mask.shape == sample.reference.shape == (SIZE, SIZE)
            assert sample.image.dtype == np.uint8 and sample.mask.dtype == bool
            assert sample.cls == cls and sample.background in BACKGROUND_KINDS
            assert sample.banner_rows in (0, banner_height(SIZE)) and sample.has_banner == (
                sample.banner_rows > 0
            )
            assert 600 / SIZE <= sample.pixel_size_nm <= 3000 / SIZE + 0.01
            assert sample.image.std() > 10  # a patterned, noisy picture, not a flat field


def test_defects_have_masks_and_good_images_do_not(samples):
    for sample in samples["good"]:
        assert not sample.mask.any() and sample.variant == "none"
    for cls in DEFECTS:
        for sample in samples[cls]:
            assert sample.mask.any(), (cls, sample.seed)
            assert sample.mask.mean() < 0.5, (cls, sample.seed)  # a defect, not the whole picture


def test_banner_is_tool_text_and_never_under_the_mask():
    seen = 0
    for cls in CLASSES:
        for seed in range(12):
            sample = generate_sem_image(cls, 128, seed)
            if not sample.has_banner:
                continue
            seen += 1
            strip = sample.image[-sample.banner_rows :]
            assert not sample.mask[-sample.banner_rows :].any()
            background = np.bincount(strip.ravel()).argmax()
            assert background < 40 and (strip == background).mean() > 0.6  # a flat dark strip ...
            assert (strip > 200).mean() > 0.01  # ... with white text and a scale bar
    assert seen >= 10  # about 40 % of images carry a banner


def test_image_changes_where_the_mask_says_and_hardly_elsewhere(samples):
    for cls in DEFECTS:
        for sample in samples[cls]:
            change = np.abs(sample.image.astype(float) - sample.reference)
            far = ~ndi.binary_dilation(sample.mask, iterations=8) & _body(sample)[:, None]
            assert change[sample.mask].mean() > 3 * change[far].mean() + 4, (
                cls,
                sample.seed,
                sample.variant,
            )
    for sample in samples["good"]:
        assert np.array_equal(sample.image, sample.reference)


def _contrast(sample) -> float:
    """Mean grey level on the defect minus that of a ring just around it (on the reference-free image)."""
    ring = ndi.binary_dilation(sample.mask, iterations=4) & ~sample.mask & _body(sample)[:, None]
    return float(sample.image[sample.mask].mean() - sample.image[ring].mean())


def test_particles_and_residue_are_bright_pits_dark_buried_particles_subtle(samples):
    particle = [_contrast(s) for s in samples["particle"]]
    residue = [_contrast(s) for s in samples["copper_residue"]]
    pits = [_contrast(s) for s in samples["hole"] if s.variant in ("pit", "void")]
    infilm = [abs(_contrast(s)) for s in samples["infilm"]]
    assert np.median(particle) > 15 and np.mean(np.array(particle) > 0) >= 0.75
    assert np.median(residue) > 15
    assert pits and np.median(pits) < -5
    assert np.median(infilm) < np.median(particle) / 2  # low contrast, soft edge


def test_classes_vary_within_themselves():
    for cls in DEFECTS:
        variants, backgrounds, areas = set(), set(), []
        for seed in range(24):
            sample = generate_sem_image(cls, 64, seed)
            variants.add(sample.variant)
            backgrounds.add(sample.background)
            areas.append(sample.mask.sum())
        assert len(variants) >= 2 and len(backgrounds) >= 2, (cls, variants, backgrounds)
        assert np.std(areas) / np.mean(areas) > 0.3, cls  # sizes differ
    bridges = {generate_sem_image("bridge", 64, seed).variant for seed in range(40)}
    assert {"thin", "thick", "multi", "collapse", "break"} <= bridges
    scratches = {generate_sem_image("scratch", 64, seed).variant for seed in range(24)}
    assert "fish_scale" in scratches


def test_scan_jitter_moves_rows_as_linear_interpolation_does():
    rng = np.random.default_rng(0)
    image = rng.random((30, 40)).astype(np.float32)
    shifts = rng.normal(0.0, 2.0, 30).astype(np.float32)
    columns = np.arange(40)
    expected = np.stack(
        [np.interp(columns - shift, columns, row) for row, shift in zip(image, shifts)]
    )
    np.testing.assert_allclose(shift_rows(image, shifts), expected, atol=1e-5)
    mask = rng.random((30, 40)) > 0.5
    nearest = np.clip(np.round(columns[None, :] - shifts[:, None]).astype(int), 0, 39)
    assert np.array_equal(
        shift_rows(mask, shifts, interpolate=False), np.take_along_axis(mask, nearest, 1)
    )


@pytest.mark.parametrize("dose", [60.0, 600.0])  # 6 and 60 electrons per pixel
def test_shot_noise_variance_equals_the_mean_electron_count(dose):
    scope = Microscope(
        detector_step=(0, 1), directional=0.0, edge_gain=0.0, topography_gain=0.0, shadow=0.0,
        blur=(1.0, 1.0), dose=dose, glow=0.0, streak=0.0, gain_tilt=0.0, flicker=0.0, jitter=0.0,
        brightness=0.1, contrast=0.7,
    )  # fmt: skip
    flat = np.full((200, 200), 0.5, np.float32)  # a flat field is recorded at the brightness level
    counts = detect(flat, scope, np.random.default_rng(1)).astype(float) * dose / 255
    electrons = 0.1 * dose
    assert abs(counts.mean() - electrons) < 0.05 * electrons + 0.1
    assert abs(counts.var() - electrons) < 0.1 * electrons + (dose / 255) ** 2 / 12 + 0.2


def test_tiny_images_still_hold_their_defect():
    for cls in DEFECTS:
        for seed in range(6):
            assert generate_sem_image(cls, 32, seed).mask.any(), (cls, seed)


@pytest.mark.parametrize(
    "call, option",
    [
        (lambda: generate_sem_image("crack"), "cls"),
        (lambda: generate_sem_image("good", size=16), "--size"),
        (lambda: generate_sem_image("good", seed=-1), "--seed"),
        (lambda: generate_sem_image("good", size=64.0), "--size"),
        (lambda: generate_sem_set(0), "--n-per-class"),
        (lambda: generate_sem_set(1, classes=("good", "crack")), "classes"),
        (lambda: generate_sem_set(1, split="val"), "split"),
    ],
)
def test_bad_options_raise_a_clear_input_error(call, option):
    with pytest.raises(SemnbInputError) as error:
        call()
    assert option in error.value.what


# ------------------------------------------------------------------------------------------ writer


def _manifest(root) -> list[dict]:
    with open(root / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_writer_lays_out_an_mvtec_set_with_a_manifest(tmp_path):
    root = write_sem_dataset(
        tmp_path / "set", n_per_class=2, size=64, seed=4, train_good=3, progress=False
    )
    rows = _manifest(root)
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    assert len(rows) == 3 + 2 * len(CLASSES)
    assert sorted(p.name for p in (root / "train" / "good").iterdir()) == [
        "000.png",
        "001.png",
        "002.png",
    ]
    assert sorted(p.name for p in (root / "test").iterdir()) == sorted(CLASSES)
    assert sorted(p.name for p in (root / "ground_truth").iterdir()) == sorted(DEFECTS)
    assert (root / MARKER_FILE).is_file()

    by_path = {row["path"]: row for row in rows}
    for row in rows:
        image = np.asarray(Image.open(root / row["path"]))
        assert image.shape == (64, 64) and image.dtype == np.uint8
        assert row["split"] == row["path"].split("/")[0]
        assert row["background"] in BACKGROUND_KINDS and float(row["pixel_size_nm"]) > 0
        assert row["banner"] in ("True", "False")
        sample = generate_sem_image(row["class"], 64, int(row["seed"]))
        assert np.array_equal(image, sample.image)  # the file is the generator's image, losslessly
        if row["class"] == "good":
            assert row["mask"] == ""
            continue
        assert (
            row["mask"] == f"ground_truth/{row['class']}/{row['path'].split('/')[-1][:-4]}_mask.png"
        )
        mask = np.asarray(Image.open(root / row["mask"]))
        assert set(np.unique(mask)) <= {0, 255} and np.array_equal(mask == 255, sample.mask)
    assert by_path["test/good/001.png"]["class"] == "good"


def test_writer_replaces_its_own_set_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "set"
    write_sem_dataset(target, n_per_class=1, size=48, seed=0, progress=False)
    write_sem_dataset(target, n_per_class=2, size=48, seed=1, progress=False)
    assert len(_manifest(target)) == 2 + 2 * len(CLASSES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no staging or retired folders


def test_writer_refuses_a_foreign_folder_or_a_file(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(SemnbInputError, match="not a semnb synthetic set"):
        write_sem_dataset(foreign, n_per_class=1, size=48, progress=False)
    assert [p.name for p in foreign.iterdir()] == ["holiday.jpg"]
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(SemnbInputError, match="is a file"):
        write_sem_dataset(a_file, n_per_class=1, size=48, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        write_sem_dataset(empty, n_per_class=1, size=48, progress=False) / "manifest.csv"
    ).is_file()
    with pytest.raises(SemnbInputError, match="train_good"):
        write_sem_dataset(tmp_path / "new", n_per_class=1, size=48, train_good=0, progress=False)


def test_writer_interrupted_midway_leaves_no_partial_set(tmp_path, monkeypatch):
    real_save, calls = synth_writer._save_png, defaultdict(int)

    def failing_save(path, pixels):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        real_save(path, pixels)

    monkeypatch.setattr(synth_writer, "_save_png", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_sem_dataset(tmp_path / "set", n_per_class=1, size=48, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_writer_replaces_an_earlier_set_whole_when_it_has_fewer_images(tmp_path):
    target = write_sem_dataset(tmp_path / "set", n_per_class=2, size=48, seed=0, progress=False)
    write_sem_dataset(target, n_per_class=1, size=48, seed=0, progress=False)
    fresh = write_sem_dataset(tmp_path / "fresh", n_per_class=1, size=48, seed=0, progress=False)
    assert file_tree(target) == file_tree(fresh)  # no 001.png of the larger set stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "set"]


def test_writer_failing_midway_keeps_the_earlier_set(tmp_path, monkeypatch):
    target = write_sem_dataset(tmp_path / "set", n_per_class=1, size=48, seed=0, progress=False)
    before = file_tree(target)
    real_save, calls = synth_writer._save_png, []

    def failing_save(path, pixels):
        calls.append(path)
        if len(calls) == 5:
            raise OSError("disk full")
        real_save(path, pixels)

    monkeypatch.setattr(synth_writer, "_save_png", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_sem_dataset(target, n_per_class=2, size=48, seed=1, progress=False)
    assert file_tree(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_each_kind_marks_its_set_and_refuses_a_set_of_another_kind(tmp_path):
    sets = {kind: write_synthetic(kind, tmp_path / kind, n_per_class=1, size=64, seed=0) for kind in WRITERS}
    for kind, root in sets.items():
        marker = json.loads((root / MARKER_FILE).read_text())
        assert (marker["generator"], marker["kind"], marker["seed"]) == ("semnb", kind, 0)
        other = "sem" if kind != "sem" else "tem"
        before = file_tree(sets[other])
        with pytest.raises(SemnbInputError, match=f"holds a semnb synthetic {other} set, not a {kind} set"):
            write_synthetic(kind, sets[other], n_per_class=1, size=64, seed=0)
        assert file_tree(sets[other]) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(WRITERS)
    for kind in ("sem", "tem"):  # the marker beside manifest.csv is not taken for an image
        images = load_dataset(sets[kind])
        assert len(images) == len(_manifest(sets[kind]))
        assert not images.meta["path"].astype(str).str.endswith(".json").any()


def test_a_marker_that_is_not_semnbs_does_not_make_a_folder_ours(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / MARKER_FILE).write_text('{"kind": "sem"}')
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(SemnbInputError, match=f"its {MARKER_FILE} is not semnb's"):
        write_sem_dataset(folder, n_per_class=1, size=48, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted([MARKER_FILE, "notes.txt"])


def test_an_unlabelled_batch_mixes_the_classes_and_keeps_the_truth_beside_it(tmp_path):
    from semnb.data.listing import list_images
    from semnb.data.synth_sem import CLASSES
    from semnb.data.synth_writer import read_marker, write_unlabelled_sem

    out = write_unlabelled_sem(tmp_path / "batch", n_per_class=2, size=64, seed=3)
    truth = (out / "truth.csv").read_text().splitlines()
    assert truth[0] == "path,class,mask" and len(truth) == 1 + 2 * len(CLASSES)
    classes = [row.split(",")[1] for row in truth[1:]]
    assert sorted(classes) == sorted(CLASSES * 2) and classes != sorted(classes)  # mixed, as a night's batch
    assert [p.name for p in list_images(out)] == [f"{i:03d}.png" for i in range(14)]  # masks are not listed
    masks = [row.split(",")[2] for row in truth[1:] if row.split(",")[1] != "good"]
    assert all((out / m).is_file() for m in masks) and read_marker(out)["kind"] == "sem-batch"

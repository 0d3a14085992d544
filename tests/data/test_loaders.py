"""Loaders and image reading: the four layouts, auto-detection, file formats and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from semnb.cli import main
from semnb.data import ImageSet, detect_layout, load_dataset, read_image, read_mask
from semnb.errors import SemnbInputError
from semnb.fewshot.episodes import sample_episode

# ---------------------------------------------------------------- layouts


def test_folders_layout_reads_classes_masks_and_pixels(tmp_images):
    root = tmp_images("folders", {"good": 3, "crack": 2})
    ds = load_dataset(root)
    assert ds.layout == "folders" and len(ds) == 5
    assert ds.class_names == ["crack", "good"]
    assert ds.class_counts().to_dict() == {"crack": 2, "good": 3}
    assert ds.normal_class == "good"
    assert ds.is_normal.tolist() == [False, False, True, True, True]
    assert [p is not None for p in ds.mask_paths] == [True, True, False, False, False]
    img, mask = ds.image(1), ds.mask(1)
    assert img.dtype == np.float32 and img.shape == (24, 24) and 0 <= img.min() and img.max() <= 1
    assert mask.dtype == np.bool_ and mask.sum() == 36 and mask[3:9, 4:10].all()
    assert img[mask].min() > 0.85 > img[~mask].max()  # the mask marks the bright defect
    assert not ds.mask(2).any()  # a good image without a mask file is known defect-free
    assert list(ds.meta.columns[:5]) == ["path", "class", "label", "mask", "split"]


def test_missing_normal_class_gives_none_without_error(tmp_images):
    root = tmp_images("folders", {"crack": 2, "hole": 2})
    ds = load_dataset(root, normal_class="free")
    assert ds.normal_class is None and not ds.is_normal.any()
    assert ds.mask(0) is not None


def test_images_without_a_mask_file_outside_the_normal_class_have_none(tmp_images):
    root = tmp_images("folders", {"good": 1, "crack": 1})
    (root / "crack" / "000_mask.png").unlink()
    ds = load_dataset(root)
    assert ds.mask(0) is None and not ds.has_masks


def test_mvtec_layout_with_manifest_columns(tmp_images):
    root = tmp_images("mvtec", {"good": 2, "bridge": 2, "particle": 1})
    pd.DataFrame(
        {
            "path": ["test/bridge/001.png", "train/good/000.png"],
            "class": ["bridge", "good"],
            "background": ["lines", "film"],
            "pixel_size_nm": [2.5, 4.0],
        }
    ).to_csv(root / "manifest.csv", index=False)
    assert detect_layout(root) == "mvtec"
    ds = load_dataset(root)
    assert ds.layout == "mvtec" and len(ds) == 7
    assert ds.class_names == ["bridge", "good", "particle"]
    assert ds.splits.count("train") == 2 and ds.splits.count("test") == 5
    train = [i for i, split in enumerate(ds.splits) if split == "train"]
    assert all(ds.is_normal[i] for i in train)
    bridge_1 = ds.paths.index(root / "test" / "bridge" / "001.png")
    assert ds.mask_paths[bridge_1] == root / "ground_truth" / "bridge" / "001_mask.png"
    assert ds.mask(bridge_1).sum() == 36
    row = ds.meta.iloc[bridge_1]
    assert row["background"] == "lines" and row["pixel_size_nm"] == 2.5
    assert ds.meta.iloc[train[0]]["pixel_size_nm"] == 4.0
    assert ds.meta["pixel_size_nm"].isna().sum() == 5  # rows the manifest does not list


def test_csv_layout_from_file_or_folder_with_unlabelled_rows(tmp_path, write_png):
    for name in ("a", "b", "c"):
        write_png(tmp_path / "img" / f"{name}.png", np.full((8, 10), 0.5))
    write_png(tmp_path / "img" / "a_m.png", np.eye(8, 10, dtype=np.uint8) * 255)
    (tmp_path / "list.csv").write_text(
        "path,label,mask,split,magnification\n"
        "img/a.png,scratch,img/a_m.png,train,50000\n"
        "img/b.png,,,test,20000\n"
        "img/c.png,particle,,test,50000\n"
    )
    for root in (tmp_path / "list.csv", tmp_path):
        assert detect_layout(root) == "csv"
        ds = load_dataset(root)
        assert ds.layout == "csv" and ds.class_names == ["particle", "scratch"]
        assert ds.labels.tolist() == [1, -1, 0]
        assert ds.splits == ["train", "test", "test"]
        assert ds.mask(0).sum() == 8 and ds.mask(2) is None
        assert ds.meta["magnification"].tolist() == [50000, 20000, 50000]
        assert ds.class_counts()["(unlabelled)"] == 1


def test_csv_missing_file_is_named_or_skipped(tmp_path, write_png):
    write_png(tmp_path / "a.png", np.zeros((8, 8)))
    (tmp_path / "list.csv").write_text("path,label\na.png,x\nmissing.png,y\n")
    with pytest.raises(SemnbInputError, match="missing.png"):
        load_dataset(tmp_path)
    ds = load_dataset(tmp_path, skip_bad=True)
    assert len(ds) == 1 and ds.skipped[0][0] == tmp_path / "missing.png"


def _archive_csv(tmp_path, write_png):
    """An archive manifest in its own column names (as emps: filename,doi), images in images/."""
    for name in ("a", "b", "c", "d"):
        write_png(tmp_path / "images" / f"{name}.png", np.full((8, 10), 0.5))
    csv_path = tmp_path / "metadata.csv"
    csv_path.write_text(
        "filename,DOI,Mag,locator\n"
        "a.png,10.1016.j.x,50000,gr1\n"
        "b.png,10.1016.j.y,20000,gr2\n"
        "c.png,10.1016.j.x,50000,gr3\n"
        "d.png,,1000,gr4\n"
    )
    return csv_path


def test_csv_with_other_column_names_loads_with_column_options(tmp_path, write_png):
    csv_path = _archive_csv(tmp_path, write_png)
    options = dict(path_column="filename", label_column="doi", image_folder="images")
    for root, layout in ((csv_path, "csv"), (csv_path, "auto"), (tmp_path, "auto")):
        ds = load_dataset(root, layout=layout, magnification_column="Mag", **options)
        assert ds.layout == "csv" and [p.stem for p in ds.paths] == ["a", "b", "c", "d"]
        assert ds.class_names == ["10.1016.j.x", "10.1016.j.y"]
        assert ds.labels.tolist() == [0, 1, 0, -1]
        assert ds.meta["magnification"].tolist() == [50000, 20000, 50000, 1000]
        assert ds.meta["locator"].tolist() == ["gr1", "gr2", "gr3", "gr4"]
        assert not {"filename", "doi", "mag"} & set(ds.meta.columns)
    assert detect_layout(tmp_path, path_column="filename", label_column="doi") == "csv"


def test_csv_label_column_none_is_an_unlabelled_collection(tmp_path, write_png):
    csv_path = _archive_csv(tmp_path, write_png)
    ds = load_dataset(csv_path, path_column="filename", label_column=None, image_folder="images")
    assert len(ds) == 4 and ds.labels.tolist() == [-1] * 4 and ds.class_names == []
    assert ds.meta["doi"].tolist()[:2] == ["10.1016.j.x", "10.1016.j.y"]  # kept as metadata


def test_csv_label_column_keeps_codes_as_written(tmp_path, write_png):
    write_png(tmp_path / "a.png", np.zeros((8, 8)))
    write_png(tmp_path / "b.png", np.zeros((8, 8)))
    (tmp_path / "list.csv").write_text("file,code\na.png,01\nb.png,10\n")
    ds = load_dataset(tmp_path / "list.csv", path_column="file", label_column="code")
    assert ds.class_names == ["01", "10"]


@pytest.mark.parametrize(
    "options, column, option",
    [
        ({"label_column": "doi"}, "'path'", "path_column= (--path-column)"),
        ({"path_column": "filename"}, "'label'", "label_column= (--label-column)"),
        (
            {"path_column": "filename", "label_column": "doi", "magnification_column": "zoom"},
            "'zoom'",
            "magnification_column= (--magnification-column)",
        ),
    ],
)
def test_csv_missing_column_names_csv_column_columns_and_option(
    tmp_path, write_png, options, column, option
):
    csv_path = _archive_csv(tmp_path, write_png)
    with pytest.raises(SemnbInputError) as error:
        load_dataset(csv_path, layout="csv", image_folder="images", **options)
    message = str(error.value)
    assert str(csv_path) in message and f"lacks the column {column}" in message
    assert "its columns are 'filename', 'doi', 'mag', 'locator'" in message
    assert option in message


def test_csv_paths_not_found_point_to_image_folder(tmp_path, write_png):
    csv_path = _archive_csv(tmp_path, write_png)
    with pytest.raises(SemnbInputError, match=r"a\.png.*row 2.*--image-folder"):
        load_dataset(csv_path, path_column="filename", label_column="doi")


def test_column_options_are_refused_by_other_layouts(tmp_images):
    with pytest.raises(SemnbInputError, match="path_column.*'folders'"):
        load_dataset(tmp_images("folders"), path_column="filename")


def test_carinthia_csv_with_tolerant_paths_and_label_names(tmp_path, write_png):
    write_png(tmp_path / "defects" / "d1.png", np.full((8, 8), 0.1))
    write_png(tmp_path / "defects" / "d2.png", np.full((8, 8), 0.2))
    write_png(tmp_path / "d3.png", np.full((8, 8), 0.3))  # file_name only, at the root
    (tmp_path / "labels.csv").write_text(
        "image_path;file_name;label\ndefects;d1.png;3\ndefects\\;d2.png;6\nelsewhere;d3.png;1\n"
    )
    assert detect_layout(tmp_path) == "carinthia"
    ds = load_dataset(tmp_path / "labels.csv")
    # issue 13: only the codes the CSV uses become classes (an empty class cannot be evaluated)
    assert ds.layout == "carinthia" and ds.class_names == ["1", "3", "6"]
    assert [ds.class_names[k] for k in ds.labels] == ["3", "6", "1"]
    assert ds.image(2).mean() == pytest.approx(0.3, abs=0.003)
    named = load_dataset(tmp_path, label_names={3: "particle", "6": "scratch"})
    assert [named.class_names[k] for k in named.labels] == ["particle", "scratch", "1"]


def test_carinthia_bad_label_names_the_csv(tmp_path, write_png):
    write_png(tmp_path / "d1.png", np.zeros((8, 8)))
    (tmp_path / "labels.csv").write_text("image_path;file_name;label\n.;d1.png;three\n")
    with pytest.raises(SemnbInputError, match="labels.csv.*row 2"):
        load_dataset(tmp_path)


def test_unknown_layout_names_folder_and_lists_layouts(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(SemnbInputError) as info:
        load_dataset(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and all(
        name in message for name in ("mvtec", "folders", "csv", "carinthia")
    )
    with pytest.raises(SemnbInputError, match="--layout.*unknown layout 'coco'"):
        load_dataset(tmp_path, layout="coco")


def test_empty_class_folder_is_an_error_naming_it_or_skipped(tmp_images):
    root = tmp_images("folders", {"good": 2})
    (root / "crack").mkdir()
    with pytest.raises(SemnbInputError, match="crack: holds no images"):
        load_dataset(root, layout="folders")
    ds = load_dataset(root, layout="folders", skip_bad=True)
    assert len(ds) == 2 and ds.skipped == [(root / "crack", "holds no images")]


# ---------------------------------------------------------------- bad files


def test_corrupt_image_is_named_at_load_or_skipped(tmp_images):
    root = tmp_images("folders", {"good": 3})
    bad = root / "good" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(SemnbInputError, match="001.png"):
        load_dataset(root)
    ds = load_dataset(root, skip_bad=True)
    assert len(ds) == 2 and bad not in ds.paths
    assert ds.skipped[0][0] == bad and "cannot read" in ds.skipped[0][1]
    unchecked = load_dataset(root, check=False)  # no header check: the error comes on reading
    with pytest.raises(SemnbInputError, match="001.png"):
        unchecked.image(unchecked.paths.index(bad))


def test_wrong_size_mask_names_both_files(tmp_images, write_png):
    root = tmp_images("folders", {"crack": 2})
    write_png(root / "crack" / "000_mask.png", np.zeros((20, 24)))
    with pytest.raises(SemnbInputError) as info:
        load_dataset(root)
    assert (
        "000_mask.png" in str(info.value)
        and "000.png" in str(info.value)
        and "20x24" in str(info.value)
    )
    ds = load_dataset(root, skip_bad=True)
    assert len(ds) == 1 and ds.skipped[0][0].name == "000_mask.png"
    with pytest.raises(SemnbInputError, match="000_mask.png"):
        load_dataset(root, check=False).mask(0)


def test_unsupported_image_type_in_a_class_folder_is_reported(tmp_images):
    root = tmp_images("folders", {"good": 2})
    (root / "good" / "scan.dm3").write_bytes(b"gatan")
    (root / "good" / "readme.txt").write_text("ignored: not an image format")
    with pytest.raises(SemnbInputError, match="scan.dm3: unsupported image type"):
        load_dataset(root)
    assert len(load_dataset(root, skip_bad=True)) == 2
    with pytest.raises(SemnbInputError, match="scan.gif: unsupported file type"):
        read_image(_touch(root / "scan.gif"))


def _touch(path):
    path.write_bytes(b"GIF89a")
    return path


# ---------------------------------------------------------------- formats


def test_16bit_tiff_and_png_keep_their_scale(tmp_path):
    ramp = np.linspace(0, 30000, 12 * 16).reshape(12, 16).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", ramp)
    Image.fromarray(ramp).save(tmp_path / "a.png")
    for name in ("a.tif", "a.png"):
        img = read_image(tmp_path / name)
        assert img.dtype == np.float32 and img.shape == (12, 16)
        np.testing.assert_allclose(img, ramp / 65535.0, atol=1e-6)  # not stretched to [0, 1]


def test_rgb_rgba_jpg_bmp_and_npy_become_gray(tmp_path):
    rgb = np.zeros((10, 12, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    expected = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    rgba = np.dstack([rgb, np.full((10, 12), 7, np.uint8)])  # almost transparent: alpha ignored
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.bmp")
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    for name in ("rgb.png", "rgba.png", "rgb.tif"):
        np.testing.assert_allclose(read_image(tmp_path / name), expected, atol=1e-5)
    assert read_image(tmp_path / "rgb.jpg").mean() == pytest.approx(expected, abs=0.02)
    np.testing.assert_allclose(read_image(tmp_path / "gray.bmp"), 200 / 255, atol=1e-6)
    heights = np.array([[-2.0, 0.0], [1.0, 2.0]])
    np.save(tmp_path / "scan.npy", heights)
    np.testing.assert_allclose(read_image(tmp_path / "scan.npy"), [[0, 0.5], [0.75, 1]])


def test_npy_object_array_is_refused_without_unpickling(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SemnbInputError, match="obj.npy"):
        read_image(tmp_path / "obj.npy")


def test_mask_binarisation_rules(tmp_path, write_png):
    noisy = np.array(
        [[0, 30, 100, 128, 200, 255]], dtype=np.uint8
    )  # 0/255 mask with JPEG-like noise
    write_png(tmp_path / "noisy.png", noisy)
    assert read_mask(tmp_path / "noisy.png").tolist() == [[False, False, False, True, True, True]]
    write_png(tmp_path / "labels.png", np.array([[0, 1, 2, 0]], dtype=np.uint8))  # small label map
    assert read_mask(tmp_path / "labels.png").tolist() == [[False, True, True, False]]
    Image.fromarray(np.array([[0, 3, 1000]], dtype=np.uint16)).save(tmp_path / "instances.png")
    assert read_mask(tmp_path / "instances.png").tolist() == [[False, True, True]]
    np.save(tmp_path / "m.npy", np.array([[0.0, 1.0], [0.0, 0.2]]))
    assert read_mask(tmp_path / "m.npy").tolist() == [[False, True], [False, True]]
    with pytest.raises(SemnbInputError, match="m.npy.*2x2.*img.png is 3x3"):
        read_mask(tmp_path / "m.npy", shape=(3, 3), image_path=tmp_path / "img.png")


# ---------------------------------------------------------------- ImageSet behaviour


def test_imageset_is_lazy_and_holds_no_pixels(tmp_images, write_png):
    root = tmp_images("folders", {"good": 2, "crack": 2})
    ds = load_dataset(root)
    arrays = [value for value in vars(ds).values() if isinstance(value, np.ndarray)]
    assert all(array.ndim == 1 and array.dtype == np.int64 for array in arrays)
    assert all(not isinstance(v, np.ndarray) for v in ds.meta.to_numpy().ravel())
    write_png(ds.paths[0], np.ones((24, 24)))  # changed on disk after loading
    assert ds.image(0).min() == 1.0


def test_subset_keeps_everything_aligned(tmp_images):
    root = tmp_images("mvtec", {"good": 2, "bridge": 2, "hole": 2})
    ds = load_dataset(root)
    order = [6, 0, 3]
    sub = ds.subset(order)
    assert isinstance(sub, ImageSet) and len(sub) == 3
    assert sub.paths == [ds.paths[i] for i in order]
    assert sub.labels.tolist() == ds.labels[order].tolist()
    assert sub.mask_paths == [ds.mask_paths[i] for i in order]
    assert sub.splits == [ds.splits[i] for i in order]
    assert sub.meta["path"].tolist() == [str(p) for p in sub.paths] and sub.meta.index.tolist() == [
        0,
        1,
        2,
    ]
    assert sub.class_names == ds.class_names and sub.normal_class == ds.normal_class
    np.testing.assert_array_equal(sub.image(0), ds.image(6))
    by_mask = ds.subset(ds.is_normal)
    assert len(by_mask) == int(ds.is_normal.sum()) and by_mask.is_normal.all()


def test_images_stack_and_resize(tmp_images, write_png):
    ds = load_dataset(tmp_images("folders", {"good": 2, "crack": 1}))
    assert ds.images().shape == (3, 24, 24)
    small = ds.images([0, 2], size=12)
    assert small.shape == (2, 12, 12) and small.dtype == np.float32
    mask = ds.mask(0, size=48)
    assert mask.shape == (48, 48) and mask.dtype == np.bool_ and mask.sum() == 4 * 36
    write_png(ds.paths[1], np.zeros((30, 24)))
    with pytest.raises(SemnbInputError, match="size"):
        ds.images()


def test_magnetic_tile_real_folder(shared_data):
    ds = load_dataset(shared_data / "magnetic_tile", normal_class="free")
    assert len(ds) == 660 and ds.layout == "folders" and not ds.skipped
    assert ds.class_names == ["blowhole", "break", "crack", "fray", "free", "uneven"]
    assert all(p is not None for p in ds.mask_paths)
    assert ds.normal_class == "free" and ds.is_normal.sum() == ds.class_counts()["free"]
    crack = int(np.flatnonzero(ds.labels == ds.class_names.index("crack"))[0])
    img, mask = ds.image(crack), ds.mask(crack)
    assert img.shape == mask.shape and 0 < mask.mean() < 0.5
    assert load_dataset(shared_data / "magnetic_tile").normal_class is None  # default "good" absent


def test_emps_metadata_loads_with_column_options(shared_data):
    emps = shared_data / "emps"
    if not (emps / "metadata.csv").is_file():
        pytest.skip(f"{emps / 'metadata.csv'} is absent")
    table = pd.read_csv(emps / "metadata.csv", dtype=str, keep_default_na=False)
    listed = [name for name in table["filename"] if (emps / "images" / name).is_file()]
    ds = load_dataset(
        emps / "metadata.csv",
        path_column="filename",
        label_column="doi",
        image_folder="images",
        skip_bad=True,
    )
    assert ds.layout == "csv" and len(ds) == len(listed) == len(table) - len(ds.skipped)
    assert set(ds.class_names) == set(table["doi"]) - {""}
    assert (ds.labels >= 0).all() and ds.image(0).ndim == 2


# ---------------------------------------------------------------- bad input (issue 13)
# Each `_name(root, write_png)` writes one bad input as a user makes it; the Python tests and
# the CLI test below feed the same ones.


def _pngs(folder, names, write_png):
    for name in names:
        write_png(folder / name, np.full((8, 8), 0.5))


def _dup_csv(root, write_png):
    _pngs(root, ["a.png", "b.png", "c.png"], write_png)
    (root / "list.csv").write_text("path,label\na.png,x\nb.png,x\nc.png,y\n./a.png,y\n")


def _dup_carinthia(root, write_png):
    _pngs(root, ["a.png", "b.png", "c.png"], write_png)
    (root / "labels.csv").write_text(
        "image_path;file_name;label\n.;a.png;1\n.;b.png;2\n.;a.png;2\n"
    )


def _carinthia_label_7(root, write_png):
    _pngs(root, ["a.png", "b.png", "c.png"], write_png)
    (root / "labels.csv").write_text(
        "image_path;file_name;label\n.;a.png;1\n.;b.png;7\n.;c.png;2\n"
    )


def _semicolon_csv(root, write_png):
    _pngs(root, ["a.png", "b.png"], write_png)
    (root / "list.csv").write_text("path;label\na.png;x\nb.png;y\n")


def _ragged_csv(root, write_png):
    _pngs(root, ["a.png", "b.png"], write_png)
    (root / "list.csv").write_text("path,label\na.png,x\nb.png,y,extra,more\n")


def _other_columns_csv(root, write_png):
    _pngs(root, ["a.png", "b.png"], write_png)
    (root / "list.csv").write_text("file,label\na.png,x\nb.png,y\n")


def _normal_class_typo(root, write_png):
    _pngs(root / "good", ["000.png", "001.png"], write_png)
    _pngs(root / "crack", ["000.png", "000_mask.png", "001.png", "001_mask.png"], write_png)


def test_csv_listing_an_image_twice_is_refused_naming_the_rows(tmp_path, write_png):
    _dup_csv(tmp_path, write_png)
    for skip_bad in (False, True):  # not a bad file to skip: the manifest itself is wrong
        with pytest.raises(SemnbInputError) as info:
            load_dataset(tmp_path, skip_bad=skip_bad)
        message = str(info.value)
        assert message.startswith(f"{tmp_path / 'list.csv'}: lists the image {tmp_path / 'a.png'}")
        assert "2 times (rows 2, 5)" in message and "Fix: keep one row per image" in message


def test_carinthia_file_under_two_labels_is_refused_naming_the_rows(tmp_path, write_png):
    _dup_carinthia(tmp_path, write_png)
    with pytest.raises(
        SemnbInputError, match=r"labels\.csv: lists the image .*a\.png 2 times \(rows 2, 4\)"
    ):
        load_dataset(tmp_path)


@pytest.mark.parametrize("label", ["0", "7", "-3", "7.0"])
def test_carinthia_label_outside_1_to_6_is_refused_with_row_and_codes(tmp_path, write_png, label):
    _carinthia_label_7(tmp_path, write_png)
    (tmp_path / "labels.csv").write_text(
        f"image_path;file_name;label\n.;a.png;1\n.;b.png;{label}\n.;c.png;2\n"
    )
    with pytest.raises(SemnbInputError) as info:
        load_dataset(tmp_path)
    assert f"labels.csv: row 3 has label '{label}', not a Carinthia class code" in str(info.value)
    assert "Fix: use one of the codes 1, 2, 3, 4, 5, 6" in str(info.value)
    ds = load_dataset(tmp_path, skip_bad=True)
    assert ds.class_names == ["1", "2"] and [p.name for p in ds.paths] == ["a.png", "c.png"]


def test_carinthia_codes_without_images_are_not_classes(tmp_path, write_png):
    _pngs(tmp_path, ["a.png", "b.png", "c.png", "d.png"], write_png)
    (tmp_path / "labels.csv").write_text(
        "image_path;file_name;label\n.;a.png;1\n.;b.png;2\n.;c.png;1\n.;d.png;2\n"
    )
    ds = load_dataset(tmp_path)
    assert ds.class_names == ["1", "2"] and ds.class_counts().to_dict() == {"1": 2, "2": 2}
    episode = sample_episode(ds.labels, 1, 0, ds.class_names)  # was: class '3': has no images
    assert episode.ways == 2 and len(episode.queries) == 2


@pytest.mark.parametrize(
    "image, mask",
    [("000.PNG", "000_mask.png"), ("000.png", "000_mask.PNG"), ("000.png", "000_mask.jpg")],
)
@pytest.mark.parametrize("layout", ["folders", "mvtec"])
def test_masks_in_any_image_type_and_extension_case_are_found(tmp_images, layout, image, mask):
    root = tmp_images(layout, {"good": 1, "crack": 1})
    folder = root / ("crack" if layout == "folders" else "test/crack")
    mask_folder = root / ("crack" if layout == "folders" else "ground_truth/crack")
    (folder / "000.png").rename(folder / image)
    pixels = np.asarray(Image.open(mask_folder / "000_mask.png"))
    (mask_folder / "000_mask.png").unlink()
    Image.fromarray(pixels).save(mask_folder / mask, quality=95)
    ds = load_dataset(root)
    crack = ds.paths.index(folder / image)
    assert ds.mask_paths[crack] == mask_folder / mask and mask not in [p.name for p in ds.paths]
    assert ds.mask(crack).sum() == 36


@pytest.mark.parametrize("typed", ["Good", "godo", "GOOD"])
def test_misspelt_normal_class_names_the_classes(tmp_path, write_png, typed):
    _normal_class_typo(tmp_path, write_png)
    with pytest.raises(SemnbInputError) as info:
        load_dataset(tmp_path, normal_class=typed)
    assert str(info.value) == (
        f"--normal-class: {typed!r} is not a class of {tmp_path}; its classes are 'crack', 'good'. "
        "Fix: pass --normal-class good (normal_class='good'); class names are case-sensitive"
    )


def test_default_normal_class_absent_or_in_another_case_is_no_error(tmp_path, write_png):
    _normal_class_typo(tmp_path, write_png)
    (tmp_path / "good").rename(tmp_path / "Good")
    assert load_dataset(tmp_path).normal_class is None  # the default name: a set may have none
    assert load_dataset(tmp_path, normal_class="Good").normal_class == "Good"


@pytest.mark.parametrize("as_file", [False, True])
def test_wrong_path_column_on_auto_names_the_column_and_the_csv_columns(
    tmp_path, write_png, as_file
):
    _other_columns_csv(tmp_path, write_png)
    root = tmp_path / "list.csv" if as_file else tmp_path
    with pytest.raises(SemnbInputError) as info:
        load_dataset(root, path_column="filename")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'list.csv'}: lacks the column 'filename'; ")
    assert (
        "its columns are 'file', 'label'" in message and "path_column= (--path-column)" in message
    )
    assert load_dataset(root, path_column="file").class_names == ["x", "y"]


def test_wrong_path_column_with_several_csvs_names_them(tmp_path, write_png):
    _other_columns_csv(tmp_path, write_png)
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    with pytest.raises(
        SemnbInputError,
        match=r"holds 2 CSVs \(list.csv, notes.csv\) and none has the columns 'filename'",
    ):
        load_dataset(tmp_path, path_column="filename")


@pytest.mark.parametrize("as_file", [False, True])
@pytest.mark.parametrize("layout", ["auto", "csv"])
def test_semicolon_separated_manifest_names_the_separator(tmp_path, write_png, layout, as_file):
    _semicolon_csv(tmp_path, write_png)
    with pytest.raises(SemnbInputError) as info:
        load_dataset(tmp_path / "list.csv" if as_file else tmp_path, layout=layout)
    assert str(info.value).startswith(
        f"{tmp_path / 'list.csv'}: separates its columns with ';', but a csv-layout manifest is read with ','"
    )


def test_ragged_csv_is_one_line_naming_the_row(tmp_path, write_png):
    _ragged_csv(tmp_path, write_png)
    with pytest.raises(SemnbInputError) as info:
        load_dataset(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "Expected 2 fields in line 3, saw 4" in message


@pytest.mark.parametrize(
    "make, options, expected",
    [
        (_dup_csv, [], "list.csv: lists the image"),
        (_dup_carinthia, [], "labels.csv: lists the image"),
        (_carinthia_label_7, [], "labels.csv: row 3 has label '7'"),
        (_normal_class_typo, ["--normal-class", "Good"], "--normal-class: 'Good' is not a class"),
        (
            _other_columns_csv,
            ["--path-column", "filename"],
            "list.csv: lacks the column 'filename'",
        ),
        (_semicolon_csv, [], "list.csv: separates its columns with ';'"),
        (_ragged_csv, [], "list.csv: cannot be read as a CSV"),
    ],
)
def test_cli_bad_data_is_one_line_exit_2_and_writes_nothing(
    tmp_path, write_png, make, options, expected
):
    data = tmp_path / "data"
    make(data, write_png)
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    out = tmp_path / "result.json"
    args = [*"eval classify --backbone semnb-tiny --shots 1 --seeds 0".split(), "--data", str(data)]
    result = CliRunner().invoke(main, [*args, "--json", str(out), *options])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("semnb: error: ") and "Fix: " in lines[0]
    assert expected in lines[0]
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before
    assert sorted(tmp_path.iterdir()) == [data]

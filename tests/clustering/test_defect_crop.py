"""The label-free defect locator and crop (`semnb.clustering.defect_crop`) and `evaluate_clustering(crop="defect")`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from semnb.cli import main
from semnb.clustering.defect_crop import (
    NORMAL_AND_SELF,
    SELF_REFERENTIAL,
    CropConfig,
    crop_images,
    crop_window,
    locate_defects,
    self_referential_distance,
)
from semnb.clustering.evaluate import evaluate_clustering
from semnb.data import load_dataset
from semnb.errors import SemnbInputError
from semnb.models import load_backbone

SIZE = 128  # image side and locator input: one patch is 16 px
BLOB = (88, 40)  # (row, column) of the planted defect


def _pattern(seed: int, blob: bool = False, size: int = SIZE) -> np.ndarray:
    """A periodic grid of bright contacts (period 16 px) with mild noise; optionally one bright blob at BLOB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = 0.3 + 0.3 * ((yy % 16 < 6) & (xx % 16 < 6)) + rng.normal(0, 0.02, (size, size))
    if blob:
        image[(yy - BLOB[0]) ** 2 + (xx - BLOB[1]) ** 2 <= 5 ** 2] = 1.0
    return np.clip(image, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def locator():
    return load_backbone("efficientnet-lite0", image_size=SIZE)


def _config(**kw) -> CropConfig:
    return CropConfig(encode_size=SIZE, sigma=2.0, **kw)


def test_windows_have_one_side_and_are_shifted_inside_at_the_borders():
    shape = (100, 80)  # side = 0.25 x the shorter side = 20
    assert crop_window((0, 0), shape, 0.25) == (0, 0, 20, 20)
    assert crop_window((99, 79), shape, 0.25) == (80, 60, 100, 80)
    assert crop_window((50, 40), shape, 0.25) == (40, 30, 60, 50)
    assert crop_window((3, 78), shape, 1.0) == (0, 0, 80, 80)
    windows = np.array([crop_window(c, shape, 0.25) for c in [(0, 0), (99, 79), (50, 3), (-7, 200)]])
    assert (windows[:, 2] - windows[:, 0] == 20).all() and (windows[:, 3] - windows[:, 1] == 20).all()
    assert (windows[:, :2] >= 0).all() and (windows[:, 2] <= 100).all() and (windows[:, 3] <= 80).all()
    crops = crop_images([np.zeros(shape)] * 4, windows)
    assert all(c.shape == (20, 20) for c in crops)


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_a_bad_crop_fraction_is_refused_with_the_fix(fraction):
    with pytest.raises(SemnbInputError, match="crop fraction.*use a fraction"):
        CropConfig(fraction=fraction)
    with pytest.raises(SemnbInputError, match="crop fraction"):
        crop_window((5, 5), (10, 10), fraction)


def test_the_planted_blob_is_found_within_a_patch_from_a_normal_memory(locator):
    found = locate_defects([_pattern(1, blob=True), _pattern(2)], [_pattern(10), _pattern(11)], _config(),
                           backbone=locator)
    assert found.reference == NORMAL_AND_SELF and found.memory_patches == 2 * 8 * 8
    assert np.abs(found.centers[0] - BLOB).max() <= 16
    assert found.peak_scores[0] > 1.5 * found.peak_scores[1]  # the blob stands out; the clean image does not
    top, left, bottom, right = found.windows[0]
    assert bottom - top == right - left == SIZE // 4 and top <= BLOB[0] < bottom and left <= BLOB[1] < right


def test_without_normal_images_the_self_referential_score_finds_the_blob():
    # 256 px (a 16 x 16 grid): on 8 x 8 the excluded neighbourhood is most of the image
    config = CropConfig(encode_size=256, sigma=2.0)
    found = locate_defects([_pattern(1, blob=True, size=256)], [], config,
                           backbone=load_backbone("efficientnet-lite0", image_size=256))
    assert found.reference == SELF_REFERENTIAL and found.memory_patches == 0
    assert np.abs(found.centers[0] - BLOB).max() <= 16


def test_self_referential_distance_skips_the_neighbourhood():
    features = torch.zeros(1, 25, 2)
    features[0, 12] = 5.0  # the centre of a 5 x 5 grid differs; all others are equal
    features[0, 0] = -9.0  # so does a corner, which is not scored
    near = self_referential_distance(features, (5, 5), exclude_radius=0)[0]
    assert float(near[12]) == pytest.approx(np.hypot(5, 5)) and float(near[6]) == 0.0 and float(near[0]) == 0.0
    assert float(self_referential_distance(features, (5, 5), exclude_radius=1)[0, 12]) == pytest.approx(np.hypot(5, 5))
    assert (self_referential_distance(features, (5, 5), exclude_radius=4) == 0).all()  # nothing left to compare


def test_locations_are_deterministic_for_a_seed(locator):
    images, normal = [_pattern(1, blob=True), _pattern(3)], [_pattern(10), _pattern(11), _pattern(12)]
    config = _config(coreset_fraction=0.5, seed=3)
    a = locate_defects(images, normal, config, backbone=locator)
    b = locate_defects(images, normal, config, backbone=locator)
    np.testing.assert_array_equal(a.windows, b.windows)
    np.testing.assert_array_equal(a.peak_scores, b.peak_scores)
    assert a.memory_patches == 96


def test_patch_distances_are_computed_on_the_backbones_device(locator, monkeypatch, implicit_device_is_meta):
    from semnb.clustering import defect_crop

    images, normal = [_pattern(1, blob=True), _pattern(3)], [_pattern(10), _pattern(11)]
    config = _config(coreset_fraction=0.5)
    expected = locate_defects(images, normal, config, backbone=locator)
    # The backbone is encoded before the context (the network's own code is not ours to check).
    encoded = {id(images): defect_crop._patch_features(images, locator, SIZE, False, ""),
               id(normal): defect_crop._patch_features(normal, locator, SIZE, False, "")}
    monkeypatch.setattr(defect_crop, "_patch_features", lambda pixels, *args: encoded[id(pixels)])
    with implicit_device_is_meta():  # a tensor made without an explicit device would be meta and fail
        found = locate_defects(images, normal, config, backbone=locator)
    assert locator.compute.device.type == "cpu"
    assert isinstance(found.peak_scores, np.ndarray) and isinstance(found.windows, np.ndarray)
    np.testing.assert_array_equal(found.windows, expected.windows)
    np.testing.assert_array_equal(found.peak_scores, expected.peak_scores)


def test_eval_cluster_on_defect_crops_records_how_and_how_well(tmp_images):
    dataset = load_dataset(tmp_images("mvtec", {"good": 3, "crack": 3}, size=64), layout="mvtec")
    evaluation = evaluate_clustering(dataset, methods=["glcm"], image_size=32, crop="defect", progress=False,
                                     device="cpu", precision="fp32")
    assert evaluation.extra["device"] == "cpu" and evaluation.precision == "fp32"
    crop = evaluation.extra["crop"]
    assert evaluation.n_images == 6 and crop["reference"] == NORMAL_AND_SELF and crop["n_normal_images"] == 3
    assert crop["n_scored"] == 3 and crop["hit_rate"] == 1.0  # the bright squares are found
    assert all(b - t == r - left == 16 for t, left, b, r in crop["windows"])
    assert any("crop=defect" in w for w in evaluation.warnings)
    assert evaluation.timing["locate_defects_s"] > 0
    whole = evaluate_clustering(dataset, methods=["glcm"], image_size=32, progress=False)
    assert "crop" not in whole.extra and not any("crop=defect" in w for w in whole.warnings)
    with pytest.raises(SemnbInputError, match="--crop"):
        evaluate_clustering(dataset, methods=["glcm"], image_size=32, crop="centre", progress=False)
    with pytest.raises(SemnbInputError, match="--device cuda:7"):
        evaluate_clustering(dataset, methods=["glcm"], image_size=32, device="cuda:7", progress=False)


def test_eval_cluster_command_takes_crop_defect(tmp_images, tmp_path):
    root = tmp_images("folders", {"good": 3, "crack": 3}, size=64)
    out = tmp_path / "cluster.json"
    run = CliRunner().invoke(main, ["eval", "cluster", "--data", str(root), "--image-size", "32", "--seeds", "0",
                                    "--methods", "glcm", "--crop", "defect", "--json", str(out)])
    assert run.exit_code == 0, run.output
    record = json.loads(out.read_text())
    assert record["crop"]["reference"] == SELF_REFERENTIAL  # folders: no train/ images outside the clustered ones
    assert "defect windows" in run.output

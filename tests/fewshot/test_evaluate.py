"""`semnb eval segment|classify` end to end on tiny data: the JSON contract, method order, errors, edge cases."""
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from semnb.cli import main
from semnb.data import load_dataset, write_sem_dataset
from semnb.fewshot.evaluate import evaluate_segmentation, prepare_fewshot, shot_sweep
from semnb.models import FeatureCache

CONTRACT = {"task", "data", "backbone", "weights", "precision", "shots", "seeds", "n_images", "results", "timing",
            "warnings"}


@pytest.fixture(scope="module")
def sem_dir(tmp_path_factory):
    return write_sem_dataset(tmp_path_factory.mktemp("fewshot") / "sem", n_per_class=3, size=64, seed=0,
                             train_good=1, progress=False)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMNB_CACHE_DIR", str(tmp_path / "cache"))


def _run(args):
    return CliRunner().invoke(main, args)


def _run_json(args, out):
    """Run `semnb ... --json out`, insist it succeeded, and return the run and the object it wrote."""
    run = _run([*args, "--json", str(out)])
    assert run.exit_code == 0, run.output
    return run, json.loads(out.read_text())


def test_segment_cli_writes_the_contract_with_semclip_first(sem_dir, tmp_path):
    run, data = _run_json(["eval", "segment", "--data", str(sem_dir), "--backbone", "semnb-tiny", "--image-size", "64",
                           "--shots", "1", "--seeds", "0,1", "--ablations"], tmp_path / "seg.json")
    assert CONTRACT <= set(data)
    assert data["task"] == "segment" and data["shots"] == 1 and data["seeds"] == [0, 1] and data["n_images"] == 22
    assert list(data["results"]) == ["semnb", "semclip", "winclip", "patchcore", "nn_visual"]
    for values in data["results"].values():
        for metric in ("image_auroc", "pixel_auroc", "pixel_f1_max", "aupro"):
            assert 0 <= values[metric] <= 1 and f"{metric}_std" in values
    assert list(data["ablations"]) == ["semclip_no_transform", "semclip_generic_prompts", "semclip_last_level",
                                       "semclip_z_only", "semclip_v_only"]
    assert data["timing"]["semclip_fit_s"] > 0 and data["timing"]["episode_s"] > 0
    assert any("random weights" in w for w in data["warnings"])
    assert "ablations (the paper's Table 3)" in run.output


def test_classify_cli_writes_confusion_matrix_and_per_class(sem_dir, tmp_path):
    _, data = _run_json(["eval", "classify", "--data", str(sem_dir), "--backbone", "semnb-tiny", "--image-size", "64",
                         "--shots", "2", "--seeds", "0", "--ablations"], tmp_path / "cls.json")
    assert CONTRACT <= set(data)
    assert list(data["results"]) == ["semnb", "semclip", "linear_probe", "prototype", "defect_pooled"]
    assert set(data["results"]["semclip"]) >= {"accuracy", "macro_precision", "macro_recall", "macro_f1"}
    matrix = np.array(data["confusion_matrix"]["semclip"])
    assert matrix.shape == (7, 7) and matrix.sum() == 22 - 7 * 2
    assert set(data["per_class"]["semclip"]) == set(data["class_names"])
    assert list(data["ablations"]) == ["semclip_generic_prompts", "semclip_last_level", "semclip_a0", "semclip_a1"]


def test_same_seeds_same_numbers(sem_dir, tmp_path):
    images = load_dataset(sem_dir)
    cache = FeatureCache(tmp_path / "c")
    a = evaluate_segmentation(images, "semnb-tiny", shots=1, seeds=(3, 4), image_size=64, cache=cache)
    b = evaluate_segmentation(images, "semnb-tiny", shots=1, seeds=(3, 4), image_size=64, cache=cache)
    assert a.results == b.results
    assert cache.hits >= len(images)  # the second run read every image's features from the cache


def test_efficientnet_runs_without_text_and_says_what_replaced_it(sem_dir, tmp_path):
    _, data = _run_json(["eval", "segment", "--data", str(sem_dir), "--backbone", "efficientnet-lite0",
                         "--image-size", "64", "--shots", "1", "--seeds", "0", "--ablations"], tmp_path / "eff.json")
    assert any("no text tower" in w and "learned anchors" in w for w in data["warnings"])
    assert list(data["ablations"]) == ["semclip_no_transform", "semclip_last_level"]
    assert "ImageNet" in data["weights"]


def test_too_many_shots_is_one_clear_line(sem_dir):
    run = _run(["eval", "classify", "--data", str(sem_dir), "--backbone", "semnb-tiny", "--shots", "5"])
    assert run.exit_code == 2
    assert "--shots" in run.output and "Fix:" in run.output


def test_missing_masks_are_refused_before_any_work(tmp_images):
    root = tmp_images("folders", {"good": 3, "crack": 3}, size=32)
    (root / "crack" / "001_mask.png").unlink()
    run = _run(["eval", "segment", "--data", str(root), "--backbone", "semnb-tiny", "--shots", "1"])
    assert run.exit_code == 2
    assert "001.png" in run.output and "no defect mask" in run.output


def test_classifying_a_single_class_names_the_folder_and_the_class_before_any_work(tmp_images):
    # issue 13: it named an internal parameter ("class_names: needs the normal class ...")
    root = tmp_images("folders", {"good": 3}, size=32)
    run = _run(["eval", "classify", "--data", str(root), "--backbone", "semnb-tiny", "--shots", "1"])
    assert run.exit_code == 2
    assert f"{root}: holds one class only (good)" in run.output and "class_names" not in run.output
    assert "encode" not in run.output  # refused before encoding


def test_no_defect_free_images_gives_undefined_image_auroc_and_real_pixel_metrics(tmp_images, tmp_path):
    root = tmp_images("folders", {"crack": 3, "pit": 3}, size=32)
    run, data = _run_json(["eval", "segment", "--data", str(root), "--backbone", "semnb-tiny", "--image-size", "64",
                           "--shots", "1", "--seeds", "0,1"], tmp_path / "no_normal.json")
    for values in data["results"].values():
        assert values["image_auroc"] is None and 0 <= values["pixel_auroc"] <= 1
    assert any("no defect-free images" in w for w in data["warnings"])
    assert "undef" in run.output


def test_shot_sweep_reuses_prepared_features(sem_dir):
    data = prepare_fewshot(load_dataset(sem_dir), "classify", "semnb-tiny", image_size=64)
    table = shot_sweep(data, shots=(1, 2, 5), seeds=(0,))
    assert table["shots"].unique().tolist() == [1, 2]  # 5 shots: more than a class has
    assert table[table.shots == 1]["method"].tolist() == ["semnb", "semclip", "linear_probe", "prototype", "defect_pooled"]


@pytest.mark.shared_data
def test_magnetic_tile_class_folders(shared_data, tmp_path):
    _, data = _run_json(["eval", "segment", "--data", str(shared_data / "magnetic_tile"), "--layout", "folders",
                         "--normal-class", "free", "--backbone", "efficientnet-lite0", "--image-size", "64",
                         "--max-per-class", "3", "--shots", "1", "--seeds", "0"], tmp_path / "mt.json")
    assert data["n_images"] == 18 and not math.isnan(data["results"]["semclip"]["image_auroc"])

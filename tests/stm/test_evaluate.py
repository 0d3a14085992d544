"""The STM protocol: `evaluate_stm`, leave-one-surface-out, and `semnb eval stm`."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from semnb.cli import main
from semnb.data import load_scans
from semnb.data.synth_stm import write_stm_dataset
from semnb.errors import SemnbInputError
from semnb.metrics import pixel_auroc
from semnb.stm.evaluate import (
    PIXEL_METHODS,
    SurfaceCrops,
    evaluate_stm,
    leave_one_surface_out,
    pixel_maps_for_seed,
)
from semnb.stm.lattice import analyze_scan
from tests.stm.pits import lattice_with_pits


def test_eval_stm_cli_writes_the_results_contract(tmp_path, small_forest):
    data = write_stm_dataset(tmp_path / "stm", n_per_class=1, size=160, seed=0)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["eval", "stm", "--data", str(data), "--shots", "1", "--seeds", "0",
                                       "--episodes", "3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    obj = json.loads(out.read_text())
    assert obj["task"] == "stm" and obj["n_images"] == 3 and obj["shots"] == 1
    assert list(obj["results"])[:3] == ["fewshot", "unsupervised", "brightness"]
    for method in ("fewshot", "unsupervised", "brightness"):
        assert 0 <= obj["results"][method]["pixel_auroc"] <= 1
    assert 0 <= obj["results"]["fewshot"]["accuracy"] <= 1
    assert "ge001" in obj["weights"]
    assert obj["data"] == str(data)
    assert list(obj["timing"]) == ["load_s", "analyse_s", "pixel_maps_s", "classification_s", "total_s"]


def test_eval_is_deterministic(tmp_path, small_forest):
    scan, mask = lattice_with_pits(96)
    np.save(tmp_path / "pits.npy", scan)
    np.save(tmp_path / "pits_mask.npy", mask.astype(np.uint8))
    scans = load_scans(tmp_path)
    a = evaluate_stm(scans, shots=2, seeds=[0, 1], progress=False)
    b = evaluate_stm(scans, shots=2, seeds=[0, 1], progress=False)
    assert a.results == b.results
    assert a.results["unsupervised"]["pixel_auroc"] > a.results["brightness"]["pixel_auroc"]


def test_loader_warnings_come_first_and_data_names_the_folder(tmp_path, small_forest):
    np.save(tmp_path / "lonely.npy", np.zeros((32, 32), np.float32))
    scan, mask = lattice_with_pits(64)
    np.save(tmp_path / "pits.npy", scan)
    np.save(tmp_path / "pits_mask.npy", mask.astype(np.uint8))
    scans = load_scans(tmp_path)
    warnings = list(scans.warnings)
    result = evaluate_stm(scans, shots=1, seeds=[0])
    assert result.data == str(tmp_path) and result.n_images == 1
    assert result.warnings[: len(warnings)] == warnings and "lonely.npy" in result.warnings[0]
    assert scans.warnings == warnings  # the set's own list is not extended
    assert result.weights.startswith("none")  # no defects.csv: no classes


def test_leave_one_surface_out_adapts_to_each_surface_from_its_own_labels():
    rng = np.random.default_rng(0)

    def surface(classes, per_class):
        labels = np.repeat(classes, per_class)
        detail = rng.normal(size=(len(labels), 2, 24, 24)).astype(np.float32)
        return SurfaceCrops(detail, rng.normal(size=detail.shape).astype(np.float32), labels)

    crops = {"s1": surface(["a", "b", "c"], 4), "s2": surface(["a", "b"], 4), "s3": surface(["a", "z"], [4, 1])}
    warnings = []
    runs = leave_one_surface_out(crops, shots=1, seed=0, episodes=2, warnings=warnings)
    assert list(runs) == ["s1", "s2"]  # s3 keeps one class with a query: nothing to classify
    assert warnings == ["surface s3: class z has 1 defects, too few for 1 shots plus a query; left out"]
    run = runs["s1"]
    labels = crops["s1"].labels
    assert sorted(labels[run.support]) == ["a", "b", "c"]
    assert np.array_equal(run.truth, labels[run.query]) and not set(run.support) & set(run.query)
    assert list(run.predicted) == ["fewshot", "prototype", "brightness", "protonet"]
    assert all(len(p) == len(run.query) for p in run.predicted.values())
    assert np.array_equal(run.classifiers["prototype"].predict(crops["s1"].detail[run.query]),
                          run.predicted["prototype"])
    assert "s2, s3" in run.training
    again = leave_one_surface_out(crops, shots=1, seed=0, episodes=2)
    assert all(np.array_equal(again["s1"].predicted[m], run.predicted[m]) for m in run.predicted)


def test_real_tio2_scan_if_present(shared_data, tmp_path):
    source = shared_data / "stm"
    if not (source / "m235_left_mask.npy").is_file():
        pytest.skip("m235_left is not in the shared data")
    for name in ("m235_left.npy", "m235_left_mask.npy"):
        (tmp_path / name).symlink_to(source / name)
    # the judged setting, one labelled defect (seed 0), the maps of one seed (`evaluate_stm` runs this per seed)
    scan = load_scans(tmp_path)[0]
    maps = pixel_maps_for_seed(scan, analyze_scan(scan.raw), shots=1, seed=0)
    auroc = {m: pixel_auroc([maps[m]], [maps["mask"]], num_thresholds=None) for m in PIXEL_METHODS}
    assert auroc["fewshot"] > auroc["brightness"] + 0.005 and auroc["brightness"] > 0.9  # .949 vs .936
    assert auroc["unsupervised"] > 0.85


def test_a_flat_scan_is_named_by_its_file(tmp_path):
    # issue 13: a constant scan gave "no lattice found" without saying which of the user's scans
    mask = np.zeros((64, 64), np.uint8)
    mask[10:14, 10:14] = 1
    np.save(tmp_path / "blank.npy", np.full((64, 64), 0.5, np.float32))
    np.save(tmp_path / "blank_mask.npy", mask)
    run = CliRunner().invoke(main, ["eval", "stm", "--data", str(tmp_path), "--seeds", "0"])
    assert run.exit_code == 2
    assert f"{tmp_path / 'blank.npy'}: is flat" in run.output and "Fix:" in run.output


def test_eval_runs_on_the_device_asked_for_and_records_it(tmp_path, implicit_device_is_meta, small_forest):
    data = write_stm_dataset(tmp_path / "stm", n_per_class=1, size=128, seed=0)
    scans = load_scans(data)
    with implicit_device_is_meta():  # a tensor made without an explicit device would be meta and fail
        result = evaluate_stm(scans, shots=1, seeds=[0], episodes=2, device="cpu", precision="fp32")
    assert result.precision == "fp32" and result.extra["device"] == "cpu"
    assert 0 <= result.results["fewshot"]["accuracy"] <= 1


def test_eval_on_a_missing_gpu_says_so_before_computing(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    scan, mask = lattice_with_pits(64)
    np.save(tmp_path / "pits.npy", scan)
    np.save(tmp_path / "pits_mask.npy", mask.astype(np.uint8))
    with pytest.raises(SemnbInputError, match="--device cuda"):
        evaluate_stm(load_scans(tmp_path), device="cuda")

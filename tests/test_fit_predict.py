"""fit -> save -> load -> predict, as a user types it: the model folder, exact reload, resume after a kill,
and one clear line for each kind of bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

import semnb
from semnb.cli import main
from semnb.data import load_dataset, read_image, write_sem_dataset
from semnb.errors import SemnbInputError
from tests.conftest import REPO_ROOT


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def sem(tmp_path_factory):
    return write_sem_dataset(tmp_path_factory.mktemp("sem") / "sem", n_per_class=2, size=64, seed=0)


@pytest.fixture(scope="module")
def model_dir(sem, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "segment"
    result = run("fit", "segment", "--support", sem, "--backbone", "semnb-tiny", "--image-size", 64, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_the_model_folder_says_what_the_model_is_and_what_it_was_fit_on(model_dir, sem):
    config = json.loads((model_dir / "config.json").read_text())
    settings = config["settings"]
    assert config["task"] == "segment" and config["format_version"] == 1 and config["semnb_version"]
    assert settings["method"] == "semnb" and settings["backbone"] == "semnb-tiny"
    assert "NOT CLIP" in settings["backbone_weights"] and settings["image_size"] == 64
    assert settings["precision"] == "fp32" and settings["threshold"] > 0 and "cross-fit" in settings["threshold_rule"]
    training = config["training"]
    assert training["per_class"]["good"] == 4 and training["n_images"] == len(load_dataset(sem))  # 2 train + 2 test
    assert all(len(f["sha256"]) == 64 for f in training["files"])
    assert (model_dir / "weights.safetensors").read_bytes()[:8]  # safetensors header, no pickle
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "weights.safetensors"]


def test_fit_save_load_predict_equals_the_model_in_memory(sem, tmp_path):
    model = semnb.fit("segment", sem, backbone="semnb-tiny", image_size=64)
    model.save(tmp_path / "m")
    loaded = semnb.load_model(tmp_path / "m")
    images = [read_image(p) for p in sorted((sem / "test" / "scratch").glob("*.png"))]
    for a, b in zip(model.predict(images), loaded.predict(images)):
        np.testing.assert_array_equal(a.defect_map, b.defect_map)
        assert a.score == b.score


def test_predict_and_report_from_the_command_line(model_dir, sem, tmp_path):
    out = tmp_path / "pred"
    result = run("predict", model_dir, "--images", sem / "test", "--out", out, "--top", 4)
    assert result.exit_code == 0, result.output
    assert "14 images predicted, 0 unreadable" in result.output
    for name in ("predictions.parquet", "predictions.csv", "report.html", "run.json"):
        assert (out / name).is_file()
    assert len(list((out / "maps").glob("*.png"))) == 14 == len(list((out / "masks").glob("*.png")))


def _predict_process(model_dir, images, out):
    return subprocess.Popen([sys.executable, "-m", "semnb.cli", "predict", str(model_dir), "--images", str(images),
                             "--out", str(out), "--batch-size", "1"], cwd=REPO_ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_killed_predict_resumes_to_the_same_bytes_with_no_image_missing_or_doubled(model_dir, sem, tmp_path):
    images = sem / "test"
    whole = tmp_path / "whole"
    assert _predict_process(model_dir, images, whole).wait(timeout=300) == 0
    killed = tmp_path / "killed"
    process = _predict_process(model_dir, images, killed)
    deadline = time.monotonic() + 300
    while len(list((killed / "parts").glob("*.parquet"))) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list((killed / "parts").glob("*.parquet")))
    assert 3 <= done < 14 and not (killed / "predictions.parquet").exists()  # it really stopped mid-run
    assert _predict_process(model_dir, images, killed).wait(timeout=300) == 0
    assert _files(killed) == _files(whole)
    table = semnb.predictions.Predictions(killed).table
    assert sorted(table["path"]) == sorted(set(table["path"])) and len(table) == 14


# ------------------------------------------------------------------ bad input: one line, exit 2, nothing lost
def one_line(result):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("semnb: error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_an_existing_model_folder_is_refused_before_fitting(sem, tmp_path, monkeypatch):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    monkeypatch.setattr("semnb.fitting.fit", lambda *a, **k: pytest.fail("fitted before refusing"))
    line = one_line(run("fit", "segment", "--support", sem, "--out", out))
    assert "--out" in line and "already exists" in line and "--overwrite" in line
    assert (out / "keep.txt").read_text() == "mine"


def test_a_support_of_one_class_or_none_is_refused_for_classification(sem, tmp_path):
    flat = one_line(run("fit", "classify", "--support", sem / "test" / "scratch", "--out", tmp_path / "m"))
    assert "holds no labelled image (a flat folder has no classes)" in flat and "one folder per class" in flat
    one = tmp_path / "support" / "scratch"
    one.mkdir(parents=True)
    for p in sorted((sem / "test" / "scratch").glob("*.png")):
        (one / p.name).write_bytes(p.read_bytes())
    line = one_line(run("fit", "classify", "--support", one.parent, "--out", tmp_path / "m"))
    assert "holds one class only (scratch)" in line and "two classes or more" in line
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("damage, expected", [
    (lambda d: _edit_config(d, format_version=99), "is model format 99"),
    (lambda d: _edit_config(d, settings_key=("backbone_weights", "random-init (semnb-tiny, seed 7)")), "was fit on"),
    (lambda d: (d / "weights.safetensors").write_bytes(b"\0" * 64), "does not match the hash"),
    (lambda d: (d / "config.json").unlink(), "is not a semnb model folder"),
])
def test_a_damaged_or_foreign_model_folder_is_one_line(model_dir, sem, tmp_path, damage, expected):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in model_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    damage(copy)
    out = tmp_path / "pred"
    assert expected in one_line(run("predict", copy, "--images", sem / "test", "--out", out))
    assert not out.exists()


def _edit_config(folder, format_version=None, settings_key=None):
    config = json.loads((folder / "config.json").read_text())
    if format_version is not None:
        config["format_version"] = format_version
    if settings_key is not None:
        config["settings"][settings_key[0]] = settings_key[1]
    (folder / "config.json").write_text(json.dumps(config))


def test_an_empty_image_folder_and_a_search_on_a_segment_model(model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "lists no image" in one_line(run("predict", model_dir, "--images", tmp_path / "empty", "--out",
                                            tmp_path / "p"))
    (tmp_path / "q.npy").write_bytes(b"")
    assert "is a segment model" in one_line(run("search", model_dir, "--query", tmp_path / "q.npy"))


def test_an_unreadable_file_is_listed_not_dropped(model_dir, sem, tmp_path):
    images = tmp_path / "batch"
    images.mkdir()
    for p in sorted((sem / "test" / "hole").glob("*.png")):
        (images / p.name).write_bytes(p.read_bytes())
    (images / "zz_broken.png").write_bytes(b"oops")
    result = run("predict", model_dir, "--images", images, "--out", tmp_path / "p")
    assert result.exit_code == 0 and "2 images predicted, 1 unreadable" in result.output
    assert "skipped" in result.output and "zz_broken.png" in result.output
    assert "zz_broken.png" in (tmp_path / "p" / "report.html").read_text()


def test_the_python_api_refuses_an_unknown_task():
    with pytest.raises(SemnbInputError, match="unknown task"):
        semnb.fit("detect", ".")


def test_an_unreachable_ray_cluster_is_one_line(model_dir, sem, tmp_path):
    line = one_line(run("predict", model_dir, "--images", sem / "test", "--out", tmp_path / "p", "--engine", "ray",
                        "--ray-address", "127.0.0.1:9"))
    assert "--ray-address 127.0.0.1:9" in line and "cannot be reached" in line
    assert not (tmp_path / "p").exists()


def test_an_archive_index_built_from_predictions_answers_like_the_gallery(tmp_path):
    from semnb.data.synth_tem import write_tem_dataset

    tem = write_tem_dataset(tmp_path / "tem", n_per_class=3, size=64, seed=0)
    model = tmp_path / "model"
    assert run("fit", "retrieve", "--images", tem, "--backbone", "semnb-tiny-cnn", "--out", model).exit_code == 0
    assert run("predict", model, "--images", tem / "images", "--out", tmp_path / "pred").exit_code == 0
    built = run("index", "build", tmp_path / "pred", "--out", tmp_path / "index")
    assert built.exit_code == 0 and "recall@10 1.0 against exact search" in built.output
    query = sorted((tem / "images").glob("*.png"))[0]
    gallery = run("search", model, "--query", query, "--k", 3).output.splitlines()[1:]
    archive = run("search", model, "--index", tmp_path / "index", "--query", query, "--k", 3).output.splitlines()[1:]
    assert [line.split()[-1].split("/")[-1] for line in gallery] == [line.split()[-1].split("/")[-1] for line in archive]
    assert archive[0].split()[1] == "0.0000"  # the query itself, first

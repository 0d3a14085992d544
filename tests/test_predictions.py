"""`semnb.predictions`: streaming prediction to files, resumable, byte-identical, unreadable files listed.

A small brightness model (a test double with the `FittedModel` interface) keeps these tests about the
runner; the real models' own tests live beside them (tests/<package>/test_model.py).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from semnb.errors import SemnbInputError
from semnb.fitted import FittedModel, ImagePrediction
from semnb.predictions import PNG_LEVELS, predict


class BrightnessModel(FittedModel):
    """Defect map = gain x brightness; the image score is the map's maximum."""

    task = "segment"

    def __init__(self, gain: float = 1.0, threshold: float = 0.6):
        self.gain, self._threshold = gain, threshold
        self.calls = 0

    def settings(self) -> dict:
        return {"method": "brightness", "image_size": 0, "precision": "fp32", "threshold": self._threshold,
                "threshold_rule": "a test value", "map_range": [0.0, 2.0]}

    def tensors(self) -> dict:
        return {"gain": torch.tensor([self.gain])}

    @classmethod
    def restore(cls, settings, tensors, device="auto", precision=None):
        return cls(float(tensors["gain"][0]), settings["threshold"])

    def predict(self, pixels):
        self.calls += 1
        return [ImagePrediction(score=float(self.gain * p.max()), defect_map=(self.gain * p).astype(np.float32))
                for p in pixels]


@pytest.fixture
def folder(tmp_path):
    """Nine gray images of different sizes in two subfolders, and one corrupt file."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for i in range(9):
        (root / f"lot{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((20 + i, 24)) * 255).astype(np.uint8)).save(root / f"lot{i % 2}" / f"w{i}.png")
    (root / "lot0" / "broken.png").write_bytes(b"not a png")
    return root


def _files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_every_image_gets_a_row_a_16_bit_map_and_a_mask_and_the_broken_one_is_listed(folder, tmp_path):
    result = predict(BrightnessModel(), folder, tmp_path / "out", batch_size=4)
    table = result.table
    assert len(table) == 10 and list(table["index"]) == list(range(10))
    broken = table[table["path"].str.endswith("broken.png")]
    assert len(broken) == 1 and "cannot read the image" in broken["error"].iloc[0]
    good = table[table["error"].isna()]
    row = int(good.index[0])
    stored = np.asarray(Image.open(tmp_path / "out" / good["map_file"].iloc[0]))
    assert stored.dtype == np.uint16
    image = np.asarray(Image.open(good["path"].iloc[0]), dtype=np.float32) / 255
    np.testing.assert_allclose(result.defect_map(row), image, atol=2.0 / PNG_LEVELS)  # gain 1, range [0, 2]
    np.testing.assert_array_equal(result.mask(row), image >= 0.6)
    assert good["defective"].all() and table["score"].iloc[row] == pytest.approx(image.max())
    report = result.report.read_text()
    assert "broken.png" in report and "Unreadable files (1)" in report and "data:image/png;base64" in report
    assert "embedding" not in (tmp_path / "out" / "predictions.csv").read_text().splitlines()[0]


def test_an_interrupted_run_resumes_and_equals_an_uninterrupted_one_byte_for_byte(folder, tmp_path):
    whole = tmp_path / "whole"
    predict(BrightnessModel(), folder, whole, batch_size=3)

    class Interrupted(BrightnessModel):
        def predict(self, pixels):
            if self.calls == 2:
                raise KeyboardInterrupt  # as Ctrl-C or a kill would stop it, after two batches
            return super().predict(pixels)

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        predict(Interrupted(), folder, resumed, batch_size=3)
    assert len(list((resumed / "parts").iterdir())) == 2 and not (resumed / "predictions.parquet").exists()
    model = BrightnessModel()
    predict(model, folder, resumed, batch_size=3)
    assert model.calls == 2  # only the two missing batches were computed
    assert _files(resumed) == _files(whole)
    assert not list(resumed.rglob("*.tmp"))


def test_the_same_model_on_the_same_images_writes_the_same_bytes_with_or_without_workers(folder, tmp_path):
    predict(BrightnessModel(), folder, tmp_path / "a", batch_size=4)
    predict(BrightnessModel(), folder, tmp_path / "b", batch_size=4, workers=2)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_another_run_in_the_same_folder_is_refused_unless_overwrite(folder, tmp_path):
    out = tmp_path / "out"
    predict(BrightnessModel(), folder, out, batch_size=4)
    with pytest.raises(SemnbInputError, match="predictions of another run.*--overwrite"):
        predict(BrightnessModel(gain=2.0), folder, out, batch_size=4)
    with pytest.raises(SemnbInputError, match="another run"):
        predict(BrightnessModel(), folder, out, batch_size=4, threshold=0.9)
    again = predict(BrightnessModel(), folder, out, batch_size=4, threshold=0.9, overwrite=True)
    assert again.run["threshold"] == 0.9 and again.run["threshold_rule"] == "given with --threshold"


def test_a_csv_of_paths_and_an_empty_folder(folder, tmp_path):
    csv = tmp_path / "list.csv"
    csv.write_text("path\nimages/lot1/w1.png\nimages/lot0/w0.png\n")
    table = predict(BrightnessModel(), csv, tmp_path / "out").table
    assert [p.split("/")[-1] for p in table["path"]] == ["w1.png", "w0.png"]  # the CSV's order
    (tmp_path / "empty").mkdir()
    with pytest.raises(SemnbInputError, match="lists no image"):
        predict(BrightnessModel(), tmp_path / "empty", tmp_path / "out2")


def test_images_of_another_size_than_the_support_are_said_once(folder, tmp_path):
    model = BrightnessModel()
    model.training = {"image_shapes": [[20, 24]]}  # the support was 24 x 20 (w0.png); the others differ
    with pytest.warns(UserWarning, match=r"w2.png is 24x22 px, not a size the model was fit on \(24x20\)") as said:
        predict(model, folder, tmp_path / "out", batch_size=2, top_n=0)
    assert len([w for w in said if "not a size the model was fit on" in str(w.message)]) == 1

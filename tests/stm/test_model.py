"""The fitted STM model: fit on labelled scans, restore from settings + tensors, predict new scans."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from semnb import stm
from semnb.data.synth_stm import generate_stm_scan
from semnb.errors import SemnbInputError
from semnb.stm.model import TENSOR_NAMES, StmModel, fit_stm

SURFACE, SIZE = "ge001", 128
ROWS = 300  # training rows per group and scan: small models fit fast
pytestmark = pytest.mark.usefixtures("small_forest_module")  # 10 trees: every fit and restore here is small


def _scans(seeds, size=SIZE, **options):
    return [generate_stm_scan(SURFACE, size=size, seed=s, **options) for s in seeds]


@pytest.fixture(scope="module")
def support():
    return _scans([0, 1, 2])


@pytest.fixture(scope="module")
def model(support):
    return fit_stm([s.raw for s in support], [s.mask for s in support], max_rows=ROWS)


def _f1_and_chance(maps, masks, threshold):
    """Pooled pixel F1 of map >= threshold, and the F1 a random mask with as many pixels would
    expect: precision = the defect fraction r, recall = the predicted fraction q, F1 = 2rq/(r+q)."""
    predicted = np.concatenate([(m >= threshold).ravel() for m in maps])
    truth = np.concatenate([m.ravel() for m in masks])
    f1 = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    q, r = predicted.mean(), truth.mean()
    return f1, 2 * r * q / (r + q)


def test_restored_model_predicts_exactly_the_same(model, support):
    settings = json.loads(json.dumps(model.settings()))
    assert settings == model.settings()
    tensors = model.tensors()
    assert set(tensors) == set(TENSOR_NAMES)
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in tensors.values())
    restored = StmModel.restore(settings, tensors)
    assert restored.settings() == model.settings() and restored.threshold == model.threshold
    scans = [support[0].raw, generate_stm_scan(SURFACE, size=96, seed=7).raw]
    for a, b in zip(model.predict(scans), restored.predict(scans)):
        assert np.array_equal(a.defect_map, b.defect_map) and a.score == b.score


def test_same_seed_same_fit_and_the_seed_draws_the_support():
    small = _scans([0, 1], size=96)
    raws, masks = [s.raw for s in small], [s.mask for s in small]
    first, again = (fit_stm(raws, masks, shots=2, seed=3, max_rows=ROWS) for _ in range(2))
    assert first.settings() == again.settings()
    assert all(torch.equal(first.tensors()[k], again.tensors()[k]) for k in TENSOR_NAMES)
    assert np.array_equal(first.predict(raws[:1])[0].defect_map, again.predict(raws[:1])[0].defect_map)
    other = fit_stm(raws, masks, shots=2, seed=4, max_rows=ROWS).tensors()["support_features"]
    assert not (other.shape == first.tensors()["support_features"].shape
                and torch.equal(other, first.tensors()["support_features"]))


def test_one_scan_model_is_the_forest_of_the_fewshot_map_of_that_scan(support):
    # no rows thinned: the saved forest is then the one `semnb eval stm` fits on that scan
    scan = support[0]
    model = fit_stm([scan.raw], [scan.mask], shots=2, seed=1, max_rows=10**9)
    analysis = stm.analyze_scan(scan.raw)
    pixel_support = stm.sample_pixel_support(scan.mask, 2, 1)
    residual = analysis.defect_map.residual
    features = stm.pixel_features(analysis.z, residual, analysis.defect_map.lattice.period,
                                  stm.support_polarity(residual, pixel_support))
    cues = stm.unsupervised_cues(analysis)
    cue = stm.cue_map(cues, stm.select_cues(cues, pixel_support))
    expected = stm.forest_probability(features, pixel_support, cue, seed=1).astype(np.float32)
    assert np.array_equal(model.predict([scan.raw])[0].defect_map, expected)
    assert "halves of the one scan" in model.settings()["threshold_rule"]
    groups = model.tensors()["support_groups"].numpy()
    assert (groups == 1).sum() == pixel_support.defect.sum() and set(np.unique(groups)) == {0, 1, 2, 3}


def test_masks_at_the_threshold_agree_with_the_truth_far_better_than_chance(model, support):
    threshold = model.threshold
    lo, hi = model.settings()["map_range"]
    assert lo < threshold < hi and "thresholds of the scans" in model.settings()["threshold_rule"]
    held_out = _scans([5, 6], size=160)
    for scans, at_least in ((support, 0.6), (held_out, 0.3)):
        predictions = model.predict([s.raw for s in scans])
        assert [p.defect_map.shape for p in predictions] == [s.mask.shape for s in scans]
        assert all(lo <= p.score <= hi and p.defect_map.dtype == np.float32 for p in predictions)
        f1, chance = _f1_and_chance([p.defect_map for p in predictions], [s.mask for s in scans], threshold)
        assert f1 > at_least and f1 > 10 * chance, (f1, chance)


def test_scores_rank_defective_scans_above_clean_ones(model):
    clean, defective = _scans([8, 9], n_defects=0), _scans([8, 9])
    scores = [p.score for p in model.predict([s.raw for s in clean + defective])]
    assert max(scores[:2]) < min(scores[2:]), scores


def test_threshold_falls_back_to_the_classifier_boundary_without_defects_in_a_half(support):
    scan = support[0]
    mask = scan.mask.copy()
    mask[:, SIZE // 2:] = False
    model = fit_stm([scan.raw], [mask], max_rows=ROWS)
    assert model.threshold == 0.5 and "boundary" in model.settings()["threshold_rule"]
    assert model.settings()["crossfit_pixel_f1"] is None


@pytest.mark.parametrize("masks, what, problem", [
    (lambda s: [s[0].mask, np.zeros_like(s[1].mask)], r"masks\[1\]", "no defect pixel"),
    (lambda s: [s[0].mask, s[1].mask[:-1]], r"masks\[1\]", "has shape"),
    (lambda s: [s[0].mask], "masks", "1 masks for 2 scans"),
])
def test_bad_masks_are_named(support, masks, what, problem):
    with pytest.raises(SemnbInputError, match=problem) as error:
        fit_stm([s.raw for s in support[:2]], masks(support))
    assert error.match(f"^{what}")


def test_bad_support_options_are_named(support):
    with pytest.raises(SemnbInputError, match="^scans: is empty"):
        fit_stm([], [])
    with pytest.raises(SemnbInputError, match=r"^masks\[0\] \(--shots\)"):
        fit_stm([support[0].raw], [support[0].mask], shots=500)
    with pytest.raises(SemnbInputError, match="^--shots"):
        fit_stm([support[0].raw], [support[0].mask], shots=0)


def test_restore_refuses_an_incomplete_or_foreign_model(model):
    settings, tensors = model.settings(), model.tensors()
    broken = [
        ({k: v for k, v in settings.items() if k != "polarity"}, tensors, "lacks polarity"),
        (settings, {"support_features": tensors["support_features"]}, "lacks support_groups"),
        ({**settings, "method": "patchcore"}, tensors, "holds method 'patchcore'"),
        (settings, {**tensors, "support_features": tensors["support_features"][:, :5]}, "do not fit its settings"),
    ]
    for s, t, problem in broken:
        with pytest.raises(SemnbInputError, match=problem) as error:
            StmModel.restore(s, t)
        assert error.match("^stm model: ") and "fit the model again" in str(error.value)


def test_predict_names_a_bad_scan_of_the_batch(model, support):
    with pytest.raises(SemnbInputError, match="^scan 1 of the batch"):
        model.predict([support[0].raw, np.full((64, 64), np.nan)])


def test_fit_save_predict_round_trip_from_the_command_line(tmp_path):
    # `semnb fit stm` -> model folder (JSON + safetensors, no pickle) -> `semnb predict`, scores as fitted
    from click.testing import CliRunner

    from semnb.cli import main
    from semnb.data.image_io import read_image
    from semnb.model_folder import load_model

    scans = tmp_path / "scans"
    scans.mkdir()
    for i, scan in enumerate(_scans([0, 1], size=96)):
        np.save(scans / f"ge{i}.npy", scan.raw)
        np.save(scans / f"ge{i}_mask.npy", scan.mask)
    runner = CliRunner()
    fitted = runner.invoke(main, ["fit", "stm", "--scans", str(scans), "--out", str(tmp_path / "model")])
    assert fitted.exit_code == 0, fitted.output
    assert not list((tmp_path / "model").rglob("*.pkl")) and not list((tmp_path / "model").rglob("*.pickle"))
    model = load_model(tmp_path / "model")
    assert model.settings()["method"] == "fewshot_forest" and not model.settings()["pseudo_labels"]
    new = tmp_path / "new"
    new.mkdir()
    np.save(new / "a.npy", _scans([7], size=96)[0].raw)
    predicted = runner.invoke(main, ["predict", str(tmp_path / "model"), "--images", str(new), "--out", str(tmp_path / "out")])
    assert predicted.exit_code == 0, predicted.output
    table = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert table["score"].iloc[0] == pytest.approx(model.predict([read_image(new / "a.npy")])[0].score, abs=1e-6)

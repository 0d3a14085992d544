"""Fitted few-shot models: exact restore, determinism, the threshold, sanity on the support, bad input."""
import copy
import json

import numpy as np
import pytest
import torch

from semnb.data.synth_sem import generate_sem_image
from semnb.errors import SemnbInputError
from semnb.fewshot import model as model_module
from semnb.fewshot.model import (
    NORMAL_QUANTILE,
    ClassifyModel,
    SegmentModel,
    fit_classify,
    fit_segment,
)

CLASSES = ["good", "particle", "scratch"]
TINY = {"backbone": "semnb-tiny", "image_size": 64, "device": "cpu"}
CNN = {"backbone": "efficientnet-lite0", "image_size": 128, "device": "cpu"}
NO_TEXT = {**CNN, "image_size": 64}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models on a shared 2-core CPU: one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def support():
    """9 synthetic SEM images, 3 per class, 64 px: pixels, masks (None for good), is_normal, labels."""
    out = {"pixels": [], "masks": [], "is_normal": [], "labels": []}
    for seed in range(3):
        for label, cls in enumerate(CLASSES):
            sample = generate_sem_image(cls, size=64, seed=seed)
            out["pixels"].append(sample.image.astype(np.float32) / 255)
            out["masks"].append(None if cls == "good" else sample.mask)
            out["is_normal"].append(cls == "good")
            out["labels"].append(label)
    return out


@pytest.fixture(scope="module")
def odd_sizes(support):
    """Images of other sizes (and not square) than the support's 64 x 64."""
    rng = np.random.default_rng(0)
    return [rng.random((80, 48), dtype=np.float32), rng.random((100, 100), dtype=np.float32), support["pixels"][1]]


_SEGMENT_MODELS = {}


def _segment(support, method):
    if method not in _SEGMENT_MODELS:
        _SEGMENT_MODELS[method] = fit_segment(support["pixels"], support["masks"], support["is_normal"],
                                              method=method, **TINY)
    return _SEGMENT_MODELS[method]


def _restored(model, cls):
    return cls.restore(json.loads(json.dumps(model.settings())), model.tensors(), device="cpu")


# ------------------------------------------------------------------ segment
@pytest.mark.parametrize("method", ["semnb", "semclip", "nn_visual", "patchcore"])
def test_segment_restore_predicts_exactly_the_same_at_each_images_own_size(support, odd_sizes, method):
    model = _segment(support, method)
    settings = model.settings()
    assert {"method", "image_size", "precision", "backbone", "backbone_weights", "threshold", "threshold_rule",
            "map_range"} <= set(settings)
    assert settings["method"] == method and settings["precision"] == "fp32"
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in model.tensors().values())
    restored = _restored(model, SegmentModel)
    assert restored.settings() == settings
    before, after = model.predict(odd_sizes), restored.predict(odd_sizes)
    lo, hi = model.map_range
    for image, a, b in zip(odd_sizes, before, after):
        assert a.defect_map.shape == image.shape and a.defect_map.dtype == np.float32
        assert np.array_equal(a.defect_map, b.defect_map) and a.score == b.score
        assert lo <= a.defect_map.min() and a.defect_map.max() <= hi
    assert lo < model.threshold < hi or model.threshold == hi


def test_segment_default_is_semnb_and_same_seed_same_tensors_and_maps(support):
    first = _segment(support, "semnb")
    again = fit_segment(support["pixels"], support["masks"], support["is_normal"], **TINY)
    assert again.settings()["method"] == "semnb" and {"segmenter.memory", "segmenter.calibration"} <= set(a := again.tensors())
    b = first.tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first.settings() == again.settings()
    assert np.array_equal(first.predict(support["pixels"][:2])[1].defect_map,
                          again.predict(support["pixels"][:2])[1].defect_map)


def test_a_chosen_smoothing_is_saved_and_restored_with_the_semnb_segmenter(support):
    """The sigma `choose_sigma` picks per support travels in the folder (a 4 px default would hide a lost one)."""
    fitted = _segment(support, "semnb")
    assert fitted.segmenter.sigma != 12.0
    model = copy.deepcopy(fitted)
    model.segmenter.sigma = 12.0
    restored = _restored(model, SegmentModel)
    assert restored.segmenter.sigma == 12.0
    wide = model.predict(support["pixels"][:1])[0].defect_map
    assert np.array_equal(wide, restored.predict(support["pixels"][:1])[0].defect_map)
    assert not np.array_equal(wide, fitted.predict(support["pixels"][:1])[0].defect_map)


def test_an_image_score_mixed_with_nn_visual_is_saved_and_restored_with_its_memory(support):
    """choose_score_mix's standardisation and nn_visual's defect-free tokens travel in the folder."""
    fitted = _segment(support, "semnb")
    model = copy.deepcopy(fitted)
    model.segmenter.score_mix = (0.1, 0.2, 0.3, 0.4)
    restored = _restored(model, SegmentModel)
    assert restored.segmenter.score_mix == (0.1, 0.2, 0.3, 0.4) and len(restored.segmenter.visual) > 0
    mixed = model.predict(support["pixels"][:2])
    assert [m.score for m in mixed] == [m.score for m in restored.predict(support["pixels"][:2])]
    assert [m.score for m in mixed] != [m.score for m in fitted.predict(support["pixels"][:2])]


def test_segment_masks_at_the_threshold_agree_with_the_support_masks_far_better_than_chance(support):
    model = fit_segment(support["pixels"], support["masks"], support["is_normal"], method="semclip", **CNN)
    assert "F1-max" in model.settings()["threshold_rule"]
    truth = np.concatenate([np.zeros((64, 64), bool).ravel() if m is None else m.ravel() for m in support["masks"]])
    predicted = np.concatenate([p.defect_map.ravel() >= model.threshold for p in model.predict(support["pixels"])])
    f1 = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    p, q = truth.mean(), predicted.mean()
    chance = 2 * p * q / (p + q)  # expected F1 of a mask as large as ours drawn independently of the defects
    assert f1 > 10 * chance, (f1, chance)


def test_threshold_falls_back_to_a_defect_free_quantile_with_one_defect_image(support):
    keep = [0, 1, 3, 6]  # one defect image, three defect-free ones
    model = fit_segment([support["pixels"][i] for i in keep], [support["masks"][i] for i in keep],
                        [support["is_normal"][i] for i in keep], method="patchcore", **TINY)
    assert f"{NORMAL_QUANTILE} quantile" in model.settings()["threshold_rule"]
    assert 0 < model.threshold <= model.map_range[1]
    alone = fit_segment([support["pixels"][1]], [support["masks"][1]], [False], method="patchcore", **TINY)
    assert "nothing could be held out" in alone.settings()["threshold_rule"]


def test_segment_bad_input_says_what_to_fix(support):
    pixels, masks, normal = support["pixels"], support["masks"], support["is_normal"]
    with pytest.raises(SemnbInputError, match="only defect-free images.*add defect images"):
        fit_segment([pixels[0], pixels[3]], [None, None], [True, True], **TINY)
    with pytest.raises(SemnbInputError, match="support image 1: is a defect image without a mask"):
        fit_segment(pixels[:3], [None, None, masks[2]], normal[:3], **TINY)
    with pytest.raises(SemnbInputError, match="support mask 1: has shape"):
        fit_segment(pixels[:3], [None, masks[1][:32], masks[2]], normal[:3], **TINY)
    with pytest.raises(SemnbInputError, match="--method"):
        fit_segment(pixels[:3], masks[:3], normal[:3], method="unet", **TINY)
    with pytest.raises(SemnbInputError, match="3 images, 2 masks"):
        fit_segment(pixels[:3], masks[:2], normal[:3], **TINY)


def test_segment_restore_refuses_incomplete_or_foreign_folders(support):
    model = _segment(support, "semclip")
    settings, tensors = model.settings(), model.tensors()
    missing_tensor = dict(tensors)
    missing_tensor.pop(next(iter(tensors)))
    with pytest.raises(SemnbInputError, match="incomplete or from another version"):
        SegmentModel.restore(settings, missing_tensor, device="cpu")
    with pytest.raises(SemnbInputError, match="incomplete or from another version.*threshold"):
        SegmentModel.restore({k: v for k, v in settings.items() if k != "threshold"}, tensors, device="cpu")
    with pytest.raises(SemnbInputError, match="its config"):
        SegmentModel.restore({**settings, "config": {**settings["config"], "new_knob": 1}}, tensors, device="cpu")
    with pytest.raises(SemnbInputError, match="was fit on backbone semnb-tiny with weights"):
        SegmentModel.restore({**settings, "backbone_weights": "other weights"}, tensors, device="cpu")


# ------------------------------------------------------------------ classify
@pytest.mark.parametrize("method", ["semnb", "defect_pooled", "semclip", "linear_probe", "prototype"])
def test_classify_restore_predicts_exactly_the_same(support, odd_sizes, method):
    model = fit_classify(support["pixels"], support["labels"], CLASSES, "good", support["masks"], method=method,
                         **TINY)
    restored = _restored(model, ClassifyModel)
    assert restored.settings() == model.settings() and restored.settings()["method"] == method
    before, after = model.predict(odd_sizes), restored.predict(odd_sizes)
    for a, b in zip(before, after):
        assert a.probabilities == b.probabilities and a.label == b.label and a.score == b.score
        assert set(a.probabilities) == set(CLASSES) and a.score == max(a.probabilities.values())
        assert a.label == max(a.probabilities, key=a.probabilities.get)
        assert abs(sum(a.probabilities.values()) - 1) < 1e-5


def test_classify_default_method_and_same_seed(support):
    with_masks = fit_classify(support["pixels"], support["labels"], CLASSES, "good", support["masks"], **TINY)
    assert with_masks.settings()["method"] == "semnb" and "gate.coef" in with_masks.tensors()
    assert "every defect image has a mask" in with_masks.settings()["method_rule"]
    masks = list(support["masks"])
    masks[1] = None
    without = fit_classify(support["pixels"], support["labels"], CLASSES, "good", masks, **TINY)
    assert without.settings()["method"] == "semclip"
    again = fit_classify(support["pixels"], support["labels"], CLASSES, "good", support["masks"], **TINY)
    a, b = with_masks.tensors(), again.tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [p.probabilities for p in with_masks.predict(support["pixels"])] == \
           [p.probabilities for p in again.predict(support["pixels"])]


def test_classify_agrees_with_the_support_labels_far_better_than_chance(support):
    model = fit_classify(support["pixels"], support["labels"], CLASSES, "good", support["masks"], **CNN)
    predicted = [p.label for p in model.predict(support["pixels"])]
    accuracy = np.mean([p == CLASSES[label] for p, label in zip(predicted, support["labels"])])
    chance = np.bincount(support["labels"]).max() / len(support["labels"])  # always the largest class
    assert accuracy >= chance + 0.5 * (1 - chance), (accuracy, chance)


def test_classify_bad_input_says_what_to_fix(support):
    pixels, labels, masks = support["pixels"], support["labels"], support["masks"]
    with pytest.raises(SemnbInputError, match=r"support: holds one class only \(particle\).*add a second class folder"):
        fit_classify(pixels[:1] + pixels[4:5], [1, 1], CLASSES, "good", **TINY)
    with pytest.raises(SemnbInputError, match="has no image of class 'scratch'"):
        fit_classify(pixels[:2], [0, 1], CLASSES, "good", **TINY)
    with pytest.raises(SemnbInputError, match="defect_pooled: needs a defect mask"):
        fit_classify(pixels, labels, CLASSES, "good", None, method="defect_pooled", **TINY)
    with pytest.raises(SemnbInputError, match="--normal-class"):
        fit_classify(pixels, labels, CLASSES, "free", **TINY)
    with pytest.raises(SemnbInputError, match="--method"):
        fit_classify(pixels, labels, CLASSES, "good", method="svm", **TINY)
    model = fit_classify(pixels, labels, CLASSES, "good", masks, method="linear_probe", **TINY)
    tensors = {k: v for k, v in model.tensors().items() if k != "probe.coef"}
    with pytest.raises(SemnbInputError, match=r"incomplete or from another version \(missing probe.coef\)"):
        ClassifyModel.restore(model.settings(), tensors, device="cpu")


def test_fit_restore_and_predict_place_every_tensor_explicitly(support, implicit_device_is_meta, monkeypatch):
    """Everything but loading the backbone and embedding text (open_clip's tokenizer) runs in the meta context."""
    pixels, masks = support["pixels"][:6], support["masks"][:6]
    fitted = fit_segment(pixels, masks, support["is_normal"][:6], method="semclip", **NO_TEXT)
    loaded = fitted.backbone
    monkeypatch.setattr(model_module, "load_backbone", lambda *args, **kwargs: loaded)
    with implicit_device_is_meta():
        model = fit_segment(pixels, masks, support["is_normal"][:6], method="semclip", **NO_TEXT)
        maps = [p.defect_map for p in _restored(model, SegmentModel).predict(pixels[:2])]
        semnb = fit_segment(pixels, masks, support["is_normal"][:6], **NO_TEXT)
        semnb_maps = [p.defect_map for p in _restored(semnb, SegmentModel).predict(pixels[:2])]
        classifier = fit_classify(pixels, support["labels"][:6], CLASSES, "good", masks, **NO_TEXT)
        labels = [p.label for p in _restored(classifier, ClassifyModel).predict(pixels[:2])]
    assert np.array_equal(maps[1], fitted.predict(pixels[:2])[1].defect_map) and len(labels) == 2
    assert np.array_equal(semnb_maps[1], semnb.predict(pixels[:2])[1].defect_map)

"""Device and precision through the few-shot package: every tensor placed explicitly, CPU results out, bf16 runs.

CI has no GPU, so placement is checked inside `implicit_device_is_meta` (conftest.py): a tensor
created without an explicit device lands on `meta` there and the first operation mixing it with
the real CPU features fails. The features are encoded before entering it (the backbone is not
what these tests check).
"""
import warnings

import numpy as np
import pytest
import torch

from semnb.data import load_dataset, write_sem_dataset
from semnb.fewshot.classification import ClassificationConfig, SemClipClassifier
from semnb.fewshot.defect_pooling import DefectPooledClassifier, DefectPoolingConfig
from semnb.fewshot.evaluate import evaluate_classification, evaluate_segmentation, prepare_fewshot
from semnb.fewshot.segmentation import PatchFeatures, SegmentationConfig, SemClipSegmenter
from semnb.hardware import CPU, SlowPrecisionWarning
from semnb.models.levels import EncodedLevels

GRID, SIZE = (4, 4), 32


@pytest.fixture(scope="module")
def sem_set(tmp_path_factory):
    root = write_sem_dataset(tmp_path_factory.mktemp("device") / "sem", n_per_class=3, size=64, seed=0,
                             train_good=1, progress=False)
    return load_dataset(root)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMNB_CACHE_DIR", str(tmp_path / "cache"))


def _visual_features(n: int = 6, dims=(8, 12), seed: int = 0) -> PatchFeatures:
    """Patch tokens of a backbone without text (the learned-anchor path of the segmenter)."""
    g = torch.Generator().manual_seed(seed)
    return PatchFeatures([torch.randn(n, GRID[0] * GRID[1], d, generator=g) for d in dims], None, GRID,
                         in_joint_space=False)


def _masks(n: int = 6) -> np.ndarray:
    masks = np.zeros((n, SIZE, SIZE), bool)
    masks[1::2, 8:20, 10:22] = True
    return masks


def _levels(n: int = 8, dims=(8, 12), seed: int = 0) -> EncodedLevels:
    g = torch.Generator().manual_seed(seed)
    return EncodedLevels(cls=[torch.randn(n, d, generator=g) for d in dims],
                         patch_z=[torch.randn(n, 16, d, generator=g) for d in dims], patch_v=None,
                         embedding=torch.randn(n, 10, generator=g), grid=GRID)


def _on_cpu_float32(array) -> None:
    assert isinstance(array, np.ndarray) and array.dtype in (np.float32, np.float64) and np.isfinite(array).all()


def test_evaluations_place_every_tensor_explicitly(sem_set, implicit_device_is_meta):
    segment = prepare_fewshot(sem_set, "segment", "semnb-tiny", image_size=64, prompt_styles=("expert", "generic"),
                              device="cpu")
    classify = prepare_fewshot(sem_set, "classify", "semnb-tiny", image_size=64, prompt_styles=("expert", "generic"),
                               device="cpu")
    assert segment.compute == CPU and segment.device == torch.device("cpu") and segment.precision == "fp32"
    with implicit_device_is_meta():
        seg = evaluate_segmentation(segment, shots=1, seeds=[0], ablations=True, coreset_fraction=0.5)
        cls = evaluate_classification(classify, shots=1, seeds=[0], ablations=True)
    assert seg.extra["device"] == cls.extra["device"] == "cpu" and seg.precision == cls.precision == "fp32"
    assert list(seg.results) == ["semnb", "semclip", "winclip", "patchcore", "nn_visual"]
    assert list(cls.results) == ["semnb", "semclip", "linear_probe", "prototype", "defect_pooled"]
    for result in (seg, cls):
        for values in [*result.results.values(), *result.extra["ablations"].values()]:
            assert all(np.isfinite(v) for k, v in values.items() if not k.endswith("_std") and k != "image_auroc")


def test_segmenter_trains_and_maps_on_its_device_and_returns_cpu_arrays(implicit_device_is_meta):
    feats, masks = _visual_features(), _masks()
    outside = SemClipSegmenter(SegmentationConfig(steps=5), device="cpu").fit(feats, masks, seed=3).predict(feats, SIZE)
    with implicit_device_is_meta():
        model = SemClipSegmenter(SegmentationConfig(steps=5), device="cpu").fit(feats, masks, seed=3)
        out = model.predict(feats, SIZE)
    assert model.compute == CPU
    assert all(p.device.type == "cpu" for p in model.layer.parameters())
    assert all(a.device.type == "cpu" and not a.requires_grad for a in model.anchors)
    for array in (out.maps, out.scores, *out.patch_maps.values()):
        _on_cpu_float32(array)
    np.testing.assert_array_equal(out.maps, outside.maps)  # the same seed draws the same weights inside and out


def test_classifiers_train_on_their_device_and_return_cpu_arrays(implicit_device_is_meta):
    levels, labels = _levels(), np.array([0, 1, 2, 0, 1, 2, 0, 1])
    feats, masks = _visual_features(8), _masks(8)
    with implicit_device_is_meta():
        semclip = SemClipClassifier(ClassificationConfig(steps=5), device="cpu").fit(levels, labels, 3, seed=1)
        proba = semclip.predict(levels)
        pooled = DefectPooledClassifier(DefectPoolingConfig(segmentation=SegmentationConfig(steps=3)), device="cpu")
        pooled_proba = pooled.fit(feats, masks, labels, 3, seed=1).predict_proba(feats)
        vectors = pooled.query_vectors(feats)
    assert all(p.device.type == "cpu" for p in semclip.head.parameters())
    assert all(a.device.type == "cpu" for a in semclip.anchors)
    for array in (proba.proba, proba.p_s, proba.p_c, pooled_proba):
        _on_cpu_float32(array)
    assert vectors.device.type == "cpu" and vectors.dtype == torch.float32
    np.testing.assert_allclose(proba.proba.sum(axis=1), 1, rtol=1e-5)


def test_bf16_on_the_cpu_still_runs_and_returns_float32():
    feats, masks = _visual_features(), _masks()
    levels, labels = _levels(), np.array([0, 1, 2, 0, 1, 2, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowPrecisionWarning)  # said on CPUs without AMX / AVX512-BF16
        segmenter = SemClipSegmenter(SegmentationConfig(steps=5), device="cpu", precision="bf16")
        out = segmenter.fit(feats, masks, seed=0).predict(feats, SIZE)
        proba = SemClipClassifier(ClassificationConfig(steps=5), device="cpu", precision="bf16").fit(
            levels, labels, 3, seed=0).predict(levels)
    assert segmenter.compute.precision == "bf16"
    assert out.maps.dtype == np.float32 and proba.proba.dtype == np.float32
    _on_cpu_float32(out.maps)
    _on_cpu_float32(proba.proba)
    assert np.isfinite(segmenter.loss_history).all()

"""semnb's recommended segmenter and classifier: the calibration, the leave-one-out distances, the combined map,
the gate, on small exact cases and tiny random features (placement checked by implicit_device_is_meta)."""
import numpy as np
import torch

from semnb.components import image_scores, upsample_and_smooth
from semnb.fewshot import baselines
from semnb.fewshot.recommended import (
    SemnbClassifier,
    SemnbSegmenter,
    calibrate_distances,
    gate_probabilities,
    leave_one_out_distances,
    support_image_scores,
)
from semnb.fewshot.segmentation import PatchFeatures

GRID, SIZE = (4, 4), 32


def _support(n: int = 6, seed: int = 0):
    """n images, the even ones defect-free, the odd ones with a bright defect under a mask at patches (1..2, 1..2)."""
    g = torch.Generator().manual_seed(seed)
    z = [torch.randn(n, 16, d, generator=g) * 0.1 for d in (8, 12)]
    masks = np.zeros((n, SIZE, SIZE), bool)
    masks[1::2, 8:24, 8:24] = True
    patches = torch.zeros(16, dtype=torch.bool)
    patches[[5, 6, 9, 10]] = True
    for t in z:
        t[1::2, patches] += 2.0
    feats = PatchFeatures(z, None, GRID, in_joint_space=False)
    return feats, baselines.patchcore_embedding(z, GRID), masks, np.arange(n) % 2 == 0


def test_leave_one_out_distance_is_to_the_other_images_only():
    features = torch.tensor([[[0.0]], [[3.0]], [[4.0]]])
    np.testing.assert_allclose(leave_one_out_distances(features).numpy(), [3.0, 1.0, 1.0])


def test_calibration_puts_defect_distances_above_one_half_and_normal_ones_below():
    a, b = calibrate_distances(torch.tensor([0.1, 0.2, 0.3, 0.2]), torch.tensor([2.0, 2.5, 3.0]))
    q = torch.sigmoid(a * torch.tensor([0.2, 2.5]) + b)
    assert a > 0 and float(q[0]) < 0.5 < float(q[1])


def test_support_scores_leave_each_normal_image_out_of_its_own_memory():
    features = torch.tensor([[[0.0]], [[1.0]], [[5.0]]])
    bank = torch.tensor([[0.0], [1.0]])
    scores = support_image_scores(features, np.array([True, True, False]), bank)
    # one patch per image: eq. 7 with a 1-patch memory gives weight 1 - softmax([d])[0] = 0 for the normals;
    # the defect image against {0, 1}: s* = 4, N_b(m*) = {1, 0}: (1 - e^4 / (e^4 + e^5)) * 4
    np.testing.assert_allclose(scores, [0.0, 0.0, 4 * np.e ** 5 / (np.e ** 4 + np.e ** 5)], rtol=1e-6)


def test_gate_scales_defect_classes_by_p_defect_and_the_normal_class_by_its_complement():
    proba = np.array([[0.5, 0.25, 0.25]])
    gated = gate_probabilities(proba, np.array([0.2]), normal=0)
    raw = np.array([0.5 * 0.8, 0.25 * 0.2, 0.25 * 0.2])
    np.testing.assert_allclose(gated[0], raw / raw.sum())


def test_semnb_map_is_the_geometric_mean_and_finds_the_defect(implicit_device_is_meta):
    feats, features, masks, is_normal = _support()
    with implicit_device_is_meta():
        model = SemnbSegmenter(device="cpu").fit(feats, features, masks, is_normal, seed=0)
        parts = model.patch_maps(feats, features)
        out = model.predict(feats, features, SIZE)
    np.testing.assert_allclose(parts["map"].numpy(), (parts["supervised"] * parts["memory"]).sqrt().numpy(), rtol=1e-6)
    smooth = upsample_and_smooth(parts["map"], GRID, SIZE, 4.0)
    np.testing.assert_allclose(out.scores, image_scores(smooth).numpy(), rtol=1e-5)
    assert out.scores[1::2].min() > out.scores[0::2].max()  # defect images above defect-free ones
    again = SemnbSegmenter(device="cpu").fit(feats, features, masks, is_normal, seed=0).predict(feats, features, SIZE)
    np.testing.assert_array_equal(out.maps, again.maps)


def test_semnb_classifier_gives_probabilities_for_every_class(implicit_device_is_meta):
    feats, features, masks, is_normal = _support()
    labels = np.array([0, 1, 0, 2, 0, 1])
    with implicit_device_is_meta():
        proba = SemnbClassifier(device="cpu").fit(feats, features, masks, is_normal, labels, 3, seed=0).predict_proba(
            feats, features)
    assert proba.shape == (6, 3) and np.allclose(proba.sum(axis=1), 1)
    assert (proba.argmax(axis=1)[is_normal] == 0).all()

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
    choose_score_gate,
    choose_score_mix,
    choose_sigma,
    defect_free_share,
    leave_one_out_distances,
    shift_normal_prior,
    support_folds,
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


def test_support_folds_split_defect_free_and_defect_images_each_in_halves():
    is_normal = np.array([True] * 5 + [False] * 4)
    fold = support_folds(is_normal, seed=3)
    assert sorted(np.bincount(fold[is_normal])) == [2, 3] and list(np.bincount(fold[~is_normal])) == [2, 2]
    np.testing.assert_array_equal(fold, support_folds(is_normal, seed=3))


def test_score_gate_is_kept_only_where_eq7_separates_the_held_out_support():
    is_defect = np.array([False, False, False, True, True, True])
    a, b = choose_score_gate(np.array([0.0, 0.1, 0.2, 1.0, 1.1, 1.2]), is_defect)  # AUROC 1
    assert a > 0 and 1 / (1 + np.exp(-(a * 0.0 + b))) < 0.5 < 1 / (1 + np.exp(-(a * 1.2 + b)))
    assert choose_score_gate(np.array([0.1, 0.5, 0.3, 0.4, 0.6, 0.2]), is_defect) is None  # AUROC 5/9 < 0.75
    assert choose_score_gate(np.array([1.0, 1.1, 1.2, 0.0, 0.1, 0.2]), is_defect) is None  # inverted


def test_sigma_is_the_smoothing_with_the_best_held_out_pixel_auroc():
    """A map that hits a large defect's centre only wants wide smoothing; one that hits a small defect exactly, none."""
    maps = torch.zeros(2, 8, 8)
    big, small = np.zeros((2, 64, 64), bool), np.zeros((2, 64, 64), bool)
    big[0, 8:56, 8:56] = True  # image 0: a large defect, its map lights one central patch
    maps[0, 3:5, 3:5] = 1.0
    small[0, 24:40, 24:40] = True  # the same map, now exactly the defect's patches
    grid = (8, 8)
    flat = maps.reshape(2, -1)
    assert choose_sigma(flat, big, grid, 64, (1.0, 16.0)) == 16.0
    assert choose_sigma(flat, small, grid, 64, (1.0, 16.0)) == 1.0


def test_gate_scales_defect_classes_by_p_defect_and_the_normal_class_by_its_complement():
    proba = np.array([[0.5, 0.25, 0.25]])
    gated = gate_probabilities(proba, np.array([0.2]), normal=0)
    raw = np.array([0.5 * 0.8, 0.25 * 0.2, 0.25 * 0.2])
    np.testing.assert_allclose(gated[0], raw / raw.sum())


def test_semnb_map_is_the_geometric_mean_and_finds_the_defect(implicit_device_is_meta):
    feats, features, masks, is_normal = _support()
    with implicit_device_is_meta():
        model = SemnbSegmenter(device="cpu").fit(feats, features, masks, is_normal, SIZE, seed=0)
        parts = model.patch_maps(feats, features)
        out = model.predict(feats, features, SIZE)
    np.testing.assert_allclose(parts["map"].numpy(), (parts["supervised"] * parts["memory"]).sqrt().numpy(), rtol=1e-6)
    smooth = upsample_and_smooth(parts["map"], GRID, SIZE, 4.0)
    top = image_scores(smooth)
    if model.score_gate is not None:
        a, b = model.score_gate
        eq7 = baselines.reweighted_image_scores(features, parts["distance"], model.bank)
        top = (torch.sigmoid(a * eq7 + b) * top).sqrt()
    if model.score_mix is not None:
        ms, ss, mv, sv = model.score_mix
        top = ((top - ms) / ss + (model.visual_scores(feats, SIZE) - mv) / sv) / 2
    np.testing.assert_allclose(out.scores, top.numpy(), rtol=1e-5, atol=1e-6)
    assert model.held_out["eq7"].shape == (6,) and model.held_out["supervised"].shape == (6, 16)
    assert out.scores[1::2].min() > out.scores[0::2].max()  # defect images above defect-free ones
    again = SemnbSegmenter(device="cpu").fit(feats, features, masks, is_normal, SIZE, seed=0).predict(feats, features,
                                                                                                       SIZE)
    np.testing.assert_array_equal(out.maps, again.maps)


def test_semnb_classifier_gives_probabilities_for_every_class(implicit_device_is_meta):
    feats, features, masks, is_normal = _support()
    labels = np.array([0, 1, 0, 2, 0, 1])
    with implicit_device_is_meta():
        tokens = torch.stack([t.mean(dim=1) for t in feats.z[-1:]])[0]
        model = SemnbClassifier(device="cpu").fit(feats, features, tokens, masks, is_normal, labels, 3, SIZE, seed=0)
        proba = model.predict_proba(feats, features, tokens)
    assert model.cross_fit_f1 == {} and model.features == "contrast"  # a class with 1 image: no choice
    assert proba.shape == (6, 3) and np.allclose(proba.sum(axis=1), 1)
    assert (proba.argmax(axis=1)[is_normal] == 0).all()


def test_semnb_classifier_chooses_its_features_on_the_cross_fit_with_three_images_per_class():
    feats, features, masks, is_normal = _support(12)
    labels = np.where(is_normal, 0, 1 + (np.arange(12) // 2) % 2)  # 6 defect-free, 3 + 3 defect images
    tokens = feats.z[-1].mean(dim=1)
    model = SemnbClassifier(device="cpu").fit(feats, features, tokens, masks, is_normal, labels, 3, SIZE, seed=0)
    assert set(model.cross_fit_f1) == {"contrast", "global"}
    best = max(model.cross_fit_f1.values())
    assert model.cross_fit_f1[model.features] == best and (model.features == "contrast"
                                                           or model.cross_fit_f1["contrast"] < best)


def test_sigma_is_chosen_only_with_three_defect_free_support_images(monkeypatch):
    from semnb.fewshot import recommended

    monkeypatch.setattr(recommended, "choose_sigma", lambda *args, **kwargs: 16.0)
    fitted = {}
    for n in (4, 6):  # 2 and 3 defect-free images (both cross-fit: 2 defect images or more)
        feats, features, masks, is_normal = _support(n)
        fitted[n] = SemnbSegmenter(device="cpu").fit(feats, features, masks, is_normal, SIZE, seed=0)
    assert fitted[4].held_out is not None and fitted[4].sigma == fitted[4].config.segmentation.sigma == 4.0
    assert fitted[6].sigma == 16.0


def test_normal_prior_shift_is_one_factor_on_p_normal_and_calls_the_share_normal():
    proba = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.1, 0.5], [0.05, 0.05, 0.9], [0.3, 0.3, 0.4]])
    for share, normal_rows in ((0.4, {0, 2}), (0.0, set()), (1.0, set(range(5))), (0.6, {0, 2, 4})):
        shifted = shift_normal_prior(proba, 0, share)
        assert set(np.flatnonzero(shifted.argmax(axis=1) == 0)) == normal_rows
        np.testing.assert_allclose(shifted.sum(axis=1), 1)
        w = (shifted[:, 0] / shifted[:, 1]) / (proba[:, 0] / proba[:, 1])  # Bayes' rule: one prior ratio for all rows
        np.testing.assert_allclose(w, w[0])
        np.testing.assert_allclose(shifted[:, 1] / shifted[:, 2], proba[:, 1] / proba[:, 2])


def test_defect_free_share_is_the_weight_of_the_lower_score_component():
    rng = np.random.default_rng(0)
    eq7 = np.exp(np.r_[rng.normal(0.0, 0.1, 75), rng.normal(2.0, 0.1, 25)])
    assert abs(defect_free_share(eq7) - 0.75) < 0.01
    assert defect_free_share(np.exp(rng.normal(2.0, 0.1, 100))) is None  # one kind only: no share to estimate


def test_score_mix_standardises_on_the_defect_free_held_out_scores_and_needs_nn_visual_to_separate_as_well():
    is_normal = np.array([True, True, False, False])
    held, visual = np.array([1.0, 3.0, 2.0, 4.0]), np.array([0.0, 2.0, 5.0, 6.0])  # held-out AUROC 0.75 and 1.0
    assert choose_score_mix(held, visual, is_normal) == (2.0, 1.0, 1.0, 1.0)
    assert choose_score_mix(visual, held, is_normal) is None


def test_semnb_classifier_shifts_the_normal_prior_to_the_batch_share_only_with_a_score_gate_and_a_big_batch():
    feats, features, masks, is_normal = _support(12)
    labels = np.where(is_normal, 0, 1 + (np.arange(12) // 2) % 2)
    tokens = feats.z[-1].mean(dim=1)
    model = SemnbClassifier(device="cpu").fit(feats, features, tokens, masks, is_normal, labels, 3, SIZE, seed=0)
    big = np.tile(np.arange(12), 2)  # 24 >= PRIOR_MIN_BATCH images
    args = (feats.subset(big), features[big], tokens[big])
    model.segmenter.score_gate = None
    np.testing.assert_array_equal(model.predict_proba(*args), model.predict_proba(*args, batch_prior=False))
    model.segmenter.score_gate = (1.0, 0.0)
    plain = model.predict_proba(*args, batch_prior=False)
    parts = model.segmenter.patch_maps(*args[:2])
    eq7 = baselines.reweighted_image_scores(features[big], parts["distance"], model.segmenter.bank).numpy()
    np.testing.assert_allclose(model.predict_proba(*args), shift_normal_prior(plain, 0, defect_free_share(eq7)))
    few = (feats.subset(np.arange(6)), features[:6], tokens[:6])
    np.testing.assert_array_equal(model.predict_proba(*few), model.predict_proba(*few, batch_prior=False))

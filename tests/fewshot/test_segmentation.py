"""SEM-CLIP segmentation: eq. 8-17 against straightforward computations, training, determinism."""
import numpy as np
import pytest
import torch

from semnb.components import image_scores, upsample_and_smooth
from semnb.errors import SemnbInputError
from semnb.fewshot.segmentation import (
    PatchFeatures,
    SegmentationConfig,
    SemClipSegmenter,
    focal_dice_loss,
    mask_coverage,
    v_path_map,
    z_path_map,
)

GRID = (4, 4)
SIZE = 16  # image side: 4 pixels per patch


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_z_path_map_is_the_sum_over_levels_of_the_defect_softmax():
    g = torch.Generator().manual_seed(0)
    levels = [torch.randn(2, 16, 8, generator=g) for _ in range(3)]
    anchors = [torch.randn(2, 8, generator=g) for _ in range(3)]
    got = z_path_map(levels, anchors, logit_scale=10.0).numpy()
    want = np.zeros((2, 16))
    for z, t in zip(levels, anchors):
        z, t = z.numpy().astype(float), t.numpy().astype(float)
        for b in range(2):
            for n in range(16):
                want[b, n] += _softmax(10.0 * np.array([_cos(z[b, n], t[0]), _cos(z[b, n], t[1])]))[1]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_v_path_map_follows_the_elementwise_definition_with_the_patch_mean_removed():
    g = torch.Generator().manual_seed(1)
    levels = [torch.randn(3, 16, 6, generator=g) for _ in range(2)]
    text = torch.randn(2, 6, generator=g)
    got = v_path_map(levels, text, logit_scale=20.0).numpy()
    want = np.zeros((3, 16))
    t = text.numpy().astype(float)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    for v in levels:
        v = v.numpy().astype(float)
        v = v / np.linalg.norm(v, axis=2, keepdims=True)
        for b in range(3):
            v_m = v[b][:, None, :] * t[None]  # [N, 2, E]: V^m
            v_r = v_m.mean(axis=0)  # [2, E]: V^r, mean over the patches
            for n in range(16):
                want[b, n] += _softmax(20.0 * (v_m[n] - v_r).sum(axis=1))[1]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # removing the patch mean matters, whereas a mean over the two classes would cancel in the softmax
    no_removal = sum((20.0 * torch.nn.functional.normalize(v, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T)
                     .softmax(-1)[..., 1] for v in levels).numpy()
    assert np.abs(got - no_removal).max() > 1e-3


def test_upsample_and_smooth_keeps_constants_and_sigma_zero_is_bilinear():
    const = torch.full((2, 16), 3.0)
    np.testing.assert_allclose(upsample_and_smooth(const, GRID, SIZE, sigma=2.0).numpy(), 3.0, atol=1e-5)
    maps = torch.rand(1, 16, generator=torch.Generator().manual_seed(2))
    same = upsample_and_smooth(maps, GRID, 4, sigma=0).numpy()
    np.testing.assert_allclose(same[0], maps.reshape(4, 4).numpy(), atol=1e-6)
    smooth = upsample_and_smooth(maps, GRID, SIZE, sigma=2.0).numpy()
    sharp = upsample_and_smooth(maps, GRID, SIZE, sigma=0).numpy()
    assert smooth.std() < sharp.std()


def test_image_score_is_the_mean_of_the_top_fraction():
    maps = torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(3))
    want = np.sort(maps.reshape(3, -1).numpy(), axis=1)[:, -5:].mean(axis=1)
    np.testing.assert_allclose(image_scores(maps, 0.05).numpy(), want, rtol=1e-6)


def test_mask_coverage_is_the_area_fraction_per_cell():
    mask = np.zeros((1, SIZE, SIZE), bool)
    mask[0, :2, :4] = True  # half of cell (0, 0)
    cover = mask_coverage(mask, GRID).numpy()
    assert cover[0, 0, 0] == pytest.approx(0.5) and cover.sum() == pytest.approx(0.5)


def test_focal_dice_loss_matches_its_formula():
    logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]]])
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    p = 1 / (1 + np.exp(-logits.numpy()))
    y = target.numpy()
    focal = -(y * (1 - p) ** 2 * np.log(p) + (1 - y) * p ** 2 * np.log(1 - p)).mean()
    dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
    assert float(focal_dice_loss(logits, target)) == pytest.approx(focal + dice, rel=1e-5)


def _toy(n_images=6, dim=8, seed=0, joint=True, with_v=True):
    """Patch tokens where defect patches lean towards direction e_1, and masks that mark them."""
    g = torch.Generator().manual_seed(seed)
    masks = np.zeros((n_images, SIZE, SIZE), bool)
    levels = []
    for _ in range(2):
        z = torch.randn(n_images, 16, dim, generator=g)
        levels.append(z)
    for i in range(1, n_images):  # image 0 is defect-free
        r, c = (i % 3), (i % 4)
        masks[i, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = True
        for z in levels:
            z[i, 4 * r + c, 1] += 4.0
    v = [z + 0.1 for z in levels] if with_v else None
    return PatchFeatures(levels, v, GRID, in_joint_space=joint), masks


TEXT = torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 1.0, 0, 0, 0, 0, 0]])  # defect text is NOT e_1: must be learned


def _pixel_auc(maps, masks):
    from semnb.metrics import pixel_metrics
    return pixel_metrics(maps, masks, num_thresholds=None)["pixel_auroc"]


@pytest.mark.parametrize("joint", [True, False])
def test_training_the_transformation_layer_reduces_the_loss_and_finds_the_defects(joint):
    feats, masks = _toy(joint=joint)
    config = SegmentationConfig(steps=80, lr_text=0.05, lr_visual=0.05, use_v=False, sigma=0)
    model = SemClipSegmenter(config).fit(feats, masks, TEXT if joint else None, seed=0)
    assert model.loss_history[-1] < 0.7 * model.loss_history[0]
    test_feats, test_masks = _toy(seed=1, joint=joint)
    out = model.predict(test_feats, SIZE)
    assert _pixel_auc(out.maps, test_masks) > 0.9
    assert out.maps.shape == (6, SIZE, SIZE) and out.scores.shape == (6,)


def test_untrained_identity_layer_equals_no_transformation_and_same_seed_same_maps():
    feats, masks = _toy()
    untrained = SemClipSegmenter(SegmentationConfig(steps=0)).fit(feats, masks, TEXT).predict(feats, SIZE).maps
    without = SemClipSegmenter(SegmentationConfig(transform=False)).fit(feats, masks, TEXT).predict(feats, SIZE).maps
    np.testing.assert_allclose(untrained, without, atol=1e-5)
    config = SegmentationConfig(steps=10, lr_visual=0.05)
    visual, _ = _toy(joint=False)
    a = SemClipSegmenter(config).fit(visual, masks, None, seed=4).predict(visual, SIZE).maps
    b = SemClipSegmenter(config).fit(visual, masks, None, seed=4).predict(visual, SIZE).maps
    c = SemClipSegmenter(config).fit(visual, masks, None, seed=5).predict(visual, SIZE).maps
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0


def test_the_untrained_segmenter_is_the_fit_without_transformation_and_needs_no_support():
    feats, masks = _toy()
    without = SemClipSegmenter(SegmentationConfig(transform=False)).fit(feats, masks, TEXT).predict(feats, SIZE)
    untrained = SemClipSegmenter.untrained(TEXT)
    assert untrained.layer is None and not untrained.config.transform
    out = untrained.predict(feats, SIZE)
    np.testing.assert_array_equal(out.maps, without.maps)
    np.testing.assert_array_equal(out.scores, without.scores)
    with pytest.raises(SemnbInputError, match="not fitted"):
        SemClipSegmenter().predict(feats, SIZE)


def test_num_terms_counts_the_levels_and_paths_that_the_map_sums():
    feats, masks = _toy()
    no_v, _ = _toy(with_v=False)
    for config, terms in ((SegmentationConfig(), 4), (SegmentationConfig(use_v=False), 2),
                          (SegmentationConfig(use_z=False), 2), (SegmentationConfig(last_level_only=True), 2)):
        model = SemClipSegmenter(config).fit(feats, masks, TEXT)
        assert model.num_terms(feats) == terms
        assert model.num_terms(feats) == len(model.patch_maps(feats)) * len(model._select(feats).z)
    assert SemClipSegmenter.untrained(TEXT).num_terms(no_v) == 2
    per_term = SemClipSegmenter.untrained(TEXT).predict(feats, SIZE).maps / 4
    assert 0 <= per_term.min() and per_term.max() <= 1


def test_map_is_a_z_plus_a_v_and_the_path_switches_work():
    feats, masks = _toy()
    config = SegmentationConfig(steps=5, sigma=0)
    both = SemClipSegmenter(config).fit(feats, masks, TEXT, seed=0)
    parts = both.patch_maps(feats)
    assert set(parts) == {"z", "v"}
    out = both.predict(feats, 4)  # the grid's own size: no upsampling, no smoothing
    np.testing.assert_allclose(out.maps.reshape(6, -1), (parts["z"] + parts["v"]).numpy(), atol=1e-5)
    v_only = SemClipSegmenter(SegmentationConfig(use_z=False)).fit(feats, masks, TEXT)
    np.testing.assert_allclose(v_only.patch_maps(feats)["v"].numpy(), parts["v"].numpy(), atol=1e-6)
    assert set(v_only.patch_maps(feats)) == {"v"}
    last = SemClipSegmenter(SegmentationConfig(steps=0, last_level_only=True, use_v=False)).fit(feats, masks, TEXT)
    assert float(last.patch_maps(feats)["z"].max()) <= 1.0 + 1e-6  # one level: one softmax, at most 1


def test_inputs_that_cannot_work_are_refused():
    feats, masks = _toy(joint=False, with_v=False)
    with pytest.raises(SemnbInputError, match="V path"):
        SemClipSegmenter(SegmentationConfig(use_z=False)).fit(feats, masks, None)
    with pytest.raises(SemnbInputError, match="masks"):
        SemClipSegmenter().fit(feats, masks[:2], None)
    joint, _ = _toy()
    with pytest.raises(SemnbInputError, match="text"):
        SemClipSegmenter().fit(joint, masks, None)

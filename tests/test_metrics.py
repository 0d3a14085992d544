"""Tests of semnb.metrics against scikit-learn, scikit-image and slow loop references."""

import math
import tracemalloc
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
from skimage.measure import label as sk_label

from semnb import metrics as M
from semnb.errors import SemnbInputError

# ----------------------------------------------------------------------------- helpers


def blob_maps(seed, n=4, shape=(24, 24), ties=False):
    """Random masks made of a few rectangles, and noisy maps that score defects somewhat higher."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for _ in range(n):
        mask = np.zeros(shape, bool)
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
            h, w = rng.integers(1, 6, size=2)
            mask[r : r + h, c : c + w] = True
        score = rng.normal(size=shape) + 1.2 * mask
        if ties:
            score = np.round(score, 1)
        maps.append(score.astype(np.float32))
        masks.append(mask)
    return maps, masks


def flat(maps, masks):
    return np.concatenate([m.ravel() for m in maps]).astype(np.float64), np.concatenate(
        [g.ravel() for g in masks]
    )


def sk_f1_max(scores, labels):
    p, r, _ = skm.precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmax(np.where(p + r > 0, 2 * p * r / (p + r), 0.0)))


def slow_aupro(maps, masks, fpr_limit):
    """Independent reference: loop over every unique score, regions from scikit-image (8-connected)."""
    regions = []
    for score, mask in zip(maps, masks, strict=True):
        lab = sk_label(mask, connectivity=2)
        regions += [score[lab == r].astype(np.float64) for r in range(1, lab.max() + 1)]
    normal = np.concatenate([s[~g] for s, g in zip(maps, masks, strict=True)]).astype(np.float64)
    fprs, pros = [0.0], [0.0]
    for t in sorted(set(flat(maps, masks)[0].tolist()), reverse=True):
        fprs.append(float(np.mean(normal >= t)))
        pros.append(float(np.mean([np.mean(r >= t) for r in regions])))
    area = 0.0
    for i in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[i - 1], fprs[i], pros[i - 1], pros[i]
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


# ----------------------------------------------------------------------------- image AUROC


@pytest.mark.parametrize("seed", range(5))
def test_image_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(size=200) + 0.7 * labels, 1)  # many ties across classes
    assert M.image_auroc(scores, labels) == pytest.approx(
        skm.roc_auc_score(labels, scores), abs=1e-12
    )


def test_image_auroc_one_class_is_undefined_and_bad_input_raises():
    assert math.isnan(M.image_auroc([0.1, 0.5, 0.9], [1, 1, 1]))
    with pytest.raises(SemnbInputError, match="lengths differ"):
        M.image_auroc([0.1, 0.2], [0, 1, 1])
    with pytest.raises(SemnbInputError, match="NaN"):
        M.image_auroc([0.1, np.nan], [0, 1])
    with pytest.raises(SemnbInputError, match="0 \\(normal\\) and 1"):
        M.image_auroc([0.1, 0.2], [0, 2])


# ----------------------------------------------------------------------------- pixel AUROC and F1-max


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False), (3, True)])
def test_pixel_auroc_and_f1_max_binned_and_exact_match_sklearn(seed, ties):
    maps, masks = blob_maps(seed, n=5, shape=(32, 40), ties=ties)
    scores, labels = flat(maps, masks)
    ref_auc, ref_f1 = skm.roc_auc_score(labels, scores), sk_f1_max(scores, labels)
    assert M.pixel_auroc(maps, masks) == pytest.approx(ref_auc, abs=1e-3)
    assert M.pixel_auroc(maps, masks, num_thresholds=None) == pytest.approx(ref_auc, abs=1e-12)
    binned_f1 = M.pixel_f1_max(maps, masks)
    assert binned_f1 == pytest.approx(ref_f1, abs=1e-3)
    assert binned_f1 <= ref_f1 + 1e-12  # binned thresholds are a subset of the exact ones
    assert M.pixel_f1_max(maps, masks, num_thresholds=None) == pytest.approx(ref_f1, abs=1e-12)


def test_pixel_metrics_accept_array_list_of_sizes_and_single_map():
    maps, masks = blob_maps(5, n=3, shape=(20, 20))
    stacked = M.pixel_metrics(np.stack(maps), np.stack(masks))
    assert stacked == M.pixel_metrics(maps, masks)
    small_maps, small_masks = blob_maps(6, n=2, shape=(12, 30))  # images of different sizes
    mixed = M.pixel_metrics(maps + small_maps, masks + small_masks, num_thresholds=None)
    scores, labels = flat(maps + small_maps, masks + small_masks)
    assert mixed["pixel_auroc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    one = M.pixel_auroc(maps[0], masks[0], num_thresholds=None)
    assert one == pytest.approx(skm.roc_auc_score(masks[0].ravel(), maps[0].ravel()), abs=1e-12)


def test_pixel_metrics_undefined_cases():
    rng = np.random.default_rng(0)
    maps = [rng.random((8, 8)) for _ in range(2)]
    none = [np.zeros((8, 8), bool)] * 2
    every = [np.ones((8, 8), bool)] * 2
    r = M.pixel_metrics(maps, none)
    assert all(math.isnan(r[k]) for k in ("pixel_auroc", "pixel_f1_max", "aupro"))
    r = M.pixel_metrics(maps, every)
    assert math.isnan(r["pixel_auroc"]) and math.isnan(r["aupro"])
    assert r["pixel_f1_max"] == pytest.approx(1.0)  # threshold at the minimum: P = R = 1


def test_pixel_metrics_bad_input_raises():
    maps, masks = blob_maps(0, n=2)
    with pytest.raises(SemnbInputError, match="does not match mask shape"):
        M.pixel_auroc(maps, [masks[0], masks[1][:-1]])
    with pytest.raises(SemnbInputError, match="2 maps but 1 masks"):
        M.pixel_auroc(maps, masks[:1])
    with pytest.raises(SemnbInputError, match="all-False mask"):
        M.pixel_f1_max(maps, [masks[0], None])
    bad = [maps[0], maps[1].copy()]
    bad[1][0, 0] = np.inf
    with pytest.raises(SemnbInputError, match="maps\\[1\\]"):
        M.aupro(bad, masks)
    with pytest.raises(SemnbInputError, match="empty"):
        M.pixel_auroc([], [])
    with pytest.raises(SemnbInputError, match="fpr_limit"):
        M.aupro(maps, masks, fpr_limit=0.0)


def test_outlier_scores_warn_that_binning_is_coarse_and_exact_path_is_right():
    maps, masks = blob_maps(3, n=3, shape=(30, 30))
    maps[0] = maps[0].copy()
    maps[0][0, 0] = 1e6  # squeezes all other scores into the lowest bin
    scores, labels = flat(maps, masks)
    with pytest.warns(UserWarning, match="num_thresholds=None"):
        M.pixel_auroc(maps, masks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact = M.pixel_auroc(maps, masks, num_thresholds=None)
        M.pixel_auroc(*blob_maps(3, n=3, shape=(30, 30)))  # ordinary maps: no warning
        M.pixel_auroc(
            *blob_maps(3, n=3, shape=(30, 30), ties=True)
        )  # true ties are exact: no warning
    assert exact == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)


class LazyMaps:
    """Maps computed on demand, as a caller with too many images for memory would pass them."""

    def __init__(self, n, shape, seed, masks):
        self.n, self.shape, self.seed, self.masks = n, shape, seed, masks

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, i])
        return (rng.random(self.shape) + 0.5 * self.masks[i]).astype(np.float32)


def test_pixel_metrics_memory_does_not_grow_with_image_count():
    n, shape = 48, (256, 256)
    masks = []
    for i in range(n):
        g = np.zeros(shape, bool)
        g[(5 * i) % 200 : (5 * i) % 200 + 30, 40:90] = True
        masks.append(g)
    maps = LazyMaps(n, shape, seed=7, masks=masks)
    tracemalloc.start()
    result = M.pixel_metrics(maps, masks)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    all_pixels_float64 = n * shape[0] * shape[1] * 8  # 25 MB: what sorting everything would copy
    assert peak < all_pixels_float64 / 3
    assert 0.5 < result["pixel_auroc"] < 1.0 and 0.0 < result["aupro"] < 1.0


# ----------------------------------------------------------------------------- AUPRO


@pytest.mark.parametrize(
    "seed,ties,limit", [(0, False, 0.3), (1, True, 0.3), (2, False, 0.05), (3, True, 1.0)]
)
def test_aupro_matches_slow_reference(seed, ties, limit):
    maps, masks = blob_maps(seed, n=3, shape=(20, 20), ties=ties)
    ref = slow_aupro(maps, masks, limit)
    assert M.aupro(maps, masks, fpr_limit=limit, num_thresholds=None) == pytest.approx(
        ref, abs=1e-12
    )
    assert M.aupro(maps, masks, fpr_limit=limit) == pytest.approx(ref, abs=1e-3)
    assert M.pixel_metrics(maps, masks, fpr_limit=limit)["aupro"] == pytest.approx(ref, abs=1e-3)


def test_aupro_sanity_cases():
    maps, masks = blob_maps(4, n=3)
    perfect = [g.astype(np.float32) for g in masks]
    inverse = [1.0 - p for p in perfect]
    assert M.aupro(perfect, masks) == pytest.approx(1.0)
    assert M.aupro(inverse, masks) == pytest.approx(0.0, abs=1e-12)


def test_aupro_weights_regions_equally_with_8_connectivity():
    mask = np.zeros((10, 10), bool)
    mask[[0, 1, 2], [0, 1, 2]] = True  # one diagonal region of 3 pixels (three with 4-connectivity)
    mask[6, 6] = True  # a second region of 1 pixel
    score = np.full((10, 10), 0.5)
    score[mask] = 0.0
    score[0, 0] = score[6, 6] = 1.0
    # threshold 1: PRO = (1/3 + 1) / 2 = 2/3 at FPR 0; next threshold jumps to FPR 1
    assert M.aupro([score], [mask]) == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- classification


@pytest.mark.parametrize("seed", range(4))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 5, 80)
    y_pred = np.where(
        rng.random(80) < 0.5, y_true, rng.integers(0, 6, 80)
    )  # class 5 only predicted
    y_pred[y_pred == 3] = 2  # class 3 never predicted: precision 0 by zero_division=0
    assert M.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for ours, theirs in [
        (M.macro_precision, skm.precision_score),
        (M.macro_recall, skm.recall_score),
        (M.macro_f1, skm.f1_score),
    ]:
        assert ours(y_true, y_pred) == pytest.approx(
            theirs(y_true, y_pred, average="macro", zero_division=0)
        )
    np.testing.assert_array_equal(
        M.confusion_matrix(y_true, y_pred, 7), skm.confusion_matrix(y_true, y_pred, labels=range(7))
    )


def test_macro_metrics_accept_string_labels():
    y_true = ["bridge", "hole", "hole", "particle", "infilm"]
    y_pred = ["bridge", "hole", "particle", "particle", "particle"]
    assert M.macro_f1(y_true, y_pred) == pytest.approx(
        skm.f1_score(y_true, y_pred, average="macro", zero_division=0)
    )


def test_classification_report_is_complete_and_json_ready():
    rng = np.random.default_rng(9)
    names = ["good", "bridge", "hole", "particle"]
    y_true, y_pred = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
    rep = M.classification_report(y_true, y_pred, names)
    p, r, f, s = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=range(4), zero_division=0
    )
    for c, name in enumerate(names):
        row = rep["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (p[c], r[c], f[c], s[c])
        )
    assert rep["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert rep["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred).tolist()
    assert all(type(v) is int for row in rep["confusion_matrix"] for v in row)


def test_classification_bad_input_raises():
    with pytest.raises(SemnbInputError, match="lengths differ"):
        M.accuracy([0, 1], [0])
    with pytest.raises(SemnbInputError, match=r"integers in \[0, 3\)"):
        M.confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(SemnbInputError, match="empty"):
        M.macro_f1([], [])


# ----------------------------------------------------------------------------- clustering


def test_silhouette_matches_sklearn_including_singletons_and_several_blocks():
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=4, size=(4, 8))
    labels = rng.integers(0, 4, 2500)
    x = centers[labels] + rng.normal(size=(2500, 8))
    labels[0] = 9  # a singleton cluster scores 0
    assert M.silhouette(x, labels) == pytest.approx(skm.silhouette_score(x, labels), abs=1e-9)


def test_silhouette_sampling_is_seeded_and_undefined_cases_are_nan():
    rng = np.random.default_rng(1)
    x, labels = rng.normal(size=(300, 5)), rng.integers(0, 3, 300)
    a = M.silhouette(x, labels, sample_size=100, seed=3)
    assert a == M.silhouette(x, labels, sample_size=100, seed=3)
    pick = np.random.default_rng(3).choice(300, size=100, replace=False)
    assert a == pytest.approx(skm.silhouette_score(x[pick], labels[pick]), abs=1e-9)
    assert math.isnan(M.silhouette(x, np.zeros(300, int)))  # one cluster
    assert math.isnan(M.silhouette(x[:5], np.arange(5)))  # every point its own cluster
    with pytest.raises(SemnbInputError, match="lengths differ"):
        M.silhouette(x, labels[:-1])


@pytest.mark.parametrize("seed", range(4))
def test_nmi_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 4, 150)
    v = np.where(rng.random(150) < 0.6, u, rng.integers(0, 6, 150))
    assert M.nmi(u, v) == pytest.approx(skm.normalized_mutual_info_score(u, v), abs=1e-12)
    assert M.nmi(u, (v + 3) % 7) == pytest.approx(
        M.nmi(u, v), abs=1e-12
    )  # renaming clusters changes nothing


def test_nmi_degenerate_labelings_follow_sklearn():
    for u, v in [([0, 0, 0], [1, 1, 1]), ([0, 0, 0], [0, 1, 2]), ([0, 1, 0, 1], [5, 5, 7, 7])]:
        assert M.nmi(u, v) == pytest.approx(skm.normalized_mutual_info_score(u, v))


# ----------------------------------------------------------------------------- retrieval


def test_retrieval_hand_computed():
    retrieved, q = [1, 0, 1, 1, 0], 1
    assert M.precision_at_k(retrieved, q, 4) == pytest.approx(3 / 4)
    # AvgP(4) = (1/4) * (P(1) + P(3) + P(4)) = (1/4) * (1 + 2/3 + 3/4)
    assert M.average_precision_at_k(retrieved, q, 4) == pytest.approx((1 + 2 / 3 + 3 / 4) / 4)
    # divided by K, not by the number of hits: one hit at rank 1 of 5 gives 1/5
    assert M.average_precision_at_k([2, 0, 0, 0, 0], 2, 5) == pytest.approx(1 / 5)
    matrix = [[1, 0, 1, 1, 0], [2, 0, 0, 0, 0]]
    assert M.map_at_k(matrix, [1, 2], 4) == pytest.approx(((1 + 2 / 3 + 3 / 4) / 4 + 1 / 4) / 2)
    assert M.mean_precision_at_k(matrix, [1, 2], 4) == pytest.approx((3 / 4 + 1 / 4) / 2)


@pytest.mark.parametrize("seed", range(3))
def test_retrieval_matches_slow_loop(seed):
    rng = np.random.default_rng(seed)
    matrix, queries, k = rng.integers(0, 4, (30, 12)), rng.integers(0, 4, 30), 10
    ap, prec = [], []
    for row, q in zip(matrix, queries, strict=True):
        hits = [int(row[j] == q) for j in range(k)]
        ap.append(sum(sum(hits[: j + 1]) / (j + 1) * hits[j] for j in range(k)) / k)
        prec.append(sum(hits) / k)
    assert M.map_at_k(matrix, queries, k) == pytest.approx(np.mean(ap), abs=1e-12)
    assert M.mean_precision_at_k(matrix, queries, k) == pytest.approx(np.mean(prec), abs=1e-12)
    assert M.average_precision_at_k(matrix[0], queries[0], k) == pytest.approx(ap[0], abs=1e-12)


def test_retrieval_bad_input_raises():
    with pytest.raises(SemnbInputError, match="only 3 results"):
        M.precision_at_k([1, 0, 1], 1, 5)
    with pytest.raises(SemnbInputError, match="k"):
        M.map_at_k([[1, 0]], [1], 0)
    with pytest.raises(SemnbInputError, match="n_queries=2"):
        M.map_at_k([[1, 0]], [1, 0], 1)


def test_scale_std_in_decades():
    assert M.scale_std([1_000, 100_000]) == pytest.approx(math.sqrt(2))  # log10: 3 and 5
    assert math.isnan(M.scale_std([5_000]))
    with pytest.raises(SemnbInputError, match="> 0"):
        M.scale_std([1_000, 0])


# ----------------------------------------------------------------------------- results over seeds


def test_mean_std_over_seeds():
    runs = [
        {"image_auroc": 0.8, "aupro": 0.5, "pixel_auroc": float("nan"), "confusion_matrix": [[1]]},
        {"image_auroc": 0.9, "aupro": 0.7, "pixel_auroc": 0.9, "confusion_matrix": [[2]]},
        {"image_auroc": 1.0, "aupro": 0.6, "pixel_auroc": 0.95, "confusion_matrix": [[3]]},
    ]
    out = M.mean_std_over_seeds(runs)
    assert out["image_auroc"] == pytest.approx(0.9) and out["image_auroc_std"] == pytest.approx(0.1)
    assert out["aupro"] == pytest.approx(0.6) and out["aupro_std"] == pytest.approx(0.1)
    assert math.isnan(out["pixel_auroc"]) and math.isnan(
        out["pixel_auroc_std"]
    )  # undefined stays undefined
    assert "confusion_matrix" not in out
    single = M.mean_std_over_seeds(runs[1:2])
    assert single["aupro"] == 0.7 and math.isnan(single["aupro_std"])
    with pytest.raises(SemnbInputError, match="'aupro' missing"):
        M.mean_std_over_seeds([runs[0], {"image_auroc": 0.5}])


# ----------------------------------------------------------------------------- clustering: NMI floor, crop windows


def test_nmi_of_a_random_assignment_is_small_for_few_clusters_and_grows_with_k():
    labels = np.repeat(np.arange(4), 25)
    few, many = M.random_assignment_nmi(labels, 4), M.random_assignment_nmi(labels, 50)
    assert 0 <= few < 0.1 < many < 1
    assert few == M.random_assignment_nmi(labels, 4)  # seeded


def test_window_hit_rate_counts_only_images_with_a_defect_mask():
    mask = np.zeros((40, 40), bool)
    mask[10:14, 10:14] = True
    windows = np.array([[0, 0, 12, 12], [20, 20, 30, 30], [0, 0, 5, 5], [0, 0, 5, 5]])
    hits = M.window_hit_rate(windows, [mask, mask, None, np.zeros((40, 40), bool)])
    assert hits["n_scored"] == 2 and hits["hit_rate"] == 0.5
    assert hits["covered"] == pytest.approx((4 / 16 + 0) / 2)
    assert np.isnan(M.window_hit_rate(windows[:1], [None])["hit_rate"])
    with pytest.raises(SemnbInputError, match="windows.*one window per image"):
        M.window_hit_rate(windows, [mask])


# ----------------------------------------------------------------------------- retrieval: spread, ceilings, per class, ANN recall


def test_mean_scale_std_averages_over_queries_with_two_correct_results_of_known_magnification():
    retrieved = np.array([[1, 1, 2, 1], [2, 0, 0, 2], [0, 0, 1, 0]])
    mags = np.array([[1e4, 1e5, 1e6, 1e6], [1e4, 1e4, 1e5, 1e6], [1e4, np.nan, 1e5, 1e6]])
    # query 0: correct at 1e4, 1e5, 1e6 -> std of (4, 5, 6) = 1; query 1: 1e4 and 1e6 -> sqrt(2);
    # query 2: its correct results of known magnification are 1e4 and 1e6 (NaN left out) -> sqrt(2)
    assert M.mean_scale_std(retrieved, mags, [1, 2, 0], 4) == pytest.approx((1 + 2 * math.sqrt(2)) / 3)
    # within the top 2 only query 0 has two correct results: 1e4 and 1e5 -> std of (4, 5)
    assert M.mean_scale_std(retrieved, mags, [1, 2, 0], 2) == pytest.approx(math.sqrt(0.5))
    assert math.isnan(M.mean_scale_std(retrieved, mags, [3, 3, 3], 4))  # nothing correct: undefined
    with pytest.raises(SemnbInputError, match="retrieved_magnifications"):
        M.mean_scale_std(retrieved, mags[:, :2], [1, 2, 0], 2)


def test_precision_at_k_ceiling_counts_the_other_gallery_images_of_each_query_class():
    gallery = np.array([0, 0, 0, 1, 1, -1, -1])
    # queries at rows 0 (class 0: 2 others) and 3 (class 1: 1 other); K = 2: (2/2 + 1/2) / 2
    assert M.precision_at_k_ceiling(gallery, [0, 3], 2) == pytest.approx(0.75)
    assert M.precision_at_k_ceiling(gallery, [0, 3], 1) == 1.0
    assert M.precision_at_k_ceiling(gallery, [0, 3], 4) == pytest.approx((2 / 4 + 1 / 4) / 2)
    with pytest.raises(SemnbInputError, match="query_rows"):
        M.precision_at_k_ceiling(gallery, [0, 7], 2)


def test_gallery_scale_std_is_the_spread_of_all_other_same_class_gallery_images():
    gallery = np.array([0, 0, 0, 1, 1, 2])
    mags = np.array([1e3, 1e4, 1e6, 1e5, np.nan, 1e4])
    # query row 0: others of class 0 at 1e4, 1e6 -> std of (4, 6) = sqrt(2); query row 1: 1e3, 1e6 -> std of (3, 6);
    # query row 3: the other class-1 image has no magnification; query row 5: no other image of class 2
    expected = (math.sqrt(2) + np.std([3, 6], ddof=1)) / 2
    assert M.gallery_scale_std(gallery, mags, [0, 1, 3, 5]) == pytest.approx(expected)
    assert math.isnan(M.gallery_scale_std(gallery, mags, [3, 5]))
    with pytest.raises(SemnbInputError, match="lengths differ"):
        M.gallery_scale_std(gallery, mags[:3], [0])


def test_per_class_retrieval_scores_each_query_class_on_its_own_queries():
    retrieved = np.array([[1, 1, 0], [1, 0, 0], [2, 2, 2], [0, 2, 2]])
    queries = np.array([1, 1, 2, 2])
    table = M.per_class_retrieval(retrieved, queries, 3)
    assert list(table) == [1, 2] and all(isinstance(key, int) for key in table)
    assert table[1]["precision_at_k"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert table[2]["precision_at_k"] == pytest.approx((1 + 2 / 3) / 2)
    for cls in (1, 2):
        mine = queries == cls
        assert table[cls]["map_at_k"] == M.map_at_k(retrieved[mine], queries[mine], 3)
    with pytest.raises(SemnbInputError, match="k"):
        M.per_class_retrieval(retrieved, queries, 4)


def test_neighbor_recall_is_the_share_of_true_neighbors_found_in_any_order():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, 9], [5, 6, 7, 8]])
    assert M.neighbor_recall(truth, found) == pytest.approx((2 / 4 + 1) / 2)
    assert M.neighbor_recall(truth, truth[:, ::-1]) == 1.0
    assert M.neighbor_recall([[1, -1]], [[1, -1]]) == 0.5  # a missing result (-1) is no neighbor
    with pytest.raises(SemnbInputError, match="true_ids/found_ids"):
        M.neighbor_recall(truth, found[:, :2])


def test_f1_max_threshold_is_the_best_cut():
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.2, 0.1])
    defect = np.array([True, True, False, True, False, False])
    # cuts: >=0.9 F1 2/5, >=0.8 F1 4/7, >=0.3 F1 6/7, >=0.2 F1 6/8, >=0.1 F1 6/9
    assert M.f1_max_threshold(scores, defect) == 0.3
    with pytest.raises(SemnbInputError, match="no positive"):
        M.f1_max_threshold(scores, np.zeros(6, bool))

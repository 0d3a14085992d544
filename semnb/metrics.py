"""Every metric of semnb, in one place.

Why one place: a number in a notebook, a report and `semnb eval --json` must mean the same
thing everywhere, so each metric is defined once here, with its formula, and tested against
scikit-learn or an independent slow reference (tests/test_metrics.py).

Groups:
- anomaly detection: `image_auroc`, `pixel_auroc`, `pixel_f1_max`, `aupro`, `pixel_metrics`;
- classification: `accuracy`, `macro_precision`, `macro_recall`, `macro_f1`,
  `confusion_matrix`, `classification_report`;
- clustering: `silhouette`, `nmi`, `random_assignment_nmi`, `window_hit_rate`;
- retrieval: `precision_at_k`, `average_precision_at_k`, `mean_precision_at_k`, `map_at_k`,
  `scale_std`, `mean_scale_std`, `precision_at_k_ceiling`, `gallery_scale_std`,
  `per_class_retrieval`, `neighbor_recall`;
- results: `mean_std_over_seeds`.

Undefined values: where a metric has no meaning for the input (AUROC when only one class is
present, AUPRO without defect regions, a spread of fewer than two numbers) the function
returns float('nan'); callers report it as "undefined", never as a number. Malformed input
(shape mismatch, empty input, non-finite scores) raises `SemnbInputError` instead.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial.distance import cdist
from tqdm.auto import tqdm

from semnb.errors import SemnbInputError

DEFAULT_NUM_THRESHOLDS = 2**16
"""Score bins (thresholds) of the streaming pixel metrics; see `pixel_metrics`."""

_AUROC_BINNING_TOLERANCE = 1e-3
"""Warn when binning could move pixel AUROC by more than this (see `pixel_metrics`)."""


# ---------------------------------------------------------------------------------------------
# Curves from per-threshold counts (shared by image and pixel metrics)
# ---------------------------------------------------------------------------------------------


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Area under the polyline through (x, y): sum of (x[i+1]-x[i]) * (y[i+1]+y[i]) / 2."""
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def _from_top(counts: np.ndarray) -> np.ndarray:
    """Cumulative counts of items at or above each threshold, highest threshold first, with 0 prepended.

    `counts[b]` holds the items in score bin b (bins in increasing score order); entry j of
    the result counts the items in the j highest bins, i.e. those with score >= threshold j.
    """
    return np.concatenate([[0.0], np.cumsum(counts[::-1], dtype=np.float64)])


def _auroc_from_counts(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC = area under (FPR, TPR) over thresholds "score >= t", tied scores as one step.

    With one bin per unique score this is exactly scikit-learn's `roc_auc_score` (a tie
    between a positive and a negative counts one half). NaN when a class is absent.
    """
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return _trapezoid(_from_top(pos) / n_pos, _from_top(neg) / n_neg)


def _f1_max_from_counts(pos: np.ndarray, neg: np.ndarray) -> float:
    """Max over thresholds of F1 = 2PR/(P+R) = 2TP / (TP + FP + #positives). NaN without positives."""
    n_pos = float(pos.sum())
    if n_pos == 0:
        return float("nan")
    tp, fp = _from_top(pos), _from_top(neg)
    return float(np.max(2.0 * tp / (tp + fp + n_pos)))


def _aupro_from_counts(
    pro_weight: np.ndarray, neg: np.ndarray, n_regions: int, fpr_limit: float
) -> float:
    """Normalised area under the PRO-vs-FPR curve from FPR 0 to `fpr_limit` (MVTec-AD).

    `pro_weight[b]` sums 1/|region| over the defect pixels in bin b, so its cumulative sum from
    the top, divided by the number of regions, is the mean per-region overlap (PRO) at that
    threshold. The curve starts at (0, 0); the point at `fpr_limit` is linearly interpolated
    between its neighbours, as in the MVTec-AD evaluation code (Bergmann et al., IJCV 2021).
    """
    n_neg = float(neg.sum())
    if n_regions == 0 or n_neg == 0:
        return float("nan")
    fpr = _from_top(neg) / n_neg
    pro = _from_top(pro_weight) / n_regions
    inside = fpr <= fpr_limit  # fpr is non-decreasing, so this is a prefix
    x, y = fpr[inside], pro[inside]
    last = int(np.count_nonzero(inside)) - 1
    if x[-1] < fpr_limit:  # add the interpolated point at fpr_limit (fpr reaches 1, so one exists)
        x0, x1, y0, y1 = fpr[last], fpr[last + 1], pro[last], pro[last + 1]
        y_at_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        x, y = np.append(x, fpr_limit), np.append(y, y_at_limit)
    return _trapezoid(y, x) / fpr_limit


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _vector(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise SemnbInputError(
            name, f"expected a 1-D sequence, got shape {arr.shape}", "pass one value per item"
        )
    if arr.size == 0:
        raise SemnbInputError(name, "is empty", "pass at least one item")
    return arr


def _same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise SemnbInputError(
            f"{name_a}/{name_b}",
            f"lengths differ ({len(a)} vs {len(b)})",
            "pass one entry of each per item",
        )


def _finite_scores(values, name: str) -> np.ndarray:
    arr = _vector(values, name)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise SemnbInputError(
            name, f"expected real numbers, got dtype {arr.dtype}", "pass float scores"
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise SemnbInputError(
            name, "contains NaN or infinite values", "fix or drop those scores before scoring"
        )
    return arr


def _binary_labels(values, name: str) -> np.ndarray:
    arr = _vector(values, name)
    if arr.dtype != bool and not np.all(np.isin(arr, (0, 1))):
        raise SemnbInputError(
            name, "must hold only 0 (normal) and 1 (defective)", "binarise the labels first"
        )
    return arr.astype(bool)


# ---------------------------------------------------------------------------------------------
# Anomaly detection: image level
# ---------------------------------------------------------------------------------------------


def image_auroc(scores, labels) -> float:
    """Image-level AUROC: the probability that a defective image outscores a normal one.

    Area under the ROC curve over all thresholds (ties count one half), identical to
    `sklearn.metrics.roc_auc_score`. `labels`: 1 (or True) = defective, 0 = normal.
    Returns NaN (undefined) when only one class is present.

    Taught in: 04_segmentation
    """
    scores = _finite_scores(scores, "scores")
    labels = _binary_labels(labels, "labels")
    _same_length(scores, labels, "scores", "labels")
    _, value_index = np.unique(scores, return_inverse=True)  # one bin per unique score: exact
    pos = np.bincount(value_index[labels], minlength=value_index.max() + 1)
    neg = np.bincount(value_index[~labels], minlength=value_index.max() + 1)
    return _auroc_from_counts(pos, neg)


# ---------------------------------------------------------------------------------------------
# Anomaly detection: pixel level, streaming over images
# ---------------------------------------------------------------------------------------------


def _map_pairs(maps, masks) -> tuple[Sequence, Sequence]:
    """Accept NxHxW arrays, a single HxW pair, or sequences of HxW arrays (lazy ones too)."""
    if isinstance(maps, np.ndarray) and maps.ndim == 2:
        maps = maps[None]
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        masks = masks[None]
    if len(maps) == 0:
        raise SemnbInputError("maps", "is empty", "pass at least one anomaly map")
    if len(maps) != len(masks):
        raise SemnbInputError(
            "maps/masks", f"{len(maps)} maps but {len(masks)} masks", "pass one mask per map"
        )
    return maps, masks


def _checked_pair(maps, masks, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Map i as float64 and mask i as bool (nonzero = defect), with clear errors."""
    score = np.asarray(maps[i])
    mask = masks[i]
    if mask is None:
        raise SemnbInputError(
            f"masks[{i}]",
            "is None",
            "pass an all-False mask (np.zeros(shape, bool)) for a defect-free image",
        )
    mask = np.asarray(mask)
    if score.ndim != 2 or score.shape != mask.shape:
        raise SemnbInputError(
            f"maps[{i}]",
            f"map shape {score.shape} does not match mask shape {mask.shape}",
            "resize each anomaly map to its mask's HxW before scoring",
        )
    if not np.issubdtype(score.dtype, np.number) or np.issubdtype(score.dtype, np.complexfloating):
        raise SemnbInputError(
            f"maps[{i}]", f"expected real scores, got dtype {score.dtype}", "pass float maps"
        )
    score = score.astype(np.float64, copy=False)
    if not np.all(np.isfinite(score)):
        raise SemnbInputError(
            f"maps[{i}]", "contains NaN or infinite values", "fix the map before scoring"
        )
    return score, mask != 0


def _pixel_histograms(maps, masks, num_thresholds, with_regions: bool, progress: bool) -> dict:
    """Per-bin counts of defect pixels, normal pixels and (optionally) 1/|region| weights.

    Pass 1 finds the global score range; pass 2 puts every pixel into one of
    `num_thresholds` equal-width bins over [min, max] and accumulates counts per bin, one
    image at a time, so memory stays O(H*W + num_thresholds) whatever the number of images.
    With `num_thresholds=None` each unique score is its own bin (exact, memory O(all pixels)).
    """
    if num_thresholds is not None and int(num_thresholds) < 2:
        raise SemnbInputError(
            "num_thresholds",
            f"got {num_thresholds}",
            "use at least 2 (default 2**16), or None for exact",
        )
    maps, masks = _map_pairs(maps, masks)
    n = len(maps)
    lo, hi, exact_values = math.inf, -math.inf, []
    for i in tqdm(range(n), desc="pixel metrics: score range", disable=not progress):
        score, _ = _checked_pair(maps, masks, i)
        lo, hi = min(lo, float(score.min())), max(hi, float(score.max()))
        if num_thresholds is None:
            exact_values.append(np.unique(score))

    if num_thresholds is None:
        edges = np.unique(np.concatenate(exact_values))
        del exact_values
        n_bins = len(edges)

        def bin_of(score):
            return np.searchsorted(edges, score.ravel())

    else:
        n_bins = int(num_thresholds)
        scale = n_bins / (hi - lo) if hi > lo else 0.0

        def bin_of(score):
            return np.minimum(((score.ravel() - lo) * scale).astype(np.int64), n_bins - 1)

    pos = np.zeros(n_bins)
    neg = np.zeros(n_bins)
    pro_weight = np.zeros(n_bins) if with_regions else None
    n_regions = 0
    eight_connected = np.ones((3, 3), dtype=int)  # as in the MVTec-AD reference evaluation
    for i in tqdm(range(n), desc="pixel metrics: counting", disable=not progress):
        score, mask = _checked_pair(maps, masks, i)
        b = bin_of(score)
        defect = mask.ravel()
        pos += np.bincount(b[defect], minlength=n_bins)
        neg += np.bincount(b[~defect], minlength=n_bins)
        if with_regions:
            regions, n_here = ndimage.label(mask, structure=eight_connected)
            regions = regions.ravel()
            sizes = np.bincount(regions)
            pro_weight += np.bincount(
                b[defect], weights=1.0 / sizes[regions[defect]], minlength=n_bins
            )
            n_regions += n_here
    return {
        "pos": pos,
        "neg": neg,
        "pro_weight": pro_weight,
        "n_regions": n_regions,
        "bin_of": bin_of,
    }


def _warn_if_coarse(hist: dict, maps, masks, num_thresholds) -> None:
    """Warn when binning could move pixel AUROC by more than 1e-3.

    Binning only changes how defect/normal pairs that share a bin are ordered (they count one
    half instead of 0 or 1), so |binned - exact| <= 0.5 * sum_b pos_b * neg_b / (P * N) over
    bins that hold distinct scores (pairs of truly tied scores count one half in the exact
    AUROC too). The bound gets large when a few outlier scores squeeze the others into few
    bins. Which bins hold distinct scores costs one more pass, made only when the cheap
    bound (all bins) is already too large.
    """
    pos, neg = hist["pos"], hist["neg"]
    if num_thresholds is None or pos.sum() == 0 or neg.sum() == 0:
        return

    def bound(bins_to_count):
        return 0.5 * float(np.dot(pos * bins_to_count, neg)) / (float(pos.sum()) * float(neg.sum()))

    if bound(1.0) <= _AUROC_BINNING_TOLERANCE:
        return
    shared = (pos > 0) & (neg > 0)
    low, high = np.full(len(pos), np.inf), np.full(len(pos), -np.inf)
    maps, masks = _map_pairs(maps, masks)
    for i in range(len(maps)):
        score, _ = _checked_pair(maps, masks, i)
        b, values = hist["bin_of"](score), score.ravel()
        keep = shared[b]
        np.minimum.at(low, b[keep], values[keep])
        np.maximum.at(high, b[keep], values[keep])
    worst = bound(high > low)
    if worst > _AUROC_BINNING_TOLERANCE:
        warnings.warn(
            f"pixel metrics: score binning may change pixel AUROC by up to {worst:.2g} "
            f"(num_thresholds={num_thresholds}); outlier scores squeeze the others into few bins. "
            "Clip outliers, raise num_thresholds, or pass num_thresholds=None for exact values.",
            stacklevel=3,
        )


def pixel_metrics(
    maps,
    masks,
    fpr_limit: float = 0.3,
    num_thresholds: int | None = DEFAULT_NUM_THRESHOLDS,
    progress: bool = False,
) -> dict:
    """Pixel AUROC, pixel F1-max and AUPRO from one streaming pass over the images.

    Why streaming: 1,000 masks of 512x512 hold 262M pixels; sorting float64 copies of all
    of them (as scikit-learn would) needs several GB. Instead scores are quantised into
    `num_thresholds` equal-width bins over [global min, global max] and only per-bin counts
    are kept. The binned curves are exact ROC/PR/PRO points at the bin edges (threshold
    "score >= edge"), so F1-max can only be lower than the exact value, and AUROC/AUPRO differ
    from exact only through defect and normal pixels that share a bin. With 2**16 bins this
    agrees with scikit-learn within 1e-3 (tested); a warning says when outlier scores make
    the bins too coarse. `num_thresholds=None` computes exact values (one bin per unique
    score, memory O(all pixels)): use it for small inputs.

    maps: NxHxW float array, or a sequence of HxW arrays (any object with len() and
    indexing, so maps may be computed lazily; it is read twice). masks: the same layout,
    nonzero = defect; use an all-False mask for a defect-free image.

    Returns {"pixel_auroc", "pixel_f1_max", "aupro"}; NaN where undefined (see each function).

    Taught in: 04_segmentation
    """
    _check_fpr_limit(fpr_limit)
    hist = _pixel_histograms(maps, masks, num_thresholds, with_regions=True, progress=progress)
    _warn_if_coarse(hist, maps, masks, num_thresholds)
    return {
        "pixel_auroc": _auroc_from_counts(hist["pos"], hist["neg"]),
        "pixel_f1_max": _f1_max_from_counts(hist["pos"], hist["neg"]),
        "aupro": _aupro_from_counts(hist["pro_weight"], hist["neg"], hist["n_regions"], fpr_limit),
    }


def pixel_auroc(
    maps, masks, num_thresholds: int | None = DEFAULT_NUM_THRESHOLDS, progress: bool = False
) -> float:
    """AUROC over all pixels of all images (defect pixels vs normal pixels).

    Binned and streaming, see `pixel_metrics` for the approximation and input layout.
    NaN (undefined) when no pixel is a defect or every pixel is.

    Taught in: 04_segmentation
    """
    hist = _pixel_histograms(maps, masks, num_thresholds, with_regions=False, progress=progress)
    _warn_if_coarse(hist, maps, masks, num_thresholds)
    return _auroc_from_counts(hist["pos"], hist["neg"])


def pixel_f1_max(
    maps, masks, num_thresholds: int | None = DEFAULT_NUM_THRESHOLDS, progress: bool = False
) -> float:
    """Best pixel F1 over all thresholds: max of 2PR/(P+R) on the pixel precision-recall curve.

    Why the max: it scores the map at its best single threshold, as the few-shot
    segmentation papers report it. Binned and streaming, see `pixel_metrics`; the binned
    value is a lower bound of the exact one. NaN (undefined) when no pixel is a defect.

    Taught in: 04_segmentation
    """
    hist = _pixel_histograms(maps, masks, num_thresholds, with_regions=False, progress=progress)
    return _f1_max_from_counts(hist["pos"], hist["neg"])


def f1_max_threshold(scores, labels) -> float:
    """The threshold t whose mask `score >= t` has the best F1 (exact: every distinct score is tried).

    Why: `pixel_f1_max` says how good a map can be at its best threshold; a fitted model must
    also know that threshold, to turn its maps into masks on images nobody labelled.

    Taught in: 00_quickstart
    """
    from sklearn.metrics import precision_recall_curve

    labels = np.asarray(labels, dtype=bool).ravel()
    if not labels.any():
        raise SemnbInputError("labels", "hold no positive (defect) pixel", "give at least one labelled defect")
    precision, recall, thresholds = precision_recall_curve(labels, np.asarray(scores, dtype=np.float64).ravel())
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def _check_fpr_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise SemnbInputError(
            "fpr_limit", f"got {fpr_limit}", "use a value in (0, 1]; MVTec-AD uses 0.3"
        )


def aupro(
    maps,
    masks,
    fpr_limit: float = 0.3,
    num_thresholds: int | None = DEFAULT_NUM_THRESHOLDS,
    progress: bool = False,
) -> float:
    """Area under the per-region-overlap curve up to `fpr_limit`, normalised to [0, 1] (MVTec-AD).

    Why: pixel AUROC is dominated by large defects; PRO weights every connected defect region
    equally, so a missed small particle costs as much as a missed long scratch. Regions are the
    8-connected components of each ground-truth mask. For each threshold t,
    PRO(t) = mean over all regions of (pixels of the region with score >= t) / |region| and
    FPR(t) = fraction of normal pixels with score >= t; AUPRO = integral of PRO d FPR over
    [0, fpr_limit] (trapezoid, PRO interpolated at fpr_limit) / fpr_limit (Bergmann et al.,
    "The MVTec Anomaly Detection Dataset", IJCV 2021). Binned and streaming like
    `pixel_metrics`. NaN (undefined) without any defect region or without normal pixels.

    Taught in: 04_segmentation
    """
    _check_fpr_limit(fpr_limit)
    hist = _pixel_histograms(maps, masks, num_thresholds, with_regions=True, progress=progress)
    return _aupro_from_counts(hist["pro_weight"], hist["neg"], hist["n_regions"], fpr_limit)


# ---------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------


def _label_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = _vector(y_true, "y_true"), _vector(y_pred, "y_pred")
    _same_length(y_true, y_pred, "y_true", "y_pred")
    return y_true, y_pred


def _per_class_counts(y_true, y_pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives and false negatives of each class present in either input."""
    y_true, y_pred = _label_pair(y_true, y_pred)
    classes, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    k, n = len(classes), len(y_true)
    table = np.bincount(codes[:n] * k + codes[n:], minlength=k * k).reshape(k, k)
    tp = np.diag(table)
    return tp, table.sum(0) - tp, table.sum(1) - tp


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den, 0 where den is 0 (scikit-learn's zero_division=0)."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def accuracy(y_true, y_pred) -> float:
    """Fraction of items whose predicted class equals the true one.

    Taught in: 05_classification
    """
    y_true, y_pred = _label_pair(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def macro_precision(y_true, y_pred) -> float:
    """Unweighted mean over classes of TP/(TP+FP), so rare defect classes count as much as common ones.

    Classes are those present in y_true or y_pred (as scikit-learn's default); a class never
    predicted has precision 0 (zero_division=0).

    Taught in: 05_classification
    """
    tp, fp, _ = _per_class_counts(y_true, y_pred)
    return float(np.mean(_safe_ratio(tp, tp + fp)))


def macro_recall(y_true, y_pred) -> float:
    """Unweighted mean over classes of TP/(TP+FN) (classes as in `macro_precision`).

    Taught in: 05_classification
    """
    tp, _, fn = _per_class_counts(y_true, y_pred)
    return float(np.mean(_safe_ratio(tp, tp + fn)))


def macro_f1(y_true, y_pred) -> float:
    """Unweighted mean over classes of per-class F1 = 2PR/(P+R) (0 where P+R=0).

    Note: the mean of per-class F1, not the F1 of macro P and macro R (scikit-learn's
    convention). Classes as in `macro_precision`.

    Taught in: 05_classification
    """
    tp, fp, fn = _per_class_counts(y_true, y_pred)
    return float(np.mean(_safe_ratio(2 * tp, 2 * tp + fp + fn)))


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """n_classes x n_classes counts: row = true class, column = predicted class (scikit-learn's layout).

    Labels must be integers in [0, n_classes); every class gets a row even if absent.

    Taught in: 05_classification
    """
    y_true, y_pred = _label_pair(y_true, y_pred)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes:
            raise SemnbInputError(
                name,
                f"labels must be integers in [0, {n_classes})",
                "map class names to indices 0..n_classes-1",
            )
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def classification_report(y_true, y_pred, class_names: Sequence[str]) -> dict:
    """All classification metrics in one JSON-ready dict, for `semnb eval classify` and the notebooks.

    Keys: accuracy, macro_precision, macro_recall, macro_f1 (as the functions of those names),
    confusion_matrix (list of lists, rows = true class), class_names, and per_class:
    {name: {precision, recall, f1, support}} for every named class. Labels index class_names.

    Taught in: 05_classification
    """
    n = len(class_names)
    cm = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(cm)
    fp, fn, support = cm.sum(0) - tp, cm.sum(1) - tp, cm.sum(1)
    precision, recall = _safe_ratio(tp, tp + fp), _safe_ratio(tp, tp + fn)
    f1 = _safe_ratio(2 * tp, 2 * tp + fp + fn)
    per_class = {
        str(name): {
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
        }
        for c, name in enumerate(class_names)
    }
    return {
        "accuracy": accuracy(y_true, y_pred),
        "macro_precision": macro_precision(y_true, y_pred),
        "macro_recall": macro_recall(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred),
        "confusion_matrix": cm.tolist(),
        "class_names": [str(c) for c in class_names],
        "per_class": per_class,
    }


# ---------------------------------------------------------------------------------------------
# Clustering
# ---------------------------------------------------------------------------------------------


def silhouette(embeddings, cluster_labels, sample_size: int | None = None, seed: int = 0) -> float:
    """Mean silhouette coefficient (Euclidean), in [-1, 1]: how much closer points are to their own cluster.

    s(i) = (b - a) / max(a, b), with a = mean distance to the other members of i's cluster and
    b = the smallest mean distance to the members of another cluster; s(i) = 0 for a
    singleton cluster (Rousseeuw 1987, as scikit-learn). Distances are computed in row blocks,
    so memory is O(block x N). For large N pass `sample_size`: the mean over a random subset
    of that many points (drawn with `seed`), distances within the subset only.
    Returns NaN (undefined) unless 2 <= number of clusters <= N - 1.

    Taught in: 06_ssl_clustering
    """
    x = np.asarray(embeddings, dtype=np.float64)
    labels = _vector(cluster_labels, "cluster_labels")
    if x.ndim != 2:
        raise SemnbInputError(
            "embeddings", f"expected N x D, got shape {x.shape}", "pass one row per item"
        )
    _same_length(x, labels, "embeddings", "cluster_labels")
    if not np.all(np.isfinite(x)):
        raise SemnbInputError(
            "embeddings", "contains NaN or infinite values", "fix the embeddings first"
        )
    if sample_size is not None and sample_size < 2:
        raise SemnbInputError(
            "sample_size", f"got {sample_size}", "use at least 2 points, or None for all"
        )
    if sample_size is not None and sample_size < len(x):
        pick = np.random.default_rng(seed).choice(len(x), size=sample_size, replace=False)
        x, labels = x[pick], labels[pick]
    clusters, cluster_of = np.unique(labels, return_inverse=True)
    n, k = len(x), len(clusters)
    if not 2 <= k <= n - 1:
        return float("nan")
    one_hot = np.zeros((n, k))
    one_hot[np.arange(n), cluster_of] = 1.0
    sizes = one_hot.sum(0)
    block = max(1, 2**22 // n)  # about 32 MB of float64 distances per block
    s = np.empty(n)
    for start in range(0, n, block):
        rows = slice(start, start + block)
        sums = cdist(x[rows], x) @ one_hot  # distance sums to each cluster, self-distance is 0
        own = cluster_of[rows]
        own_size = sizes[own]
        a = sums[np.arange(len(own)), own] / np.maximum(own_size - 1, 1)
        means = sums / sizes
        means[np.arange(len(own)), own] = np.inf
        b = means.min(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            s_rows = (b - a) / np.maximum(a, b)
        s[rows] = np.where(own_size > 1, np.nan_to_num(s_rows), 0.0)
    return float(np.mean(s))


def nmi(labels_true, labels_pred) -> float:
    """Normalised mutual information between two labelings, in [0, 1]; invariant to renaming clusters.

    NMI = I(U; V) / ((H(U) + H(V)) / 2) (arithmetic normalisation, scikit-learn's default),
    from the contingency table n_ij: I = sum_ij n_ij/N * log(N n_ij / (a_i b_j)).
    Two labelings that each have a single cluster agree perfectly: 1.0 (as scikit-learn).

    Taught in: 06_ssl_clustering
    """
    u, v = _label_pair(labels_true, labels_pred)
    _, u = np.unique(u, return_inverse=True)
    _, v = np.unique(v, return_inverse=True)
    n_u, n_v = u.max() + 1, v.max() + 1
    if n_u == 1 and n_v == 1:
        return 1.0
    table = np.bincount(u * n_v + v, minlength=n_u * n_v).reshape(n_u, n_v).astype(float)
    p = table / table.sum()
    pu, pv = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float(np.sum(p[nz] * np.log(p[nz] / np.outer(pu, pv)[nz])))
    h_u, h_v = -float(np.sum(pu * np.log(pu))), -float(np.sum(pv * np.log(pv)))
    return max(mi, 0.0) / ((h_u + h_v) / 2.0)


def random_assignment_nmi(labels: np.ndarray, k: int, seed: int = 0, draws: int = 20) -> float:
    """Mean NMI of assigning the labelled images to k clusters uniformly at random: NMI's floor here.

    NMI is not zero for a random partition, and it grows with k / N (with about one image
    per cluster any clustering gets a high NMI), so read every NMI against this.

    Taught in: 06_ssl_clustering.
    """
    labels = np.asarray(labels)
    labels = labels[labels >= 0]
    if len(labels) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    return float(np.mean([nmi(labels, rng.integers(0, k, len(labels))) for _ in range(draws)]))


def window_hit_rate(windows, masks: Sequence[np.ndarray | None]) -> dict[str, float]:
    """How often crop windows hold the true defect, over the images whose mask marks one.

    windows: [N, 4] (top, left, bottom, right), bottom/right exclusive, one per mask.
    hit_rate: share of windows holding at least one defect pixel; covered: mean share of each
    defect's pixels inside its window; n_scored: images with a non-empty mask (NaN rates when 0).

    Taught in: 06_ssl_clustering.
    """
    windows = np.asarray(windows)
    if len(windows) != len(masks):
        raise SemnbInputError(
            "windows", f"{len(windows)} windows for {len(masks)} masks", "pass one window per image"
        )
    hits, covered = [], []
    for (top, left, bottom, right), mask in zip(windows, masks):
        if mask is None or not np.any(mask):
            continue
        inside = int(np.count_nonzero(mask[top:bottom, left:right]))
        hits.append(inside > 0)
        covered.append(inside / np.count_nonzero(mask))
    return {"hit_rate": float(np.mean(hits)) if hits else float("nan"),
            "covered": float(np.mean(covered)) if covered else float("nan"), "n_scored": len(hits)}


# ---------------------------------------------------------------------------------------------
# Retrieval (definitions of the IMAGO SEM retrieval paper)
# ---------------------------------------------------------------------------------------------


def _hits(retrieved_label_matrix, query_labels, k: int) -> np.ndarray:
    """Q x k booleans: is the j-th retrieved image of query q of the query's class?"""
    retrieved = np.asarray(retrieved_label_matrix)
    queries = _vector(query_labels, "query_labels")
    if retrieved.ndim != 2 or len(retrieved) != len(queries):
        raise SemnbInputError(
            "retrieved_label_matrix",
            f"expected shape (n_queries={len(queries)}, >=k), got {retrieved.shape}",
            "pass one row of ranked retrieved labels per query",
        )
    if not isinstance(k, numbers.Integral) or not 1 <= k <= retrieved.shape[1]:
        raise SemnbInputError(
            "k",
            f"got {k} but only {retrieved.shape[1]} results per query",
            "retrieve at least k results, k >= 1",
        )
    return retrieved[:, :k] == queries[:, None]


def precision_at_k(retrieved_labels, query_label, k: int) -> float:
    """P(K, q): fraction of the top k retrieved images whose label equals the query's.

    `retrieved_labels` are ranked, best first. The caller must exclude the query itself
    from its own results (otherwise every query scores a free hit at rank 1).

    Taught in: 07_retrieval
    """
    return mean_precision_at_k(
        _vector(retrieved_labels, "retrieved_labels")[None], [query_label], k
    )


def average_precision_at_k(retrieved_labels, query_label, k: int) -> float:
    """AvgP(K, q) = (1/K) * sum_{k=1..K} P(k, q) * 1[y_k = y_q], as the IMAGO retrieval paper defines it.

    Note: divided by K, not by the number of relevant items among the top K (the usual
    information-retrieval AP), so a query with a single hit at rank 1 gets 1/K, not 1.
    The caller must exclude the query itself from its own results.

    Taught in: 07_retrieval
    """
    return map_at_k(_vector(retrieved_labels, "retrieved_labels")[None], [query_label], k)


def mean_precision_at_k(retrieved_label_matrix, query_labels, k: int) -> float:
    """Mean of P(K, q) over queries; row q of `retrieved_label_matrix` holds query q's ranked labels.

    The caller must exclude each query from its own results.

    Taught in: 07_retrieval
    """
    return float(np.mean(_hits(retrieved_label_matrix, query_labels, k)))


def map_at_k(retrieved_label_matrix, query_labels, k: int) -> float:
    """mAP@K: mean over queries of AvgP(K, q) (see `average_precision_at_k`, divided by K).

    Row q of `retrieved_label_matrix` holds query q's ranked labels, the query excluded.

    Taught in: 07_retrieval
    """
    hits = _hits(retrieved_label_matrix, query_labels, k)
    precision_at_rank = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    return float(np.mean(np.sum(precision_at_rank * hits, axis=1) / k))


def scale_std(magnifications_of_correct) -> float:
    """Sample standard deviation (ddof=1) of log10(magnification) among correctly retrieved images.

    Why log10: SEM magnifications span decades (1,000x to 200,000x), so spread is measured
    in decades; a large value says retrieval finds the right class across scales (the
    IMAGO paper's scale-spread table). NaN (undefined) for fewer than two images.

    Taught in: 07_retrieval
    """
    mags = np.asarray(magnifications_of_correct, dtype=np.float64).ravel()
    if not np.all(np.isfinite(mags)) or np.any(mags <= 0):
        raise SemnbInputError(
            "magnifications_of_correct",
            "must be finite and > 0",
            "drop images of unknown magnification",
        )
    if mags.size < 2:
        return float("nan")
    return float(np.std(np.log10(mags), ddof=1))


def mean_scale_std(retrieved_label_matrix, retrieved_magnifications, query_labels, k: int) -> float:
    """Mean over queries of `scale_std` of each query's correct results among its top k.

    Why: precision@K says whether the right class comes back; this says whether it comes
    back across magnifications or only at the query's own scale. Row q of both matrices
    belongs to query q (ranked, the query excluded); unknown magnifications (NaN) are left
    out. A query with fewer than two correct results of known magnification has no spread
    and is skipped; NaN (undefined) when no query has one.

    Taught in: 07_retrieval
    """
    hits = _hits(retrieved_label_matrix, query_labels, k)
    mags = np.asarray(retrieved_magnifications, dtype=np.float64)
    if mags.shape != np.shape(retrieved_label_matrix):
        raise SemnbInputError(
            "retrieved_magnifications",
            f"has shape {mags.shape}, the retrieved labels {np.shape(retrieved_label_matrix)}",
            "pass one magnification (NaN if unknown) per retrieved image",
        )
    spreads = []
    for q in range(len(hits)):
        correct = mags[q, :k][hits[q]]
        correct = correct[np.isfinite(correct)]
        if len(correct) >= 2:
            spreads.append(scale_std(correct))
    return float(np.mean(spreads)) if spreads else float("nan")


def _query_rows(query_rows, n_gallery: int) -> np.ndarray:
    rows = _vector(query_rows, "query_rows")
    if not np.issubdtype(rows.dtype, np.integer) or rows.min() < 0 or rows.max() >= n_gallery:
        raise SemnbInputError(
            "query_rows",
            f"must be gallery row numbers in [0, {n_gallery})",
            "pass the row of each query in the gallery (np.searchsorted(gallery, queries))",
        )
    return rows


def precision_at_k_ceiling(gallery_labels, query_rows, k: int) -> float:
    """The best mean precision@K any ranking can reach: mean over queries of min(K, R_q) / K.

    R_q is the number of other gallery images of query q's class; `query_rows[q]` is the
    gallery row of query q (each query is a gallery image, excluded from its own results).
    Why: when a class has fewer than K other images even a perfect ranking scores below 1,
    so read precision@K against this.

    Taught in: 07_retrieval
    """
    gallery_labels = _vector(gallery_labels, "gallery_labels")
    rows = _query_rows(query_rows, len(gallery_labels))
    if not isinstance(k, numbers.Integral) or k < 1:
        raise SemnbInputError("k", f"got {k}", "use k >= 1")
    relevant = np.array([np.sum(gallery_labels == gallery_labels[r]) - 1 for r in rows])
    return float(np.mean(np.minimum(relevant, k) / k))


def gallery_scale_std(gallery_labels, gallery_magnifications, query_rows) -> float:
    """The ideal spread: mean over queries of `scale_std` of all other gallery images of the query's class.

    A perfect retrieval of every same-class image would score this `mean_scale_std`, so it
    is the ceiling to read that one against. `query_rows[q]` is the gallery row of query q
    (excluded); unknown magnifications (NaN) are left out, queries with fewer than two known
    ones skipped; NaN (undefined) when no query has two.

    Taught in: 07_retrieval
    """
    gallery_labels = _vector(gallery_labels, "gallery_labels")
    mags = np.asarray(gallery_magnifications, dtype=np.float64)
    _same_length(gallery_labels, mags, "gallery_labels", "gallery_magnifications")
    rows = _query_rows(query_rows, len(gallery_labels))
    others = np.arange(len(gallery_labels))
    spreads = []
    for r in rows:
        same = (gallery_labels == gallery_labels[r]) & (others != r)
        values = mags[same][np.isfinite(mags[same])]
        if len(values) >= 2:
            spreads.append(scale_std(values))
    return float(np.mean(spreads)) if spreads else float("nan")


def per_class_retrieval(retrieved_label_matrix, query_labels, k: int) -> dict:
    """precision@K and mAP@K of each query class: {label: {"precision_at_k", "map_at_k"}}.

    Why: a mean over queries hides a class that is never found. Row q of
    `retrieved_label_matrix` holds query q's ranked labels (the query excluded); keys are
    the query labels (Python scalars), in sorted order.

    Taught in: 07_retrieval
    """
    retrieved = np.asarray(retrieved_label_matrix)
    query_labels = _vector(query_labels, "query_labels")
    _hits(retrieved, query_labels, k)  # shape and k checks
    out = {}
    for cls in np.unique(query_labels):
        mine = query_labels == cls
        out[cls.item()] = {
            "precision_at_k": mean_precision_at_k(retrieved[mine], query_labels[mine], k),
            "map_at_k": map_at_k(retrieved[mine], query_labels[mine], k),
        }
    return out


def neighbor_recall(true_ids, found_ids) -> float:
    """Mean over queries of the fraction of the true k nearest neighbors that a search also returned.

    The recall of an approximate index against exact search: row q of `true_ids` holds
    query q's k exact neighbors (ids), row q of `found_ids` what the approximate index
    returned, both k wide; order is ignored, and an id -1 (no result) is never a neighbor.

    Taught in: 07_retrieval
    """
    true_ids, found_ids = np.asarray(true_ids), np.asarray(found_ids)
    if true_ids.ndim != 2 or true_ids.shape != found_ids.shape or true_ids.size == 0:
        raise SemnbInputError(
            "true_ids/found_ids",
            f"shapes {true_ids.shape} and {found_ids.shape}",
            "pass one row of k ids per query for both searches, the same k",
        )
    k = true_ids.shape[1]
    return float(np.mean([len((set(t) - {-1}) & set(f)) / k for t, f in zip(true_ids.tolist(), found_ids.tolist())]))


# ---------------------------------------------------------------------------------------------
# Results over seeds
# ---------------------------------------------------------------------------------------------


def mean_std_over_seeds(results: Sequence[Mapping], ddof: int = 1) -> dict:
    """Aggregate one metrics dict per seed into `<metric>` (mean) and `<metric>_std`, as the results contract wants.

    Only real-number entries are aggregated; others (confusion matrices, per-class tables)
    are left out. An undefined (NaN) value on any seed makes that metric's mean and std NaN:
    it stays undefined rather than silently averaging fewer seeds. The std is the sample
    std (ddof=1), so it is NaN for a single seed.

    Taught in: 10_eval_report
    """
    if len(results) == 0:
        raise SemnbInputError("results", "no per-seed results", "pass one metrics dict per seed")
    keys = [
        k for k, v in results[0].items() if isinstance(v, numbers.Real) and not isinstance(v, bool)
    ]
    out = {}
    for key in keys:
        missing = [i for i, r in enumerate(results) if key not in r]
        if missing:
            raise SemnbInputError(
                "results",
                f"metric {key!r} missing for seed entries {missing}",
                "compute the same metrics on every seed",
            )
        values = np.array([float(r[key]) for r in results])
        if np.any(np.isnan(values)):
            mean = std = float("nan")
        else:
            mean = float(np.mean(values))
            std = float(np.std(values, ddof=ddof)) if len(values) > ddof else float("nan")
        out[key], out[f"{key}_std"] = mean, std
    return out


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """Adjusted Rand index of two labelings: 0 for chance agreement, 1 for identical (renaming-invariant).

    Hubert & Arabie (1985): from the contingency table n_ij with row sums a_i and column sums b_j,
    ARI = (sum_ij C(n_ij, 2) - E) / ((sum_i C(a_i, 2) + sum_j C(b_j, 2)) / 2 - E),
    E = sum_i C(a_i, 2) sum_j C(b_j, 2) / C(N, 2). Unlike NMI its chance level is 0 whatever k,
    so it complements NMI when one class dominates. Two single-cluster labelings give 1.0 (as scikit-learn).

    Taught in: 06_ssl_clustering
    """
    u, v = _label_pair(labels_true, labels_pred)
    _, u = np.unique(u, return_inverse=True)
    _, v = np.unique(v, return_inverse=True)
    n_v = v.max() + 1
    table = np.bincount(u * n_v + v, minlength=(u.max() + 1) * n_v).astype(float)
    pairs = lambda x: float(np.sum(x * (x - 1) / 2.0))  # noqa: E731
    index, rows = pairs(table), pairs(np.bincount(u).astype(float))
    cols, total = pairs(np.bincount(v).astype(float)), len(u) * (len(u) - 1) / 2.0
    expected = rows * cols / total if total else 0.0
    maximum = (rows + cols) / 2.0
    return 1.0 if maximum == expected else (index - expected) / (maximum - expected)

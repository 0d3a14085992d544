"""STM defects from k labelled examples: a few-shot pixel map and a few-shot defect classifier.

- `fewshot_map`: the few-shot pixel map. ilastik-style filter features (`filter_bank`,
  `pixel_features`) of the scan and of its lattice residual; label-free cues (`unsupervised_cues`:
  the lattice map, smoothed height, a blob filter, raw brightness), chosen by the scan's own
  evidence first and the k labelled defects second (`select_cues`); a random forest (`forest_pixel_map`) trained on the labelled defects, the
  lattice ring around them (`sample_pixel_support`) and pseudo-labels of the cue, averaged in rank
  with the cue. `logistic_map` / `fewshot_pixel_map` is the earlier map (a logistic regression on
  the support pixels only), kept for comparison and for the saved model (`semnb.stm.model`).
- `defect_crops` + `PrototypeClassifier`: classify each detected defect by its nearest class
  prototype (mean embedding of the k labelled crops per class, each crop seen in all 8
  rotations/reflections). Crops are cut in units of the lattice period, so surfaces imaged at
  other scales look alike. The embedding is either the crop itself (z-scored) or a small
  prototypical network (`ProtoNet`, Snell et al. 2017) trained episodically with
  `train_protonet` on other surfaces, or on synthetic ones (`synthetic_training_crops`);
  adapting to a new surface needs only its k labels. The ProtoNet sees each crop z-scored (shape)
  and its residual relative to the terrace (`relative_height`: amplitude). It trains and embeds on
  `compute.device` under `compute.autocast()`; everything else here (features, the pixel
  classifier, crops, prototypes) is numpy/scipy/sklearn on the CPU: it is small and fast there.
- `sample_class_support`: the k labelled defects per class and the query, as the evaluation draws them.

Taught in: 08_stm.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata, skew
from skimage.feature import (
    hessian_matrix,
    hessian_matrix_eigvals,
    structure_tensor,
    structure_tensor_eigenvalues,
)
from skimage.measure import label

from semnb import metrics
from semnb.components import torch_threads
from semnb.data.synth_stm import generate_stm_scan, surface_names
from semnb.errors import SemnbInputError
from semnb.hardware import CPU, Compute
from semnb.stm.lattice import MIN_SIDE, ScanAnalysis, analyze_scan
from semnb.stm.preprocess import check_scan

# ---------------------------------------------------------------------------------------------
# Few-shot pixel map: k labelled defects of the scan -> a defect probability for every pixel
# ---------------------------------------------------------------------------------------------


@dataclass
class PixelSupport:
    """The labelled part of a scan: `defect` pixels (inside the k labelled defects), `lattice`
    pixels (the ring around them that the annotator saw was clean) and `region` (both, plus
    whatever else the annotator looked at); everything outside `region` is the query."""

    defect: np.ndarray
    lattice: np.ndarray
    region: np.ndarray
    component_ids: np.ndarray


def sample_pixel_support(mask: np.ndarray, shots: int, seed: int, ring: float = 12.0,
                         min_area: int = 4) -> PixelSupport:
    """Draw `shots` labelled defects (connected components of `mask`) and their lattice ring.

    Why a ring: a person who outlines a defect also tells where it ends, so the pixels
    within `ring` pixels around it that are not defect are labelled lattice. Components
    smaller than `min_area` pixels (specks) are not drawn. Same seed, same support.

    Taught in: 08_stm.
    """
    mask = np.asarray(mask, bool)
    components = label(mask, connectivity=2)
    sizes = np.bincount(components.ravel())
    eligible = np.flatnonzero(sizes >= min_area)
    eligible = eligible[eligible > 0]
    if len(eligible) < shots:
        raise SemnbInputError("--shots", f"the mask has {len(eligible)} defects of >= {min_area} pixels, "
                              f"fewer than the {shots} shots asked for", "lower --shots")
    picked = np.sort(np.random.default_rng(seed).choice(eligible, size=shots, replace=False))
    defect = np.isin(components, picked)
    region = ndimage.distance_transform_edt(~defect) <= ring
    return PixelSupport(defect=defect, lattice=region & ~mask, region=region, component_ids=picked)


def support_polarity(residual: np.ndarray, support: PixelSupport) -> str:
    """The contrast of the labelled defects: "bright" when the labelled defects whose median
    residual is positive hold at least 80% of the labelled defect pixels, "dark" when those
    with a negative median do, else "both".

    Why by pixels: an annotator's mask also holds small dim specks; a few of them should not
    overrule the large, clearly bright (or dark) defects.

    Taught in: 08_stm.
    """
    components = label(support.defect, connectivity=2)
    index = np.arange(1, components.max() + 1)
    medians = np.atleast_1d(ndimage.median(residual, labels=components, index=index))
    sizes = np.atleast_1d(ndimage.sum(np.ones_like(residual), labels=components, index=index))
    bright = sizes[medians > 0].sum() / sizes.sum()
    return "bright" if bright >= 0.8 else "dark" if bright <= 0.2 else "both"


FEATURE_SCALES = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
"""Filter scales of `filter_bank`, in lattice periods (2 to 32 px on TiO2 at 32 px per row)."""

CUE_MARGIN = 0.02
"""`select_cues` keeps every cue whose support AUROC is within this of the best one."""

HEIGHT_CUES = ("height", "blob", "raw")
"""`unsupervised_cues` read off the scan's height (each as "<name>:bright" and "<name>:dark");
`select_cues` takes them together, in one orientation."""

CUE_AGREEMENT = 0.8
"""`select_cues`: the height reads the lattice map's defects when it tells the lattice map's top
5% of pixels from the rest with at least this AUROC (m235_left and its crops .85-.995 where
defects are bright; synthetic Si/Ge/TiO2 scans .29-.71, where steps and tip changes dominate
the height)."""

SUPPORT_MIN = 0.75
"""`select_cues`: labelled defects whose best cue AUROC on the support is below this stand out
in no cue, so they cannot choose one."""

FOREST_TREES = 100
"""Trees of the few-shot forest (`fit_forest`)."""

PSEUDO_TOP, PSEUDO_BOTTOM, PSEUDO_ROWS = 0.05, 0.5, 2000
"""`forest_pixel_map` pseudo-labels: the top 5% of the cue (defect) and its bottom half
(lattice) of the unlabelled pixels, PSEUDO_ROWS drawn from each."""


def filter_bank(image: np.ndarray, period: float) -> np.ndarray:
    """ilastik-style per-pixel filter features (HxWxF, F = 1 + 8 per scale): the image itself,
    then at each sigma of FEATURE_SCALES x period: Gaussian, Laplacian of Gaussian and
    gradient magnitude (scale-normalised by sigma^2 and sigma), difference of Gaussians
    (sigma vs 1.6 sigma), the two Hessian eigenvalues (sigma^2) and the two structure-tensor
    eigenvalues (Sommer et al., "ilastik", ISBI 2011; scipy.ndimage and skimage.feature).

    Why scales in periods: a feature then means the same on Si at 10 px per row and TiO2 at 32.
    Why the image itself: the raw levelled height (brightness) is among the features, so the
    classifier can always fall back on it.

    Taught in: 08_stm.
    """
    z = check_scan(image, min_side=MIN_SIDE).astype(np.float64)
    out = [z]
    for sigma in (max(f * period, 0.5) for f in FEATURE_SCALES):
        smooth = ndimage.gaussian_filter(z, sigma)
        out += [smooth, sigma**2 * ndimage.gaussian_laplace(z, sigma),
                smooth - ndimage.gaussian_filter(z, 1.6 * sigma),
                sigma * ndimage.gaussian_gradient_magnitude(z, sigma)]
        hessian = hessian_matrix(z, sigma, order="rc", use_gaussian_derivatives=True)
        out += [sigma**2 * e for e in hessian_matrix_eigvals(hessian)]
        out += list(structure_tensor_eigenvalues(structure_tensor(z, sigma=sigma, order="rc")))
    return np.stack(out, axis=-1)


def pixel_features(scan: np.ndarray, residual: np.ndarray, period: float, polarity: str = "both") -> np.ndarray:
    """Per-pixel features (HxWxF, float32) for the few-shot map: `filter_bank` of the levelled
    scan and of its lattice residual oriented by `polarity` (r for "bright", -r for "dark",
    |r| for "both"; `support_polarity` reads it off the labelled defects).

    Why oriented: a model fitted on bright defects only extrapolates a dark defect to "even
    less defect than lattice"; with |r| all deviations point the same way, and when the
    labels show one contrast the sign carries real information.

    Taught in: 08_stm.
    """
    z, r = check_scan(scan, min_side=MIN_SIDE), check_scan(residual, "residual", min_side=MIN_SIDE)
    if polarity not in ("bright", "dark", "both"):
        raise SemnbInputError("polarity", f"got {polarity!r}", "use bright, dark or both")
    if z.shape != r.shape:
        raise SemnbInputError("residual", f"shape {r.shape} differs from the scan's {z.shape}", "pass the scan's own residual")
    return np.concatenate([filter_bank(z, period), filter_bank(_oriented(r, polarity), period)], axis=-1).astype(np.float32)


def _oriented(image: np.ndarray, polarity: str) -> np.ndarray:
    """x for "bright", -x for "dark", |x - median| for "both"."""
    return image if polarity == "bright" else -image if polarity == "dark" else np.abs(image - np.median(image))


def unsupervised_cues(analysis: ScanAnalysis) -> dict[str, np.ndarray]:
    """Label-free defect cues of an analysed scan: "lattice", the unsupervised defect map
    (`unsupervised_defect_map`: deviation from the periodic lattice, its polarity chosen on
    the whole scan, steps neutralised), and in both orientations ("<cue>:bright" x,
    "<cue>:dark" -x) "height" (the levelled scan, Gaussian at period/16: brightness with the
    noise averaged), "blob" (difference of Gaussians at period/4 vs 1.6x that: a bump of
    about a cell against its surroundings, which removes the slow background) and, when the
    analysis kept it, "raw" (the scan as read: the brightness baseline itself; on small crops
    the line levelling drifts and raw brightness beats the levelled height).

    Why several: on the real TiO2(110) scan the defects are the brightest things (height and
    blob win, the lattice map loses), on the synthetic surfaces, with steps, tip changes and
    dark and bright defects, the lattice map wins; `select_cues` weighs the scan's own
    evidence and the labelled defects'.

    Taught in: 08_stm.
    """
    z, period = analysis.z, analysis.defect_map.lattice.period
    images = {"height": ndimage.gaussian_filter(z, max(period / 16, 0.5)),
              "blob": ndimage.gaussian_filter(z, period / 4) - ndimage.gaussian_filter(z, 1.6 * period / 4)}
    if analysis.raw is not None:
        images["raw"] = analysis.raw - np.median(analysis.raw)
    cues = {"lattice": analysis.defect_map.score}
    cues.update({f"{name}:{polarity}": _oriented(image, polarity) for name, image in images.items()
                 for polarity in ("bright", "dark")})
    return cues


def select_cues(cues: dict[str, np.ndarray], support: PixelSupport, margin: float = CUE_MARGIN) -> list[str]:
    """The cues (`unsupervised_cues`) the few-shot map averages, in this order of evidence:

    1. when the height reads the lattice map's defects (`height_agreement` >= CUE_AGREEMENT),
       the height cues (HEIGHT_CUES) in that orientation: the same defects, read more sharply;
    2. when the labelled defects stand out in no cue (best support AUROC, labelled defect
       pixels vs their labelled lattice ring, below SUPPORT_MIN), the height cues oriented by
       the scan's long tail (the skew of the blob filter: defects are the sparse extremes);
    3. otherwise the cues within `margin` of the best support AUROC: the "lattice" map alone
       when it is among them (the cue built on the physics: a crystal repeats itself), else
       the height cues in the orientation of the best one.

    Why not the support alone: one labelled defect is one sample. On crops of the real TiO2
    scan an atypical (faint) labelled defect made the lattice map or the dark orientation win
    on the support, and the map fell far below raw brightness (a 256x128 quarter: .32 vs .88).

    Taught in: 08_stm.
    """
    families = [name for name in HEIGHT_CUES if f"{name}:bright" in cues]
    side, agreement = height_agreement(cues)
    if agreement >= CUE_AGREEMENT:
        return [f"{name}:{side}" for name in families]
    labels = np.r_[np.ones(int(support.defect.sum()), bool), np.zeros(int(support.lattice.sum()), bool)]
    auroc = {name: metrics.image_auroc(np.r_[c[support.defect], c[support.lattice]], labels) for name, c in cues.items()}
    best = max(auroc.values())
    if best < SUPPORT_MIN:
        side = "bright" if skew(cues["blob:bright"].ravel()) > 0 else "dark"
        return [f"{name}:{side}" for name in families]
    if auroc["lattice"] >= best - margin:
        return ["lattice"]
    side = max((value, name) for name, value in auroc.items() if name != "lattice")[1].split(":")[1]
    return [f"{name}:{side}" for name in families]


def height_agreement(cues: dict[str, np.ndarray]) -> tuple[str, float]:
    """(orientation, AUROC): how well the "height" cue tells the lattice map's top 5% of pixels
    from the rest, in its better orientation ("bright" or "dark"). Label-free: near 1 when the
    lattice map's defects are the scan's brightest (or darkest) spots, near .5 when the height
    is dominated by something else (steps, tip changes).

    Taught in: 08_stm.
    """
    lattice = cues["lattice"].ravel()
    auroc = metrics.image_auroc(cues["height:bright"].ravel(), lattice >= np.quantile(lattice, 0.95))
    return ("bright", auroc) if auroc >= 0.5 else ("dark", 1.0 - auroc)


def cue_map(cues: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """The mean of the named cues' pixel ranks (each scaled to (0, 1]): cues in other units
    combine without weights, and the ranks are what AUROC and F1-max read.

    Taught in: 08_stm.
    """
    if not names:
        raise SemnbInputError("names", "is empty", "name at least one cue of `unsupervised_cues`")
    shape = cues[names[0]].shape
    return np.mean([rankdata(cues[n].ravel()) / cues[n].size for n in names], axis=0).reshape(shape)


def fit_forest(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, seed: int = 0):
    """The pixel classifier of the few-shot map: a random forest (scikit-learn; FOREST_TREES = 100 trees, at
    least 10 rows per leaf, sqrt(F) features per split, one thread), fitted on rows x,
    labels y (1 defect, 0 lattice) with `weights`, class-balanced when none are given.

    Why a forest (as ilastik): it needs no feature scaling, combines filters non-linearly and
    with a fixed seed is deterministic, so a fitted STM model rebuilds it from its stored rows.

    Taught in: 08_stm.
    """
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=FOREST_TREES, min_samples_leaf=10, max_features="sqrt", n_jobs=1,
                                    class_weight=None if weights is not None else "balanced", random_state=seed)
    return forest.fit(x, np.asarray(y, dtype=np.int64), sample_weight=weights)


def pseudo_labels(cue: np.ndarray, unlabelled: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(defect pixels, lattice pixels) as flat indices: PSEUDO_ROWS each, drawn (seeded) from
    the top PSEUDO_TOP and the bottom PSEUDO_BOTTOM of `cue` over the `unlabelled` pixels.

    Taught in: 08_stm.
    """
    where = np.flatnonzero(unlabelled.ravel())
    values = cue.ravel()[where]
    high = where[values >= np.quantile(values, 1 - PSEUDO_TOP)]
    low = where[values <= np.quantile(values, PSEUDO_BOTTOM)]
    rng = np.random.default_rng([seed, 21])
    return (rng.choice(high, min(PSEUDO_ROWS, len(high)), replace=False),
            rng.choice(low, min(PSEUDO_ROWS, len(low)), replace=False))


def forest_row_groups(support: PixelSupport, cue: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training rows of the few-shot forest as (flat pixel indices, group): group 1 the
    labelled defect pixels, 3 the cue's pseudo-defects, 0 the labelled lattice pixels, 2 the
    cue's pseudo-lattice (`pseudo_labels` outside the support region); label = group % 2.

    Taught in: 08_stm.
    """
    high, low = pseudo_labels(cue, ~support.region, seed)
    groups = [(np.flatnonzero(support.defect), 1), (high, 3), (np.flatnonzero(support.lattice), 0), (low, 2)]
    return (np.concatenate([rows for rows, _ in groups]).astype(np.int64),
            np.concatenate([np.full(len(rows), g, np.uint8) for rows, g in groups]))


def group_weights(groups: np.ndarray) -> np.ndarray:
    """Row weights that give every group (`forest_row_groups`) the same total weight, len(groups)
    in all: a few hundred labelled pixels then count as much as thousands of pseudo-labels."""
    groups = np.asarray(groups)
    present, index, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return len(groups) / (len(present) * counts[index].astype(np.float64))


def forest_probability(features: np.ndarray, support: PixelSupport, cue: np.ndarray, seed: int = 0) -> np.ndarray:
    """The forest's defect probability (HxW): `fit_forest` on `features` at the rows of
    `forest_row_groups`, weighted by `group_weights`.

    Taught in: 08_stm.
    """
    if features.shape[:2] != support.defect.shape or cue.shape != support.defect.shape:
        raise SemnbInputError("features", f"shape {features.shape[:2]} (cue {cue.shape}) differs from the support's "
                              f"{support.defect.shape}", "compute features, cue and support on the same scan")
    if not support.defect.any() or not support.lattice.any():
        raise SemnbInputError("support", "needs both defect and lattice pixels", "label at least one defect")
    flat = features.reshape(-1, features.shape[-1])
    rows, groups = forest_row_groups(support, cue, seed)
    forest = fit_forest(flat[rows], groups % 2, group_weights(groups), seed)
    return forest.predict_proba(flat)[:, 1].reshape(cue.shape)


def forest_pixel_map(features: np.ndarray, support: PixelSupport, cue: np.ndarray, seed: int = 0) -> np.ndarray:
    """The few-shot map: the forest's defect probability (`forest_probability`: a random forest
    trained on the labelled defect and lattice pixels and on `pseudo_labels` of the unlabelled
    rest from `cue`, each of the four groups with the same total weight) and the cue, averaged
    in pixel rank (`cue_map`), in (0, 1].

    Why pseudo-labels: one labelled defect is a few hundred pixels of one blob; a forest
    fitted on them alone learns that blob (AUROC .66 on the real scan, raw brightness .93).
    Pseudo-labels from the cue show it the rest of the scan, and the labelled pixels then
    correct the cue where it is wrong near them. Why the cue's ranks too: where the forest
    only memorised, the map stays as good as the cue.

    Taught in: 08_stm.
    """
    probability = forest_probability(features, support, cue, seed)
    return cue_map({"forest": probability, "cue": cue}, ["forest", "cue"])


def fit_pixel_classifier(x: np.ndarray, y: np.ndarray, seed: int = 0, c: float = 0.1):
    """Standardised features -> class-balanced L2 logistic regression (strength `c`), fitted on rows x, labels y.

    lbfgs with a fixed seed is deterministic, so a fitted STM model rebuilds exactly this
    classifier from its stored rows (no pickle).

    Taught in: 08_stm.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=1000,
                                                               random_state=seed))
    return model.fit(x, np.asarray(y, dtype=np.float64))


def fewshot_pixel_map(features: np.ndarray, support: PixelSupport, seed: int = 0) -> np.ndarray:
    """Defect log-odds for every pixel from a logistic regression trained on the support.

    Log-odds, not probabilities: far from the support the probabilities saturate at exactly
    0 or 1, and the ties would blur the ranking that AUROC and F1-max measure.

    Why logistic regression: with one to five labelled defects (a few hundred pixels) a
    linear model on standardised filter features is hard to over-fit and is fitted in well
    under a second. Classes are weighted to balance; L2 strength C=0.1.

    Taught in: 08_stm.
    """
    if features.shape[:2] != support.defect.shape:
        raise SemnbInputError("features", f"shape {features.shape[:2]} differs from the support's {support.defect.shape}",
                              "compute features and support on the same scan")
    if not support.defect.any() or not support.lattice.any():
        raise SemnbInputError("support", "needs both defect and lattice pixels", "label at least one defect")
    x = np.concatenate([features[support.defect], features[support.lattice]])
    y = np.concatenate([np.ones(int(support.defect.sum())), np.zeros(int(support.lattice.sum()))])
    model = fit_pixel_classifier(x, y, seed)
    h, w, f = features.shape
    return model.decision_function(features.reshape(-1, f)).reshape(h, w)


def fewshot_map(analysis: ScanAnalysis, support: PixelSupport, seed: int = 0) -> np.ndarray:
    """The few-shot defect map of an analysed scan (`analyze_scan`), in (0, 1]: features
    oriented by the contrast of the labelled defects (`support_polarity`), the label-free cues
    `select_cues` takes (`unsupervised_cues`, `cue_map`), then `forest_pixel_map`.

    Taught in: 08_stm.
    """
    residual = analysis.defect_map.residual
    polarity = support_polarity(residual, support)
    features = pixel_features(analysis.z, residual, analysis.defect_map.lattice.period, polarity)
    cues = unsupervised_cues(analysis)
    return forest_pixel_map(features, support, cue_map(cues, select_cues(cues, support)), seed=seed)


def logistic_map(analysis: ScanAnalysis, support: PixelSupport, seed: int = 0) -> np.ndarray:
    """The earlier few-shot map, kept for comparison: `fewshot_pixel_map` (a logistic regression
    on the support pixels only) on the same oriented `pixel_features`.

    Taught in: 08_stm.
    """
    residual = analysis.defect_map.residual
    polarity = support_polarity(residual, support)
    features = pixel_features(analysis.z, residual, analysis.defect_map.lattice.period, polarity)
    return fewshot_pixel_map(features, support, seed=seed)


# ---------------------------------------------------------------------------------------------
# Few-shot defect classification: crops, embeddings, prototypes
# ---------------------------------------------------------------------------------------------

CROP_SIZE = 24
"""Crops are resampled to CROP_SIZE x CROP_SIZE pixels."""

CROP_EXTENT = 3.0
"""A crop spans this many lattice periods, whatever the pixel size of the scan."""


def defect_crops(scan: np.ndarray, residual: np.ndarray, centres, period: float,
                 size: int = CROP_SIZE, extent: float = CROP_EXTENT) -> np.ndarray:
    """Crops around defect centres, N x 2 x size x size: channel 0 the scan's local detail
    (scan minus its Gaussian blur at one period), channel 1 the lattice residual.

    Why in units of the period: Si imaged at 10 px per row and TiO2 at 32 px per row then
    give crops of the same physical extent, which is what lets one embedding serve both.
    Bilinear sampling; outside the scan the nearest edge value is repeated.

    Taught in: 08_stm.
    """
    z, r = check_scan(scan, min_side=MIN_SIDE), check_scan(residual, "residual", min_side=MIN_SIDE)
    if z.shape != r.shape:
        raise SemnbInputError("residual", f"shape {r.shape} differs from the scan's {z.shape}", "pass the scan's own residual")
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    detail = z - ndimage.gaussian_filter(z, period)
    grid = (np.arange(size) - (size - 1) / 2.0) * (extent * period / size)
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    crops = np.empty((len(centres), 2, size, size), np.float32)
    for i, (x, y) in enumerate(centres):
        coords = [y + gy, x + gx]
        crops[i, 0] = ndimage.map_coordinates(detail, coords, order=1, mode="nearest")
        crops[i, 1] = ndimage.map_coordinates(r, coords, order=1, mode="nearest")
    return crops


def dihedral(crops: np.ndarray) -> np.ndarray:
    """The 8 rotations/reflections of each crop: N x ... -> 8 x N x ... (identity first).

    Taught in: 08_stm.
    """
    views = []
    for flip in (False, True):
        base = crops[..., ::-1] if flip else crops
        for k in range(4):
            views.append(np.rot90(base, k=k, axes=(-2, -1)))
    return np.stack(views).copy()


def relative_height(crops: np.ndarray, border: int = 3) -> np.ndarray:
    """Each channel of each crop minus its median (the terrace level around the defect), divided
    by the spread of the crop's detail channel (channel 0) over its outer `border` pixels (the
    lattice corrugation around the defect): heights relative to the terrace, in units of the
    local lattice contrast, the same scale for both channels.

    Why not z-scores: on TiO2(110) a hydroxyl and an oxygen vacancy look alike in shape and
    differ by height (about 0.75 vs 0.4 of the corrugation); dividing each crop by its own
    spread removes exactly that. Why the local corrugation: a tip change rescales the whole
    image below its line (gain 0.7-1.3 in the synthetic scans), lattice and defects alike.

    Taught in: 08_stm.
    """
    x = np.asarray(crops, np.float64)
    detail = x[:, 0]
    ring = np.ones(detail.shape[-2:], bool)
    ring[border:-border, border:-border] = False
    spread = detail[:, ring].std(axis=1)[:, None, None, None]
    return (x - np.median(x, axis=(-2, -1), keepdims=True)) / np.where(spread > 0, spread, 1.0)


def z_scored(crops: np.ndarray) -> np.ndarray:
    """Each channel of each crop z-scored (mean 0, std 1 over the crop): its shape only."""
    x = np.asarray(crops, np.float64)
    mean = x.mean(axis=(-2, -1), keepdims=True)
    std = x.std(axis=(-2, -1), keepdims=True)
    return (x - mean) / np.where(std > 0, std, 1.0)


def flatten_embedding(crops: np.ndarray) -> np.ndarray:
    """The crop itself as the embedding (each channel z-scored over the crop, `z_scored`): the
    no-training baseline for prototypes.

    Taught in: 08_stm.
    """
    return z_scored(crops).reshape(len(crops), -1)


def brightness_embedding(crops: np.ndarray) -> np.ndarray:
    """The brightness baseline's embedding: the raw scan's crop as it is, not normalised.

    Pass crops cut with the raw scan as both scan and residual (`defect_crops(raw, raw, ...)`):
    `defect_crops` samples the residual channel unchanged, so channel 1 is the raw brightness.

    Taught in: 08_stm.
    """
    return np.asarray(crops, np.float64)[:, 1:].reshape(len(crops), -1)


def sample_class_support(labels, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Draw `shots` labelled defects per class (support); the other defects of those classes are the query.

    A class with `shots` or fewer defects has none left to query and is left out. Returns the
    support and query indices into `labels` and the classes left out with their sizes. Same
    seed, same split (the classes are drawn in sorted order, from one generator per seed).

    Taught in: 08_stm.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 7])
    support, usable, left_out = [], [], {}
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) <= shots:
            left_out[str(cls)] = len(members)
            continue
        support.append(rng.choice(members, size=shots, replace=False))
        usable.append(members)
    if not support:
        return np.zeros(0, int), np.zeros(0, int), left_out
    support = np.concatenate(support)
    return support, np.setdiff1d(np.concatenate(usable), support), left_out


AMPLITUDE_WEIGHT = 0.5
"""`AmplitudeEmbedding`: weight of the standardised amplitude features beside the embedding
scaled to unit typical distance (0.5, 1, 2 measured on synthetic leave-one-surface-out)."""


def amplitude_features(crops: np.ndarray) -> np.ndarray:
    """Explicit amplitude features of defect crops (N x 5), on `relative_height` (heights relative
    to the terrace, in units of the lattice corrugation around the defect): the residual's
    signed peak in the central third (the largest |value|, with its sign), the residual's mean
    there, the fraction of the crop where |residual| exceeds half that peak (the defect's area),
    and the detail channel's mean over the central 4 x 4 pixels and over the central half.

    Why explicit: a prototype of one labelled crop per class has no way to learn that a
    hydroxyl and an oxygen vacancy differ in height, a vacancy and an adatom in sign; these
    numbers say it directly, and they do not change under rotation or reflection.

    Taught in: 08_stm.
    """
    r = relative_height(crops)
    n = r.shape[-1]
    third, half, mid = slice(n // 3, n - n // 3), slice(n // 4, n - n // 4), slice(n // 2 - 2, n // 2 + 2)
    centre = r[:, 1, third, third].reshape(len(r), -1)
    peak = centre[np.arange(len(r)), np.abs(centre).argmax(axis=1)] if len(r) else np.zeros(0)
    area = (np.abs(r[:, 1]) > 0.5 * np.abs(peak)[:, None, None]).mean(axis=(1, 2))
    return np.stack([peak, centre.mean(axis=1), area, r[:, 0, mid, mid].mean(axis=(1, 2)),
                     r[:, 0, half, half].mean(axis=(1, 2))], axis=1)


class AmplitudeEmbedding:
    """An embedding (e.g. `ProtoNet.embed`) beside explicit `amplitude_features`, for prototypes:
    [embed(x) / s, w * (a(x) - m) / d], with s the typical distance between the embeddings of
    `reference` crops (the root of the median squared distance to their mean), m and d the
    median and spread of their amplitude features, w = `weight`.

    `reference`: the crops of the new surface's defects (all of them, labelled or not: only
    their spread is used, no labels), so both parts are in units of that surface's variety.

    Taught in: 08_stm.
    """

    def __init__(self, embed, reference: np.ndarray, weight: float = AMPLITUDE_WEIGHT):
        if len(reference) < 2:
            raise SemnbInputError("reference", f"holds {len(reference)} crops", "pass the crops of the surface's defects")
        self.embed, self.weight = embed, float(weight)
        embedded = embed(np.asarray(reference))
        self.scale = float(np.sqrt(np.median(((embedded - embedded.mean(0)) ** 2).sum(-1)))) or 1.0
        features = amplitude_features(reference)
        self.centre = np.median(features, axis=0)
        spread = features.std(axis=0)
        self.spread = np.where(spread > 0, spread, 1.0)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        amplitude = (amplitude_features(crops) - self.centre) / self.spread
        return np.concatenate([self.embed(crops) / self.scale, self.weight * amplitude], axis=1)


class PrototypeClassifier:
    """Nearest class prototype (Snell et al. 2017): a class is the mean embedding of its
    labelled crops, each seen in all 8 rotations/reflections; a query goes to the nearest
    prototype (squared Euclidean distance), with softmax(-d^2) as class probabilities.

    `embed` maps N x 2 x S x S crops to N x D; `flatten_embedding` or a trained
    `ProtoNet.embed` (which computes on the network's device and returns numpy); the
    prototypes and distances are numpy on the CPU (a few classes by a few hundred dimensions).

    Taught in: 08_stm.
    """

    def __init__(self, embed=flatten_embedding):
        self.embed = embed
        self.classes_: np.ndarray | None = None
        self.prototypes_: np.ndarray | None = None

    def fit(self, crops: np.ndarray, labels) -> PrototypeClassifier:
        labels = np.asarray(labels)
        if len(crops) != len(labels) or len(labels) == 0:
            raise SemnbInputError("labels", f"{len(labels)} labels for {len(crops)} crops", "pass one label per support crop")
        views = dihedral(np.asarray(crops))
        embedded = self.embed(views.reshape(-1, *views.shape[2:])).reshape(8, len(labels), -1)
        self.classes_ = np.unique(labels)
        self.prototypes_ = np.stack([embedded[:, labels == c].reshape(-1, embedded.shape[-1]).mean(0)
                                     for c in self.classes_])
        return self

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        if self.prototypes_ is None:
            raise SemnbInputError("PrototypeClassifier", "is not fitted", "call fit(support_crops, labels) first")
        embedded = self.embed(np.asarray(crops))
        d2 = ((embedded[:, None, :] - self.prototypes_[None]) ** 2).sum(-1)
        logits = -(d2 - d2.min(axis=1, keepdims=True))
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, crops: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(crops), axis=1)]


class ProtoNet:
    """A small prototypical network (Snell et al., NeurIPS 2017) for defect crops.

    Four blocks of 3x3 convolution (32 channels), batch norm and ReLU, the first three
    followed by 2x2 max pooling, map a crop (`tensor`: 3 x 24 x 24, shape and amplitude) to a
    32 x 3 x 3 = 288-d embedding. Trained episodically by
    `train_protonet`: each episode is a small few-shot task, so the network learns an
    embedding in which class means separate classes it has never seen, such as the defects
    of a new surface. Use `embed` inside a `PrototypeClassifier`.

    The network lives on `compute.device` and runs under `compute.autocast()`; it is
    initialised on the CPU and then moved, so a seed gives the same initial weights on
    every device.

    Taught in: 08_stm.
    """

    def __init__(self, seed: int = 0, compute: Compute = CPU):
        import torch
        from torch import nn

        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

        self.compute = compute
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            torch.manual_seed(seed)
            net = nn.Sequential(*block(3, 32), *block(32, 32), *block(32, 32), *block(32, 32)[:-1], nn.Flatten())
        self.net = net.to(compute.device)

    def tensor(self, crops: np.ndarray):
        """Crops as a float32 tensor on the CPU, three channels: the crop's two channels z-scored
        (`z_scored`: shape) and its residual relative to the terrace (`relative_height`: amplitude)."""
        import torch

        x = np.concatenate([z_scored(crops), relative_height(crops)[:, 1:]], axis=1)
        return torch.from_numpy(x.astype(np.float32))

    def forward(self, crops: np.ndarray):
        """The float32 embeddings of `crops` on the network's device (autocast to the precision)."""
        with self.compute.autocast():
            return self.net(self.compute.to(self.tensor(crops))).float()

    def embed(self, crops: np.ndarray, batch: int = 256) -> np.ndarray:
        """N x 288 float64 embeddings on the CPU (numpy), computed in batches of `batch` crops."""
        import torch

        self.net.eval()
        with torch.no_grad(), torch_threads(1):
            parts = [self.forward(crops[i:i + batch]).cpu().numpy() for i in range(0, len(crops), batch)]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, 288))


def train_protonet(crops: np.ndarray, labels, episodes: int = 300, n_way: int = 4, max_shots: int = 5,
                   n_query: int = 5, seed: int = 0, progress: bool = False, device: str | Compute = "auto",
                   precision: str = "auto") -> ProtoNet:
    """Train a `ProtoNet` episodically on labelled crops (e.g. the defects of two surfaces).

    Each episode draws `n_way` classes (labels should name the surface too, e.g.
    "si001:adatom", so that classes of different surfaces stay apart), 1..`max_shots` support
    and up to `n_query` query crops per class, each in a random rotation/reflection; the
    loss is the cross-entropy of softmax(-squared distance to the class means) on the
    queries (Snell et al. 2017). Adam, learning rate 1e-3. Same seed, same network.

    Trains on `device` in `precision` (`Compute.resolve`; a resolved `Compute` passes as
    `device`), with a gradient scaler for fp16; the episodes are drawn on the CPU (numpy),
    so a seed draws the same episodes on every device.

    Taught in: 08_stm.
    """
    import torch
    from tqdm.auto import tqdm

    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    usable = classes[counts >= 2]
    if len(usable) < 2:
        raise SemnbInputError("labels", "fewer than two classes with two or more crops",
                              "train on more labelled defects (at least two classes, two crops each)")
    n_way = min(n_way, len(usable))
    compute = Compute.resolve(device, precision)
    rng = np.random.default_rng(seed)
    model = ProtoNet(seed, compute)
    optimiser = torch.optim.Adam(model.net.parameters(), lr=1e-3)
    scaler = compute.grad_scaler()
    views = dihedral(np.asarray(crops, np.float32))  # 8 x N x 2 x S x S
    with torch.random.fork_rng(devices=[]), torch_threads(1):
        torch.manual_seed(seed)
        model.net.train()
        for _ in tqdm(range(episodes), desc="protonet episodes", disable=not progress):
            way = rng.choice(usable, size=n_way, replace=False)
            shots = int(rng.integers(1, max_shots + 1))
            support, query, query_target = [], [], []
            for target, cls in enumerate(way):
                members = rng.permutation(np.flatnonzero(labels == cls))
                k = min(shots, len(members) - 1)
                picked = members[:k + n_query]
                chosen = views[rng.integers(0, 8, size=len(picked)), picked]
                support.append(chosen[:k])
                query.append(chosen[k:])
                query_target += [target] * (len(picked) - k)
            embedded = model.forward(np.concatenate(support + query))
            n_support = sum(len(s) for s in support)
            sizes = [len(s) for s in support]
            prototypes = torch.stack([part.mean(0) for part in torch.split(embedded[:n_support], sizes)])
            distances = torch.cdist(embedded[n_support:], prototypes) ** 2
            loss = torch.nn.functional.cross_entropy(-distances, torch.as_tensor(query_target, device=compute.device))
            optimiser.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
    model.net.eval()
    return model


def synthetic_training_crops(n_scans: int = 4, size: int = 256, seed: int = 0,
                             surfaces: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Crops and "surface:class" labels of generated synthetic scans, to train a `ProtoNet`.

    By design the ProtoNet learns from synthetic surfaces (Si(001), Ge(001), TiO2(110) from
    `semnb.data.synth_stm`) when no other labelled surface is at hand: the embedding only has
    to learn what separates defect classes in general, and the new surface's own k labels
    then set the prototypes. The scans use seeds 10_000 + seed*100 + i, apart from those
    `semnb data synth` writes.

    Taught in: 08_stm.
    """
    xs, ys = [], []
    for surface in surfaces or surface_names():
        for i in range(n_scans):
            scan = generate_stm_scan(surface, size=size, seed=10_000 + seed * 100 + i)
            analysis = analyze_scan(scan.raw)
            xs.append(defect_crops(analysis.z, analysis.defect_map.residual, scan.defects[["x", "y"]].to_numpy(float),
                                   analysis.defect_map.lattice.period))
            ys += [f"{surface}:{c}" for c in scan.defects["cls"]]
    return np.concatenate(xs), np.array(ys)

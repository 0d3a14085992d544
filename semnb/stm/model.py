"""The fitted STM defect-map model: fit on a few labelled scans, save, predict on unlabelled ones.

`fit_stm` learns the logistic few-shot pixel map of `semnb.stm.fewshot` (`logistic_map`, which
`semnb eval stm` reports as `fewshot_logistic`; the forest map `fewshot` is trained per scan on
pseudo-labels of that scan, which a saved model does not hold) from scans with their defect
masks: each scan is analysed (`analyze_scan`: levelling, lattice, residual), its labelled
defects and the lattice ring around them are drawn (`sample_pixel_support`), and their
`pixel_features` (oriented by the contrast of the labelled defects, `support_polarity`) are
the training rows of one logistic regression shared by every scan. `StmModel.predict` then
gives each new scan a defect map at the scan's own size: -ln P(lattice) per pixel (below).

The state is the training rows themselves (support pixel features and labels, a few thousand
rows per scan), not the scikit-learn object: `restore` refits the same seeded classifier on
them, so nothing is pickled and the restored model predicts bit for bit what the fitted one did.

Everything runs in numpy/scipy/scikit-learn on the CPU (as `evaluate_stm`'s pixel maps do):
`device` and `precision` are checked, and the model records that it computes in fp32 there.

Taught in: 00_quickstart (fit -> save -> predict) and 08_stm (the few-shot pixel map).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from skimage.measure import label
from tqdm.auto import tqdm

from semnb import metrics
from semnb.components import image_scores
from semnb.errors import SemnbInputError
from semnb.fitted import FittedModel, ImagePrediction
from semnb.hardware import Compute
from semnb.stm.fewshot import (
    fit_pixel_classifier,
    pixel_features,
    sample_pixel_support,
    support_polarity,
)
from semnb.stm.lattice import ScanAnalysis, analyze_scan

METHOD = "fewshot_pixel"
C = 0.1
"""L2 strength of the logistic regression, as in `fewshot_pixel_map`."""
RING = 12.0
"""Pixels within this distance of a labelled defect (and not in the mask) are labelled lattice."""
MIN_AREA = 4
"""Mask components smaller than this (specks) are not drawn as labelled defects."""
MAX_ROWS = 4000
"""At most this many defect and this many lattice pixels per scan are kept as training rows."""
TOP_FRACTION = 0.01
"""The image score is the mean of the top 1% of the map's pixels."""
FOLDS = 5
"""The threshold's cross-fit holds out one scan in turn, in at most this many folds."""
MAP_CAP = 40.0
"""The map is clipped to [0, MAP_CAP] nats (P(lattice) = 4e-18 there): its `map_range`."""

SETTINGS_KEYS = ("method", "image_size", "precision", "threshold", "threshold_rule", "map_range", "polarity", "seed", "C",
                 "top_fraction", "n_features")
"""What `restore` and `predict` read; the other settings record how the support was drawn."""
TENSOR_NAMES = ("support_features", "support_labels")


class StmModel(FittedModel):
    """The few-shot STM pixel map, fitted: a seeded logistic regression on stored support rows.

    predict(scans): scans as `semnb.data.read_image` reads X.npy (heights stretched to [0, 1], the
    way `load_scans` reads the support; any size), one
    `ImagePrediction` each: `defect_map` (float32, in `map_range` = (0, MAP_CAP); mask =
    map >= `threshold`) and `score`, the mean of the map's top 1% (`components.image_scores`).

    The map is -ln P(lattice) = ln(1 + e^logit), in nats: the classifier's defect log-odds
    where they are positive, bent smoothly towards 0 where they are negative. Why not the
    probability: in float32 it is exactly 1.0 beyond log-odds of about 17, which many defect
    pixels reach, and the ties would blur the threshold, the score and the 16-bit PNG; and why
    not the log-odds themselves: the PNG needs a map >= 0 that still ranks the lattice pixels.

    Taught in: 00_quickstart and 08_stm.
    """

    task = "stm"

    def __init__(self, settings: Mapping, support_features: np.ndarray, support_labels: np.ndarray):
        self._settings = dict(settings)
        self._x = np.ascontiguousarray(support_features, np.float32)
        self._y = np.ascontiguousarray(support_labels, np.uint8)
        self._classifier = fit_pixel_classifier(self._x, self._y, self._settings["seed"], self._settings["C"])

    def settings(self) -> dict:
        return dict(self._settings)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"support_features": torch.from_numpy(self._x.copy()),
                "support_labels": torch.from_numpy(self._y.copy())}

    @classmethod
    def restore(cls, settings: Mapping, tensors: Mapping[str, torch.Tensor], device: str = "auto",
                precision: str | None = None) -> StmModel:
        """The model back from its settings and tensors: the classifier refit, seeded, on the stored rows."""
        Compute.resolve(device, precision or "auto")
        missing = [k for k in SETTINGS_KEYS if k not in settings] + [k for k in TENSOR_NAMES if k not in tensors]
        if missing or settings.get("method") != METHOD:
            problem = f"lacks {', '.join(missing)}" if missing else f"holds method {settings.get('method')!r}"
            raise SemnbInputError("stm model", f"this model folder is incomplete or from another version ({problem})",
                                  "fit the model again with this semnb version (`semnb fit stm`)")
        x, y = tensors["support_features"].numpy(), tensors["support_labels"].numpy()
        if x.ndim != 2 or x.shape[1] != settings["n_features"] or y.shape != (len(x),) or set(np.unique(y)) != {0, 1}:
            raise SemnbInputError("stm model", f"its support tensors do not fit its settings (features {tuple(x.shape)}, "
                                  f"labels {tuple(y.shape)}, {settings['n_features']} features expected, both classes)",
                                  "fit the model again with this semnb version (`semnb fit stm`)")
        return cls(settings, x, y)

    def predict(self, pixels: Sequence[np.ndarray]) -> list[ImagePrediction]:
        out = []
        for i, raw in enumerate(pixels):
            defect_map = self.defect_map(_analyze(raw, f"scan {i} of the batch"))
            score = float(image_scores(torch.from_numpy(defect_map)[None], self._settings["top_fraction"])[0])
            out.append(ImagePrediction(score=float(np.clip(score, *self._settings["map_range"])), defect_map=defect_map))
        return out

    def defect_map(self, analysis: ScanAnalysis) -> np.ndarray:
        """The defect map (float32 HxW, see the class) of an analysed scan. One scan at a time,
        so a scan's map does not depend on which batch it came in."""
        return _defect_map(self._classifier, _features(analysis, self._settings["polarity"]))


def fit_stm(scans: Sequence[np.ndarray], masks: Sequence[np.ndarray], shots: int | None = None, seed: int = 0,
            device: str = "auto", precision: str = "auto", progress: bool = False) -> StmModel:
    """Fit the few-shot STM defect map on labelled scans (raw heights, each with its full defect mask).

    shots: labelled defects drawn per scan (`sample_pixel_support`, seeded); None takes every
    defect of at least MIN_AREA pixels. Each scan's labelled defects and the RING around them
    give at most MAX_ROWS defect and MAX_ROWS lattice rows (a seeded draw when there are more).
    The features are oriented by the labelled contrast when every scan shows the same one
    (`support_polarity`), else "both" (|residual|): one linear model serves all scans.

    The threshold comes from a cross-fit over the support scans (`_crossfit_threshold`): in
    FOLDS folds (leave one scan out up to FOLDS scans), a classifier fit on the other scans
    scores every pixel of each held-out scan, and that scan's pixel-F1-max threshold is
    taken against its mask; the threshold is the median over the scans. Why held out: F1 at
    a threshold needs scores the model did not train on, on whole scans (masks complete),
    whose defect/lattice ratio is that of new scans, not that of the support rows (defects
    plus their rings). Why each scan's own threshold and their median: the fold classifiers
    differ in calibration, so one F1-max over their pooled maps mixes scales (in trials it fell
    to 0 or to the cap), while the median ignores a scan to which the transfer failed. With
    one scan the units are its left and right halves; without a labelled defect on both
    sides, P = 0.5 (the class-balanced classifier's boundary, ln 2 on the map) is kept.
    `threshold_rule` says which, `crossfit_pixel_f1` is the pooled held-out F1 at the threshold.

    Taught in: 00_quickstart and 08_stm.
    """
    Compute.resolve(device, precision)
    masks = _checked_masks(scans, masks, shots)
    analyses = [_analyze(raw, f"scans[{i}]") for i, raw in enumerate(tqdm(scans, desc="analyse scans",
                                                                          disable=not progress))]
    supports = [_support(mask, shots, seed, f"masks[{i}]") for i, mask in enumerate(masks)]
    polarities = {support_polarity(a.defect_map.residual, s) for a, s in zip(analyses, supports)}
    polarity = polarities.pop() if len(polarities) == 1 else "both"
    features = [_features(a, polarity) for a in analyses]
    rng = np.random.default_rng([seed, 15])
    rows = [(_thin(s.defect, rng), _thin(s.lattice, rng)) for s in supports]
    threshold, rule, f1 = _crossfit_threshold(features, masks, rows, seed)
    x, y = _training_rows(features, rows)
    settings = {
        "method": METHOD, "image_size": None, "precision": "fp32", "threshold": threshold, "threshold_rule": rule,
        "crossfit_pixel_f1": f1, "map_range": [0.0, MAP_CAP],
        "score": f"mean of the top {TOP_FRACTION:.0%} of the defect map, -ln P(lattice) in nats",
        "polarity": polarity, "shots": shots, "seed": int(seed), "C": C, "ring": RING, "min_area": MIN_AREA,
        "max_rows": MAX_ROWS, "folds": FOLDS, "top_fraction": TOP_FRACTION, "n_features": int(x.shape[1]),
        "n_scans": len(scans), "n_defect_rows": int(y.sum()), "n_lattice_rows": int(len(y) - y.sum()),
    }
    return StmModel(settings, x, y)


def _defect_map(classifier, features: np.ndarray) -> np.ndarray:
    """ln(1 + e^logit) = -ln P(lattice), clipped to [0, MAP_CAP], float32 HxW."""
    h, w, f = features.shape
    logit = classifier.decision_function(features.reshape(-1, f)).reshape(h, w)
    return np.clip(np.logaddexp(0.0, logit), 0.0, MAP_CAP).astype(np.float32)


def _features(analysis: ScanAnalysis, polarity: str) -> np.ndarray:
    residual = analysis.defect_map.residual
    return pixel_features(analysis.z, residual, analysis.defect_map.lattice.period, polarity)


def _analyze(raw: np.ndarray, where: str) -> ScanAnalysis:
    """`analyze_scan`, with a bad scan named by its place (a batch holds many)."""
    try:
        return analyze_scan(raw)
    except SemnbInputError as error:
        raise SemnbInputError(where, error.problem, error.fix) from None


def _checked_masks(scans: Sequence[np.ndarray], masks: Sequence[np.ndarray], shots: int | None) -> list[np.ndarray]:
    """Boolean masks, one per scan, each of its scan's shape and with a defect to learn from."""
    if len(scans) == 0:
        raise SemnbInputError("scans", "is empty", "pass at least one labelled scan (X.npy with X_mask.npy)")
    if len(masks) != len(scans):
        raise SemnbInputError("masks", f"{len(masks)} masks for {len(scans)} scans", "pass one mask per scan")
    if shots is not None and int(shots) < 1:
        raise SemnbInputError("--shots", f"got {shots}", "use at least 1 labelled defect per scan, or none for all")
    out = []
    for i, (scan, mask) in enumerate(zip(scans, masks)):
        mask = np.asarray(mask)
        if mask.shape != np.shape(scan):
            raise SemnbInputError(f"masks[{i}]", f"has shape {mask.shape}, its scan {np.shape(scan)}",
                                  "pass the mask of that scan, pixel for pixel (X_mask.npy next to X.npy)")
        if not mask.any():
            raise SemnbInputError(f"masks[{i}]", "has no defect pixel: the map learns defects from labelled ones",
                                  "label the scan's defects, or leave defect-free scans out of the support")
        out.append(mask.astype(bool))
    return out


def _support(mask: np.ndarray, shots: int | None, seed: int, where: str):
    """`sample_pixel_support` of one scan: `shots` defects, or every one of >= MIN_AREA pixels."""
    if shots is None:
        shots = int(np.count_nonzero(np.bincount(label(mask, connectivity=2).ravel())[1:] >= MIN_AREA))
        if shots == 0:
            raise SemnbInputError(where, f"has no defect of at least {MIN_AREA} pixels, only specks",
                                  "label the defects as regions, or leave this scan out of the support")
    try:
        return sample_pixel_support(mask, int(shots), seed, ring=RING, min_area=MIN_AREA)
    except SemnbInputError as error:
        raise SemnbInputError(f"{where} ({error.what})", error.problem, error.fix) from None


def _thin(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """At most MAX_ROWS of the True pixels, a seeded draw, as a mask (raster order is kept)."""
    where = np.flatnonzero(pixels)
    kept = np.zeros(pixels.size, bool)
    kept[where if len(where) <= MAX_ROWS else rng.choice(where, size=MAX_ROWS, replace=False)] = True
    return kept.reshape(pixels.shape)


def _training_rows(features, rows, pieces=None):
    """Feature rows and labels (1 defect, 0 lattice) of the support pixels, restricted to `pieces`:
    (scan index, column slice) pairs; all of every scan by default."""
    pieces = pieces or [(i, slice(None)) for i in range(len(features))]
    x, y = [], []
    for i, cols in pieces:
        defect, lattice = rows[i][0][:, cols], rows[i][1][:, cols]
        x += [features[i][:, cols][defect], features[i][:, cols][lattice]]
        y += [np.ones(int(defect.sum()), np.uint8), np.zeros(int(lattice.sum()), np.uint8)]
    return np.concatenate(x), np.concatenate(y)


def _crossfit_threshold(features, masks, rows, seed: int) -> tuple[float, str, float | None]:
    """(threshold, rule, pooled held-out pixel F1 at it) by the cross-fit `fit_stm` describes."""
    if len(features) >= 2:
        units, unit = [(i, slice(None)) for i in range(len(features))], "scans"
    else:
        half = features[0].shape[1] // 2
        units, unit = [(0, slice(None, half)), (0, slice(half, None))], "left and right halves of the one scan"
    k = min(len(units), FOLDS)
    order = np.random.default_rng([seed, 16]).permutation(len(units))
    held_out = [[units[j] for j in order[f::k]] for f in range(k)]
    thresholds, maps, truth = [], [], []
    for f, held in enumerate(held_out):
        x, y = _training_rows(features, rows, [u for g, fold in enumerate(held_out) if g != f for u in fold])
        if len(np.unique(y)) < 2:
            continue
        classifier = fit_pixel_classifier(x, y, seed, C)
        for i, cols in held:
            if masks[i][:, cols].any():
                maps.append(_defect_map(classifier, features[i][:, cols]).ravel())
                truth.append(masks[i][:, cols].ravel())
                thresholds.append(metrics.f1_max_threshold(maps[-1], truth[-1]))
    if not thresholds:
        return float(np.log(2.0)), (f"ln 2 (P = 0.5, the class-balanced classifier's boundary): the cross-fit "
                                    f"over the {unit} needs labelled defects on both sides"), None
    threshold = float(np.median(thresholds))
    predicted, truth = np.concatenate(maps) >= threshold, np.concatenate(truth)
    f1 = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    return threshold, (f"median of the pixel-F1-max thresholds of the {unit}, each held out and scored by a "
                       f"classifier fit on the others ({k}-fold cross-fit; mask = map >= threshold)"), float(f1)

"""The fitted STM defect-map model: fit on a few labelled scans, save, predict on unlabelled ones.

`fit_stm` learns the forest of the few-shot pixel map of `semnb.stm.fewshot` (`semnb eval stm`'s
`fewshot`) from scans with their defect masks: each scan is analysed (`analyze_scan`: levelling,
lattice per terrace, residual), its labelled defects and the lattice ring around them are drawn
(`sample_pixel_support`), its label-free cue is chosen by those labels (`unsupervised_cues`,
`select_cues`, `cue_map`) and, when only a few defects per scan are labelled (`shots`), gives
pseudo-labels (`forest_row_groups`); their `pixel_features`
(oriented by the contrast of the labelled defects, `support_polarity`) are the training rows of
one class-balanced random forest (`fit_forest`, every row group with the same total weight,
`group_weights`) shared by every scan. `StmModel.predict` gives each new scan the forest's
defect probability at the scan's own size. Unlike `semnb eval stm`'s map it does not refit per
new scan on that scan's pseudo-labels, nor average with that scan's cue: the saved model is one
forest, so a scan's map does not depend on anything but the scan.

The state is the training rows themselves (feature rows of the support and pseudo-label pixels
and their group, at most 4 x MAX_ROWS rows per scan), not the scikit-learn
object: `restore` refits the same seeded forest (one thread, fixed seed: deterministic) on them.
Why not pickle or skops: a pickle executes code from the file on load, and skops needs a list of
trusted types kept in step with scikit-learn's internals; float32/uint8 arrays in safetensors
and a JSON settings file hold nothing but numbers. The cost is the refit at load (seconds).

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
    cue_map,
    fit_forest,
    forest_row_groups,
    group_weights,
    pixel_features,
    sample_pixel_support,
    select_cues,
    support_polarity,
    unsupervised_cues,
)
from semnb.stm.lattice import ScanAnalysis, analyze_scan

METHOD = "fewshot_forest"
RING = 12.0
"""Pixels within this distance of a labelled defect (and not in the mask) are labelled lattice."""
MIN_AREA = 4
"""Mask components smaller than this (specks) are not drawn as labelled defects."""
MAX_ROWS = 1000
"""By default at most this many rows of each group (`forest_row_groups`) per scan are kept: the model stays
small (at most 4 x MAX_ROWS x 82 float32 per scan, 1.3 MB) and its forest refits in seconds."""
TOP_FRACTION = 0.01
"""The image score is the mean of the top 1% of the map's pixels."""
FOLDS = 5
"""The threshold's cross-fit holds out one scan in turn, in at most this many folds."""
MAP_RANGE = (0.0, 1.0)
"""The map is the forest's defect probability."""

SETTINGS_KEYS = ("method", "image_size", "precision", "threshold", "threshold_rule", "map_range", "polarity", "seed",
                 "top_fraction", "n_features")
"""What `restore` and `predict` read; the other settings record how the support was drawn."""
TENSOR_NAMES = ("support_features", "support_groups")
"""The forest's training rows (float32 N x F) and their `forest_row_groups` group (uint8 N: 1
labelled defect, 0 labelled lattice, 3 pseudo-defect, 2 pseudo-lattice; label = group % 2)."""


class StmModel(FittedModel):
    """The few-shot STM pixel map, fitted: a seeded random forest on stored training rows.

    predict(scans): scans as `semnb.data.read_image` reads X.npy (heights stretched to [0, 1], the
    way `load_scans` reads the support; any size), one
    `ImagePrediction` each: `defect_map` (float32, the forest's defect probability, in
    `map_range` = (0, 1); mask = map >= `threshold`) and `score`, the mean of the map's top 1%
    (`components.image_scores`).

    Taught in: 00_quickstart and 08_stm.
    """

    task = "stm"

    def __init__(self, settings: Mapping, support_features: np.ndarray, support_groups: np.ndarray):
        self._settings = dict(settings)
        self._x = np.ascontiguousarray(support_features, np.float32)
        self._groups = np.ascontiguousarray(support_groups, np.uint8)
        self._classifier = fit_forest(self._x, self._groups % 2, group_weights(self._groups), self._settings["seed"])

    def settings(self) -> dict:
        return dict(self._settings)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"support_features": torch.from_numpy(self._x.copy()),
                "support_groups": torch.from_numpy(self._groups.copy())}

    @classmethod
    def restore(cls, settings: Mapping, tensors: Mapping[str, torch.Tensor], device: str = "auto",
                precision: str | None = None) -> StmModel:
        """The model back from its settings and tensors: the forest refit, seeded, on the stored rows."""
        Compute.resolve(device, precision or "auto")
        missing = [k for k in SETTINGS_KEYS if k not in settings] + [k for k in TENSOR_NAMES if k not in tensors]
        if missing or settings.get("method") != METHOD:
            problem = f"lacks {', '.join(missing)}" if missing else f"holds method {settings.get('method')!r}"
            raise SemnbInputError("stm model", f"this model folder is incomplete or from another version ({problem})",
                                  "fit the model again with this semnb version (`semnb fit stm`)")
        x, groups = tensors["support_features"].numpy(), tensors["support_groups"].numpy()
        if (x.ndim != 2 or x.shape[1] != settings["n_features"] or groups.shape != (len(x),)
                or not set(np.unique(groups)) <= {0, 1, 2, 3} or len(set(np.unique(groups % 2))) != 2):
            raise SemnbInputError("stm model", f"its support tensors do not fit its settings (features {tuple(x.shape)}, "
                                  f"groups {tuple(groups.shape)}, {settings['n_features']} features expected, "
                                  "groups 0-3 with both classes)",
                                  "fit the model again with this semnb version (`semnb fit stm`)")
        return cls(settings, x, groups)

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
            device: str = "auto", precision: str = "auto", progress: bool = False, max_rows: int = MAX_ROWS) -> StmModel:
    """Fit the few-shot STM defect map on labelled scans (raw heights, each with its full defect mask).

    shots: labelled defects drawn per scan (`sample_pixel_support`, seeded); None takes every
    defect of at least MIN_AREA pixels. Each scan's labelled defects and the RING around them,
    and with `shots` given its chosen cue's pseudo-defects and pseudo-lattice
    (`forest_row_groups`), give at most `max_rows` rows of each group (a seeded draw when
    there are more; fewer rows, a smaller model and a faster fit). Why pseudo-labels only with
    `shots`: they stand in for the labels of a scan's other defects; with every defect labelled
    they only add the cue's mistakes (3 fully labelled synthetic Ge(001) scans: held-out pixel
    AUROC .95-.99 with them, .95-1.0 without, and defect-free scans then score as high as
    defective ones: top-1% mean .86-.99 vs .51-.80 without). The features are oriented by the labelled contrast when every scan
    shows the same one (`support_polarity`), else "both" (|residual|): one forest serves all scans.

    The threshold comes from a cross-fit over the support scans (`_crossfit_threshold`): in
    FOLDS folds (leave one scan out up to FOLDS scans), a forest fit on the other scans' rows
    scores every pixel of each held-out scan, and that scan's pixel-F1-max threshold is
    taken against its mask; the threshold is the median over the scans. Why held out: F1 at
    a threshold needs scores the model did not train on, on whole scans (masks complete),
    whose defect/lattice ratio is that of new scans, not that of the support rows (defects
    plus their rings). Why each scan's own threshold and their median: the median ignores a
    scan to which the transfer failed. With one scan the units are its left and right halves;
    without a labelled defect on both sides, P = 0.5 (the balanced forest's boundary) is kept.
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
    rows, chosen = [], []
    for analysis, support in zip(analyses, supports):
        cues = unsupervised_cues(analysis)
        chosen.append(select_cues(cues, support))
        pixels, groups = forest_row_groups(support, cue_map(cues, chosen[-1]), seed)
        if shots is None:  # every defect labelled: no pseudo-labels (groups 2, 3)
            pixels, groups = pixels[groups < 2], groups[groups < 2]
        rows.append(_thin(pixels, groups, rng, max_rows))
    threshold, rule, f1 = _crossfit_threshold(features, masks, rows, seed)
    x, groups = _training_rows(features, rows)
    settings = {
        "method": METHOD, "image_size": None, "precision": "fp32", "threshold": threshold, "threshold_rule": rule,
        "crossfit_pixel_f1": f1, "map_range": list(MAP_RANGE),
        "score": f"mean of the top {TOP_FRACTION:.0%} of the defect map, the forest's defect probability",
        "polarity": polarity, "cues": chosen, "pseudo_labels": shots is not None, "shots": shots, "seed": int(seed), "ring": RING, "min_area": MIN_AREA,
        "max_rows": int(max_rows), "folds": FOLDS, "top_fraction": TOP_FRACTION,
        "n_features": int(x.shape[1]), "n_scans": len(scans), "n_defect_rows": int((groups == 1).sum()),
        "n_lattice_rows": int((groups == 0).sum()), "n_pseudo_rows": int((groups >= 2).sum()),
    }
    return StmModel(settings, x, groups)


def _defect_map(classifier, features: np.ndarray) -> np.ndarray:
    """The forest's defect probability, float32 HxW."""
    h, w, f = features.shape
    return classifier.predict_proba(features.reshape(-1, f))[:, 1].reshape(h, w).astype(np.float32)


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


def _thin(pixels: np.ndarray, groups: np.ndarray, rng: np.random.Generator,
          max_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_rows` rows of each group, a seeded draw (the order of the rows is kept)."""
    keep = np.zeros(len(pixels), bool)
    for group in np.unique(groups):
        where = np.flatnonzero(groups == group)
        keep[where if len(where) <= max_rows else rng.choice(where, size=max_rows, replace=False)] = True
    return pixels[keep], groups[keep]


def _training_rows(features, rows, pieces=None):
    """Feature rows and groups (`forest_row_groups`) of the training pixels, restricted to `pieces`:
    (scan index, column slice) pairs; all of every scan by default."""
    pieces = pieces or [(i, slice(None)) for i in range(len(features))]
    x, groups = [], []
    for i, cols in pieces:
        pixels, group = rows[i]
        width = features[i].shape[1]
        column = pixels % width
        lo, hi, _ = cols.indices(width)
        keep = (column >= lo) & (column < hi)
        x.append(features[i].reshape(-1, features[i].shape[-1])[pixels[keep]])
        groups.append(group[keep])
    return np.concatenate(x), np.concatenate(groups)


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
        x, groups = _training_rows(features, rows, [u for g, fold in enumerate(held_out) if g != f for u in fold])
        if not ((groups == 1).any() and (groups % 2 == 0).any()):
            continue  # no labelled defect left to learn from
        classifier = fit_forest(x, groups % 2, group_weights(groups), seed)
        for i, cols in held:
            if masks[i][:, cols].any():
                maps.append(_defect_map(classifier, features[i][:, cols]).ravel())
                truth.append(masks[i][:, cols].ravel())
                thresholds.append(metrics.f1_max_threshold(maps[-1], truth[-1]))
    if not thresholds:
        return 0.5, (f"0.5 (the balanced forest's boundary): the cross-fit over the {unit} needs labelled "
                     "defects on both sides"), None
    threshold = float(np.median(thresholds))
    predicted, truth = np.concatenate(maps) >= threshold, np.concatenate(truth)
    f1 = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    return threshold, (f"median of the pixel-F1-max thresholds of the {unit}, each held out and scored by a "
                       f"forest fit on the others ({k}-fold cross-fit; mask = map >= threshold)"), float(f1)

"""`semnb eval stm`: unsupervised and few-shot STM defect maps and defect classes, measured.

`evaluate_stm` takes the scans `semnb.data.load_scans` read from a folder (each scan with
its pixel mask and, where the folder has `manifest.csv` and `defects.csv`, its surface and
per-defect classes) and:

1. Analyses each scan once (`semnb.stm.lattice.analyze_scan`): plane levelling, line
   flattening and robust normalization, the lattice, its residual and the unsupervised
   defect map.
2. Per seed, per scan: draws `shots` labelled defects from the scan's own mask (support)
   and scores every other pixel (query) with four maps: `fewshot` (a random forest on filter
   features, trained on the support and on pseudo-labels of the label-free cues the support
   chose, `fewshot_map`), `fewshot_logistic` (the earlier map: a logistic regression on the
   support only), `unsupervised` (no labels) and `brightness` (the raw scan,
   the naive baseline). Pixel AUROC and F1-max pool the query pixels of all scans.
   Steps 1 and 2 are numpy/scipy/sklearn on the CPU whatever `device` says.
3. Where per-defect classes exist, per seed and surface (`leave_one_surface_out`): `shots`
   labelled defects per class are the support and all other defects of that surface the
   query. `fewshot` classifies with prototypes of a `ProtoNet` trained episodically on the
   other surfaces (on generated synthetic surfaces when there is one surface only), beside
   explicit amplitude features (`AmplitudeEmbedding`); `protonet` with the ProtoNet's
   prototypes alone, `prototype` with prototypes of the raw crops, `brightness` with
   prototypes of crops of the raw scan. Crops are cut at the listed defect centres. The ProtoNet trains and embeds
   on `device` in `precision`; crops and prototypes stay on the CPU.

Figures are means over seeds with their spread (`<metric>_std`, sample std), in the results
contract of design.md; `per_scan` in the JSON gives each scan's pixel figures and
`per_surface_accuracy` each target surface's classification accuracy.

Taught in: 08_stm.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from semnb import metrics
from semnb.data.scans import LabelledScan, ScanSet
from semnb.errors import SemnbInputError
from semnb.hardware import Compute
from semnb.results import EvalResult
from semnb.stm.fewshot import (
    AmplitudeEmbedding,
    PrototypeClassifier,
    brightness_embedding,
    defect_crops,
    fewshot_map,
    flatten_embedding,
    logistic_map,
    sample_class_support,
    sample_pixel_support,
    synthetic_training_crops,
    train_protonet,
)
from semnb.stm.lattice import ScanAnalysis, analyze_scan

METRICS = ("pixel_auroc", "pixel_f1_max", "accuracy", "macro_f1")  # pixel maps, then defect classes
PIXEL_METHODS = ("fewshot", "unsupervised", "brightness", "fewshot_logistic")  # the earlier map last
CLASS_METHODS = ("fewshot", "prototype", "brightness", "protonet")  # ProtoNet alone (Snell et al.) last


def pixel_maps_for_seed(scan: LabelledScan, analysis: ScanAnalysis, shots: int, seed: int) -> dict:
    """The maps of one scan (PIXEL_METHODS), restricted to its query pixels (1 x n arrays), and
    the query's mask: {"mask": ..., "fewshot": ..., "fewshot_logistic": ..., "unsupervised": ...,
    "brightness": ...}.

    Taught in: 08_stm.
    """
    support = sample_pixel_support(scan.mask, shots, seed)
    query = ~support.region
    maps = {
        "fewshot": fewshot_map(analysis, support, seed=seed),
        "fewshot_logistic": logistic_map(analysis, support, seed=seed),
        "unsupervised": analysis.defect_map.score,
        "brightness": scan.raw,
    }
    out = {name: maps[name][query][None, :] for name in PIXEL_METHODS}
    out["mask"] = scan.mask[query][None, :]
    return out


def evaluate_stm(scans: ScanSet, shots: int = 1, seeds: Sequence[int] = (0, 1, 2), episodes: int = 300,
                 progress: bool = False, device: str = "auto", precision: str = "auto") -> EvalResult:
    """Measure the STM methods on the scans `semnb.data.load_scans` read (see the module docstring).

    The set's folder, warnings (listed first) and reading time (timing `load_s`, counted in
    `total_s`) pass into the results contract. `device` and `precision` (resolved once,
    `semnb.hardware.Compute.resolve`) are where the ProtoNet runs; the result records both.

    Taught in: 08_stm.
    """
    started = time.perf_counter()
    compute = Compute.resolve(device, precision)
    if int(shots) < 1:
        raise SemnbInputError("--shots", f"got {shots}", "use at least 1 labelled defect")
    if not scans:
        raise SemnbInputError("scans", "is empty", "read a folder of scans with `semnb.data.load_scans`")
    seeds = list(seeds)
    warnings = list(scans.warnings)
    timing: dict[str, float] = {"load_s": scans.load_s}

    tick = time.perf_counter()
    analyses = [_analyze(s) for s in tqdm(scans, desc="analyse scans", disable=not progress)]
    timing["analyse_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    pixel_per_seed, per_scan = _pixel_results(scans, analyses, shots, seeds, warnings, progress)
    timing["pixel_maps_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    class_per_seed, training, per_surface = _class_results(scans, analyses, shots, seeds, episodes, warnings, progress,
                                                           compute)
    timing["classification_s"] = time.perf_counter() - tick

    results = {}
    for method in dict.fromkeys(PIXEL_METHODS + CLASS_METHODS):
        runs = [{**pixel_per_seed.get(seed, {}).get(method, {}), **class_per_seed.get(seed, {}).get(method, {})}
                for seed in seeds]
        runs = [r for r in runs if r]
        if runs and all(r.keys() == runs[0].keys() for r in runs):
            results[method] = metrics.mean_std_over_seeds(runs)
    timing["total_s"] = scans.load_s + time.perf_counter() - started
    surfaces = sorted({s.surface for s in scans if s.surface})
    return EvalResult(
        task="stm", data=scans.source, backbone="none", weights=training or "none (no classes in the data)",
        precision=compute.precision, shots=int(shots), seeds=seeds, n_images=len(scans), results=results,
        timing={k: round(v, 2) for k, v in timing.items()}, warnings=warnings,
        extra={"per_scan": per_scan, "per_surface_accuracy": per_surface, "surfaces": surfaces,
               "n_defects_with_class": int(sum(len(s.defects) for s in scans if s.defects is not None)),
               "device": str(compute.device)},
    )


def _analyze(scan: LabelledScan) -> ScanAnalysis:
    """`analyze_scan`, with a bad scan named by its file (the user has many; "scan" alone does not say which)."""
    try:
        return analyze_scan(scan.raw)
    except SemnbInputError as error:
        raise SemnbInputError(scan.path, error.problem, error.fix) from None


# ---------------------------------------------------------------------------------------------
# Defect classes: crops per surface, leave one surface out
# ---------------------------------------------------------------------------------------------


class SurfaceCrops(NamedTuple):
    """The labelled defects of one surface: `detail` crops (scan detail + lattice residual),
    `bright` crops of the raw scan (the brightness baseline) and the class `labels`."""

    detail: np.ndarray
    bright: np.ndarray
    labels: np.ndarray


def labelled_crops(scans: Sequence[LabelledScan], analyses: Sequence[ScanAnalysis],
                   indices: Sequence[int]) -> SurfaceCrops:
    """Crops at the listed defect centres of scans[indices]: (crops of scan detail + lattice
    residual, crops of the raw scan for the brightness baseline, class labels).

    Taught in: 08_stm.
    """
    detail, bright, labels = [], [], []
    for i in indices:
        scan, analysis = scans[i], analyses[i]
        centres = scan.defects[["x", "y"]].to_numpy(float)
        period = analysis.defect_map.lattice.period
        detail.append(defect_crops(analysis.z, analysis.defect_map.residual, centres, period))
        bright.append(defect_crops(scan.raw, scan.raw, centres, period))
        labels.append(scan.defects["class"].astype(str).to_numpy())
    return SurfaceCrops(np.concatenate(detail), np.concatenate(bright), np.concatenate(labels))


def crops_by_surface(scans: Sequence[LabelledScan], analyses: Sequence[ScanAnalysis]) -> dict[str, SurfaceCrops]:
    """The labelled crops (`labelled_crops`) of each surface, keyed by `scan.surface`
    ("unknown" where the folder names none), surfaces in the order their first scan comes.
    Scans without listed defects are left out; no scan with defects gives {}.

    Taught in: 08_stm.
    """
    groups: dict[str, list[int]] = {}
    for i, scan in enumerate(scans):
        if scan.defects is not None and len(scan.defects):
            groups.setdefault(scan.surface or "unknown", []).append(i)
    return {key: labelled_crops(scans, analyses, idx) for key, idx in groups.items()}


@dataclass
class SurfaceRun:
    """One held-out surface of `leave_one_surface_out`: `support` and `query` index its crops,
    `truth` is the query's labels, `predicted` each method's labels for the query,
    `classifiers` each method's fitted `PrototypeClassifier` (the `fewshot` one takes detail
    crops, the `brightness` one raw crops) and `training` says what the ProtoNet learnt from."""

    support: np.ndarray
    query: np.ndarray
    truth: np.ndarray
    predicted: dict[str, np.ndarray]
    classifiers: dict[str, PrototypeClassifier]
    training: str


def leave_one_surface_out(crops: Mapping[str, SurfaceCrops], shots: int = 1, seed: int = 0, episodes: int = 300,
                          warnings: list[str] | None = None, progress: bool = False, device: str | Compute = "auto",
                          precision: str = "auto") -> dict[str, SurfaceRun]:
    """Adapt to each surface in turn from `shots` labels per class (`sample_class_support`).

    For each target surface a `ProtoNet` is trained on the crops of all the other surfaces
    (labels "surface:class", so that classes of different surfaces stay apart), or on
    generated synthetic surfaces when `crops` holds one surface only; then `fewshot`
    (prototypes of the ProtoNet embedding beside explicit amplitude features,
    `AmplitudeEmbedding`, scaled on all the target's crops, no labels), `protonet` (prototypes
    of the ProtoNet embedding alone, Snell et al. 2017), `prototype` (prototypes of the raw
    crops) and `brightness` (prototypes of raw-brightness crops) classify the target's query
    defects. A target with
    fewer than two classes that have a query left is skipped; classes left out are reported
    in `warnings` (when a list is given). Same seed, same runs. The ProtoNets train on
    `device` in `precision` (a resolved `Compute` passes as `device`).

    Taught in: 08_stm.
    """
    compute = Compute.resolve(device, precision)
    runs = {}
    for target, (detail, bright, labels) in crops.items():
        support, query, left_out = sample_class_support(labels, shots, seed)
        if warnings is not None:
            warnings.extend(f"surface {target}: class {cls} has {n} defects, too few for {shots} shots plus a query; "
                            "left out" for cls, n in left_out.items())
        if len(np.unique(labels)) - len(left_out) < 2:
            continue
        train_x, train_y, source = _training_crops(crops, [k for k in crops if k != target], seed)
        net = train_protonet(train_x, train_y, episodes=episodes, seed=seed, progress=progress, device=compute)
        classifiers, predicted = {}, {}
        for method, embed, x in (("fewshot", AmplitudeEmbedding(net.embed, detail), detail),
                                 ("prototype", flatten_embedding, detail), ("brightness", brightness_embedding, bright),
                                 ("protonet", net.embed, detail)):
            classifiers[method] = PrototypeClassifier(embed).fit(x[support], labels[support])
            predicted[method] = classifiers[method].predict(x[query])
        runs[target] = SurfaceRun(support=support, query=query, truth=labels[query], predicted=predicted,
                                  classifiers=classifiers, training=source)
    return runs


# ---------------------------------------------------------------------------------------------


def _pixel_results(scans, analyses, shots, seeds, warnings, progress):
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    per_scan_runs: dict[str, list[dict]] = {s.name: [] for s in scans}
    for seed in tqdm(seeds, desc="few-shot maps", disable=not progress):
        pooled = {name: [] for name in (*PIXEL_METHODS, "mask")}
        for scan, analysis in zip(scans, analyses):
            try:
                maps = pixel_maps_for_seed(scan, analysis, shots, seed)
            except SemnbInputError as error:
                if seed == seeds[0]:
                    warnings.append(f"{scan.name}: left out of the pixel figures ({error.problem})")
                continue
            for name in pooled:
                pooled[name].append(maps[name])
            per_scan_runs[scan.name].append({f"{m}_{k}": v for m in PIXEL_METHODS
                                             for k, v in _pixel_scores([maps[m]], [maps["mask"]]).items()})
        if pooled["mask"]:
            per_seed[seed] = {m: _pixel_scores(pooled[m], pooled["mask"]) for m in PIXEL_METHODS}
    per_scan = {name: metrics.mean_std_over_seeds(runs) for name, runs in per_scan_runs.items() if runs}
    return per_seed, per_scan


def _pixel_scores(maps, masks) -> dict[str, float]:
    """Exact (unbinned) pixel AUROC and F1-max: query pixels are few enough to sort, and a
    few extreme scores would otherwise squeeze the rest into few bins."""
    return {"pixel_auroc": metrics.pixel_auroc(maps, masks, num_thresholds=None),
            "pixel_f1_max": metrics.pixel_f1_max(maps, masks, num_thresholds=None)}


def _class_results(scans, analyses, shots, seeds, episodes, warnings, progress, compute):
    """Leave-one-surface-out defect classification; ({}, None, {}) when no scan lists classes."""
    crops = crops_by_surface(scans, analyses)
    if not crops:
        return {}, None, {}
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    per_surface_runs: dict[str, list[dict]] = {}
    sources = []
    for seed in tqdm(seeds, desc="defect classes", disable=not progress):
        runs = leave_one_surface_out(crops, shots, seed, episodes, warnings if seed == seeds[0] else None,
                                     device=compute)
        truth, predicted = [], {m: [] for m in CLASS_METHODS}
        for target, run in runs.items():
            if seed == seeds[0]:
                sources.append(f"{target}: {run.training}")
            truth.append(run.truth)
            for method in CLASS_METHODS:
                predicted[method].append(run.predicted[method])
            per_surface_runs.setdefault(target, []).append(
                {f"{m}_accuracy": metrics.accuracy(run.truth, run.predicted[m]) for m in CLASS_METHODS})
        if truth:
            y = np.concatenate(truth)
            per_seed[seed] = {m: {"accuracy": metrics.accuracy(y, np.concatenate(p)),
                                  "macro_f1": metrics.macro_f1(y, np.concatenate(p))} for m, p in predicted.items()}
    training = f"protonet, {episodes} episodes, trained per target surface on " + "; ".join(sources) if sources else None
    per_surface = {k: metrics.mean_std_over_seeds(runs) for k, runs in per_surface_runs.items()}
    return per_seed, training, per_surface


def _training_crops(crops, others, seed):
    """Crops of the other surfaces, or of generated synthetic surfaces if there are none."""
    if others:
        x = np.concatenate([crops[k].detail for k in others])
        y = np.concatenate([[f"{k}:{c}" for c in crops[k].labels] for k in others])
        return x, y, "the other surfaces in the data (" + ", ".join(others) + ")"
    x, y = synthetic_training_crops(seed=seed)
    return x, y, "generated synthetic Si(001), Ge(001), TiO2(110) scans"

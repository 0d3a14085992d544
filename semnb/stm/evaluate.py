"""`semnb eval stm`: unsupervised and few-shot STM defect maps and defect classes, measured.

What it does with a folder DIR:

1. Finds every scan `X.npy` (or `X.png`, `X.tif`, ...) that has a pixel mask `X_mask.*`
   beside it; scans without a mask are listed in the warnings. Optional `defects.csv`
   (scan, defect_id, x, y, class) gives per-defect classes and `manifest.csv` (scan,
   surface) each scan's surface: both are what `semnb data synth --kind stm` writes.
2. Analyses each scan once: plane levelling, line flattening and robust normalisation,
   the lattice, its residual and the unsupervised defect map (`semnb.stm`).
3. Per seed, per scan: draws `shots` labelled defects from the scan's own mask (support)
   and scores every other pixel (query) with three maps: `fewshot` (a pixel classifier
   trained on the support), `unsupervised` (no labels) and `brightness` (the raw scan,
   the naive baseline). Pixel AUROC and F1-max pool the query pixels of all scans.
4. Where per-defect classes exist, per seed and surface: `shots` labelled defects per class
   are the support and all other defects of that surface the query. `fewshot` classifies
   with prototypes of a `ProtoNet` trained episodically on the other surfaces in DIR
   (leave-one-surface-out; on generated synthetic surfaces when DIR holds one surface
   only), `prototype` with prototypes of the raw crops, `brightness` with prototypes of
   crops of the raw scan. Crops are cut at the listed defect centres.

Figures are means over seeds with their spread (`<metric>_std`, sample std), in the results
contract of design.md; `per_scan` in the JSON gives each scan's pixel figures and
`per_surface_accuracy` each target surface's classification accuracy.

Taught in: 08_stm.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from semnb import metrics
from semnb.data.image_io import IMAGE_EXTENSIONS, MASK_SUFFIX, is_mask_file, read_image, read_mask
from semnb.data.synth_stm import DEFECTS_CSV, MANIFEST, generate_stm_scan, surface_names
from semnb.errors import SemnbInputError
from semnb.results import EvalResult
from semnb.stm.fewshot import (
    PixelSupport,
    PrototypeClassifier,
    defect_crops,
    fewshot_pixel_map,
    flatten_embedding,
    pixel_features,
    sample_pixel_support,
    support_polarity,
    train_protonet,
)
from semnb.stm.lattice import DefectMap, unsupervised_defect_map
from semnb.stm.preprocess import preprocess_scan

PIXEL_METHODS = ("fewshot", "unsupervised", "brightness")
CLASS_METHODS = ("fewshot", "prototype", "brightness")


@dataclass
class LabelledScan:
    """One scan of DIR with its ground truth: `raw` float HxW (as read), `mask` bool HxW,
    `surface` (None when unknown) and `defects` (x, y, class rows, or None)."""

    name: str
    path: Path
    raw: np.ndarray
    mask: np.ndarray
    surface: str | None
    defects: pd.DataFrame | None


@dataclass
class ScanAnalysis:
    """Everything computed once per scan: the preprocessed scan `z` and the unsupervised
    `defect_map` (lattice, residual, score)."""

    z: np.ndarray
    defect_map: DefectMap


def find_labelled_scans(data_dir: str | Path) -> tuple[list[LabelledScan], list[str]]:
    """Every scan `X.*` with a mask `X_mask.*` in `data_dir` (not its subfolders), read.

    Returns the scans (sorted by name) and warnings for images that have no mask.

    Taught in: 08_stm.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise SemnbInputError(root, "is not a folder", "pass the folder that holds the scans X.npy and masks X_mask.npy")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    masks = {p.stem[: -len(MASK_SUFFIX)]: p for p in files if is_mask_file(p)}
    manifest = _read_optional_csv(root / MANIFEST, ("scan", "surface"))
    defects = _read_optional_csv(root / DEFECTS_CSV, ("scan", "x", "y", "class"))
    surface_of = dict(zip(manifest["scan"].astype(str), manifest["surface"].astype(str))) if manifest is not None else {}
    scans, warnings = [], []
    for path in files:
        if is_mask_file(path):
            continue
        mask_path = masks.get(path.stem)
        if mask_path is None:
            warnings.append(f"{path.name}: no mask {path.stem}{MASK_SUFFIX}.* beside it, left out")
            continue
        raw = read_image(path)
        mask = read_mask(mask_path, shape=raw.shape, image_path=path)
        table = None
        if defects is not None:
            table = defects[defects["scan"].astype(str) == path.stem].reset_index(drop=True)
            _check_defects_inside(table, raw.shape, root / DEFECTS_CSV, path.stem)
        scans.append(LabelledScan(path.stem, path, raw, mask, surface_of.get(path.stem), table))
    if not scans:
        raise SemnbInputError(root, "holds no scan X.npy (or image) with a mask X_mask.npy beside it",
                              "put each scan's pixel mask beside it as X_mask.npy (1 = defect), "
                              "or write a synthetic set with `semnb data synth --kind stm --out DIR`")
    return scans, warnings


def analyse_scan(raw: np.ndarray, polarity: str = "auto") -> ScanAnalysis:
    """Preprocess one scan and compute its unsupervised defect map.

    Taught in: 08_stm.
    """
    z = preprocess_scan(raw)
    return ScanAnalysis(z=z, defect_map=unsupervised_defect_map(z, polarity=polarity))


def fewshot_map(analysis: ScanAnalysis, support: PixelSupport, seed: int = 0) -> np.ndarray:
    """The few-shot defect map of an analysed scan: features oriented by the contrast of the
    labelled defects (`support_polarity`), then `fewshot_pixel_map`.

    Taught in: 08_stm.
    """
    residual = analysis.defect_map.residual
    polarity = support_polarity(residual, support)
    features = pixel_features(analysis.z, residual, analysis.defect_map.lattice.period, polarity)
    return fewshot_pixel_map(features, support, seed=seed)


def pixel_maps_for_seed(scan: LabelledScan, analysis: ScanAnalysis, shots: int, seed: int) -> dict:
    """The three maps of one scan, restricted to its query pixels (1 x n arrays), and the
    query's mask: {"mask": ..., "fewshot": ..., "unsupervised": ..., "brightness": ...}.

    Taught in: 08_stm.
    """
    support = sample_pixel_support(scan.mask, shots, seed)
    query = ~support.region
    maps = {
        "fewshot": fewshot_map(analysis, support, seed=seed),
        "unsupervised": analysis.defect_map.score,
        "brightness": scan.raw,
    }
    out = {name: maps[name][query][None, :] for name in PIXEL_METHODS}
    out["mask"] = scan.mask[query][None, :]
    return out


def evaluate_stm(data_dir: str | Path, shots: int = 1, seeds: Sequence[int] = (0, 1, 2), episodes: int = 300,
                 progress: bool = True) -> EvalResult:
    """Measure the STM methods on DIR (see the module docstring); returns an `EvalResult`.

    Taught in: 08_stm.
    """
    started = time.perf_counter()
    if int(shots) < 1:
        raise SemnbInputError("--shots", f"got {shots}", "use at least 1 labelled defect")
    seeds = list(seeds)
    scans, warnings = find_labelled_scans(data_dir)
    timing: dict[str, float] = {"load_s": time.perf_counter() - started}

    tick = time.perf_counter()
    analyses = [analyse_scan(s.raw) for s in tqdm(scans, desc="analyse scans", disable=not progress)]
    timing["analyse_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    pixel_per_seed, per_scan = _pixel_results(scans, analyses, shots, seeds, warnings, progress)
    timing["pixel_maps_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    class_per_seed, training, per_surface = _class_results(scans, analyses, shots, seeds, episodes, warnings, progress)
    timing["classification_s"] = time.perf_counter() - tick

    results = {}
    for method in dict.fromkeys(PIXEL_METHODS + CLASS_METHODS):
        runs = [{**pixel_per_seed.get(seed, {}).get(method, {}), **class_per_seed.get(seed, {}).get(method, {})}
                for seed in seeds]
        runs = [r for r in runs if r]
        if runs and all(r.keys() == runs[0].keys() for r in runs):
            results[method] = metrics.mean_std_over_seeds(runs)
    timing["total_s"] = time.perf_counter() - started
    surfaces = sorted({s.surface for s in scans if s.surface})
    return EvalResult(
        task="stm", data=str(data_dir), backbone="none", weights=training or "none (no classes in the data)",
        precision="fp32", shots=int(shots), seeds=seeds, n_images=len(scans), results=results,
        timing={k: round(v, 2) for k, v in timing.items()}, warnings=warnings,
        extra={"per_scan": per_scan, "per_surface_accuracy": per_surface, "surfaces": surfaces,
               "n_defects_with_class": int(sum(
            len(s.defects) for s in scans if s.defects is not None))},
    )


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


def _class_results(scans, analyses, shots, seeds, episodes, warnings, progress):
    """Leave-one-surface-out defect classification; ({}, None) when no scan lists classes."""
    groups: dict[str, list[int]] = {}
    for i, scan in enumerate(scans):
        if scan.defects is not None and len(scan.defects):
            groups.setdefault(scan.surface or "unknown", []).append(i)
    if not groups:
        return {}, None, {}
    crops = {key: labelled_crops(scans, analyses, idx) for key, idx in groups.items()}
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    per_surface_runs: dict[str, list[dict]] = {}
    sources = []
    for seed in tqdm(seeds, desc="defect classes", disable=not progress):
        truth, predicted = [], {m: [] for m in CLASS_METHODS}
        for target, (detail, bright, labels) in crops.items():
            support, query = _class_support(labels, shots, seed, target, warnings if seed == seeds[0] else None)
            if support is None:
                continue
            others = [k for k in crops if k != target]
            train_x, train_y, source = _training_crops(crops, others, seed)
            if seed == seeds[0]:
                sources.append(f"{target}: {source}")
            net = train_protonet(train_x, train_y, episodes=episodes, seed=seed)
            truth.append(labels[query])
            here = {}
            for method, embed, x in (("fewshot", net.embed, detail), ("prototype", flatten_embedding, detail),
                                     ("brightness", brightness_embedding, bright)):
                classifier = PrototypeClassifier(embed).fit(x[support], labels[support])
                predicted[method].append(classifier.predict(x[query]))
                here[f"{method}_accuracy"] = metrics.accuracy(labels[query], predicted[method][-1])
            per_surface_runs.setdefault(target, []).append(here)
        if truth:
            y = np.concatenate(truth)
            per_seed[seed] = {m: {"accuracy": metrics.accuracy(y, np.concatenate(p)),
                                  "macro_f1": metrics.macro_f1(y, np.concatenate(p))} for m, p in predicted.items()}
    training = f"protonet, {episodes} episodes, trained per target surface on " + "; ".join(sources) if sources else None
    per_surface = {k: metrics.mean_std_over_seeds(runs) for k, runs in per_surface_runs.items()}
    return per_seed, training, per_surface


def labelled_crops(scans: Sequence[LabelledScan], analyses: Sequence[ScanAnalysis], indices: Sequence[int]):
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
    return np.concatenate(detail), np.concatenate(bright), np.concatenate(labels)


def _class_support(labels, shots, seed, surface, warnings):
    """`shots` defects per class as support, the rest as query; classes too small are left out."""
    rng = np.random.default_rng([seed, 7])
    support, usable = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) <= shots:
            if warnings is not None:
                warnings.append(f"surface {surface}: class {cls} has {len(members)} defects, "
                                f"too few for {shots} shots plus a query; left out")
            continue
        support.append(rng.choice(members, size=shots, replace=False))
        usable.append(members)
    if len(support) < 2:
        return None, None
    support = np.concatenate(support)
    query = np.setdiff1d(np.concatenate(usable), support)
    return support, query


def _training_crops(crops, others, seed):
    """Crops of the other surfaces in DIR, or of generated synthetic surfaces if there are none."""
    if others:
        x = np.concatenate([crops[k][0] for k in others])
        y = np.concatenate([[f"{k}:{c}" for c in crops[k][2]] for k in others])
        return x, y, "the other surfaces in the data (" + ", ".join(others) + ")"
    x, y = synthetic_training_crops(seed=seed)
    return x, y, "generated synthetic Si(001), Ge(001), TiO2(110) scans"


def synthetic_training_crops(n_scans: int = 4, size: int = 256, seed: int = 0,
                             surfaces: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Crops and "surface:class" labels of generated synthetic scans, to train a ProtoNet.

    The scans use seeds 10_000 + seed*100 + i, apart from those `semnb data synth` writes.

    Taught in: 08_stm.
    """
    xs, ys = [], []
    for surface in surfaces or surface_names():
        for i in range(n_scans):
            scan = generate_stm_scan(surface, size=size, seed=10_000 + seed * 100 + i)
            analysis = analyse_scan(scan.raw)
            xs.append(defect_crops(analysis.z, analysis.defect_map.residual, scan.defects[["x", "y"]].to_numpy(float),
                                       analysis.defect_map.lattice.period))
            ys += [f"{surface}:{c}" for c in scan.defects["cls"]]
    return np.concatenate(xs), np.array(ys)


def brightness_embedding(crops: np.ndarray) -> np.ndarray:
    """The brightness baseline's embedding: the raw scan's crop as it is, not normalised.

    `labelled_crops` passes the raw scan as the second channel, which `defect_crops`
    samples unchanged, so that channel is taken.

    Taught in: 08_stm.
    """
    return np.asarray(crops, np.float64)[:, 1:].reshape(len(crops), -1)


def _read_optional_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise SemnbInputError(path, f"cannot read the table ({error})", "fix or remove the file") from error
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise SemnbInputError(path, f"lacks the column(s) {', '.join(missing)}", f"give it the columns {', '.join(columns)}")
    return table


def _check_defects_inside(table: pd.DataFrame, shape, csv_path: Path, scan: str) -> None:
    h, w = shape
    outside = table[(table["x"] < 0) | (table["x"] > w - 1) | (table["y"] < 0) | (table["y"] > h - 1)]
    if len(outside):
        row = outside.iloc[0]
        raise SemnbInputError(csv_path, f"defect at x={row['x']}, y={row['y']} lies outside scan {scan} ({h}x{w})",
                              "give x as the column and y as the row, in pixels of the scan")

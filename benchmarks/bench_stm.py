"""STM benchmark: the methods of semnb.stm against the raw-brightness baseline; prints figures.

Three parts (each can be skipped):

1. synthetic: `semnb data synth --kind stm` scans of Si(001), Ge(001), TiO2(110), then
   `semnb eval stm` on them: pixel maps from `--shots` labelled defects per scan, and
   leave-one-surface-out defect classification (ProtoNet trained on two surfaces, one label
   per class on the third) against prototypes of raw crops and of raw brightness.
2. real (needs ../shared/data/stm): m235_left, a TiO2(110) scan with a pixel mask; the
   few-shot map (`fewshot`: filter-bank forest + label-chosen cues) from k = 1, 2, 5 labelled
   defects against the earlier logistic map (`fewshot_logistic`), the unsupervised map and raw
   brightness, on the same query pixels; then the ceiling of the pixel features (a forest
   trained on every label of one half of the scan, scored on the other half).
3. silver (needs ../shared/data/stm): m63, whose per-defect labels come from the source's
   own pipeline in an unverified frame. First the alignment check: the mean unsupervised
   defect score at the label coordinates over scales 1/4, 1/2, 1, with x/y swapped or not,
   shifted by up to +/-10 px, against random points; then, at the best alignment, few-shot
   classification of the labelled defects (support from the scan itself, rest query).

    .venv/bin/python benchmarks/bench_stm.py --n-per-surface 6 --seeds 0,1,2

Timings are wall-clock seconds on whatever machine runs it (state it when quoting them).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from semnb import metrics, stm
from semnb.data import load_scans
from semnb.data.image_io import read_image
from semnb.data.synth_stm import write_stm_dataset
from semnb.results import format_table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "stm"


def synthetic_part(n_per_surface: int, size: int, shots: int, seeds: list[int], episodes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tick = time.perf_counter()
        data = write_stm_dataset(Path(tmp) / "stm", n_per_class=n_per_surface, size=size, seed=0)
        result = stm.evaluate_stm(load_scans(data), shots=shots, seeds=seeds, episodes=episodes)
        elapsed = time.perf_counter() - tick
    print(f"\n== synthetic: {3 * n_per_surface} scans of {size}x{size} ({n_per_surface} per surface), "
          f"shots={shots}, seeds={seeds}, {episodes} ProtoNet episodes; {elapsed:.0f} s")
    print(result.table())
    print("\nleave-one-surface-out accuracy per target surface (one label per class on it when shots=1):")
    rows = {surface: {k: v for k, v in values.items()} for surface, values in result.extra["per_surface_accuracy"].items()}
    print(format_table(rows))
    print(f"ProtoNet training: {result.weights}")
    for warning in result.warnings:
        print(f"warning: {warning}")


def real_part(seeds: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("m235_left.npy", "m235_left_mask.npy"):
            (Path(tmp) / name).symlink_to(SHARED / name)
        scans = load_scans(tmp)
        for shots in (1, 2, 5):
            tick = time.perf_counter()
            result = stm.evaluate_stm(scans, shots=shots, seeds=seeds)
            print(f"\n== real m235_left (TiO2(110), 512x256), k={shots} labelled defects, seeds={seeds}; "
                  f"{time.perf_counter() - tick:.0f} s")
            print(result.table())
        oracle_part(scans[0])


def oracle_part(scan) -> None:
    """How far the few-shot map is from what its features allow: a forest (`fit_forest`) trained on
    20000 pixels drawn from the *full* mask of one half of the scan, scored on the other half,
    beside raw brightness and the one-label cue (height + blob) on that half."""
    analysis = stm.analyze_scan(scan.raw)
    residual, period = analysis.defect_map.residual, analysis.defect_map.lattice.period
    mask = scan.mask.astype(bool)
    everything = stm.PixelSupport(defect=mask, lattice=~mask, region=np.ones_like(mask), component_ids=np.zeros(0, int))
    features = stm.pixel_features(analysis.z, residual, period, stm.support_polarity(residual, everything))
    cue = stm.cue_map(stm.unsupervised_cues(analysis), ["height:bright", "blob:bright"])
    half = mask.shape[0] // 2
    rows = {}
    for name, train, test in (("top -> bottom", slice(0, half), slice(half, None)),
                              ("bottom -> top", slice(half, None), slice(0, half))):
        x, y = features[train].reshape(-1, features.shape[-1]), mask[train].ravel()
        pick = np.random.default_rng(0).choice(len(y), min(20000, len(y)), replace=False)
        forest = stm.fit_forest(x[pick], y[pick], seed=0)
        oracle = forest.predict_proba(features[test].reshape(-1, features.shape[-1]))[:, 1].reshape(mask[test].shape)
        for method, image in (("all-label forest", oracle), ("height+blob cue", cue[test]), ("brightness", scan.raw[test])):
            rows[f"{name}: {method}"] = {"pixel_auroc": metrics.pixel_auroc([image], [mask[test]], num_thresholds=None),
                                        "pixel_f1_max": metrics.pixel_f1_max([image], [mask[test]], num_thresholds=None)}
    print(f"\n== real {scan.name}: the ceiling of the pixel features, every label of one half -> the other half")
    print(format_table(rows, ["pixel_auroc", "pixel_f1_max"]))


def silver_part(seeds: list[int], episodes: int) -> None:
    image = read_image(SHARED / "m63_ori_1.png")
    table = np.loadtxt(SHARED / "m63_coords_and_labels.csv", delimiter=",")
    analysis = stm.analyze_scan(image)
    score = ndimage.gaussian_filter(analysis.defect_map.score, 2.0)
    h, w = score.shape
    rng = np.random.default_rng(0)
    random_values = _sample(score, rng.uniform(0, w - 1, 5000), rng.uniform(0, h - 1, 5000))
    print(f"\n== silver m63 ({h}x{w}): alignment check; unsupervised score at random points: "
          f"{np.nanmean(random_values):.2f} +- {np.nanstd(random_values):.2f}")
    candidates = []
    for scale in (0.25, 0.5, 1.0):
        for swap in (False, True):
            x, y = (table[:, 2], table[:, 1]) if swap else (table[:, 1], table[:, 2])
            for dx in range(-10, 11, 2):
                for dy in range(-10, 11, 2):
                    candidates.append((float(np.nanmean(_sample(score, x * scale + dx, y * scale + dy))),
                                       scale, swap, dx, dy))
    candidates.sort(reverse=True)
    for value, scale, swap, dx, dy in candidates[:3]:
        print(f"  mean score {value:.2f} at scale {scale}, swap x/y {swap}, shift ({dx}, {dy}) px")
    _, scale, swap, dx, dy = candidates[0]
    x, y = (table[:, 2], table[:, 1]) if swap else (table[:, 1], table[:, 2])
    centres = np.stack([x * scale + dx, y * scale + dy], axis=1)
    labels = np.array([f"class{int(c)}" for c in table[:, 3]])
    for cls in np.unique(labels):
        values = _sample(score, *centres[labels == cls].T)
        print(f"  {cls}: {np.sum(labels == cls)} labels, mean score {np.nanmean(values):.2f}, "
              f"{np.mean(values > 3):.0%} above 3")

    inside = (centres[:, 0] >= 0) & (centres[:, 0] <= w - 1) & (centres[:, 1] >= 0) & (centres[:, 1] <= h - 1)
    centres, labels = centres[inside], labels[inside]
    period = analysis.defect_map.lattice.period
    crops = stm.defect_crops(analysis.z, analysis.defect_map.residual, centres, period)
    bright = stm.defect_crops(image, image, centres, period)
    tick = time.perf_counter()
    nets = {seed: stm.train_protonet(*stm.synthetic_training_crops(seed=seed), episodes=episodes, seed=seed)
            for seed in seeds}
    print(f"  ProtoNets trained on synthetic Si/Ge/TiO2 ({episodes} episodes, {len(seeds)} seeds): "
          f"{time.perf_counter() - tick:.0f} s")
    for shots in (1, 2, 5):
        runs = []
        for seed in seeds:
            support, query, _ = stm.sample_class_support(labels, shots, seed)
            classes = list(np.unique(labels[support]))
            run = {}
            for method, embed, x in (("fewshot", stm.AmplitudeEmbedding(nets[seed].embed, crops), crops),
                                     ("prototype", stm.flatten_embedding, crops),
                                     ("brightness", stm.brightness_embedding, bright), ("protonet", nets[seed].embed, crops)):
                predicted = stm.PrototypeClassifier(embed).fit(x[support], labels[support]).predict(x[query])
                run[f"{method}_accuracy"] = metrics.accuracy(labels[query], predicted)
                run[f"{method}_macro_f1"] = metrics.macro_f1(labels[query], predicted)
            runs.append(run)
        summary = metrics.mean_std_over_seeds(runs)
        rows = {m: {k: summary[f"{m}_{k}"] for k in ("accuracy", "macro_f1")} |
                {f"{k}_std": summary[f"{m}_{k}_std"] for k in ("accuracy", "macro_f1")}
                for m in ("fewshot", "prototype", "brightness", "protonet")}
        print(f"\n  silver-label classification, {shots} labelled defect(s) per class "
              f"({', '.join(classes)}; {len(query)} queries), seeds={seeds}")
        print("  " + format_table(rows, ["accuracy", "macro_f1"]).replace("\n", "\n  "))


def _sample(image: np.ndarray, x, y) -> np.ndarray:
    return ndimage.map_coordinates(image, [np.asarray(y, float), np.asarray(x, float)], order=1, cval=np.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-per-surface", type=int, default=6)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--shots", type=int, default=1, help="synthetic part: labelled defects (per scan / per class)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--parts", default="synthetic,real,silver")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    parts = args.parts.split(",")
    if "synthetic" in parts:
        synthetic_part(args.n_per_surface, args.size, args.shots, seeds, args.episodes)
    if not SHARED.is_dir():
        print(f"\n{SHARED} is absent: real and silver parts skipped")
        return
    if "real" in parts:
        real_part(seeds)
    if "silver" in parts:
        silver_part(seeds, args.episodes)


if __name__ == "__main__":
    main()

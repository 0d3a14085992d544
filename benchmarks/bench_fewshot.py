"""semnb, SEM-CLIP and the baselines (PatchCore, nn_visual; linear probe, prototype), 1/2/5/10 shots.

Classification includes `semnb` and `defect_pooled` (the segmenter's defect region, pooled and
classified) when the data set has a mask for every defect image.

Prints, for each task, one table (shots x method) of the main metrics (mean +- std over
seeds), the seconds per episode, and the time to train SEM-CLIP's parts on the largest
support. Features are encoded once (feature cache) and shared by every shot count.

    .venv/bin/python benchmarks/bench_fewshot.py                       # synthetic SEM, efficientnet-lite0
    .venv/bin/python benchmarks/bench_fewshot.py --backbone semnb-tiny
    .venv/bin/python benchmarks/bench_fewshot.py --data ../shared/data/magnetic_tile --layout folders \
        --normal-class free --max-per-class 20

The CPU may be shared: timings are wall-clock seconds on whatever this machine had free.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from semnb.data import load_dataset, write_sem_dataset
from semnb.fewshot import PAPER_SHOTS, prepare_fewshot, sample_episode, shot_sweep
from semnb.fewshot.evaluate import classify_episode, segment_episode
from semnb.models import FeatureCache

COLUMNS = {"segment": ["image_auroc", "pixel_auroc", "pixel_f1_max", "aupro"],
           "classify": ["accuracy", "macro_f1"]}


def _table(sweep: pd.DataFrame, metrics: list[str]) -> str:
    rows = []
    for _, row in sweep.iterrows():
        cells = {"shots": int(row["shots"]), "method": row["method"]}
        for m in metrics:
            value, std = row[m], row.get(f"{m}_std")
            cells[m] = "undef" if pd.isna(value) else f"{value:.3f}±{std:.3f}"
        cells["s/episode"] = f"{row['episode_s']:.2f}"
        rows.append(cells)
    return pd.DataFrame(rows).to_string(index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="data folder (default: a synthetic SEM set, 10/class)")
    parser.add_argument("--layout", default="auto")
    parser.add_argument("--normal-class", default="good")
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--max-per-class", type=int, default=None)
    parser.add_argument("--shots", default=",".join(map(str, PAPER_SHOTS)))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tasks", default="segment,classify")
    args = parser.parse_args()
    shots = [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data or write_sem_dataset(Path(tmp) / "sem", n_per_class=12, size=256, seed=0,
                                                  train_good=1, progress=False)
        images = load_dataset(data_dir, layout=args.layout, normal_class=args.normal_class)
        cache = FeatureCache(Path(tmp) / "cache")
        print(f"data {data_dir}: {len(images)} images, backbone {args.backbone}, seeds {seeds}")
        for task in args.tasks.split(","):
            tick = time.perf_counter()
            data = prepare_fewshot(images, task, args.backbone, image_size=args.image_size,
                                   max_per_class=args.max_per_class, cache=cache)
            print(f"\n== {task}: {len(data.images)} images at {data.image_size} px, read + encoded in "
                  f"{time.perf_counter() - tick:.1f} s ({data.weights})")
            for warning in data.warnings:
                print(f"   note: {warning}")
            sweep = shot_sweep(data, shots, seeds)
            print(_table(sweep, COLUMNS[task]))
            largest = int(sweep["shots"].max())
            episode = sample_episode(data.labels, largest, seeds[0], data.class_names)
            run = segment_episode if task == "segment" else classify_episode
            trained = ["semclip", "defect_pooled"] if task == "classify" and data.masks is not None else ["semclip"]
            for method in trained:
                _, timing = run(data, episode, method)
                print(f"{method} training on the {largest}-shot support ({len(episode.support)} images): "
                      f"{timing['fit_s']:.2f} s; predicting {len(episode.queries)} queries: {timing['predict_s']:.2f} s")


if __name__ == "__main__":
    main()

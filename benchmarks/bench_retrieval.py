"""Retrieval accuracy: "ours" (recipe general, and optionally recipe paper) against its baselines, known classes and
leave-one-class-out, on synthetic TEM, the magnetic tiles and the emps micrographs grouped by source paper.

Prints, per data set, one table: mAP@K and P@K with and without query expansion for every method on the known
classes (held-out halves of the labelled classes), then leave-one-class-out (the method retrained without one
class's labels, only that class's queries) as the mean over classes. Every method sees the same split, the same
augmented views and the same seeds (`semnb.retrieval.evaluate.evaluate_retrieval`).

Data sets (`--data`, comma-separated):
- `tem`: `write_tem_dataset(n_per_class=30, seed=--synth-seed)` (5 labelled classes, 2 unlabelled), K = 10;
- `magnetic`: ../shared/data/magnetic_tile (6 class folders), K = 20 (the real-data check's command);
- `emps`: ../shared/data/emps/metadata.csv, classes = source DOI (`doi` column), K = 3; the DOIs with one image
  cannot be split, so only the several-image ones take part (31 DOIs, 78 images in the developers' half). Each has
  2-8 images, so a query has at most a few relevant ones in the gallery: at K = 20 every method scores about .01.
The shared data sets are skipped with a line when ../shared/data is absent.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_retrieval.py --data tem --seeds 0,1,2 [--paper]
Several minutes per data set and seed on two cores; report `uptime` with the figures.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from semnb.data import load_dataset
from semnb.data.synth_tem import write_tem_dataset
from semnb.retrieval.embedding import RetrievalConfig
from semnb.retrieval.evaluate import evaluate_retrieval

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load(name: str, synth_seed: int, work: Path):
    """(images, K) of a named data set, or None when its shared folder is absent."""
    if name == "tem":
        return load_dataset(write_tem_dataset(work / "tem", n_per_class=30, size=256, seed=synth_seed)), 10
    if name == "magnetic":
        root = SHARED / "magnetic_tile"
        return (load_dataset(root, layout="folders", normal_class="free"), 20) if root.exists() else None
    if name == "emps":
        root = SHARED / "emps" / "metadata.csv"
        return (load_dataset(root, layout="csv", path_column="filename", label_column="doi", image_folder="images"),
                3) if root.exists() else None
    raise SystemExit(f"unknown data set {name!r}: use tem, magnetic, emps")


def report(name: str, label: str, result) -> None:
    plain = result.extra["without_query_expansion"]
    loco = result.extra.get("loco", {})
    k = result.extra["k"]
    print(f"\n{name} [{label}]  K={k}  seeds {result.seeds}  {result.n_images} images  "
          f"{result.timing['total_s']:.0f} s")
    print(f"  {'method':12s} {'mAP@K':>7s} {'P@K':>7s} {'mAP noQE':>9s} {'P noQE':>7s} {'loco mAP':>9s} {'loco P':>7s}")
    for method, scores in result.results.items():
        row = loco.get(method, {}).get("mean", {})
        print(f"  {method:12s} {scores['map_at_k']:7.3f} {scores['precision_at_k']:7.3f} "
              f"{plain[method]['map_at_k']:9.3f} {plain[method]['precision_at_k']:7.3f} "
              f"{row.get('map_at_k', float('nan')):9.3f} {row.get('precision_at_k', float('nan')):7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="tem", help="tem, magnetic, emps (comma-separated)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--synth-seed", type=int, default=0, help="seed of the synthetic TEM set")
    parser.add_argument("--no-loco", action="store_true")
    parser.add_argument("--paper", action="store_true", help="also run ours with recipe paper (ours only)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.data.split(","):
            loaded = load(name, args.synth_seed, Path(tmp))
            if loaded is None:
                print(f"\n{name}: ../shared/data absent, skipped")
                continue
            images, k = loaded
            runs = [("general", None), ("paper", ["ours"])] if args.paper else [("general", None)]
            for recipe, methods in runs:
                started = time.perf_counter()
                result = evaluate_retrieval(images, k=k, seeds=seeds, config=RetrievalConfig(recipe=recipe),
                                            loco=not args.no_loco, **({"methods": methods} if methods else {}))
                report(name, f"recipe {recipe}", result)
                print(f"  wall {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

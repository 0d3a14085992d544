"""Time and peak memory of semnb's streaming pixel metrics on many large masks.

Run:  .venv/bin/python benchmarks/bench_metrics.py            # 1,000 maps and masks of 512x512
      .venv/bin/python benchmarks/bench_metrics.py --n 100     # quicker

Inputs are random noisy maps (float32) and rectangle masks held in memory, as a caller would
hold them. "extra peak" is the most memory (tracemalloc, numpy buffers included) that a
metric allocated on top of its inputs; sorting float64 copies of all pixels, as scikit-learn
would, needs at least n*H*W*(8 + 8) bytes (scores + sort order). Timing runs are separate from
the memory runs, so tracing does not slow them. A last check compares the binned pixel AUROC
and F1-max with scikit-learn on the first --check images.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np
import sklearn.metrics as skm

from semnb import metrics


def make_data(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = np.empty((n, size, size), np.float32)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        for _ in range(rng.integers(0, 4)):  # 0 to 3 defects; some images are defect-free
            r, c = rng.integers(0, size - size // 8, size=2)
            h, w = rng.integers(2, size // 8, size=2)
            masks[i, r : r + h, c : c + w] = True
        maps[i] = rng.standard_normal((size, size), dtype=np.float32)
        maps[i] += 1.5 * masks[i]
    return maps, masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of maps and masks")
    parser.add_argument("--size", type=int, default=512, help="side of each map in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", type=int, default=20, help="images compared with scikit-learn")
    args = parser.parse_args()

    t0 = time.perf_counter()
    maps, masks = make_data(args.n, args.size, args.seed)
    pixels = maps.size
    print(
        f"data: {args.n} maps of {args.size}x{args.size} = {pixels / 1e6:.0f}M pixels, "
        f"maps {maps.nbytes / 2**20:.0f} MiB + masks {masks.nbytes / 2**20:.0f} MiB, "
        f"made in {time.perf_counter() - t0:.1f} s"
    )
    print(f"sorting float64 copies of all pixels would need >= {pixels * 16 / 2**20:.0f} MiB extra")

    for name, fn in [
        ("pixel_auroc", metrics.pixel_auroc),
        ("pixel_f1_max", metrics.pixel_f1_max),
        ("aupro", metrics.aupro),
        ("pixel_metrics (all three)", metrics.pixel_metrics),
    ]:
        t0 = time.perf_counter()
        value = fn(maps, masks)
        seconds = time.perf_counter() - t0
        tracemalloc.start()
        fn(maps, masks)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        shown = (
            {k: round(v, 4) for k, v in value.items()}
            if isinstance(value, dict)
            else round(value, 4)
        )
        print(
            f"{name:26s} {seconds:6.1f} s  {pixels / seconds / 1e6:5.1f} Mpixel/s  "
            f"extra peak {peak / 2**20:6.1f} MiB  value {shown}"
        )
    print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")

    k = min(args.check, args.n)
    scores, labels = maps[:k].ravel().astype(np.float64), masks[:k].ravel()
    p, r, _ = skm.precision_recall_curve(labels, scores)
    f1_ref = float(np.max(np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)))
    auc_diff = metrics.pixel_auroc(maps[:k], masks[:k]) - skm.roc_auc_score(labels, scores)
    f1_diff = metrics.pixel_f1_max(maps[:k], masks[:k]) - f1_ref
    print(
        f"binned - scikit-learn on {k} images: pixel AUROC {auc_diff:+.1e}, F1-max {f1_diff:+.1e}"
    )


if __name__ == "__main__":
    main()

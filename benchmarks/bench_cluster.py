"""SSL clustering (semnb's `ssl` and the paper's `ssl_paper`) vs its baselines on synthetic wafer-SEM images, and speed.

Run:  .venv/bin/python benchmarks/bench_cluster.py                        # 128 px, 20 per class, 5 epochs
      .venv/bin/python benchmarks/bench_cluster.py --crop defect --quality-only   # on located defect windows
      .venv/bin/python benchmarks/bench_cluster.py --size 512 --epochs 15 --n-per-class 72   # the paper's setting
      .venv/bin/python benchmarks/bench_cluster.py --speed-only --size 512
      .venv/bin/python benchmarks/bench_cluster.py --quality-only --methods ssl_paper,ssl_paper_untrained --ssl-augment
      .venv/bin/python benchmarks/bench_cluster.py --ssl-speed-only --size 512 --speed-images 32   # the issue-18 speed goal
      .venv/bin/python benchmarks/bench_cluster.py --ssl-speed-only --size 512 --full-size-too   # and the ratio to before

Part 1 (quality): the same preprocessed images go through every method and the same k-means
(k = 7 classes); it prints silhouette and NMI per method, the NMI of a random assignment, and
the NMI of the clusters against the synthetic *background* pattern (lines, contacts, routing,
film): a method that clusters by background rather than by defect scores high there. With
`--crop defect` every method sees a window (1/4 of the side) around each image's most
anomalous place instead (`semnb.clustering.defect_crop`, 20 defect-free train images as the normal
memory), and it also prints how often the window holds the true defect (the hit rate).
`--ssl-augment` trains the paper's encoder on randomly augmented pyramid levels (not the paper's).

Part 3 (`--ssl-speed-only`): semnb's `ssl` on `--speed-images` random images: the frozen trunk
(once per image), 2 training epochs and the embedding, timed, then extrapolated to the issue's
goal, 15 epochs x 500 images, beside one epoch of `ssl_paper` on the same images in the same run
(a ratio of two things measured together stays meaningful on a shared machine). `--full-size-too`
first times the same with the frozen trunk at the image size (semnb before round 2), for the ratio.

Part 2 (speed): training images/s of the SSL model (one image = its whole 3-level pyramid,
forward and backward) for memory layout (channels_last or not), precision (fp32, bf16
autocast) and torch threads (1, 2). Wall images/s is what a user waits for; CPU seconds per
image counts only the CPU this process got, so it stays meaningful on a shared machine (the
load average printed beside it says how busy the machine was). The best of the repeats is
the least disturbed.
"""
from __future__ import annotations

import argparse
import itertools
import os
import time

import numpy as np
import pandas as pd

from semnb import metrics
from semnb.clustering import ssl_imagenet
from semnb.clustering.defect_crop import crop_images, crop_window, locate_defects
from semnb.clustering.evaluate import evaluate_methods
from semnb.clustering.ssl import SSLConfig, prepare_images, train_ssl
from semnb.clustering.ssl_imagenet import (
    FinetuneConfig,
    embed_finetuned,
    train_finetune,
    trunk_features,
)
from semnb.data.preprocess import crop_border
from semnb.data.synth_sem import CLASSES, generate_sem_set


def synthetic_images(n_per_class: int, size: int, seed: int, crop: str | None = None,
                     n_normal: int = 20) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Preprocessed images, class labels and background names of a synthetic SEM set made in memory.

    crop "defect": each image (banner cut) is cropped around its located defect, and the hit rate is printed;
    "oracle": around the true mask's centroid instead (images without a defect: the located window), the
    figure a perfect locator would give.
    """
    samples = list(generate_sem_set(n_per_class, size=size, seed=seed, progress=False))
    labels = np.array([CLASSES.index(s.cls) for s in samples])
    backgrounds = [s.background for s in samples]
    if crop is None:
        return prepare_images([s.image for s in samples], size=size), labels, backgrounds
    normal = generate_sem_set(n_normal, size=size, seed=seed, classes=("good",), progress=False, split="train")
    cut = [crop_border(s.image / 255.0, 0, s.banner_rows) for s in samples]
    masks = [None if s.mask is None else crop_border(s.mask.astype(np.float32), 0, s.banner_rows) > 0.5
             for s in samples]
    start = time.perf_counter()
    found = locate_defects(cut, [crop_border(s.image / 255.0, 0, s.banner_rows) for s in normal])
    hits = metrics.window_hit_rate(found.windows, masks)
    print(f"defect windows ({found.reference}, located in {time.perf_counter() - start:.0f} s): hold a defect "
          f"pixel in {hits['hit_rate']:.3f} of {hits['n_scored']} defect images, {hits['covered']:.3f} of its "
          "pixels on average")
    windows = found.windows.copy()
    if crop == "oracle":
        for i, mask in enumerate(masks):
            if mask is not None and mask.any():
                windows[i] = crop_window(np.argwhere(mask).mean(axis=0), mask.shape, 0.25)
    return prepare_images(crop_images(cut, windows), size=size, banner=0), labels, backgrounds


def quality(args) -> None:
    start = time.perf_counter()
    images, labels, backgrounds = synthetic_images(args.n_per_class, args.size, args.seed, args.crop)
    print(f"\n# quality: {len(images)} synthetic SEM images, {args.size} px, {args.epochs} SSL epochs, "
          f"seeds {args.seeds}, crop {args.crop or 'none'}, ssl augment {args.ssl_augment} (made in {time.perf_counter() - start:.0f} s)")
    methods = args.methods.split(",") if args.methods else None
    evaluation = evaluate_methods(images, labels, CLASSES, methods=methods, seeds=args.seeds,
                                  ssl_config=SSLConfig(epochs=args.epochs, threads=args.threads, augment_levels=args.ssl_augment),
                                  finetune_config=FinetuneConfig(epochs=args.epochs, threads=args.threads),
                                  data="synthetic SEM (in memory)", progress=False)
    result = evaluation
    background_codes = pd.factorize(pd.Series(backgrounds))[0]
    rows = []
    for method, scores in result.results.items():
        rows.append({"method": method, "silhouette": scores["silhouette"], "nmi": scores["nmi"],
                     "nmi_std": scores["nmi_std"], "ari": scores["ari"],
                     "nmi_background (seed 0)": metrics.nmi(background_codes, evaluation.clusters[method]),
                     "seconds": result.timing[f"{method}_s"]})
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"NMI of a random assignment into k={result.extra['k']}: {result.extra['nmi_random_assignment']:.3f}")
    if evaluation.ssl_run is not None:
        h = evaluation.ssl_run.history
        print(f"SSL seed {args.seeds[0]}: loss {h.loss[0]:.3f} -> {h.loss[-1]:.3f}, collapse watch (z) "
              f"{h.std_projection[-1]:.3f} vs healthy {1 / np.sqrt(128):.3f}, {h.images_per_second:.1f} images/s")
    for warning in result.warnings:
        print("note:", warning[:160])


def speed(args) -> None:
    images = np.random.default_rng(0).random((args.speed_images, args.size, args.size)).astype(np.float32)
    print(f"\n# speed: SSL training, {args.speed_images} images of {args.size} px, batch 32, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    train_ssl(images[:4], SSLConfig(epochs=1, batch_size=4), progress=False)  # one-time start-up costs
    rows = []
    for channels_last, precision, threads in itertools.product((True, False), ("fp32", "bf16"), (1, 2)):
        walls, cpus = [], []
        for _ in range(args.repeats):
            cpu = time.process_time()
            run = train_ssl(images, SSLConfig(epochs=1, channels_last=channels_last, precision=precision,
                                              threads=threads), progress=False)
            walls.append(run.history.images_per_second)
            cpus.append((time.process_time() - cpu) / run.history.images_seen)
        rows.append({"channels_last": channels_last, "precision": precision, "threads": threads,
                     "best images/s": max(walls), "median images/s": float(np.median(walls)),
                     "CPU s per image": min(cpus)})
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"load average after: {os.getloadavg()[0]:.1f}")


def ssl_speed(args, goal_images: int = 500, goal_epochs: int = 15, epochs: int = 2) -> None:
    images = np.random.default_rng(0).random((args.speed_images, args.size, args.size)).astype(np.float32)
    if args.full_size_too:  # the same measurement with the trunk at the image's own size (semnb before round 2)
        default = ssl_imagenet.WORKING_SIZE
        ssl_imagenet.WORKING_SIZE = args.size
        print(f"\n## trunk at the image size ({args.size} px), not {default} px")
        ssl_speed_once(images, args, goal_images, goal_epochs, epochs)
        ssl_imagenet.WORKING_SIZE = default
    print(f"\n## trunk at min(image size, {ssl_imagenet.WORKING_SIZE}) px (the default)")
    ssl_speed_once(images, args, goal_images, goal_epochs, epochs, paper=True)


def ssl_speed_once(images: np.ndarray, args, goal_images: int, goal_epochs: int, epochs: int,
                   paper: bool = False) -> float:
    """Time semnb's ssl (and with `paper` one epoch of ssl_paper) on `images`; print the extrapolation."""
    n = len(images)
    print(f"# ssl speed: {n} images of {args.size} px, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    trunk = trunk_features(images, device="cpu", precision="fp32")
    trunk_s = time.perf_counter() - start
    run = train_finetune(trunk, FinetuneConfig(epochs=epochs, threads=args.threads, device="cpu", precision="fp32"))
    epoch_s = sum(run.history.seconds) / epochs
    start = time.perf_counter()
    embed_finetuned(run.tail, trunk, device="cpu", precision="fp32")
    embed_s = time.perf_counter() - start
    scale = goal_images / n
    total = scale * (trunk_s + goal_epochs * epoch_s + embed_s)
    print(f"ssl: trunk {n / trunk_s:.2f} images/s, training {n / epoch_s:.1f} images/s per epoch, embedding "
          f"{n / embed_s:.1f} images/s")
    print(f"extrapolated to {goal_epochs} epochs x {goal_images} images: ssl {total / 60:.1f} min "
          f"(trunk {scale * trunk_s / 60:.1f}, training {scale * goal_epochs * epoch_s / 60:.1f})")
    if paper:
        run = train_ssl(images, SSLConfig(epochs=1, threads=args.threads, device="cpu", precision="fp32"))
        paper_total = scale * goal_epochs * sum(run.history.seconds)
        print(f"ssl_paper {paper_total / 60:.1f} min; ratio paper / ssl {paper_total / total:.1f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--n-per-class", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic set")
    parser.add_argument("--methods", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--crop", choices=["defect", "oracle"], default=None,
                        help="cluster located defect windows (oracle: windows on the true masks)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for SSL training")
    parser.add_argument("--ssl-augment", action="store_true", help="augment every pyramid level while training SSL")
    parser.add_argument("--speed-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--quality-only", action="store_true")
    parser.add_argument("--ssl-speed-only", action="store_true", help="only part 3, the speed of semnb's ssl")
    parser.add_argument("--full-size-too", action="store_true",
                        help="part 3 also with the trunk at the image size (before round 2), for the ratio")
    args = parser.parse_args()
    if args.ssl_speed_only:
        ssl_speed(args)
        return
    if not args.speed_only:
        quality(args)
    if not args.quality_only:
        speed(args)


if __name__ == "__main__":
    main()

"""`semnb predict` throughput against the bare encoder, and its peak memory against the number of images.

1. throughput: the same N synthetic SEM images (224 px PNG files), one run, alternating:
   (a) the bare encoder: read + resize + EfficientNet-Lite0 forward (`encode_images` on the files);
   (b) `semnb.predict` with a segment model fit on a small support: read, encode, defect maps,
       16-bit PNG maps and masks, table, report.
   Prints images/s of each and (b)/(a) (goal >= 0.9: I/O and writing cost <= 10 %).
2. memory: `predict` over N images in a fresh process; prints its peak RSS (goal < 2 GB at 10,000).

    .venv/bin/python benchmarks/bench_predict.py throughput --n-images 200
    .venv/bin/python benchmarks/bench_predict.py memory --n-images 10000

The CPU may be shared: the load average is printed with the figures.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import semnb
from semnb.data import write_sem_dataset
from semnb.data.synth_sem import CLASSES
from semnb.data.synth_writer import write_unlabelled_sem
from semnb.models import encode_images, load_backbone
from semnb.predictions import Predictions
from semnb.predictions_report import inspection_report


def write_unlabelled(folder: Path, n: int, size: int, seed: int = 1) -> list[Path]:
    """N synthetic SEM images as PNG files, classes mixed, no labels (`write_unlabelled_sem`)."""
    write_unlabelled_sem(folder, n_per_class=-(-n // len(CLASSES)), size=size, seed=seed)
    return sorted((folder / "images").glob("*.png"))[:n]


def fit_model(work: Path, backbone: str, size: int):
    support = write_sem_dataset(work / "support", n_per_class=2, size=size, seed=0)
    return semnb.fit("segment", support, backbone=backbone, device="cpu")


def throughput(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = write_unlabelled(work / "images", args.n_images, args.size)
        model = fit_model(work, args.backbone, args.size)
        encoder = load_backbone(args.backbone, device="cpu")
        encode_images(encoder, paths[:8], batch_size=args.batch_size)  # warm-up
        times = {"encoder": [], "predict": []}
        for repeat in range(args.repeats):  # alternate, so both see the same machine load
            started = time.perf_counter()
            encode_images(encoder, paths, batch_size=args.batch_size, workers=args.workers)
            times["encoder"].append(time.perf_counter() - started)
            started = time.perf_counter()
            semnb.predict(model, paths, work / f"out{repeat}", batch_size=args.batch_size, workers=args.workers)
            times["predict"].append(time.perf_counter() - started)
        started = time.perf_counter()
        inspection_report(Predictions(work / "out0"))
        report_s = time.perf_counter() - started
        best = {kind: min(t) for kind, t in times.items()}
        print(f"{args.n_images} images at {args.size} px, {args.backbone}, batch {args.batch_size}, "
              f"{args.workers} workers, load average {os.getloadavg()[0]:.2f}")
        for kind, seconds in best.items():
            print(f"  {kind:>8}: {args.n_images / seconds:6.1f} images/s ({seconds:.1f} s, best of {args.repeats})")
        print(f"  predict / bare encoder throughput: {best['encoder'] / best['predict']:.3f}; without the report "
              f"(made once per run, {report_s:.1f} s): {best['encoder'] / (best['predict'] - report_s):.3f}")


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not `ru_maxrss`: Linux carries that over fork and exec
    from the parent, so a child forked from a big parent would report the parent's size."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def memory(args) -> None:
    if args.child:
        model = semnb.load_model(args.child)
        started = time.perf_counter()
        semnb.predict(model, Path(args.images) / "images", Path(args.out), batch_size=args.batch_size,
                      workers=args.workers)
        peak_mb = _peak_rss_mb()
        print(f"{args.n_images} images: {time.perf_counter() - started:.0f} s, peak RSS {peak_mb:.0f} MB")
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_unlabelled(work / "images", args.n_images, args.size)
        fit_model(work, args.backbone, args.size).save(work / "model")
        subprocess.run([sys.executable, __file__, "memory", "--n-images", str(args.n_images), "--child",
                        str(work / "model"), "--images", str(work / "images"), "--out", str(work / "out"),
                        "--batch-size", str(args.batch_size), "--workers", str(args.workers)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["throughput", "memory"])
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--images", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    (throughput if args.mode == "throughput" else memory)(args)


if __name__ == "__main__":
    main()

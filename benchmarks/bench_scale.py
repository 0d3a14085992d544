"""`semnb predict` at scale: the Ray engine's throughput against the local one on this machine.

throughput: the same N synthetic SEM images and the same saved segment model, one run, in turn:
  (a) `--engine local` (one process, torch on every core);
  (b) `--engine ray` with 1 worker, (c) with 2 workers (each an actor with 1 CPU that loads the model once).
Ray is started once before (its start-up time is printed apart); each Ray run includes its actors'
start-up (imports + model load), as a user's run does. Prints images/s and the ratios ray / local
(goal: ray with 2 workers >= 0.8x local on 2 cores).

    .venv/bin/python benchmarks/bench_scale.py throughput --n-images 400 --size 128
    .venv/bin/python benchmarks/bench_scale.py index --sizes 100000,1000000   # = benchmarks/bench_index.py

index: the archive index's build time, bytes per vector, query latency and recall@10 against exact search
at each size (benchmarks/bench_index.py, which this mode runs).

The CPU may be shared: the load average is printed with the figures.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import ray
from bench_predict import fit_model, write_unlabelled  # noqa: I001 (run as a script: benchmarks/ is on sys.path)

import semnb
from semnb.ray_engine import predict_with_ray


def throughput(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = write_unlabelled(work / "images", args.n_images, args.size)
        fit_model(work, args.backbone, args.size).save(work / "model")
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="warning")
        ray_start_s = time.perf_counter() - started
        try:
            runs = {
                "local": lambda out: semnb.predict(semnb.load_model(work / "model", device="cpu"), paths, out,
                                                   batch_size=args.batch_size),
                "ray, 1 worker": lambda out: predict_with_ray(work / "model", paths, out, batch_size=args.batch_size,
                                                              concurrency=1, device="cpu"),
                "ray, 2 workers": lambda out: predict_with_ray(work / "model", paths, out, batch_size=args.batch_size,
                                                               concurrency=2, device="cpu"),
            }
            seconds = {}
            for i, (name, run) in enumerate(runs.items()):
                started = time.perf_counter()
                run(work / f"out{i}")
                seconds[name] = time.perf_counter() - started
        finally:
            ray.shutdown()
        print(f"{args.n_images} images at {args.size} px, {args.backbone}, batch {args.batch_size}, {os.cpu_count()} "
              f"cores, load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; Ray start-up "
              f"{ray_start_s:.1f} s (not counted)")
        for name, s in seconds.items():
            print(f"  {name:>14}: {args.n_images / s:6.1f} images/s ({s:.1f} s)"
                  + ("" if name == "local" else f", {seconds['local'] / s:.2f}x local"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["throughput", "index"])
    parser.add_argument("--n-images", type=int, default=400)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--batch-size", type=int, default=16)
    args, rest = parser.parse_known_args()
    if args.mode == "index":
        import sys

        import bench_index

        sys.argv = [bench_index.__file__, *rest]
        bench_index.main()
    else:
        throughput(args)


if __name__ == "__main__":
    main()

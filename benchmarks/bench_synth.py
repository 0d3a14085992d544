"""Images per second of the synthetic wafer-SEM generator, and of writing a set to disk.

Run:  .venv/bin/python benchmarks/bench_synth.py                 # 256 px, every class, 3 rounds
      .venv/bin/python benchmarks/bench_synth.py --size 512 --n-per-class 10

Each round generates `--n-per-class` images of every class (in memory, as `generate_sem_set`
yields them). Wall-clock images/s is what a user waits for; CPU images/s counts only the CPU
time this process got, so it stays meaningful when other jobs share the machine (the load
average printed beside it says how busy the machine was). The best round is the least
disturbed one; the median is typical. The writer is timed once, PNG encoding included.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from semnb.data.synth_sem import CLASSES, generate_sem_set
from semnb.data.synth_writer import write_sem_dataset


def time_generation(
    n_per_class: int, size: int, seed: int
) -> tuple[float, float, dict[str, float]]:
    """Wall seconds, CPU seconds and CPU seconds per class for one round."""
    per_class: dict[str, float] = defaultdict(float)
    wall, cpu = time.perf_counter(), time.process_time()
    samples = generate_sem_set(n_per_class, size, seed, progress=False)
    while True:
        started = time.process_time()
        sample = next(samples, None)
        if sample is None:
            break
        per_class[sample.cls] += time.process_time() - started
    return time.perf_counter() - wall, time.process_time() - cpu, per_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n-per-class", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    n_images = args.n_per_class * len(CLASSES)
    print(
        f"synthetic SEM, {args.size}x{args.size}, {n_images} images per round, {os.cpu_count()} CPUs, "
        f"load average before: {os.getloadavg()[0]:.1f}"
    )
    generate_sem_set(1, args.size, args.seed, progress=False)  # imports and caches warm
    walls, cpus, per_class = [], [], defaultdict(list)
    for round_index in range(args.rounds):
        wall, cpu, classes = time_generation(args.n_per_class, args.size, args.seed + round_index)
        walls.append(wall)
        cpus.append(cpu)
        for cls, seconds in classes.items():
            per_class[cls].append(seconds / args.n_per_class)
        print(
            f"round {round_index + 1}: {n_images / wall:7.1f} images/s wall, {n_images / cpu:7.1f} images/s CPU"
        )
    print(
        f"generation: best {n_images / min(walls):.1f}, median {n_images / statistics.median(walls):.1f} "
        f"images/s wall; best {n_images / min(cpus):.1f}, median {n_images / statistics.median(cpus):.1f} "
        f"images/s CPU; load average after: {os.getloadavg()[0]:.1f}"
    )
    print(
        "CPU ms per image, by class (best round): "
        + ", ".join(f"{cls} {1000 * min(per_class[cls]):.1f}" for cls in CLASSES)
    )

    with tempfile.TemporaryDirectory() as scratch:
        wall, cpu = time.perf_counter(), time.process_time()
        out = write_sem_dataset(
            Path(scratch) / "set", args.n_per_class, args.size, args.seed, progress=False
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        n_written = n_images + args.n_per_class  # test images of every class plus train/good
        megabytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
        print(
            f"writer: {n_written} images + masks in {wall:.2f} s wall ({n_written / wall:.1f} images/s wall, "
            f"{n_written / cpu:.1f} images/s CPU), {megabytes:.1f} MB on disk"
        )


if __name__ == "__main__":
    main()

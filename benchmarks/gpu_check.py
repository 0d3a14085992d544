"""GPU check: is semnb fast and right on this machine's accelerator? One command, a few minutes.

Prints, for `--device` (default `auto`: the first CUDA GPU, else the CPU):
1. the environment (`semnb env`);
2. plain vs dual-path encoding of `--backbone` (default ViT-B-16-plus-240 with RANDOM weights:
   speed only, the features mean nothing) at each precision and batch size, in images/s, with
   the achieved TFLOP/s as a fraction of the GPU's dense peak (looked up from its name);
3. one few-shot segmentation episode (SEM-CLIP, encoding of support and queries included),
   one SSL epoch and the retrieval embedding throughput, each on the device and on the CPU;
4. whether the device's results agree with the CPU's within the stated tolerances; the exit
   status is 1 when one does not.

    python benchmarks/gpu_check.py                       # on a GPU machine, under 8 minutes
    python benchmarks/gpu_check.py --device cpu --quick  # what CI runs: the script works without a GPU

A benchmark prints figures; nothing here is a test.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from semnb.env import environment
from semnb.errors import SemnbInputError
from semnb.hardware import Compute
from semnb.models import load_backbone
from semnb.models.bench import bench_images, synchronize

# Dense (no sparsity) peak TFLOP/s from the vendors' data sheets: bf16/fp16 tensor cores, and fp32 without TF32.
PEAK_TFLOPS = {  # name fragment -> {precision: TFLOP/s}; the first fragment found in the device name wins
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "fp16": 362.1, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
    "A10": {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2},
    "RTX 4090": {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6},
}
TOLERANCE = {  # device result vs CPU result (fp32 on both unless said)
    "encoder_cosine_fp32": 0.999,   # per-image cosine of the dual-path features (TF32 convolutions allowed)
    "encoder_cosine_low": 0.99,     # bf16/fp16 features vs CPU fp32
    "episode_auroc_abs": 0.02,      # pixel AUROC of the same few-shot episode
    "ssl_embedding_cosine": 0.98,   # after one epoch from the same initial weights and batches
    "retrieval_cosine": 0.999,      # frozen-backbone retrieval embedding
}


def peak_tflops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in PEAK_TFLOPS.items():
        if fragment in name:
            return peaks.get(precision)
    return None


def flops_per_image(backbone, kind: str) -> float:
    """FLOPs of one image's plain or dual-path forward, counted by torch's FlopCounterMode (matmuls, convs)."""
    x = backbone.network_input(bench_images(1, backbone.image_size))
    counter = FlopCounterMode(display=False)
    with counter:
        (backbone.encode_image if kind == "plain" else backbone.encode_levels)(x)
    return float(counter.get_total_flops())


def images_per_s(fn, batch: torch.Tensor, device: torch.device, min_seconds: float) -> float:
    """Images/s of `fn(batch)` repeated for at least `min_seconds` (after one warm-up call)."""
    fn(batch)
    synchronize(device)
    done, started = 0, time.perf_counter()
    while True:
        fn(batch)
        done += len(batch)
        synchronize(device)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return done / elapsed


def encoder_section(args, compute: Compute) -> list[str]:
    """Images/s and TFLOP/s of plain and dual-path encoding per precision and batch size."""
    failures = []
    backbone = load_backbone(args.backbone, precision="fp32", image_size=args.image_size, device=str(compute.device))
    flops = {kind: flops_per_image(backbone, kind) for kind in ("plain", "dual")}
    print(f"\n## encoder: {backbone.name} ({backbone.weights}), {backbone.image_size} px, "
          f"{flops['plain'] / 1e9:.2f} GFLOP/image plain, {flops['dual'] / 1e9:.2f} dual-path")
    print(f"{'precision':>9} {'batch':>5} {'plain img/s':>12} {'dual img/s':>11} {'cost':>6} {'TFLOP/s':>8} "
          f"{'of peak':>8}")
    images = bench_images(max(args.batch_sizes), backbone.image_size)
    for precision in args.precisions:
        backbone.precision = precision
        peak = peak_tflops(compute.device, precision)
        for size in args.batch_sizes:
            batch = compute.to(backbone.network_input(images[:size]))
            plain = images_per_s(lambda b: backbone.encode_image(b, on_device=True), batch, compute.device, args.seconds)
            dual = images_per_s(lambda b: backbone.encode_levels(b, on_device=True), batch, compute.device, args.seconds)
            achieved = plain * flops["plain"] / 1e12
            share = f"{achieved / peak:8.1%}" if peak else f"{'n/a':>8}"
            print(f"{precision:>9} {size:>5} {plain:12.1f} {dual:11.1f} {plain / dual:6.2f} {achieved:8.2f} {share}")
    if compute.device.type != "cpu":
        failures += _encoder_agreement(args, backbone, images[: min(8, len(images))])
    return failures


def _encoder_agreement(args, backbone, images) -> list[str]:
    """Dual-path features on the device (each precision) vs the same model on the CPU in fp32."""
    reference = load_backbone(args.backbone, precision="fp32", image_size=args.image_size, device="cpu")
    reference.model.load_state_dict(backbone.model.state_dict())
    cpu_levels = reference.encode_levels(images)
    failures = []
    for precision in args.precisions:
        backbone.precision = precision
        levels = backbone.encode_levels(images)
        cosine = min(float(F.cosine_similarity(a, b, dim=-1).min()) for a, b in zip(cpu_levels.patch_z, levels.patch_z))
        bound = TOLERANCE["encoder_cosine_fp32" if precision == "fp32" else "encoder_cosine_low"]
        print(f"  {precision} features vs CPU fp32: worst patch cosine {cosine:.5f} (tolerance >= {bound})")
        if cosine < bound:
            failures.append(f"encoder {precision}: cosine {cosine:.5f} < {bound}")
    backbone.precision = "fp32"
    return failures


def _timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def episode_check(args, compute: Compute, folder: Path) -> tuple[dict, float]:
    """One SEM-CLIP segmentation episode: encode support + queries, fit, predict; seconds and pixel AUROC."""
    from semnb.data import load_dataset, write_sem_dataset
    from semnb.fewshot import prepare_fewshot, sample_episode
    from semnb.fewshot.evaluate import segment_episode, segmentation_scores

    data_dir = folder / "sem"
    if not data_dir.exists():
        write_sem_dataset(data_dir, n_per_class=args.episode_per_class, size=args.episode_image_size, seed=0)
    images = load_dataset(data_dir, layout="mvtec")
    data, encode_s = _timed(lambda: prepare_fewshot(images, "segment", args.backbone, image_size=args.image_size,
                                                    device=str(compute.device), precision=compute.precision))
    episode = sample_episode(data.labels, args.shots, 0, data.class_names)
    (out, seconds), _ = _timed(lambda: segment_episode(data, episode, "semclip"))
    queries = episode.queries
    scores = segmentation_scores(out, data.masks[queries], data.is_defect[queries])
    per_image = encode_s / len(images)
    episode_s = per_image * (len(episode.support) + len(queries)) + seconds["fit_s"] + seconds["predict_s"]
    figures = {"images": len(images), "support": len(episode.support), "queries": len(queries),
               "encode_s_per_image": per_image, **seconds, "episode_s": episode_s}
    return figures, float(scores["pixel_auroc"])


def retrieval_check(args, compute: Compute) -> tuple[float, np.ndarray]:
    """Images/s of the retrieval embedding (frozen ImageNet layers + embedding head) and the embeddings."""
    from semnb.retrieval.embedding import (
        RetrievalConfig,
        build_view_bank,
        load_split_backbone,
        train_embedding,
    )

    pixels = bench_images(args.retrieval_images, args.retrieval_image_size)
    backbone = load_split_backbone(args.retrieval_backbone, device=str(compute.device), precision=compute.precision)
    config = RetrievalConfig(epochs=1, image_size=args.retrieval_image_size)
    bank = build_view_bank(backbone, pixels[:4], config.image_size)
    model = train_embedding("frozen", backbone, bank, np.full(4, -1), config)
    model.encode(pixels[:4])  # warm-up
    embeddings, seconds = _timed(lambda: model.encode(pixels, batch_size=args.retrieval_batch))
    return len(pixels) / seconds, embeddings


def _worst_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(F.cosine_similarity(torch.from_numpy(a).double(), torch.from_numpy(b).double(), dim=-1).min())


def ssl_check(args, compute: Compute) -> tuple[float, np.ndarray]:
    """Seconds of one SSL epoch (the paper's multi-resolution SimSiam) and the embeddings after it."""
    from semnb.clustering.ssl import SSLConfig, embed, prepare_images, train_ssl

    pixels = prepare_images(bench_images(args.ssl_images, args.ssl_image_size), args.ssl_image_size)
    config = SSLConfig(epochs=1, seed=0, device=str(compute.device),
                       precision=compute.precision)
    run, seconds = _timed(lambda: train_ssl(pixels, config))
    return seconds, embed(run.model, pixels, device=str(compute.device), precision=compute.precision)


def workload_section(args, compute: Compute) -> list[str]:
    """Few-shot episode, SSL epoch and retrieval embedding: on the device and on the CPU, and their agreement."""
    targets = [compute] if compute.device.type == "cpu" else [compute, Compute.resolve("cpu", "fp32")]
    failures, episodes, retrievals, ssl = [], {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            episodes[target], auroc = episode_check(args, target, Path(tmp))
            episodes[target]["pixel_auroc"] = auroc
            retrievals[target] = retrieval_check(args, target)
            ssl[target] = ssl_check(args, target)
    print(f"\n## workloads ({args.backbone} few-shot episode of {args.shots} shots; retrieval "
          f"{args.retrieval_backbone} at {args.retrieval_image_size} px)")
    for target in targets:
        e = episodes[target]
        print(f"  {target}: episode {e['episode_s']:.2f} s ({e['support']} support + {e['queries']} queries; "
              f"encode {e['encode_s_per_image'] * 1e3:.1f} ms/image, fit {e['fit_s']:.2f} s, predict "
              f"{e['predict_s']:.2f} s), pixel AUROC {e['pixel_auroc']:.4f}; retrieval embedding "
              f"{retrievals[target][0]:.1f} images/s; one SSL epoch on {args.ssl_images} images "
              f"{ssl[target][0]:.2f} s")
    if len(targets) == 2:
        device, cpu = targets
        gap = abs(episodes[device]["pixel_auroc"] - episodes[cpu]["pixel_auroc"])
        cosine = _worst_cosine(retrievals[device][1], retrievals[cpu][1])
        ssl_cosine = _worst_cosine(ssl[device][1], ssl[cpu][1])
        print(f"  device vs CPU: episode pixel AUROC differs by {gap:.4f} (tolerance {TOLERANCE['episode_auroc_abs']}); "
              f"retrieval embedding worst cosine {cosine:.5f} (tolerance >= {TOLERANCE['retrieval_cosine']}); "
              f"SSL embedding after one epoch worst cosine {ssl_cosine:.5f} (tolerance >= "
              f"{TOLERANCE['ssl_embedding_cosine']}); speed-up episode "
              f"{episodes[cpu]['episode_s'] / episodes[device]['episode_s']:.1f}x, retrieval "
              f"{retrievals[device][0] / retrievals[cpu][0]:.1f}x, SSL epoch {ssl[cpu][0] / ssl[device][0]:.1f}x")
        if gap > TOLERANCE["episode_auroc_abs"]:
            failures.append(f"episode pixel AUROC differs by {gap:.4f}")
        if cosine < TOLERANCE["retrieval_cosine"]:
            failures.append(f"retrieval embedding cosine {cosine:.5f}")
        if ssl_cosine < TOLERANCE["ssl_embedding_cosine"]:
            failures.append(f"SSL embedding cosine {ssl_cosine:.5f}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", default="ViT-B-16-plus-240:random")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--precisions", default=None, help="comma-separated; default fp32,fp16,bf16 on a GPU, fp32 on the CPU")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated; default 1,8,32,64,128,256 on a GPU, 1,8 on the CPU")
    parser.add_argument("--seconds", type=float, default=1.0, help="time each figure for at least this long")
    parser.add_argument("--shots", type=int, default=10, help="support images per class of the few-shot episode")
    parser.add_argument("--episode-per-class", type=int, default=14, help="synthetic SEM test images per class")
    parser.add_argument("--episode-image-size", type=int, default=256)
    parser.add_argument("--retrieval-backbone", default="efficientnet-lite0")
    parser.add_argument("--retrieval-image-size", type=int, default=128)
    parser.add_argument("--retrieval-images", type=int, default=512)
    parser.add_argument("--retrieval-batch", type=int, default=128)
    parser.add_argument("--ssl-images", type=int, default=256)
    parser.add_argument("--ssl-image-size", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="tiny model and sizes: checks the script runs (CI)")
    args = parser.parse_args()
    try:
        compute = Compute.resolve(args.device, "fp32")
    except SemnbInputError as err:
        print(f"gpu_check: error: {err}", file=sys.stderr)
        return 2
    on_gpu = compute.device.type == "cuda"
    if args.quick:
        args.backbone, args.image_size, args.seconds = "semnb-tiny", 64, 0.05
        args.shots, args.episode_per_class, args.episode_image_size = 1, 2, 64
        args.retrieval_backbone, args.retrieval_image_size, args.retrieval_images = "semnb-tiny-cnn", 48, 8
        args.ssl_images, args.ssl_image_size = 8, 32
    gpu_precisions = ["fp32", "fp16"] + (["bf16"] if on_gpu and torch.cuda.is_bf16_supported() else [])
    args.precisions = args.precisions.split(",") if args.precisions else (gpu_precisions if on_gpu else ["fp32"])
    default_sizes = "1,8,32,64,128,256" if on_gpu else ("1,2" if args.quick else "1,8")
    args.batch_sizes = [int(b) for b in (args.batch_sizes or default_sizes).split(",")]

    print("## environment")
    print("\n".join(environment().lines()))
    started = time.perf_counter()
    failures = encoder_section(args, compute)
    failures += workload_section(args, compute)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    for failure in failures:
        print(f"FAIL: {failure}")
    print("device results agree with the CPU within tolerance" if not failures else f"{len(failures)} disagreement(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""`semnb bench encoder`: speed of plain vs dual-path encoding, and fp32 vs bf16 drift.

What it measures, on synthetic SEM images already turned into network input (image
generation and resizing are not timed):
- images/s of the plain image embedding (open_clip `encode_image`) and of the dual-path,
  multi-level features, in one run, alternating the two `repeats` times and keeping each
  one's best time (the CPU is shared, so the best run is the least disturbed one);
- their cost ratio (goal for SEM-CLIP: dual-path at most 1.3x plain), from wall time and from
  this process's CPU time (less disturbed by other programs on a shared machine);
- when bf16 or fp16 runs, the cosine similarity of its features with fp32 features of the same images.

On a GPU the features stay on the device while timed (the copy back to the CPU is not the
network's cost) and every timing waits for the device to finish (`torch.cuda.synchronize`).

Taught in: 03_vv_attention (reading the figures); run it from the command line.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from semnb.data.synth_sem import CLASSES, generate_sem_image, sample_seed
from semnb.errors import SemnbInputError
from semnb.models import EncodedLevels, load_backbone

GOAL_RATIO = 1.3
BENCH_PRECISIONS = ("auto", "fp32", "bf16", "fp16", "both", "all")
RUNS = {"both": ["fp32", "bf16"], "all": ["fp32", "fp16", "bf16"]}


def bench_images(n_images: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """`n_images` synthetic SEM images, cycling through the classes (content does not change speed).

    Taught in: 03_vv_attention.
    """
    return [generate_sem_image(CLASSES[i % len(CLASSES)], size, sample_seed(seed, CLASSES[i % len(CLASSES)], i)).image
            for i in range(n_images)]


def synchronize(device: torch.device) -> None:
    """Wait until `device` has finished its queued work (a GPU runs asynchronously), so a timing is real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, batches, device: torch.device) -> tuple[float, float, list]:
    """(wall seconds, CPU seconds of this process, outputs) of `fn` over all batches."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    outputs = [fn(batch) for batch in batches]
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu, outputs


def _token_cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[float]:
    """Mean cosine similarity per level between two runs' tokens [B, N, D]."""
    return [float(F.cosine_similarity(x, y, dim=-1).mean()) for x, y in zip(a, b)]


def drift(reference: tuple[torch.Tensor, EncodedLevels], other: tuple[torch.Tensor, EncodedLevels]) -> dict:
    """Cosine similarity of `other`'s features with `reference`'s (1.0 = no drift).

    Taught in: 03_vv_attention.
    """
    ref_embedding, ref_levels = reference
    embedding, levels = other
    cos = F.cosine_similarity(ref_embedding, embedding, dim=-1)
    out = {
        "embedding_cosine_mean": float(cos.mean()),
        "embedding_cosine_min": float(cos.min()),
        "cls_cosine_per_level": [float(F.cosine_similarity(x, y, dim=-1).mean())
                                 for x, y in zip(ref_levels.cls, levels.cls)],
        "patch_z_cosine_per_level": _token_cosine(ref_levels.patch_z, levels.patch_z),
    }
    if ref_levels.patch_v is not None:
        out["patch_v_cosine_per_level"] = _token_cosine(ref_levels.patch_v, levels.patch_v)
    return out


def _run_precision(backbone, batches: list[torch.Tensor], repeats: int) -> tuple[dict, tuple]:
    """Time plain and dual-path encoding at the backbone's current precision."""
    kinds = (("plain", lambda b: backbone.encode_image(b, on_device=True)),
             ("dual", lambda b: backbone.encode_levels(b, on_device=True)))
    for _, fn in kinds:  # warm-up: first calls pay for allocation and kernel choice
        fn(batches[0])
    timings: dict[str, list[tuple[float, float]]] = {"plain": [], "dual": []}
    outputs = {}
    for _ in range(repeats):  # alternate the two, so both see the same machine load
        for kind, fn in kinds:
            wall_s, cpu_s, outputs[kind] = _timed(fn, batches, backbone.device)
            timings[kind].append((wall_s, cpu_s))
    wall = {kind: min(w for w, _ in t) for kind, t in timings.items()}
    cpu = {kind: min(c for _, c in t) for kind, t in timings.items()}
    n = sum(len(b) for b in batches)
    figures = {
        "plain_images_per_s": round(n / wall["plain"], 3),
        "dual_path_images_per_s": round(n / wall["dual"], 3),
        "dual_path_cost_ratio": round(wall["dual"] / wall["plain"], 3),
        "dual_path_cost_ratio_cpu_time": round(cpu["dual"] / cpu["plain"], 3),
        "plain_seconds": round(wall["plain"], 6),
        "dual_path_seconds": round(wall["dual"], 6),
        "plain_cpu_seconds": round(cpu["plain"], 6),
        "dual_path_cpu_seconds": round(cpu["dual"], 6),
    }
    return figures, (torch.cat(outputs["plain"]).cpu(), EncodedLevels.concat(outputs["dual"]).cpu())


def bench_encoder(backbone: str = "semnb-tiny", precision: str = "both", n_images: int = 16,
                  image_size: int | None = None, batch_size: int = 8, repeats: int = 2,
                  seed: int = 0, device: str = "auto") -> dict:
    """Measure encoder speed and bf16/fp16 drift on `device`; return the results object (contract in design.md).

    Taught in: 03_vv_attention.
    """
    if precision not in BENCH_PRECISIONS:
        raise SemnbInputError("--precision", f"got {precision!r}", f"use one of {', '.join(BENCH_PRECISIONS)}")
    for name, value in (("--n-images", n_images), ("--batch-size", batch_size), ("--repeats", repeats)):
        if value < 1:
            raise SemnbInputError(name, f"got {value}", "use 1 or more")
    started = time.perf_counter()
    model = load_backbone(backbone, precision="auto" if precision == "auto" else "fp32", image_size=image_size,
                          seed=seed, device=device)
    pixels = model.compute.to(model.network_input(bench_images(n_images, model.image_size, seed)))
    batches = list(torch.split(pixels, batch_size))

    runs = RUNS.get(precision, [model.compute.precision if precision == "auto" else precision])
    results, features = {}, {}
    for run in runs:
        model.precision = run
        results[run], features[run] = _run_precision(model, batches, repeats)
    for run in ("bf16", "fp16"):
        if run in results and "fp32" in results:
            results[run]["speedup_vs_fp32"] = round(results["fp32"]["dual_path_seconds"]
                                                    / results[run]["dual_path_seconds"], 3)
    if set(runs) - {"fp32"} and "fp32" not in features:  # reference features for the drift, not timed
        model.precision = "fp32"
        features["fp32"] = (torch.cat([model.encode_image(b) for b in batches]),
                            EncodedLevels.concat([model.encode_levels(b) for b in batches]))
    drifts = {f"drift_{run}_vs_fp32": drift(features["fp32"], features[run]) if run in features else None
              for run in ("bf16", "fp16")}

    warnings = []
    if "NOT CLIP" in model.weights:
        warnings.append(f"weights are {model.weights}: speeds are real, the features mean nothing")
    if features[runs[0]][1].patch_v is None:
        warnings.append(f"{model.name} has no V-V path: 'dual_path' timings are its multi-level read-out")
    warnings += [f"{run}: dual-path costs {r['dual_path_cost_ratio']}x plain, above the {GOAL_RATIO}x goal"
                 for run, r in results.items() if r["dual_path_cost_ratio"] > GOAL_RATIO]
    return {
        "task": "bench_encoder",
        "data": f"{n_images} synthetic SEM images (seed {seed})",
        "backbone": model.name,
        "weights": model.weights,
        "precision": precision,
        "device": str(model.device),
        "shots": None,
        "seeds": [seed],
        "n_images": n_images,
        "image_size": model.image_size,
        "levels": len(features[runs[0]][1].cls),
        "results": results,
        **drifts,
        "timing": {"total_s": round(time.perf_counter() - started, 2), "batch_size": batch_size,
                   "repeats": repeats, "torch_threads": torch.get_num_threads(),
                   "load_average_1min": round(os.getloadavg()[0], 2)},
        "warnings": warnings,
    }


def format_report(report: dict) -> str:
    """The figures as a few readable lines for the terminal.

    Taught in: 03_vv_attention.
    """
    lines = [f"{report['backbone']} ({report['weights']}) on {report['device']}, {report['n_images']} images at "
             f"{report['image_size']} px, {report['timing']['torch_threads']} threads, "
             f"load average {report['timing']['load_average_1min']}"]
    for run, r in report["results"].items():
        lines.append(f"  {run}: plain {r['plain_images_per_s']:.2f} img/s, dual-path {r['dual_path_images_per_s']:.2f} "
                     f"img/s, cost ratio {r['dual_path_cost_ratio']:.2f}x "
                     f"(CPU time {r['dual_path_cost_ratio_cpu_time']:.2f}x)")
    for run in ("bf16", "fp16"):
        d = report.get(f"drift_{run}_vs_fp32")
        if d:
            lines.append(_drift_line(run, d))
    lines += [f"  warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def _drift_line(run: str, d: dict) -> str:
    return (f"  {run} vs fp32 cosine: embedding mean {d['embedding_cosine_mean']:.5f} "
            f"(min {d['embedding_cosine_min']:.5f}), patch Z per level "
            + ", ".join(f"{c:.4f}" for c in d["patch_z_cosine_per_level"])
            + ("" if "patch_v_cosine_per_level" not in d else
               ", patch V per level " + ", ".join(f"{c:.4f}" for c in d["patch_v_cosine_per_level"])))

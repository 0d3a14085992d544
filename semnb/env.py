"""What this machine can do: versions, threads, bf16 support and which model weights exist.

Taught in: every notebook's first code cell (00_quickstart explains it).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
from dataclasses import dataclass, field


@dataclass
class EnvReport:
    versions: dict[str, str]
    threads: int
    cpu_count: int
    bf16_matmul: bool
    amx: bool
    cuda: bool
    weights: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"python {platform.python_version()} on {platform.machine()}"]
        out += [f"{name} {version}" for name, version in self.versions.items()]
        out.append(f"torch threads {self.threads} of {self.cpu_count} cores; cuda {'yes' if self.cuda else 'no'}")
        out.append(f"bf16 matmul {'yes' if self.bf16_matmul else 'no'}; AMX {'yes' if self.amx else 'no'}")
        out += [f"weights {name}: {state}" for name, state in self.weights.items()]
        return out


_PACKAGES = ("semnb", "torch", "torchvision", "open_clip_torch", "numpy", "scikit-learn",
             "scikit-image", "umap-learn", "faiss-cpu")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_bf16" in f.read()
    except OSError:
        return False


def _bf16_matmul_works() -> bool:
    import torch

    try:
        a = torch.ones(8, 8, dtype=torch.bfloat16)
        return bool((a @ a)[0, 0].item() == 8.0)
    except RuntimeError:
        return False


def weights_status() -> dict[str, str]:
    """Which backbones can load real weights offline, and where from (never fetched here)."""
    from semnb.models import registry

    return registry.available_weights()


def environment() -> EnvReport:
    import torch

    return EnvReport(
        versions={name: _version(name) for name in _PACKAGES},
        threads=torch.get_num_threads(),
        cpu_count=os.cpu_count() or 1,
        bf16_matmul=_bf16_matmul_works(),
        amx=_cpu_has_amx(),
        cuda=torch.cuda.is_available(),
        weights=_safe_weights_status(),
    )


def _safe_weights_status() -> dict[str, str]:
    try:
        return weights_status()
    except ImportError as err:  # models package not importable: say so instead of failing
        return {"(models)": f"unavailable: {err}"}


def print_env() -> EnvReport:
    """Print versions, threads, bf16 support and available weights; return them too."""
    report = environment()
    print("\n".join(report.lines()))
    return report

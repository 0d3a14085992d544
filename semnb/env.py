"""What this machine can do, before a long run: versions, CPU and GPU, what `auto` picks, which weights exist.

Taught in: every notebook's first code cell (00_quickstart explains it).
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
from dataclasses import asdict, dataclass, field


@dataclass
class EnvReport:
    versions: dict[str, str]
    threads: int
    cpu_count: int
    cpu_capability: str
    cpu_fast_bf16: bool
    cuda_build: str | None
    cudnn: str | None
    gpus: list[dict[str, object]]
    mps: bool
    auto: str
    weights: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"python {platform.python_version()} on {platform.machine()}"]
        out += [f"{name} {version}" for name, version in self.versions.items()]
        bf16 = ("yes (AMX or AVX512-BF16)" if self.cpu_fast_bf16
                else "no (no AMX or AVX512-BF16: bf16 is about 4x slower than fp32 here)")
        out.append(f"cpu {self.cpu_capability}; bf16 in hardware {bf16}; torch threads {self.threads} "
                   f"of {self.cpu_count} cores")
        cuda = f"torch built for CUDA {self.cuda_build}" if self.cuda_build else "torch built without CUDA"
        out.append(f"{cuda}; cuDNN {self.cudnn or 'none'}; GPUs: {len(self.gpus) or 'none found'}")
        out += [f"  cuda:{i} {g['name']}, {g['memory_gib']} GiB, compute capability {g['capability']}, "
                f"bf16 {'yes' if g['bf16'] else 'no'}, fp16 yes" for i, g in enumerate(self.gpus)]
        if self.mps:
            out.append("mps: yes (use --device mps)")
        out.append(f"device and precision `auto` picks: {self.auto}")
        out += [f"weights {name}: {state}" for name, state in self.weights.items()]
        return out

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


_PACKAGES = ("semnb", "torch", "torchvision", "open_clip_torch", "numpy", "scikit-learn",
             "scikit-image", "umap-learn", "faiss-cpu")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def weights_status() -> dict[str, str]:
    """Which backbones can load real weights offline, and where from (never fetched here)."""
    from semnb.models import registry

    return registry.available_weights()


def _gpus() -> list[dict[str, object]]:
    import torch

    from semnb.hardware import gpu_description

    return [gpu_description(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def environment() -> EnvReport:
    import torch

    from semnb.hardware import Compute, cpu_capability, cpu_has_fast_bf16

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return EnvReport(
        versions={name: _version(name) for name in _PACKAGES},
        threads=torch.get_num_threads(),
        cpu_count=os.cpu_count() or 1,
        cpu_capability=cpu_capability(),
        cpu_fast_bf16=cpu_has_fast_bf16(),
        cuda_build=torch.version.cuda,
        cudnn=f"{cudnn // 10000}.{cudnn // 100 % 100}.{cudnn % 100}" if cudnn else None,
        gpus=_gpus(),
        mps=bool(hasattr(torch.backends, "mps") and torch.backends.mps.is_available()),
        auto=str(Compute.resolve("auto", "auto")),
        weights=_safe_weights_status(),
    )


def _safe_weights_status() -> dict[str, str]:
    try:
        return weights_status()
    except ImportError as err:  # models package not importable: say so instead of failing
        return {"(models)": f"unavailable: {err}"}


def print_env() -> EnvReport:
    """Print versions, CPU/GPU capability, what `auto` picks and the available weights; return them too."""
    report = environment()
    print("\n".join(report.lines()))
    return report

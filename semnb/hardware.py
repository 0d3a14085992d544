"""Where a method computes and in which precision: one `Compute` chosen from the hardware.

Why one place: every model (backbones, few-shot heads, SSL, retrieval, STM) takes the same
`device` and `precision` options, so `auto` means the same thing everywhere and a wrong
option gets the same clear error everywhere.

- `device`: `auto` (the first CUDA device, else the CPU), `cpu`, `cuda`, `cuda:N`, `mps`.
- `precision`: `auto` (bf16 autocast on a GPU that supports it, else fp16; on the CPU bf16
  only where the CPU has AMX or AVX512-BF16, else fp32), `fp32`, `bf16`, `fp16`.

Random numbers are always drawn on the CPU (seeded `torch.Generator`s) and then moved, so
the same seed draws the same numbers on every device; what differs between devices is the
floating-point arithmetic only.

Taught in: 00_quickstart (the `device` parameter) and 03_vv_attention (precision).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from semnb.errors import SemnbInputError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags with bf16 arithmetic in hardware

T = TypeVar("T")


class SlowPrecisionWarning(UserWarning):
    """A precision was asked for that this hardware runs slower than fp32 (it still runs)."""


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere): what `torch` itself cannot tell apart."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_capability() -> str:
    """The vector unit torch dispatches to on this CPU (`DEFAULT`, `AVX2`, `AVX512`, ...), plus AMX.

    Why: bf16 is only fast with AMX or AVX512-BF16; on AVX2 it is emulated and about 4x
    slower than fp32 (measured on the AMD EPYC of the development machines).
    """
    capability = torch.backends.cpu.get_cpu_capability()
    extra = [name.upper() for name in FAST_BF16_CPU_FLAGS if name in cpu_flags()]
    return " + ".join([capability, *extra])


def cpu_has_fast_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AMX or AVX512-BF16)."""
    capability = torch.backends.cpu.get_cpu_capability().upper()
    return "AMX" in capability or "BF16" in capability or bool(cpu_flags() & set(FAST_BF16_CPU_FLAGS))


def _device_fix() -> str:
    return "use --device cpu (or auto, which picks the first CUDA device, else the CPU)"


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """`auto|cpu|cuda|cuda:N|mps` -> a `torch.device` that exists here, or one clear error.

    Taught in: 00_quickstart.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = str(spec).strip().lower()
    option = f"--device {spec}"
    if text == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise SemnbInputError(option, "this machine has no Apple MPS device", _device_fix())
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            built = f"torch {torch.__version__} " + ("has CUDA support but finds no GPU" if torch.version.cuda
                                                     else "was built without CUDA")
            raise SemnbInputError(option, f"this machine has no CUDA device ({built})", _device_fix())
        index = 0 if text == "cuda" else _cuda_index(text, option)
        count = torch.cuda.device_count()
        if index >= count:
            present = ", ".join(f"cuda:{i}" for i in range(count))
            raise SemnbInputError(option, f"there is no GPU {index}; this machine has {present}",
                                  f"use one of {present}, or --device auto")
        return torch.device(f"cuda:{index}")
    raise SemnbInputError(option, "is not a device", f"use one of {', '.join(DEVICE_CHOICES)}")


def _cuda_index(text: str, option: str) -> int:
    index = text.partition(":")[2]
    if not index.isdigit():
        raise SemnbInputError(option, "is not a device", "write the GPU number after cuda:, e.g. cuda:0")
    return int(index)


def resolve_precision(spec: str, device: torch.device) -> str:
    """`auto|fp32|bf16|fp16` on `device` -> the precision to run, warning once where it is slow.

    `auto`: bf16 on a CUDA GPU that supports it, else fp16; on the CPU bf16 only with AMX or
    AVX512-BF16, else fp32; fp32 on MPS. An explicit bf16 or fp16 on a CPU without hardware
    support still runs, with a `SlowPrecisionWarning` saying why it is slower there.

    Taught in: 03_vv_attention.
    """
    text = str(spec).strip().lower()
    if text not in PRECISION_CHOICES:
        raise SemnbInputError(f"--precision {spec}", "is not a precision", f"use one of {', '.join(PRECISION_CHOICES)}")
    if text == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        if device.type == "cpu":
            return "bf16" if cpu_has_fast_bf16() else "fp32"
        return "fp32"
    if device.type == "cpu" and text != "fp32" and not cpu_has_fast_bf16():
        warnings.warn(f"--precision {text} on this CPU ({cpu_capability()}) is slower than fp32: without AMX or "
                      f"AVX512-BF16 it has no {text} arithmetic, so torch converts every operation (bf16 is about 4x "
                      "slower than fp32 on AVX2). Use --precision auto or fp32 for speed.", SlowPrecisionWarning,
                      stacklevel=2)
    return text


@dataclass(frozen=True)
class Compute:
    """A device and a precision that exist on this machine: what every model runs under.

    Taught in: 00_quickstart and 03_vv_attention.
    """

    device: torch.device
    precision: str

    @classmethod
    def resolve(cls, device: str | torch.device | Compute = "auto", precision: str = "auto") -> Compute:
        """Check both options against this machine (one clear error or a slow-precision warning).

        An already resolved `Compute` passes through unchanged, so an inner function may take either.
        """
        if isinstance(device, Compute):
            return device
        resolved = resolve_device(device)
        return cls(resolved, resolve_precision(precision, resolved))

    def __str__(self) -> str:
        return f"{self.device} {self.precision}"

    @property
    def on_gpu(self) -> bool:
        return self.device.type in ("cuda", "mps")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The numeric context of a forward pass: autocast to bf16/fp16, or nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler for training: active for fp16 on CUDA only (bf16 and fp32 need none).

        Why: fp16 gradients of small losses underflow to zero; scaling the loss keeps them.
        """
        enabled = self.precision == "fp16" and self.device.type == "cuda"
        return torch.amp.GradScaler(self.device.type if enabled else "cpu", enabled=enabled)

    def to(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` on this device; pinned and non-blocking from the CPU to a CUDA device."""
        if tensor.device == self.device:
            return tensor
        if self.device.type == "cuda" and tensor.device.type == "cpu":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)


CPU = Compute(torch.device("cpu"), "fp32")


def is_out_of_memory(error: BaseException) -> bool:
    """True for a device's out-of-memory error (CUDA or MPS), whatever torch version raised it."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


class ShrinkingBatches:
    """A batch size that halves on out-of-memory and stays halved for the rest of the run.

    Why: the largest batch that fits depends on the GPU and the model; starting big and
    halving on failure keeps the GPU busy without the user guessing. Says so once, and
    fails clearly when even one item does not fit.

    Taught in: 03_vv_attention.
    """

    def __init__(self, batch_size: int, what: str = "item"):
        if batch_size < 1:
            raise SemnbInputError("--batch-size", f"got {batch_size}", "use 1 or more")
        self.size = int(batch_size)
        self.what = what
        self.halved = False

    def map(self, function: Callable[[Sequence], T], items: Sequence) -> Iterator[T]:
        """Yield `function(items[s:s + size])` over `items`, in order, halving `size` on out-of-memory."""
        start = 0
        while start < len(items):
            size = self.size
            try:
                out = function(items[start:start + size])
            except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
                if not is_out_of_memory(err):
                    raise
                self._halve(err)
                continue
            yield out
            start += size

    def _halve(self, err: BaseException) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.size == 1:
            raise SemnbInputError("--batch-size", f"one {self.what} alone does not fit in the device's memory ({err})",
                                  "use a smaller --image-size, --precision bf16/fp16, or --device cpu") from err
        self.size //= 2
        if not self.halved:
            warnings.warn(f"out of device memory at --batch-size {self.size * 2}: batches are halved to {self.size} "
                          f"{self.what}{'' if self.size == 1 else 's'} and retried (results are the same)", RuntimeWarning, stacklevel=3)
            self.halved = True


def run_in_batches(function: Callable[[Sequence], T], items: Sequence, batch_size: int,
                   what: str = "item") -> Iterator[T]:
    """`function` over `items` in batches of `batch_size`, halved on out-of-memory (`ShrinkingBatches`)."""
    return ShrinkingBatches(batch_size, what).map(function, items)


DETERMINISM_NOTES = (
    "torch.use_deterministic_algorithms(True, warn_only=True) is on: operations without a deterministic "
    "kernel warn instead of failing",
    "cuDNN benchmark off and deterministic cuDNN kernels on (convolutions may be slower)",
    "CUBLAS_WORKSPACE_CONFIG=:4096:8 (deterministic cuBLAS matrix products)",
    "on CUDA, the backward of bilinear interpolation and of index/scatter additions has no deterministic "
    "kernel: those steps warn and stay non-deterministic (the SSL pyramid and upsampling use them)",
)


def set_deterministic(enabled: bool) -> tuple[str, ...]:
    """Turn on (or off) torch's deterministic algorithms; return what that changes.

    Why: on the CPU semnb is deterministic already (same seed, same numbers); on CUDA some
    kernels use atomics and differ in the last bits run to run unless this is on.

    Taught in: 00_quickstart.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled and torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic = enabled
    return DETERMINISM_NOTES if enabled else ()


def gpu_description(index: int = 0) -> dict[str, object]:
    """Name, memory, compute capability and bf16 support of one CUDA GPU (for `semnb env`)."""
    props = torch.cuda.get_device_properties(index)
    return {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2 ** 30, 1),
        "capability": f"{props.major}.{props.minor}",
        "bf16": bool(torch.cuda.is_bf16_supported(including_emulation=False)),
        "fp16": True,
    }

"""`semnb.hardware`: `auto` picks the device and precision the hardware supports (faked here), errors are clear."""
from __future__ import annotations

import warnings

import pytest
import torch

from semnb import hardware
from semnb.errors import SemnbInputError
from semnb.hardware import Compute, resolve_device, resolve_precision, run_in_batches


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend this machine has `n` CUDA GPUs whose bf16 support is `bf16`."""
    def install(n: int, bf16: bool = True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    return install


@pytest.fixture
def fake_cpu(monkeypatch):
    """Pretend the CPU reports torch capability `capability` and Linux flags `flags`."""
    def install(capability: str, flags: set[str]):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(hardware, "cpu_flags", lambda: set(flags))
    return install


def test_auto_is_the_first_gpu_else_the_cpu(fake_gpus):
    fake_gpus(0)
    assert resolve_device("auto") == torch.device("cpu")
    fake_gpus(2)
    assert resolve_device("auto") == torch.device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda:0")
    assert resolve_device("CUDA:1") == torch.device("cuda:1")


def test_missing_devices_say_what_is_present_and_the_fix(fake_gpus):
    fake_gpus(0)
    with pytest.raises(SemnbInputError, match=r"--device cuda: this machine has no CUDA device.*Fix: use --device cpu"):
        resolve_device("cuda")
    fake_gpus(1)
    with pytest.raises(SemnbInputError, match=r"--device cuda:3: there is no GPU 3; this machine has cuda:0"):
        resolve_device("cuda:3")
    with pytest.raises(SemnbInputError, match="--device gpu: is not a device"):
        resolve_device("gpu")
    with pytest.raises(SemnbInputError, match="cuda:x"):
        resolve_device("cuda:x")


def test_mps_without_mps_is_refused(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(SemnbInputError, match="--device mps: this machine has no Apple MPS device"):
        resolve_device("mps")


@pytest.mark.parametrize("capability, flags, expected", [
    ("AVX2", set(), "fp32"),                      # these machines: bf16 emulated, 4x slower
    ("AVX512", {"avx512f"}, "fp32"),              # AVX512 without the bf16 extension
    ("AVX512", {"avx512f", "avx512_bf16"}, "bf16"),
    ("AVX512", {"amx_bf16", "amx_tile"}, "bf16"),
])
def test_auto_precision_on_the_cpu_follows_its_bf16_hardware(fake_cpu, capability, flags, expected):
    fake_cpu(capability, flags)
    assert resolve_precision("auto", torch.device("cpu")) == expected


def test_auto_precision_on_a_gpu_is_bf16_where_supported_else_fp16(fake_gpus):
    fake_gpus(1, bf16=True)
    assert Compute.resolve("auto", "auto") == Compute(torch.device("cuda:0"), "bf16")
    fake_gpus(1, bf16=False)
    assert Compute.resolve("cuda", "auto").precision == "fp16"


def test_explicit_bf16_on_a_cpu_without_it_runs_with_one_warning_that_says_why(fake_cpu):
    fake_cpu("AVX2", set())
    with pytest.warns(hardware.SlowPrecisionWarning, match="slower than fp32.*AMX or AVX512-BF16"):
        compute = Compute.resolve("cpu", "bf16")
    assert compute.precision == "bf16"
    with compute.autocast():
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
    fake_cpu("AVX512", {"amx_bf16"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Compute.resolve("cpu", "bf16")  # fast here: no warning


def test_unknown_precision_is_refused():
    with pytest.raises(SemnbInputError, match="--precision fp8: is not a precision"):
        Compute.resolve("cpu", "fp8")


def test_fp32_has_no_autocast_and_the_scaler_is_off_except_fp16_on_cuda():
    cpu = Compute.resolve("cpu", "fp32")
    with cpu.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert not cpu.grad_scaler().is_enabled()
    assert not Compute(torch.device("cuda:0"), "bf16").grad_scaler().is_enabled()


def test_run_in_batches_halves_on_out_of_memory_and_keeps_every_item():
    calls = []

    def encode(batch):
        calls.append(len(batch))
        if len(batch) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(batch)

    with pytest.warns(RuntimeWarning, match="out of device memory at --batch-size 8: batches are halved to 4 items") as said:
        out = [x for part in run_in_batches(encode, list(range(10)), 8) for x in part]
    assert out == list(range(10))
    assert calls[:3] == [8, 4, 2] and set(calls[3:]) <= {2}
    assert len(said) == 1  # said once, not once per halving


def test_run_in_batches_passes_other_errors_on_and_fails_clearly_at_one():
    with pytest.raises(ValueError, match="not memory"):
        list(run_in_batches(lambda batch: (_ for _ in ()).throw(ValueError("not memory")), [1, 2], 2))

    def never_fits(batch):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(SemnbInputError, match="one image alone does not fit"), pytest.warns(RuntimeWarning):
        list(run_in_batches(never_fits, [1, 2, 3], 2, what="image"))


def test_deterministic_mode_is_switched_on_and_off_and_says_what_it_changes():
    try:
        notes = hardware.set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert any("cuBLAS" in note for note in notes) and any("interpolation" in note for note in notes)
    finally:
        assert hardware.set_deterministic(False) == ()
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_halved_batch_size_stays_halved_across_calls():
    sizer = hardware.ShrinkingBatches(8, what="image")

    def encode(batch):
        if len(batch) > 4:
            raise RuntimeError("CUDA out of memory")
        return len(batch)

    with pytest.warns(RuntimeWarning, match="batches are halved to 4 images"):
        assert list(sizer.map(encode, range(8))) == [4, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(sizer.map(encode, range(6))) == [4, 2]  # starts at 4 now, and says nothing again

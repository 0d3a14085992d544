"""`benchmarks/gpu_check.py` runs where CI runs (the CPU, `--quick`), and refuses a device that is not there.

A smoke test of the script, not a timing: the figures it prints are never asserted.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def test_the_gpu_check_runs_on_the_cpu_and_prints_every_section():
    done = _run("--device", "cpu", "--quick")
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for section in ("## environment", "## encoder: semnb-tiny", "## workloads", "cpu fp32: episode"):
        assert section in out
    assert "fp32     1" in out and "fp32     2" in out  # one row per batch size
    assert "device results agree with the CPU within tolerance" in out


def test_the_gpu_check_names_a_missing_gpu_and_exits_2():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal is only observable where there is none")
    done = _run("--device", "cuda")
    assert done.returncode == 2
    assert "gpu_check: error: --device cuda: this machine has no CUDA device" in done.stderr

"""`print_env` / `semnb env`: what a user must know before a long run, here and on a (faked) GPU machine."""
from __future__ import annotations

import json
from types import SimpleNamespace

import torch
from click.testing import CliRunner

from semnb import env, hardware
from semnb.cli import main


def test_this_machine_is_described_with_what_auto_picks(capsys):
    report = env.print_env()
    text = capsys.readouterr().out
    assert f"cpu {hardware.cpu_capability()}" in text
    assert "device and precision `auto` picks: cpu" in text  # CI has no GPU
    assert "GPUs: none found" in text
    assert "weights efficientnet-lite0" in text
    assert report.threads == torch.get_num_threads()


def test_a_gpu_machine_lists_each_gpu_and_auto_picks_it(monkeypatch):
    props = SimpleNamespace(name="NVIDIA H200", total_memory=141 * 2 ** 30, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    lines = env.environment().lines()
    assert "  cuda:1 NVIDIA H200, 141.0 GiB, compute capability 9.0, bf16 yes, fp16 yes" in lines
    assert "device and precision `auto` picks: cuda:0 bf16" in lines


def test_semnb_env_prints_the_report_and_writes_json(tmp_path):
    out = tmp_path / "env.json"
    result = CliRunner().invoke(main, ["env", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "device and precision `auto` picks" in result.output
    written = json.loads(out.read_text())
    assert written["auto"].startswith("cpu") and written["versions"]["torch"] == torch.__version__.split("+")[0]

"""`semnb bench encoder` runs, writes the results object, and reports bf16 drift (no timing asserted)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from semnb.cli import main


def test_bench_encoder_writes_figures_and_drift(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "encoder", "--backbone", "semnb-tiny", "--precision", "bf16",
                                       "--n-images", "2", "--image-size", "32", "--batch-size", "2",
                                       "--repeats", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["task"] == "bench_encoder" and report["backbone"] == "semnb-tiny"
    assert "NOT CLIP" in report["weights"] and report["n_images"] == 2 and report["levels"] == 3
    figures = report["results"]["bf16"]
    assert figures["plain_images_per_s"] > 0 and figures["dual_path_images_per_s"] > 0
    assert figures["dual_path_cost_ratio"] == pytest.approx(figures["dual_path_seconds"] / figures["plain_seconds"], rel=2e-3)
    drift = report["drift_bf16_vs_fp32"]
    assert 0.9 < drift["embedding_cosine_mean"] < 1.0 and len(drift["patch_v_cosine_per_level"]) == 3
    assert "cost ratio" in result.output
    assert not list(tmp_path.glob("*.tmp"))


def test_bench_encoder_bad_backbone_is_one_line_and_status_2(tmp_path):
    result = CliRunner().invoke(main, ["bench", "encoder", "--backbone", "nonsense"])
    assert result.exit_code == 2
    assert "semnb: error: --backbone nonsense" in result.output

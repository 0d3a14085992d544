"""`semnb demo` (the README's main job), at a small size: every section reaches the one HTML page."""
from __future__ import annotations

import html
import json
import re

import pytest
from click.testing import CliRunner

from semnb.cli import main
from semnb.data.synth_tem import write_tem_dataset
from semnb.demo import choose_backbone, run_demo, synthetic_set


@pytest.fixture(scope="module")
def demo_page(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    report = run_demo(out, n_per_class=3, size=128, shots=1, ssl_epochs=1, tem_per_class=6, retrieval_k=2,
                      batch_per_class=2, progress=False)
    return out, report.read_text()


def test_demo_page_holds_every_section_with_its_figures(demo_page):
    _, page = demo_page
    for heading in ("Few-shot defect segmentation", "Few-shot defect classification", "Label-free clustering",
                    "Semi-supervised retrieval on a synthetic TEM archive (precision@2, mAP@2)",
                    "Your own images: fit on a few labelled ones, predict an unlabelled batch"):
        assert heading in page
    for method in ("semnb", "semclip", "patchcore", "nn_visual", "linear_probe", "defect_pooled", "ssl", "glcm",
                   "ours", "frozen"):
        assert f"<td>{method}</td>" in page
    figures = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,.', page)
    assert figures == ["class gallery", "defect maps", "confusion matrix of semnb", "confusion matrix of semclip",
                       "embedding views", "training curves", "leave-one-class-out bars",
                       "score histogram of the unlabelled batch"]
    assert "Wall time" in page


def test_demo_says_which_backbone_and_why(demo_page):
    _, page = demo_page
    backbone, note = choose_backbone()
    assert backbone == "efficientnet-lite0"  # no CLIP weights on a test machine
    assert "Real CLIP weights are not on this machine" in note and html.escape(note) in page


def test_demo_fits_saves_and_predicts_an_unlabelled_batch(demo_page):
    out, page = demo_page
    assert (out / "model" / "config.json").is_file() and (out / "model" / "weights.safetensors").is_file()
    assert (out / "predictions" / "report.html").is_file() and "inspection report" in page
    assert len(list((out / "predictions" / "maps").glob("*.png"))) == 14  # 2 per class, 7 classes


def test_demo_reuses_the_data_it_wrote(demo_page):
    out, _ = demo_page
    assert (out / "data" / "manifest.csv").is_file() and (out / "tem" / "manifest.csv").is_file()
    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 0 and "--out" in result.output


def test_demo_data_is_reused_only_when_made_with_the_settings_asked_for(demo_page):
    out, _ = demo_page
    written = []

    def spy(folder, **settings):
        written.append(settings)
        return write_tem_dataset(folder, **settings)

    synthetic_set(out / "data", "sem", spy, n_per_class=3, size=128, seed=0)  # what the demo above asked for
    synthetic_set(out / "tem", "tem", spy, n_per_class=6, size=256, seed=0)
    assert written == []
    tem = out / "tem"
    old_files = set(tem.rglob("*.png"))
    synthetic_set(tem, "tem", spy, n_per_class=2, size=256, seed=5)  # `semnb demo --seed 5` over the old one
    marker = json.loads((tem / "semnb_synth.json").read_text())
    assert written == [dict(n_per_class=2, size=256, seed=5)] and (marker["seed"], marker["n_per_class"]) == (5, 2)
    assert len(set(tem.rglob("*.png"))) < len(old_files)  # the old set was replaced whole

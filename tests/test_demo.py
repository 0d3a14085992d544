"""`semnb demo` (the README's main job), at a small size: every section reaches the one HTML page."""
from __future__ import annotations

import html
import re

import pytest
from click.testing import CliRunner

from semnb.cli import main
from semnb.demo import choose_backbone, run_demo


@pytest.fixture(scope="module")
def demo_page(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    report = run_demo(out, n_per_class=3, size=128, shots=1, ssl_epochs=1, tem_per_class=6, retrieval_k=2,
                      progress=False)
    return out, report.read_text()


def test_demo_page_holds_every_section_with_its_figures(demo_page):
    _, page = demo_page
    for heading in ("Few-shot defect segmentation", "Few-shot defect classification", "Label-free clustering",
                    "Semi-supervised retrieval on a synthetic TEM archive (precision@2, mAP@2)"):
        assert heading in page
    for method in ("semclip", "winclip", "patchcore", "linear_probe", "defect_pooled", "ssl", "glcm",
                   "ours", "frozen"):
        assert f"<td>{method}</td>" in page
    figures = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,.', page)
    assert figures == ["class gallery", "defect maps", "confusion matrix of semclip", "confusion matrix of defect_pooled",
                       "embedding views", "training curves", "leave-one-class-out bars"]
    assert "Wall time" in page


def test_demo_says_which_backbone_and_why(demo_page):
    _, page = demo_page
    backbone, note = choose_backbone()
    assert backbone == "efficientnet-lite0"  # no CLIP weights on a test machine
    assert "Real CLIP weights are not on this machine" in note and html.escape(note) in page


def test_demo_reuses_the_data_it_wrote(demo_page):
    out, _ = demo_page
    assert (out / "data" / "manifest.csv").is_file() and (out / "tem" / "manifest.csv").is_file()
    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 0 and "--out" in result.output

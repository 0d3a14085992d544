"""Reports render in a real browser: headless Chromium screenshots show the figures.

Skipped where Debian's `chromium` is not installed (`make test` installs it when it can).
"""
import shutil
import subprocess

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from PIL import Image

from semnb.report import run_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")


def screenshot(html_path, png_path, user_dir):
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={user_dir}", f"--screenshot={png_path}", "--window-size=1000,1400",
                    html_path.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(png_path).convert("RGB")).astype(int)


def red_pixels(rgb):
    return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum())


def test_report_figure_is_visible_in_chromium(tmp_path):
    figure_cell = ("import matplotlib.pyplot as plt\n"
                   "fig, ax = plt.subplots(figsize=(3, 3))\n"
                   "ax.add_patch(plt.Rectangle((0, 0), 1, 1, color=colour))\nax.set_axis_off()\nplt.show()")
    nb = new_notebook(cells=[new_code_cell("colour = 'white'", metadata={"tags": ["parameters"]}),
                             new_code_cell(figure_cell)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, tmp_path / "figure.ipynb")

    _, red_html = run_report(tmp_path / "figure.ipynb", tmp_path / "red", {"colour": "#ff0000"})
    _, white_html = run_report(tmp_path / "figure.ipynb", tmp_path / "white", {"colour": "white"})
    red = screenshot(red_html, tmp_path / "red.png", tmp_path / "chrome1")
    white = screenshot(white_html, tmp_path / "white.png", tmp_path / "chrome2")
    assert red_pixels(red) > 20_000  # a 3-inch square of red on screen
    assert red_pixels(white) == 0

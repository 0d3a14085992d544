"""Notebook 04 in a real JupyterLab, in headless Chromium: run every cell, move the explorer's threshold
slider as a user would (keyboard on the slider handle), and check that the picture and the numbers change.

Why a browser: papermill and nbval run the notebooks without a frontend, so they cannot see a widget
that fails to render or a control that does not respond. Needs Debian's `chromium` and
`chromium-driver` and the `selenium` package (the Makefile's `browser` target and `.[dev]` install
them); skipped where they are missing.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_segmentation.ipynb"
TOKEN = "semnb-browser-test"
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs chromium and chromium-driver")

ALL_CELLS_RAN = """
const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!panel || !panel.content || !panel.sessionContext || !panel.sessionContext.session) return null;
const cells = panel.content.widgets.filter(c => c.model.type === 'code');
const kernel = panel.sessionContext.session.kernel;
const errors = cells.filter(c => c.model.outputs.toJSON().some(o => o.output_type === 'error')).length;
return {ran: cells.filter(c => c.model.executionCount !== null).length, cells: cells.length, errors: errors,
        idle: kernel !== null && kernel.status === 'idle'};
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a free port over a copy of notebook 04; stopped and its kernels with it."""
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SEMNB_CACHE_DIR": str(tmp_path / "cache")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={tmp_path}", "--allow-root",
         "--LabApp.expose_app_in_browser=True", "--ServerApp.open_browser=False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2).status == 200
        except OSError:
            return False

    try:
        _wait(up, 90, "the JupyterLab server")
        yield f"{url}/lab/tree/{NOTEBOOK.name}?token={TOKEN}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _threshold_slider(driver):
    """(slider widget element, its readout text) of the segmentation explorer's threshold control."""
    for slider in driver.find_elements(By.CSS_SELECTOR, ".widget-slider"):
        label = slider.find_elements(By.CSS_SELECTOR, ".widget-label")
        if label and label[0].text.strip().startswith("threshold"):
            return slider
    return None


def _explorer_view(slider) -> tuple[str, str, str]:
    """What the explorer that holds `slider` shows: the slider's readout, its picture (a blob URL, new for every
    new PNG), its numbers."""
    explorer = slider.find_element(By.XPATH, "./ancestor::div[contains(@class, 'widget-vbox')][2]")
    picture = explorer.find_element(By.CSS_SELECTOR, "img").get_attribute("src")
    numbers = explorer.find_elements(By.CSS_SELECTOR, ".widget-html")[-1].text
    readout = slider.find_element(By.CSS_SELECTOR, ".widget-readout").text
    return readout, picture, numbers


@pytest.mark.slow
def test_notebook_04_runs_in_jupyterlab_and_its_threshold_slider_changes_the_picture(lab, browser):
    browser.get(lab)
    _wait(lambda: browser.execute_script(ALL_CELLS_RAN), 120, "the notebook and its kernel")
    _wait(lambda: browser.execute_script(ALL_CELLS_RAN)["idle"], 60, "the kernel to be idle")
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    state = _wait(lambda: (s := browser.execute_script(ALL_CELLS_RAN)) and s["ran"] == s["cells"] and s["idle"]
                  and s, 420, "every cell of notebook 04 to run", every=2)
    assert state["errors"] == 0, state
    slider = _wait(lambda: _threshold_slider(browser), 60, "the explorer's threshold slider")
    before = _wait(lambda: (view := _explorer_view(slider))[1].startswith(("blob:", "data:image/png")) and view,
                   60, "the explorer's picture")

    handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", handle)
    handle.click()
    for _ in range(20):  # arrow keys move an ipywidgets slider by one step each, as a user's would
        handle.send_keys(Keys.ARROW_LEFT)
    after = _wait(lambda: (view := _explorer_view(slider))[1] != before[1] and view, 120,
                  "the picture to follow the slider")
    assert float(after[0]) < float(before[0]), (before[0], after[0])
    assert after[2] != before[2], "the explorer's numbers did not follow the threshold"

"""`semnb report`: papermill run -> executed notebook + HTML, atomically; failures name the cell."""
import os
import signal
import subprocess
import sys
import time

import nbformat
import pytest
from click.testing import CliRunner
from nbformat.v4 import new_code_cell, new_notebook

from semnb.cli import main
from semnb.errors import SemnbInputError
from semnb.report import parse_parameter, run_report


def tiny_notebook(path):
    nb = new_notebook(cells=[
        new_code_cell("limit = 1\nname = 'wafer'", metadata={"tags": ["parameters"]}),
        new_code_cell("assert limit < 5, f'limit {limit} too large'\nprint(f'{name}: limit is {limit}')"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)
    return path


def test_report_writes_notebook_and_html_with_parameters(tmp_path):
    source = tiny_notebook(tmp_path / "tiny.ipynb")
    ipynb, html = run_report(source, tmp_path / "out", {"limit": 3, "name": "<b>lot 7</b>"})
    assert "limit is 3" in html.read_text()
    assert "&lt;b&gt;lot 7&lt;/b&gt;" in html.read_text()  # user-supplied text is escaped
    assert "assert limit" not in html.read_text()  # inputs hidden
    assert nbformat.read(ipynb, as_version=4).cells[-1].outputs


def test_failed_run_names_the_cell_and_keeps_the_earlier_report(tmp_path):
    source = tiny_notebook(tmp_path / "tiny.ipynb")
    out = tmp_path / "out"
    _, html = run_report(source, out, {"limit": 2})
    before = html.read_text()
    with pytest.raises(SemnbInputError, match="cell 3 failed: AssertionError: limit 9 too large"):
        run_report(source, out, {"limit": 9})
    assert html.read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["tiny.failed.ipynb", "tiny.html", "tiny.ipynb"]


def test_cli_report_failure_is_one_line_exit_2(tmp_path):
    source = tiny_notebook(tmp_path / "tiny.ipynb")
    result = CliRunner().invoke(main, ["report", str(source), "--out", str(tmp_path / "o"), "-p", "limit", "7"])
    assert result.exit_code == 2
    assert "AssertionError" in result.output


def test_unknown_notebook_lists_the_known_ones():
    with pytest.raises(SemnbInputError, match="01_sem_data"):
        run_report("no_such_notebook", "/tmp/never")


@pytest.mark.parametrize("text, value", [("5", 5), ("0.8", 0.8), ("false", False), ("good", "good"),
                                          ("[1, 2]", "[1, 2]")])
def test_parameters_parse_like_yaml_scalars(text, value):
    assert parse_parameter(text) == value


def test_report_html_loads_nothing_and_drops_live_widgets(tmp_path):
    source = tmp_path / "widget.ipynb"
    nb = new_notebook(cells=[
        new_code_cell("n = 1", metadata={"tags": ["parameters"]}),
        new_code_cell("import ipywidgets\nfrom IPython.display import display\n"
                      "display(ipywidgets.IntSlider(value=n, description='shots'))\nprint('static view', n)"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, source)
    ipynb, html = run_report(source, tmp_path / "out", {"n": 4})
    executed = nbformat.read(ipynb, as_version=4)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in executed.cells[-1].outputs)
    page = html.read_text()
    assert "static view 4" in page
    assert "IntSlider" not in page and "widget-view" not in page  # the dead widget is gone, its text/plain too
    assert "<script" not in page and "https://cdn" not in page  # opens offline, contacts nobody


@pytest.mark.parametrize("content", ["not json\n", "{}", "[1]"])
def test_a_file_that_is_not_a_notebook_is_one_line_and_leaves_no_folder(tmp_path, content):
    source = tmp_path / "notes.ipynb"
    source.write_text(content)
    result = CliRunner().invoke(main, ["report", str(source), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "notes.ipynb: is not a Jupyter notebook" in lines[0] and "Fix:" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.ipynb"]


def test_a_run_that_fails_before_writing_leaves_no_empty_out_folder(tmp_path):
    source = tiny_notebook(tmp_path / "tiny.ipynb")
    with pytest.raises(Exception, match="no_such_kernel"):
        run_report(source, tmp_path / "new" / "out", kernel="no_such_kernel")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == []


def test_out_at_an_existing_file_is_one_line(tmp_path):
    source = tiny_notebook(tmp_path / "tiny.ipynb")
    (tmp_path / "page.html").write_text("keep me")
    result = CliRunner().invoke(main, ["report", str(source), "--out", str(tmp_path / "page.html")])
    assert result.exit_code == 2
    assert "page.html is a file, not a folder" in result.output and len(result.output.splitlines()) == 1
    assert (tmp_path / "page.html").read_text() == "keep me"


def test_sigterm_keeps_the_earlier_report_leaves_nothing_hidden_and_stops_the_kernel(tmp_path):
    source, out, kernel_pid = tmp_path / "slow.ipynb", tmp_path / "out", tmp_path / "kernel.pid"
    nbformat.write(new_notebook(cells=[
        new_code_cell("wait = 0", metadata={"tags": ["parameters"]}),
        new_code_cell(f"import os, time\nopen({str(kernel_pid)!r}, 'w').write(str(os.getpid()))\ntime.sleep(wait)"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}), source)
    run_report(source, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    kernel_pid.unlink()
    slow = subprocess.Popen([sys.executable, "-m", "semnb.cli", "report", str(source), "--out", str(out),
                             "-p", "wait", "120"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not kernel_pid.exists() or not kernel_pid.read_text():
        assert slow.poll() is None and time.monotonic() < deadline, "the slow cell never started"
        time.sleep(0.05)
    slow.send_signal(signal.SIGTERM)
    _, stderr = slow.communicate(timeout=60)
    assert slow.returncode == 128 + signal.SIGTERM, stderr.decode()[-2000:]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no .slow.* staging folder either
    pid, stopped_by = int(kernel_pid.read_text()), time.monotonic() + 1.0
    while _alive(pid) and time.monotonic() < stopped_by:
        time.sleep(0.05)
    assert not _alive(pid), "the kernel outlived the report"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

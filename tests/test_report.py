"""`semnb report`: papermill run -> executed notebook + HTML, atomically; failures name the cell."""
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

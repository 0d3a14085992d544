"""Parameterised reports: run a notebook through papermill, keep the executed notebook and an HTML page.

Both files appear together or not at all: the run happens in a staging folder and the results
are moved into place only when every cell has run. A failed run leaves an earlier report
untouched and says which cell failed and why.

Taught in: 09_report.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import yaml

from semnb.errors import SemnbInputError
from semnb.io_utils import check_writable, write_text_atomic

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
TEMPLATES = Path(__file__).resolve().parent / "report_template"  # nbconvert template "semnb_report"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def find_notebook(name: str | Path) -> Path:
    """A notebook path, or a name such as `09_report` looked up in the project's notebooks/."""
    path = Path(name)
    candidates = [path, NOTEBOOK_DIR / path, NOTEBOOK_DIR / f"{path}.ipynb"]
    for candidate in candidates:
        if candidate.is_file() and candidate.suffix == ".ipynb":
            return candidate
    known = ", ".join(sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")))
    raise SemnbInputError(name, "no such notebook", f"give a path to an .ipynb file or one of: {known}")


def parse_parameter(value: str) -> object:
    """`-p shots 5` gives the int 5, `-p smoke false` the bool False, other text stays a string."""
    parsed = yaml.safe_load(value)
    return parsed if isinstance(parsed, (int, float, bool, str, type(None))) else value


def run_report(notebook: str | Path, out_dir: str | Path, parameters: dict | None = None,
               kernel: str = "python3") -> tuple[Path, Path]:
    """Execute `notebook` with `parameters`; write `<name>.ipynb` and `<name>.html` into `out_dir`.

    The notebook runs in the caller's working folder, so relative paths given as parameters
    (`-p model_dir models/v1`) mean what they mean on the command line.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = find_notebook(notebook)
    _check_readable_notebook(source)
    out_dir = Path(out_dir)
    check_writable(out_dir, f"out_dir (--out) {out_dir}", folder=True)
    made_out_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{source.stem}.", dir=out_dir))
    try:
        executed = staging / source.name
        try:
            papermill.execute_notebook(str(source), str(executed), parameters=parameters or {},
                                       kernel_name=kernel, cwd=os.getcwd(), progress_bar=True)
        except PapermillExecutionError as err:
            failed = out_dir / f"{source.stem}.failed.ipynb"
            shutil.move(str(executed), failed)
            raise SemnbInputError(
                source, f"cell {err.exec_count} failed: {err.ename}: {err.evalue}",
                f"check the parameters and the data; the run is kept in {failed}, "
                "an earlier report is untouched") from None
        html = notebook_to_html(executed)
        ipynb_target, html_target = out_dir / source.name, out_dir / f"{source.stem}.html"
        write_text_atomic(html_target, html)
        shutil.move(str(executed), ipynb_target)  # same folder: an atomic rename
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if made_out_dir and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a run that wrote nothing leaves no empty folder behind either
    return ipynb_target, html_target


def _check_readable_notebook(source: Path) -> None:
    """Refuse a file Jupyter cannot open before a kernel is started or a folder is made."""
    import nbformat

    try:
        nbformat.read(str(source), as_version=4)
    except Exception as err:  # nbformat fails in many ways (not JSON, not UTF-8, schema); all mean the same here
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise SemnbInputError(source, f"is not a Jupyter notebook ({reason})",
                              "give an .ipynb file saved by Jupyter") from None


def notebook_to_html(path: str | Path) -> str:
    """A self-contained HTML page of an executed notebook: outputs only, figures embedded, no script.

    Live widgets cannot work in a static page, so their outputs are dropped (each explorer
    cell also displays its current view as a picture) and the template loads nothing from
    the internet (`report_template/`).
    """
    import nbformat
    from nbconvert import HTMLExporter

    notebook = nbformat.read(str(path), as_version=4)
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if WIDGET_VIEW not in o.get("data", {})]
    exporter = HTMLExporter(template_name="semnb_report", extra_template_basedirs=[str(TEMPLATES)],
                            exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(notebook)
    return body

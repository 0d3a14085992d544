"""Every notebook runs top to bottom headless with smoke parameters through papermill.

nbval (`--nbval-lax`, in the README's test command) runs them a second time as stored and
compares the outputs of cells marked `# NBVAL_CHECK_OUTPUT`.
"""
from pathlib import Path

import nbformat
import papermill
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_with_smoke_parameters(notebook: Path, tmp_path: Path):
    nb = nbformat.read(notebook, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{notebook.name} needs exactly one cell tagged 'parameters'"
    assert "smoke" in tagged[0].source and "seed" in tagged[0].source

    out = tmp_path / notebook.name
    papermill.execute_notebook(str(notebook), str(out), parameters={"smoke": True, "seed": 1},
                               kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    executed = nbformat.read(out, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"], "half-written outputs left behind"

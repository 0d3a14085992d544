"""Every notebook opens the same way (design.md): a title cell that says what you will learn and how long
it runs, then the one `parameters` cell (papermill) holding every knob, then the imports cell that calls
`print_env()`; no later cell imports anything, so a reader sees every dependency at the top."""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _code(cell) -> ast.Module:
    """The cell's Python, IPython magics and shell lines left out."""
    lines = [line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    return ast.parse("\n".join(lines))


def _imports(cell) -> list[int]:
    return [node.lineno for node in ast.walk(_code(cell)) if isinstance(node, (ast.Import, ast.ImportFrom))]


def opening_problems(nb) -> list[str]:
    """What is wrong with a notebook's opening, one line per problem (empty when it is right)."""
    cells = nb.cells
    if len(cells) < 3:
        return ["fewer than three cells (title, parameters, imports)"]
    problems = []
    title = cells[0].source.lower()
    if cells[0].cell_type != "markdown" or "what you will learn" not in title or "run time" not in title:
        problems.append("cell 0 must be markdown saying 'What you will learn' and the expected run time")
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    if tagged != [1] or cells[1].cell_type != "code":
        problems.append(f"cell 1 must be the only code cell tagged 'parameters' (tagged: {tagged})")
    if cells[2].cell_type != "code" or not _imports(cells[2]):
        problems.append("cell 2 must be the imports cell")
    elif not any(isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", "")) == "print_env"
                 for n in ast.walk(_code(cells[2]))):
        problems.append("cell 2 (the imports) must call print_env()")
    for i, cell in enumerate(cells[3:], start=3):
        if cell.cell_type == "code" and _imports(cell):
            problems.append(f"cell {i} imports (line {_imports(cell)[0]}): move the import to cell 2")
    return problems


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_opens_the_same_way(notebook: Path):
    problems = opening_problems(nbformat.read(notebook, as_version=4))
    assert not problems, f"{notebook.name}:\n" + "\n".join(problems)


def test_a_late_import_and_a_missing_title_are_reported():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 99 · Title only"),
        nbformat.v4.new_code_cell("seed = 0", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("from semnb.env import print_env\nprint_env()"),
        nbformat.v4.new_code_cell("x = 1\nimport numpy as np"),
    ])
    problems = opening_problems(nb)
    assert problems[0].startswith("cell 0 must be markdown") and problems[1] == (
        "cell 3 imports (line 2): move the import to cell 2") and len(problems) == 2

"""Strip notebook outputs before committing, keeping only the outputs nbval checks.

A cell whose source contains `# NBVAL_CHECK_OUTPUT` keeps its stored output (nbval --nbval-lax
compares it on every test run); every other cell loses outputs and execution counts.

    python tools/nb_clean.py notebooks/*.ipynb
"""
from __future__ import annotations

import sys

import nbformat

MARKER = "# NBVAL_CHECK_OUTPUT"


def clean(path: str) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if MARKER not in cell.source:  # nbval needs the kept cells' execution counts
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


if __name__ == "__main__":
    for notebook in sys.argv[1:]:
        clean(notebook)

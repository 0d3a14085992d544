"""The layering rules of docs/ARCHITECTURE.md, checked on every module's source (AST) so that a violation
names the file and the line:

- every module of semnb imports;
- inside a method package only `viz.py` imports matplotlib and only `explore.py` imports ipywidgets
  (outside them: the generic `semnb/viz.py` and the Explorer base `semnb/widgets/`);
- inside a method package only `evaluate.py` takes an `ImageSet` (or loaded scans) and runs a protocol;
- nothing outside `data/`, `models/` (weights, cache), `retrieval/index.py` and the infrastructure
  modules named below opens, reads, writes or lists files.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "semnb"
METHOD_PACKAGES = ("fewshot", "clustering", "retrieval", "stm")
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))

PLOTTING = ("matplotlib",)
WIDGETS = ("ipywidgets", "IPython.display")
DATA_TYPES = {"ImageSet", "load_dataset", "LabelledScan", "load_scans"}
FILE_IO_ALLOWED = {
    "data/*", "models/*", "retrieval/index.py",
    # infrastructure: atomic writers, the results JSON, reports and the demo page, the CLI,
    # the prompt knowledge base (a YAML file), the environment report, the CPU's flags (/proc/cpuinfo)
    "io_utils.py", "results.py", "report.py", "demo.py", "cli.py", "prompts.py", "env.py", "hardware.py",
    # fitted models on disk, and the predictions a model writes and its report reads back
    "model_folder.py", "fitting.py", "predictions.py", "predictions_report.py",
}
FILE_CALLS = {"open", "write_json_atomic", "write_text_atomic", "write_bytes_atomic", "atomic_path"}
FILE_METHODS = {"open", "read_text", "write_text", "read_bytes", "write_bytes", "iterdir", "glob", "rglob", "mkdir",
                "unlink", "rmdir", "to_csv", "to_parquet", "read_csv", "read_parquet", "savez", "savez_compressed",
                "imread", "imwrite", "imsave", "read_index", "write_index", "listdir", "scandir", "makedirs",
                "rmtree", "copyfile"}
FILE_MODULE_CALLS = {("np", "load"), ("np", "save"), ("numpy", "load"), ("numpy", "save"), ("torch", "load"),
                     ("torch", "save"), ("json", "load"), ("json", "dump"), ("pickle", "load"), ("pickle", "dump"),
                     ("os", "remove"), ("os", "rename"), ("os", "replace"), ("shutil", "move")}


def _relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST):
    """(line, module, names) of every import statement, at any depth (lazy imports count too)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.lineno, node.module, tuple(alias.name for alias in node.names)


def _file_calls(tree: ast.AST):
    """(line, call) of every call that touches the file system."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in FILE_CALLS:
            yield node.lineno, func.id
        elif isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            if func.attr in FILE_METHODS or (owner, func.attr) in FILE_MODULE_CALLS:
                yield node.lineno, f"{owner + '.' if owner else ''}{func.attr}"


def _package_and_file(path: Path) -> tuple[str | None, str]:
    parts = path.relative_to(PACKAGE).parts
    return (parts[0], parts[-1]) if len(parts) == 2 and parts[0] in METHOD_PACKAGES else (None, parts[-1])


def _allowed_file_io(path: Path) -> bool:
    rel = _relative(path)
    return rel in FILE_IO_ALLOWED or f"{rel.split('/')[0]}/*" in FILE_IO_ALLOWED


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package, name = _package_and_file(path)
    rel = _relative(path)
    found = []
    for line, module, names in _imports(tree):
        top = module.split(".")[0]
        if top in PLOTTING and package and name != "viz.py":
            found.append(f"semnb/{rel}:{line} imports {module}: in a method package only viz.py plots")
        if top in PLOTTING and not package and rel not in ("viz.py", "widgets/base.py"):
            found.append(f"semnb/{rel}:{line} imports {module}: figures belong in a viz.py")
        if module.startswith(WIDGETS) and package and name != "explore.py":
            found.append(f"semnb/{rel}:{line} imports {module}: in a method package only explore.py has widgets")
        if module.startswith(WIDGETS) and not package and not rel.startswith("widgets/"):
            found.append(f"semnb/{rel}:{line} imports {module}: widgets belong in an explore.py")
        if package and name not in ("evaluate.py", "__init__.py") and DATA_TYPES & set(names):
            found.append(f"semnb/{rel}:{line} imports {', '.join(sorted(DATA_TYPES & set(names)))}: only "
                         "evaluate.py takes an ImageSet or loaded scans and runs a protocol")
    if not _allowed_file_io(path):
        found += [f"semnb/{rel}:{line} calls {call}: only data/, models/ and retrieval/index.py touch files"
                  for line, call in _file_calls(tree)]
    return found


@pytest.mark.parametrize("path", MODULES, ids=_relative)
def test_module_imports(path: Path):
    importlib.import_module(_module_name(path))


def test_every_method_package_has_the_same_layout():
    for package in METHOD_PACKAGES:
        files = {p.name for p in (PACKAGE / package).glob("*.py")}
        assert {"__init__.py", "evaluate.py", "model.py", "viz.py"} <= files, f"semnb/{package}/ lacks {files}"


def test_layering_rules_hold():
    found = [v for path in MODULES for v in _violations(path)]
    assert not found, "layering violations:\n" + "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("import matplotlib.pyplot as plt\n", "imports matplotlib.pyplot: in a method package only viz.py plots"),
    ("import ipywidgets\n", "imports ipywidgets: in a method package only explore.py has widgets"),
    ("from semnb.data import ImageSet\n", "imports ImageSet: only evaluate.py takes an ImageSet"),
    ("def f(p):\n    return p.read_text()\n", "calls p.read_text: only data/, models/"),
    ("import numpy as np\ndef f(p):\n    return np.load(p)\n", "calls np.load: only data/, models/"),
    ("def f(p):\n    with open(p) as h:\n        return h.read()\n", "calls open: only data/, models/"),
])
def test_the_checker_catches_each_kind_of_violation(tmp_path, monkeypatch, source, expected):
    fake = tmp_path / "semnb"
    (fake / "stm").mkdir(parents=True)
    module = fake / "stm" / "lattice.py"
    module.write_text(source)
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", fake)
    found = _violations(module)
    assert len(found) == 1 and found[0].startswith("semnb/stm/lattice.py:") and expected in found[0], found

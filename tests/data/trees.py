"""`file_tree`: a folder's files and their bytes, so that two data sets can be compared whole."""
from __future__ import annotations

from pathlib import Path


def file_tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` by its relative path, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

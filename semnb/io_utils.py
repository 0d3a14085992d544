"""Atomic file output: a crash or a failed run never leaves a half-written result behind."""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from semnb.errors import SemnbInputError


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; move it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp_path = Path(tmp)
    try:  # from here on the temporary file goes whatever happens (SIGTERM too: the CLI makes it SystemExit)
        os.close(fd)
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes files private; results are not
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_leftover_temporaries(folder: str | os.PathLike) -> None:
    """Delete the temporary files `atomic_path` left in `folder` when a process was killed (SIGKILL) mid-write.

    Why: only a kill that no `finally` survives leaves one; a resumed run rewrites that file from scratch, so the
    leftover is garbage that would otherwise stay in the results folder. Call it only where no other process is
    writing into `folder`.
    """
    for leftover in Path(folder).glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def check_writable(target: str | os.PathLike, what: str, folder: bool = False) -> None:
    """Refuse an output path that cannot be written before any work, not after a long computation.

    `target` is a file written beside itself and renamed into place (`atomic_path`), so its folder
    must be writable; with `folder=True` it is a folder written into (made if new). `what` names
    the option in the message, e.g. `--json results.json`.
    """
    target = Path(target).absolute()
    if target.exists() and target.is_dir() != folder:
        if folder:
            raise SemnbInputError(what, f"{target} is a file, not a folder", "give a new folder or an existing one")
        raise SemnbInputError(what, f"{target} is a folder", f"give a file name, e.g. {target / 'results.json'}")
    place = target if folder else target.parent
    while not place.exists():  # the nearest folder that exists is where the new ones are made
        place = place.parent
    if not place.is_dir():
        raise SemnbInputError(what, f"{place} is a file, not a folder", "give a path that does not run through a file")
    if not os.access(place, os.W_OK | os.X_OK):
        raise SemnbInputError(what, f"the folder {place} is not writable", "give a path in a folder you can write to")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (weights and index files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON: numpy values become plain numbers, undefined (NaN) metrics become null."""
    text = json.dumps(_plain(obj), indent=2, allow_nan=False)
    return write_text_atomic(target, text + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value

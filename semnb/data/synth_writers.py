"""Which synthetic data set `semnb data synth --kind K` writes: one writer per kind.

Taught in: 01_sem_data.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from semnb.errors import SemnbInputError

# kind -> "module:function"; each writer takes (out_dir, n_per_class, size, seed) and returns the folder.
WRITERS = {
    "sem": "semnb.data.synth_writer:write_sem_dataset",
    "sem-batch": "semnb.data.synth_writer:write_unlabelled_sem",
    "tem": "semnb.data.synth_tem:write_tem_dataset",
    "stm": "semnb.data.synth_stm:write_stm_dataset",
}


def write_synthetic(kind: str, out_dir: str | Path, n_per_class: int, size: int, seed: int) -> Path:
    """Write the synthetic data set of `kind` into `out_dir`; return the folder written.

    A writer that takes long enough to have a progress bar (the SEM set) shows it here.
    """
    if kind not in WRITERS:
        raise SemnbInputError("--kind", f"unknown kind {kind!r}", f"use one of {', '.join(WRITERS)}")
    module_name, function_name = WRITERS[kind].split(":")
    writer = getattr(importlib.import_module(module_name), function_name)
    shows_progress = {"progress": True} if "progress" in inspect.signature(writer).parameters else {}
    return writer(Path(out_dir), n_per_class=n_per_class, size=size, seed=seed, **shows_progress)

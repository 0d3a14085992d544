"""Read a folder of labelled STM scans: each scan `X.npy` (or `X.png`, `X.tif`, ...) with its
pixel mask `X_mask.*` beside it, plus the optional tables that `semnb data synth --kind stm`
writes: `defects.csv` (scan, defect_id, x, y, class) with per-defect classes and
`manifest.csv` (scan, surface) with each scan's surface.

Why a loader of its own: STM scans are raw height maps (any real dtype, any size), not the
images of an `ImageSet`, and the evaluation needs the per-defect table with them.

Taught in: 08_stm.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from semnb.data.image_io import (
    IMAGE_EXTENSIONS,
    MASK_SUFFIX,
    is_mask_file,
    read_image,
    read_mask,
    suspect_data_to,
)
from semnb.errors import SemnbInputError


@dataclass
class LabelledScan:
    """One scan of a folder with its ground truth: `raw` float HxW (as read), `mask` bool HxW,
    `surface` (None when unknown) and `defects` (x, y, class rows, or None)."""

    name: str
    path: Path
    raw: np.ndarray
    mask: np.ndarray
    surface: str | None
    defects: pd.DataFrame | None


@dataclass(repr=False)
class ScanSet(Sequence):
    """The labelled scans of one folder, as `load_scans` read them: what `semnb.stm.evaluate_stm` takes.

    `scans` sorted by name; `warnings` name the files left out or read with suspect data
    (NaN pixels, see `semnb.data.image_io.SuspectDataWarning`); `source` is the folder and
    `load_s` the seconds reading took (both go into the results contract).
    """

    scans: list[LabelledScan]
    warnings: list[str] = field(default_factory=list)
    source: str = ""
    load_s: float = 0.0

    def __len__(self) -> int:
        return len(self.scans)

    def __repr__(self) -> str:
        surfaces = sorted({s.surface for s in self.scans if s.surface})
        return (f"ScanSet: {len(self)} labelled scans from {self.source or 'memory'}; surfaces: "
                f"{', '.join(surfaces) or 'unknown'}; {len(self.warnings)} warning(s)")

    def __getitem__(self, i):
        return self.scans[i]

    def __iter__(self) -> Iterator[LabelledScan]:
        return iter(self.scans)


def load_scans(data_dir: str | Path) -> ScanSet:
    """Every scan `X.*` with a mask `X_mask.*` in `data_dir` (not its subfolders), read.

    The warnings of the returned set name the images that have no mask and the files read
    with suspect data (each `SuspectDataWarning` goes there, once per file, not to stderr).

    Taught in: 08_stm.
    """
    # the file names the synthetic writer uses; imported here so that `import semnb.data` stays free of scipy
    from semnb.data.synth_stm import DEFECTS_CSV, MANIFEST

    started = time.perf_counter()
    root = Path(data_dir)
    if not root.is_dir():
        raise SemnbInputError(root, "is not a folder", "pass the folder that holds the scans X.npy and masks X_mask.npy")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    masks = {p.stem[: -len(MASK_SUFFIX)]: p for p in files if is_mask_file(p)}
    manifest = _read_optional_csv(root / MANIFEST, ("scan", "surface"))
    defects = _read_optional_csv(root / DEFECTS_CSV, ("scan", "x", "y", "class"))
    surface_of = dict(zip(manifest["scan"].astype(str), manifest["surface"].astype(str))) if manifest is not None else {}
    scans, notes = [], []
    for path in files:
        if is_mask_file(path):
            continue
        mask_path = masks.get(path.stem)
        if mask_path is None:
            notes.append(f"{path.name}: no mask {path.stem}{MASK_SUFFIX}.* beside it, left out")
            continue
        with suspect_data_to(notes):
            raw = read_image(path)
            mask = read_mask(mask_path, shape=raw.shape, image_path=path)
        table = None
        if defects is not None:
            table = defects[defects["scan"].astype(str) == path.stem].reset_index(drop=True)
            _check_defects_inside(table, raw.shape, root / DEFECTS_CSV, path.stem)
        scans.append(LabelledScan(path.stem, path, raw, mask, surface_of.get(path.stem), table))
    if not scans:
        raise SemnbInputError(root, "holds no scan X.npy (or image) with a mask X_mask.npy beside it",
                              "put each scan's pixel mask beside it as X_mask.npy (1 = defect), "
                              "or write a synthetic set with `semnb data synth --kind stm --out DIR`")
    return ScanSet(scans, notes, str(data_dir), time.perf_counter() - started)


def _read_optional_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise SemnbInputError(path, f"cannot read the table ({error})", "fix or remove the file") from error
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise SemnbInputError(path, f"lacks the column(s) {', '.join(missing)}", f"give it the columns {', '.join(columns)}")
    return table


def _check_defects_inside(table: pd.DataFrame, shape, csv_path: Path, scan: str) -> None:
    h, w = shape
    outside = table[(table["x"] < 0) | (table["x"] > w - 1) | (table["y"] < 0) | (table["y"] > h - 1)]
    if len(outside):
        row = outside.iloc[0]
        raise SemnbInputError(csv_path, f"defect at x={row['x']}, y={row['y']} lies outside scan {scan} ({h}x{w})",
                              "give x as the column and y as the row, in pixels of the scan")

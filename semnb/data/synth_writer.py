"""Write a synthetic SEM defect set to disk in the MVTec-AD layout, with a manifest.

Layout (as MVTec-AD, so every loader and tool that reads MVTec reads it):
    train/good/000.png ...                defect-free training images
    test/<class>/000.png ...              test images of every class, good included
    ground_truth/<class>/000_mask.png     255 = defect, for the defect classes only
    manifest.csv                          one row per image (see MANIFEST_COLUMNS)
    semnb_synth.json                      how the set was made; marks the folder as ours

The set is written into a hidden folder beside `out_dir` and moved into place at the end, so
an interrupted run never leaves half a set behind.

Taught in: 01_sem_data.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from itertools import chain
from pathlib import Path

import numpy as np
from PIL import Image

from semnb.data.synth_sem import CLASSES, SemSample, check_set_options, generate_sem_set
from semnb.errors import SemnbInputError
from semnb.io_utils import write_json_atomic, write_text_atomic

MANIFEST_COLUMNS = (
    "path",
    "class",
    "mask",
    "split",
    "background",
    "pixel_size_nm",
    "banner",
    "banner_rows",
    "variant",
    "seed",
)
MARKER_FILE = "semnb_synth.json"


def write_sem_dataset(
    out_dir: str | os.PathLike,
    n_per_class: int = 20,
    size: int = 256,
    seed: int = 0,
    train_good: int | None = None,
    progress: bool = True,
) -> Path:
    """Write `n_per_class` test images per class and `train_good` (default `n_per_class`) good training images.

    `out_dir` must be new, empty, or an earlier synthetic set written by this function
    (which is then replaced). Returns `out_dir`.

    Taught in: 01_sem_data.
    """
    out_dir = Path(out_dir).absolute()
    check_set_options(n_per_class, size, seed)
    train_good = n_per_class if train_good is None else train_good
    if (
        isinstance(train_good, bool)
        or not isinstance(train_good, (int, np.integer))
        or train_good < 1
    ):
        raise SemnbInputError(
            "train_good",
            f"must be a whole number of at least 1, got {train_good!r}",
            "pass how many defect-free training images to write, e.g. 20",
        )
    _check_target(out_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".writing", dir=out_dir.parent)
    )
    staging.chmod(0o755)  # mkdtemp makes it private; the finished set is an ordinary folder
    try:
        samples = chain(
            (
                ("train", s)
                for s in generate_sem_set(
                    train_good, size, seed, ("good",), progress, split="train"
                )
            ),
            (
                ("test", s)
                for s in generate_sem_set(n_per_class, size, seed, CLASSES, progress, split="test")
            ),
        )
        digits = max(3, len(str(max(n_per_class, train_good) - 1)))
        counters: dict[tuple[str, str], int] = {}
        rows = []
        for split, sample in samples:
            index = counters[split, sample.cls] = counters.get((split, sample.cls), -1) + 1
            rows.append(_write_sample(staging, split, sample, f"{index:0{digits}d}"))
        write_text_atomic(staging / "manifest.csv", _manifest_text(rows))
        settings = {
            "generator": "semnb.data.synth_writer.write_sem_dataset",
            "kind": "sem",
            "n_per_class": n_per_class,
            "train_good": train_good,
            "size": size,
            "seed": seed,
            "classes": list(CLASSES),
        }
        write_json_atomic(staging / MARKER_FILE, settings)
        _move_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _check_target(out_dir: Path) -> None:
    """Refuse to write over anything that is not ours: a file, or a non-empty folder without our marker."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SemnbInputError(
            str(out_dir), "is a file, not a folder", "pass a new or empty folder to --out"
        )
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER_FILE).is_file():
        raise SemnbInputError(
            str(out_dir),
            f"is not empty and is not a semnb synthetic set (it has no {MARKER_FILE})",
            "pass a new or empty folder to --out, or remove this one yourself",
        )


def _write_sample(root: Path, split: str, sample: SemSample, stem: str) -> dict:
    """Write one image (and its mask, for defect classes) and return its manifest row."""
    image_path = Path(split) / sample.cls / f"{stem}.png"
    _save_png(root / image_path, sample.image)
    mask_path = ""
    if sample.cls != "good":
        mask_path = (Path("ground_truth") / sample.cls / f"{stem}_mask.png").as_posix()
        _save_png(root / mask_path, sample.mask.astype(np.uint8) * 255)
    return {
        "path": image_path.as_posix(),
        "class": sample.cls,
        "mask": mask_path,
        "split": split,
        "background": sample.background,
        "pixel_size_nm": sample.pixel_size_nm,
        "banner": sample.has_banner,
        "banner_rows": sample.banner_rows,
        "variant": sample.variant,
        "seed": sample.seed,
    }


def _save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=3)


def _manifest_text(rows: list[dict]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Rename the finished set onto `out_dir`; an earlier set there is moved aside first, then deleted."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        retired = Path(
            tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent)
        )
        os.replace(out_dir, retired)
        os.replace(staging, out_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, out_dir)

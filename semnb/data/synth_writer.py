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
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from semnb.data.synth_sem import CLASSES, SemSample, check_set_options, generate_sem_set
from semnb.errors import SemnbInputError
from semnb.io_utils import write_json_atomic, write_text_atomic

# Loaders and reports rely on these columns ...
CONTRACT_COLUMNS = ("path", "class", "mask", "split", "background", "pixel_size_nm", "banner")
# ... and these say how each image was made (generate_sem_image(class, size, seed) remakes it).
PROVENANCE_COLUMNS = ("banner_rows", "variant", "seed")
MANIFEST_COLUMNS = CONTRACT_COLUMNS + PROVENANCE_COLUMNS
MARKER_FILE = "semnb_synth.json"


def write_sem_dataset(
    out_dir: str | os.PathLike,
    n_per_class: int = 20,
    size: int = 256,
    seed: int = 0,
    train_good: int | None = None,
    progress: bool = True,
) -> Path:
    """Write `n_per_class` test images of every class and `train_good` good training images.

    `train_good` defaults to `n_per_class`. `out_dir` must be new, empty, or an earlier
    synthetic set written by this function (which is then replaced). Returns `out_dir`.

    Taught in: 01_sem_data.
    """
    out_dir = Path(out_dir).absolute()
    check_set_options(n_per_class, size, seed)
    train_good = n_per_class if train_good is None else train_good
    check_set_options(train_good, size, seed, count_name="train_good")
    _check_target(out_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".writing", dir=out_dir.parent)
    )
    staging.chmod(0o755)  # mkdtemp makes it private; the finished set is an ordinary folder
    try:
        train = generate_sem_set(train_good, size, seed, ("good",), progress, split="train")
        test = generate_sem_set(n_per_class, size, seed, CLASSES, progress, split="test")
        digits = max(3, len(str(max(n_per_class, train_good) - 1)))
        rows = []
        for split, samples in (("train", train), ("test", test)):
            counts: dict[str, int] = defaultdict(int)
            for sample in samples:
                rows.append(
                    _write_sample(staging, split, sample, f"{counts[sample.cls]:0{digits}d}")
                )
                counts[sample.cls] += 1
        write_text_atomic(staging / "manifest.csv", _manifest_text(rows))
        settings = dict(
            kind="sem", n_per_class=n_per_class, train_good=train_good, size=size, seed=seed
        )
        write_json_atomic(
            staging / MARKER_FILE, {"generator": "semnb", **settings, "classes": CLASSES}
        )
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

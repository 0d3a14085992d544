"""The image files a prediction runs over: a folder (recursively) or a CSV of paths.

Why not `load_dataset`: the images to predict on carry no labels and may number thousands;
only their paths are listed here, each image is read when its batch comes (`semnb.predictions`).

Taught in: 00_quickstart and 09_report.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from semnb.data.image_io import IMAGE_EXTENSIONS, is_mask_file
from semnb.errors import SemnbInputError

PATH_COLUMNS = ("path", "filename", "file", "image")


def list_images(source: str | Path) -> list[Path]:
    """Every image under folder `source` (sorted, `X_mask.*` left out), or the paths a CSV lists.

    A CSV's paths are taken from its first column named path/filename/file/image, relative to
    the CSV's folder; its order is kept.

    Taught in: 00_quickstart.
    """
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        paths = _csv_paths(source)
    elif source.is_dir():
        paths = sorted(p for p in source.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not is_mask_file(p))
    else:
        raise SemnbInputError(f"--images {source}", "is neither a folder nor a .csv file",
                              "pass the folder that holds the images, or a CSV with a `path` column")
    if not paths:
        raise SemnbInputError(f"--images {source}", "lists no image",
                              f"put images ({', '.join(IMAGE_EXTENSIONS)}) there, or list them in a CSV")
    return paths


def _csv_paths(csv_path: Path) -> list[Path]:
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise SemnbInputError(csv_path, f"cannot be read as CSV ({err})", "save it as comma-separated text") from err
    column = next((c for c in PATH_COLUMNS if c in table.columns), None)
    if column is None:
        raise SemnbInputError(csv_path, f"has no column named {' or '.join(PATH_COLUMNS)} (it has "
                                        f"{', '.join(map(str, table.columns)) or 'none'})",
                              "name the column of image paths `path`")
    return [(csv_path.parent / value).resolve() if not Path(value).is_absolute() else Path(value)
            for value in table[column] if value.strip()]

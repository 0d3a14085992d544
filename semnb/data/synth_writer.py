"""Write synthetic data sets to disk: one staged, atomic writer for every kind, and the SEM set.

Every kind (`sem` here, `tem` in synth_tem, `stm` in synth_stm) writes through `staged_set`:
its files go into a hidden folder beside `out_dir`, with `semnb_synth.json` (the kind and
how the set was made; it marks the folder as ours), and the finished folder is renamed onto
`out_dir` at the end. So an interrupted run never leaves half a set behind, a set made again
with fewer images keeps none of the old ones, and a folder that is not a semnb set of the
same kind (a user's own data) is refused, never written into.

The SEM set is in the MVTec-AD layout, so every loader and tool that reads MVTec reads it:
    train/good/000.png ...                defect-free training images
    test/<class>/000.png ...              test images of every class, good included
    ground_truth/<class>/000_mask.png     255 = defect, for the defect classes only
    manifest.csv                          one row per image (see MANIFEST_COLUMNS)
    semnb_synth.json                      how the set was made; marks the folder as ours

Taught in: 01_sem_data.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from semnb.data.synth_sem import (
    CLASSES,
    SemSample,
    check_set_options,
    generate_sem_image,
    generate_sem_set,
    sample_seed,
)
from semnb.errors import SemnbInputError
from semnb.io_utils import write_json_atomic

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
    progress: bool = False,
) -> Path:
    """Write `n_per_class` test images of every class and `train_good` good training images.

    `train_good` defaults to `n_per_class`. `out_dir` must be new, empty, or an earlier
    synthetic SEM set (which is then replaced whole); see `staged_set`. Returns `out_dir`.

    Taught in: 01_sem_data.
    """
    out_dir = Path(out_dir).absolute()
    check_set_options(n_per_class, size, seed)
    train_good = n_per_class if train_good is None else train_good
    check_set_options(train_good, size, seed, count_name="train_good")
    settings = dict(n_per_class=n_per_class, train_good=train_good, size=size, seed=seed, classes=CLASSES)
    with staged_set(out_dir, "sem", settings) as staging:
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
        (staging / "manifest.csv").write_text(_manifest_text(rows), encoding="utf-8")
    return out_dir


def write_unlabelled_sem(
    out_dir: str | os.PathLike,
    n_per_class: int = 8,
    size: int = 256,
    seed: int = 1,
    progress: bool = False,
) -> Path:
    """A batch of unlabelled SEM review images, as a tool drops them: `images/000.png ...`, classes mixed.

    Why: `semnb predict` is for images nobody labelled; this is such a batch to try it on. The
    truth stays beside it in `truth.csv` (path, class, mask), for scoring the predictions later,
    and `truth/` holds the masks. Use another seed than the labelled set's, so no image repeats.

    Taught in: 00_quickstart.
    """
    out_dir = Path(out_dir).absolute()
    check_set_options(n_per_class, size, seed)
    settings = dict(n_per_class=n_per_class, size=size, seed=seed, classes=CLASSES)
    with staged_set(out_dir, "sem-batch", settings) as staging:
        made = [(cls, index) for cls in CLASSES for index in range(n_per_class)]
        order = np.random.default_rng(seed).permutation(len(made))  # classes mixed, as a night's batch is
        digits = max(3, len(str(len(made) - 1)))
        rows = []
        for position in tqdm(range(len(made)), desc="synthetic SEM batch", disable=not progress):
            cls, index = made[order[position]]
            sample, stem = generate_sem_image(cls, size, sample_seed(seed, cls, index)), f"{position:0{digits}d}"
            _save_png(staging / "images" / f"{stem}.png", sample.image)
            mask = ""
            if sample.cls != "good":
                mask = f"truth/{stem}_mask.png"
                _save_png(staging / mask, sample.mask.astype(np.uint8) * 255)
            rows.append(f"images/{stem}.png,{sample.cls},{mask}")
        (staging / "truth.csv").write_text("path,class,mask\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return out_dir


@contextmanager
def staged_set(out_dir: str | os.PathLike, kind: str, settings: dict) -> Iterator[Path]:
    """Yield an empty staging folder for a set of `kind`; when the block succeeds, mark it and move it onto `out_dir`.

    Why: a set is used only whole, so it appears whole or not at all. `out_dir` must be new,
    empty, or an earlier semnb set of the same `kind`, which is then replaced whole (none of
    its files stay); anything else is refused before any work. The marker file gets
    `{"generator": "semnb", "kind": kind, **settings}`. If the block fails (or is
    interrupted), the staging folder is removed and `out_dir` is left as it was.

    Taught in: 01_sem_data.
    """
    out_dir = Path(out_dir).absolute()
    _check_target(out_dir, kind)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".writing", dir=out_dir.parent)
    )
    try:  # from here on the staging folder goes whatever happens (SIGTERM too: the CLI makes it SystemExit)
        staging.chmod(0o755)  # mkdtemp makes it private; the finished set is an ordinary folder
        yield staging
        write_json_atomic(staging / MARKER_FILE, {"generator": "semnb", "kind": kind, **settings})
        _move_into_place(staging, out_dir, kind)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_target(out_dir: Path, kind: str) -> None:
    """Refuse to write over anything that is not ours: a file, or a non-empty folder that is not a `kind` set."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SemnbInputError(
            str(out_dir), "is a file, not a folder", "pass a new or empty folder to --out"
        )
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    made = read_marker(out_dir)
    found = made.get("kind") if made is not None else None
    if not isinstance(found, str):
        why = f"its {MARKER_FILE} is not semnb's" if (out_dir / MARKER_FILE).exists() else f"it has no {MARKER_FILE}"
        raise SemnbInputError(
            str(out_dir),
            f"is not empty and is not a semnb synthetic set ({why})",
            "pass a new or empty folder to --out, or remove this one yourself",
        )
    if found != kind:
        raise SemnbInputError(
            str(out_dir),
            f"holds a semnb synthetic {found} set, not a {kind} set",
            f"pass a new or empty folder to --out, or remove this {found} set yourself",
        )


def read_marker(folder: str | Path) -> dict | None:
    """How the semnb synthetic set in `folder` was made (its marker: generator, kind, settings); None if it is not one.

    Taught in: 01_sem_data.
    """
    try:
        content = json.loads((Path(folder) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return content if isinstance(content, dict) and content.get("generator") == "semnb" else None


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


def _move_into_place(staging: Path, out_dir: Path, kind: str) -> None:
    """Rename the finished set onto `out_dir`; an earlier set there is moved aside first, then deleted."""
    _check_target(out_dir, kind)  # again: something may have been put there while the set was made
    if not (out_dir.is_dir() and any(out_dir.iterdir())):
        os.replace(staging, out_dir)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    try:
        os.replace(out_dir, retired)
        os.replace(staging, out_dir)
    except BaseException:
        if not out_dir.exists():
            os.replace(retired, out_dir)  # put the earlier set back rather than lose it
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)

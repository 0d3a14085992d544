"""`load_dataset`: read a folder of images in one of four layouts into an `ImageSet`.

Layouts:
- "mvtec": train/good/, test/<class>/, ground_truth/<class>/<stem>_mask.png (+ manifest.csv);
- "folders": one folder per class, optional X_mask.png beside X.ext (images lying directly
  in the folder are unlabelled); a mask may be any readable image type, its extension in any
  case (X_mask.PNG, X_mask.jpg), in every layout;
- "csv": a manifest with columns path, label[, mask][, split][, magnification], paths relative
  to the CSV's folder; other archives' column names are mapped with `path_column`,
  `label_column` (None = an unlabelled collection) and `magnification_column`, and
  `image_folder` names the folder their paths are relative to (e.g. emps: filename,doi with
  the images in images/);
- "carinthia": the Carinthia SEM defect CSV, `image_path;file_name;label`, labels 1-6.
"auto" tells them apart by what the folder holds. A CSV may list each image once only, and the
classes are the labels that have images.

Taught in: 01_sem_data.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd

from semnb.data.dataset import UNLABELLED, ImageSet
from semnb.data.image_io import (
    IMAGE_EXTENSIONS,
    MASK_SUFFIX,
    UNSUPPORTED_IMAGE_EXTENSIONS,
    check_mask_shape,
    image_shape,
    is_mask_file,
)
from semnb.errors import SemnbInputError

LAYOUTS = ("mvtec", "folders", "csv", "carinthia")
MANIFEST_NAME = "manifest.csv"  # optional per-image metadata beside an MVTec-layout set
CARINTHIA_COLUMNS = ("image_path", "file_name", "label")
CARINTHIA_CLASSES = ("1", "2", "3", "4", "5", "6")
CORE_COLUMNS = ("path", "class", "label", "mask", "split")
DEFAULT_NORMAL_CLASS = "good"

_LAYOUT_HELP = (
    "mvtec = train/<class>/ and test/<class>/ (+ ground_truth/<class>/X_mask.png); "
    "folders = one folder per class (+ X_mask.png beside X.ext); "
    "csv = a CSV with columns path,label[,mask] (or --path-column/--label-column); "
    "carinthia = a ';' CSV with columns image_path;file_name;label"
)


@dataclass
class _Entry:
    """One image found by a layout reader, before labels are numbered."""

    path: Path
    class_name: str | None
    mask_path: Path | None = None
    split: str = ""
    extra: dict = field(default_factory=dict)
    row: int | None = None  # the CSV row that lists it, for errors


@dataclass(frozen=True)
class _CsvColumns:
    """Which columns of a csv-layout manifest hold what, and where its image paths start."""

    path_column: str = "path"
    label_column: str | None = "label"
    magnification_column: str = "magnification"
    image_folder: Path | None = None

    def given(self) -> dict:
        """The options that differ from the defaults, by name."""
        default = _CsvColumns()
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }


_COLUMN_ROLES = {
    "path_column": "the image paths",
    "label_column": "the class labels",
    "magnification_column": "the magnifications",
}


class _BadFiles:
    """Raise a bad-file error, or with skip_bad record it in `skipped` and carry on."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.skipped: list[tuple[Path, str]] = []

    def report(self, error: SemnbInputError) -> None:
        if not self.skip_bad:
            raise error
        self.skipped.append((Path(error.what), error.problem))


def load_dataset(
    root: str | os.PathLike,
    layout: str = "auto",
    normal_class: str | None = DEFAULT_NORMAL_CLASS,
    skip_bad: bool = False,
    check: bool = True,
    label_names: dict | None = None,
    path_column: str = "path",
    label_column: str | None = "label",
    magnification_column: str = "magnification",
    image_folder: str | os.PathLike | None = None,
) -> ImageSet:
    """Load an image data set from `root` (a folder, or a CSV file for "csv"/"carinthia").

    Why one entry point: every method and the command line read data the same way, and every
    bad file fails here, naming the file, instead of deep inside a model. `check=True` reads
    each image and mask header now (cheap) so corrupt files and masks of the wrong size are
    found at load time; `skip_bad=True` leaves such files out and lists them in `.skipped`.
    `normal_class` names the defect-free class; when no class has that name the set simply
    has none (real review sets are often all defective), but a name close to a class's ("Good"
    for "good") is refused as a typo. `label_names` renames raw labels,
    e.g. {"1": "particle"} for the Carinthia codes.

    The column options let a "csv" manifest from another archive load as it is: `path_column`,
    `label_column` (None: every image unlabelled, label -1) and `magnification_column` name
    its columns (case does not matter; a default "label" falls back to "class", and the
    default magnification column is optional), and `image_folder` (relative to the CSV's
    folder) is where the paths start when not the CSV's own folder. A named column that is
    missing is one error listing the columns the CSV does have. "auto" uses them to
    recognise the manifest; other layouts refuse them rather than ignore them.

    Taught in: 01_sem_data.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise SemnbInputError(root, "does not exist", "check the data path")
    columns = _csv_columns(path_column, label_column, magnification_column, image_folder)
    if layout == "auto":
        layout = _auto_layout(root, columns)
    if layout not in LAYOUTS:
        raise SemnbInputError(
            "--layout", f"unknown layout {layout!r}", f"use auto or one of: {_LAYOUT_HELP}"
        )
    if layout in ("mvtec", "folders") and not root.is_dir():
        raise SemnbInputError(
            root, f"is a file, but layout {layout!r} reads a folder", "pass the data folder"
        )
    if layout != "csv" and columns.given():
        option = next(iter(columns.given()))
        raise SemnbInputError(
            option,
            f"only the csv layout reads it, but the data is in layout {layout!r}",
            f"pass a CSV manifest with layout csv, or leave {option} out",
        )
    bad = _BadFiles(skip_bad)
    entries = _read_csv(root, bad, columns) if layout == "csv" else _READERS[layout](root, bad)
    if check:
        entries = [entry for entry in entries if _headers_ok(entry, bad)]
    if not entries:
        raise SemnbInputError(
            root,
            f"holds no readable images for layout {layout!r}",
            f"put images in the layout: {_LAYOUT_HELP}",
        )
    return _image_set(root, layout, entries, normal_class, label_names or {}, bad.skipped)


def detect_layout(
    root: str | os.PathLike, path_column: str = "path", label_column: str | None = "label"
) -> str:
    """Which of `LAYOUTS` the folder (or CSV file) `root` is in.

    mvtec when train/ and test/ exist; carinthia or csv when a CSV in the folder has their
    header (for csv: `path_column` and `label_column`, as `load_dataset` takes them);
    folders when the folder or its subfolders hold images.

    Taught in: 01_sem_data.
    """
    root = Path(root)
    columns = _CsvColumns(path_column.strip().lower(), _lower(label_column))
    if root.is_file():
        kind = _csv_kind(root, columns) if root.suffix.lower() == ".csv" else None
        if kind is None:
            raise SemnbInputError(
                root,
                "is neither a folder nor a CSV with a known header",
                f"pass a data folder, or --layout with one of: {_LAYOUT_HELP}",
            )
        return kind
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "mvtec"
    kinds = {_csv_kind(path, columns) for path in _csv_files(root)}
    for kind in ("carinthia", "csv"):
        if kind in kinds:
            return kind
    if _has_images(root) or any(_has_images(folder) for folder in _subfolders(root)):
        return "folders"
    raise SemnbInputError(
        root,
        "matches no known data layout (no train/ and test/, no CSV manifest, no images)",
        f"arrange it as one of these, or pass --layout: {_LAYOUT_HELP}",
    )


def _auto_layout(root: Path, columns: _CsvColumns) -> str:
    """`detect_layout`, except that column options with one CSV that lacks those columns read it
    as csv: the options say a manifest is meant, and the csv reader's error names the missing
    column and lists the columns the CSV has (instead of a generic "no known layout")."""
    given = columns.given().keys() & {"path_column", "label_column"}
    if not given:
        return detect_layout(root, columns.path_column, columns.label_column)
    if root.is_dir() and not ((root / "train").is_dir() and (root / "test").is_dir()):
        csvs = _csv_files(root)
    else:
        csvs = [root] if root.is_file() and root.suffix.lower() == ".csv" else []
    if csvs and all(_csv_kind(path, columns) is None for path in csvs):
        if len(csvs) == 1:
            return "csv"
        raise SemnbInputError(
            root,
            f"holds {len(csvs)} CSVs ({', '.join(p.name for p in csvs)}) and none has the columns "
            f"{' and '.join(repr(getattr(columns, option)) for option in sorted(given))}",
            "pass the CSV file itself as the data path to see its columns",
        )
    return detect_layout(root, columns.path_column, columns.label_column)


# ---------------------------------------------------------------- layout readers


def _read_mvtec(root: Path, bad: _BadFiles) -> list[_Entry]:
    entries = []
    for split in ("train", "test"):
        class_folders = _subfolders(root / split)
        if not class_folders:
            raise SemnbInputError(
                root / split,
                "holds no class folders",
                "put images in train/good/ and test/<class>/ (MVTec-AD layout)",
            )
        for folder in class_folders:
            mask_folder = root / "ground_truth" / folder.name
            mask_names = _names_in(mask_folder)
            for path in _images_in(folder, bad):
                mask = _find_mask(mask_folder, mask_names, path.stem)
                entries.append(_Entry(path, folder.name, mask, split))
    _merge_manifest(root, entries)
    return entries


def _read_folders(root: Path, bad: _BadFiles) -> list[_Entry]:
    root_names = _names_in(root)
    entries = [
        _Entry(path, None, _mask_beside(path, root_names))
        for path in _images_in(root, bad, allow_empty=True)
    ]
    for folder in _subfolders(root):
        names = _names_in(folder)
        entries += [
            _Entry(path, folder.name, _mask_beside(path, names)) for path in _images_in(folder, bad)
        ]
    return entries


def _read_csv(root: Path, bad: _BadFiles, columns: _CsvColumns) -> list[_Entry]:
    csv_path = root if root.is_file() else _single_csv(root, "csv", columns)
    path_column, label_column = columns.path_column, columns.label_column
    table = _read_table(csv_path, sep=",", text_columns=(path_column, label_column))
    if label_column == "label" and "label" not in table.columns and "class" in table.columns:
        label_column = "class"
    _require_columns(csv_path, table, columns, label_column)
    magnification_column = columns.magnification_column
    # the chosen magnification column becomes meta["magnification"] (it replaces any other)
    used = {path_column, label_column} | ({"magnification"} - {magnification_column})
    extra_columns = [c for c in table.columns if c not in CORE_COLUMNS and c not in used]
    extra_names = {c: "magnification" if c == magnification_column else c for c in extra_columns}
    image_base = None if columns.image_folder is None else csv_path.parent / columns.image_folder
    image_hint = (
        ", or pass image_folder= (--image-folder) naming the folder the paths start in"
        if image_base is None
        else ""
    )
    entries = []
    for row_number, row in enumerate(table.to_dict("records"), start=2):
        path = _listed_file(csv_path, row_number, row[path_column], bad, image_base, image_hint)
        mask_text = row.get("mask", "").strip()
        mask = _listed_file(csv_path, row_number, mask_text, bad) if mask_text else None
        if path is None or (mask_text and mask is None):
            continue
        label = (row[label_column].strip() or None) if label_column else None
        extra = {name: row[c] for c, name in extra_names.items()}
        entries.append(_Entry(path, label, mask, row.get("split", "").strip(), extra, row_number))
    _refuse_duplicates(csv_path, entries)
    return entries


def _csv_columns(path_column, label_column, magnification_column, image_folder) -> _CsvColumns:
    """The column options, lower-cased as `_read_table` reads the header; an empty name refused."""
    for option, name in (
        ("path_column", path_column),
        ("magnification_column", magnification_column),
    ):
        if not isinstance(name, str) or not name.strip():
            raise SemnbInputError(
                option,
                f"must name a column, got {name!r}",
                f"pass the column's name, e.g. {option}='filename'",
            )
    if label_column is not None and (not isinstance(label_column, str) or not label_column.strip()):
        raise SemnbInputError(
            "label_column",
            f"must name a column or be None, got {label_column!r}",
            "pass the column's name, or None for an unlabelled collection",
        )
    return _CsvColumns(
        path_column.strip().lower(),
        _lower(label_column),
        magnification_column.strip().lower(),
        None if image_folder is None else Path(image_folder).expanduser(),
    )


def _require_columns(
    csv_path: Path, table: pd.DataFrame, columns: _CsvColumns, label_column: str | None
) -> None:
    """One error naming every missing column, the columns the CSV has, and the option to pass."""
    wanted = {"path_column": columns.path_column, "label_column": label_column}
    if columns.magnification_column != _CsvColumns.magnification_column:
        wanted["magnification_column"] = columns.magnification_column
    missing = {
        option: name for option, name in wanted.items() if name and name not in table.columns
    }
    if not missing:
        return
    options = " and ".join(
        f"{option}= (--{option.replace('_', '-')}) naming the column with {_COLUMN_ROLES[option]}"
        for option in missing
    )
    if "label_column" in missing:
        options += ", or label_column=None (--label-column '') for an unlabelled collection"
    raise SemnbInputError(
        csv_path,
        f"lacks the column{'s' if len(missing) > 1 else ''} "
        f"{' and '.join(map(repr, missing.values()))}; "
        f"its columns are {', '.join(map(repr, table.columns))}",
        f"pass {options}",
    )


def _read_carinthia(root: Path, bad: _BadFiles) -> list[_Entry]:
    csv_path = root if root.is_file() else _single_csv(root, "carinthia")
    table = _read_table(csv_path, sep=";")
    missing = [c for c in CARINTHIA_COLUMNS if c not in table.columns]
    if missing:
        raise SemnbInputError(
            csv_path,
            f"lacks the Carinthia columns {missing}",
            "use the header image_path;file_name;label",
        )
    base = csv_path.parent
    entries = []
    for row_number, row in enumerate(table.to_dict("records"), start=2):
        folder, name = _portable(row["image_path"]), _portable(row["file_name"])
        candidates = [base / folder / name, base / name, base / folder]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            bad.report(
                SemnbInputError(
                    candidates[0],
                    f"listed in {csv_path} (row {row_number}) but not found",
                    "fix image_path/file_name, relative to the CSV's folder",
                )
            )
            continue
        try:
            label = _carinthia_label(row["label"], csv_path, row_number)
        except SemnbInputError as error:
            bad.report(error)
            continue
        entries.append(_Entry(path, label, row=row_number))
    _refuse_duplicates(csv_path, entries)
    return entries


def _refuse_duplicates(csv_path: Path, entries: list[_Entry]) -> None:
    """One error for a CSV that lists one image file twice: it would be both a shot and a query
    (or carry two labels), which inflates every score without a word."""
    listed: dict[Path, list[_Entry]] = {}
    for entry in entries:
        listed.setdefault(entry.path.resolve(), []).append(entry)
    repeated = [same for same in listed.values() if len(same) > 1]
    if not repeated:
        return
    same = repeated[0]
    rows = ", ".join(str(entry.row) for entry in same)
    more = f"; {len(repeated) - 1} more file(s) repeated" if len(repeated) > 1 else ""
    raise SemnbInputError(
        csv_path,
        f"lists the image {same[0].path} {len(same)} times (rows {rows}){more}",
        "keep one row per image: delete the repeated rows (and settle on one label for the image)",
    )


_READERS = {
    "mvtec": _read_mvtec,
    "folders": _read_folders,
    "csv": _read_csv,
    "carinthia": _read_carinthia,
}


# ---------------------------------------------------------------- building the ImageSet


def _image_set(root, layout, entries, normal_class, label_names, skipped) -> ImageSet:
    """The classes are the labels that have images (a Carinthia CSV without code 4 has no class
    "4"): a class without images could not be drawn as a shot, nor scored."""
    rename = {str(raw): str(name) for raw, name in label_names.items()}
    names = [
        None if e.class_name is None else rename.get(e.class_name, e.class_name) for e in entries
    ]
    class_names = sorted({n for n in names if n is not None}, key=_natural_key)
    _refuse_misspelt_normal_class(root, normal_class, class_names)
    number = {name: k for k, name in enumerate(class_names)}
    labels = [UNLABELLED if name is None else number[name] for name in names]
    meta = pd.DataFrame(
        {
            "path": [str(e.path) for e in entries],
            "class": names,
            "label": labels,
            "mask": [None if e.mask_path is None else str(e.mask_path) for e in entries],
            "split": [e.split for e in entries],
        }
    )
    extras = pd.DataFrame([e.extra for e in entries])  # readers leave the core columns out
    if not extras.empty:
        meta = pd.concat([meta, extras], axis=1)
    return ImageSet(
        root=root,
        layout=layout,
        paths=[e.path for e in entries],
        labels=labels,
        class_names=class_names,
        mask_paths=[e.mask_path for e in entries],
        splits=[e.split for e in entries],
        meta=meta,
        normal_class=normal_class if normal_class in number else None,
        skipped=skipped,
    )


def _refuse_misspelt_normal_class(root: Path, normal_class: str | None, class_names: list) -> None:
    """A normal class that is no class but close to one ("Good" for "good") is a typo: left as it
    is, the normal images would count as defects and be blamed for lacking masks. A name far from
    every class still means a set without a normal class (review sets are often all defective);
    so does the default name."""
    if normal_class in (None, DEFAULT_NORMAL_CLASS) or normal_class in class_names:
        return
    folded = {name.casefold(): name for name in class_names}
    close = difflib.get_close_matches(normal_class.casefold(), folded, n=1, cutoff=0.75)
    if close:
        raise SemnbInputError(
            "--normal-class",
            f"{normal_class!r} is not a class of {root}; its classes are "
            f"{', '.join(map(repr, class_names))}",
            f"pass --normal-class {folded[close[0]]} (normal_class={folded[close[0]]!r}); "
            "class names are case-sensitive",
        )


def _headers_ok(entry: _Entry, bad: _BadFiles) -> bool:
    """Read the image (and mask) header now; report a bad file or a mask of the wrong size."""
    try:
        shape = image_shape(entry.path)
        if entry.mask_path is not None:
            check_mask_shape(entry.mask_path, image_shape(entry.mask_path), entry.path, shape)
    except SemnbInputError as error:
        bad.report(error)
        return False
    return True


def _merge_manifest(root: Path, entries: list[_Entry]) -> None:
    """Copy the extra columns of root/manifest.csv (magnification, background, ...) into each entry."""
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        return
    table = _read_table(manifest, sep=",")
    if "path" not in table.columns:
        return
    extra_columns = [c for c in table.columns if c not in CORE_COLUMNS]
    rows = {
        os.path.normpath(root / p): row
        for p, row in zip(table["path"], table[extra_columns].to_dict("records"))
    }
    for entry in entries:
        entry.extra.update(rows.get(os.path.normpath(entry.path), {}))


# ---------------------------------------------------------------- files and folders


def _subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _names_in(folder: Path) -> dict[str, str]:
    """The file names in `folder`, keyed lower-case (so X_mask.PNG is found as X_mask.png)."""
    return {p.name.lower(): p.name for p in folder.iterdir()} if folder.is_dir() else {}


def _images_in(folder: Path, bad: _BadFiles, allow_empty: bool = False) -> list[Path]:
    """Image files in `folder`, sorted; masks, hidden and non-image files left out.

    Image formats semnb cannot read are reported (not silently dropped); an empty class folder
    is reported too.
    """
    images = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        suffix = path.suffix.lower()
        if suffix in UNSUPPORTED_IMAGE_EXTENSIONS:
            bad.report(
                SemnbInputError(
                    path,
                    f"unsupported image type {suffix}",
                    f"convert it to one of {', '.join(IMAGE_EXTENSIONS)}",
                )
            )
        elif suffix in IMAGE_EXTENSIONS and not is_mask_file(path):
            images.append(path)
    if not images and not allow_empty:
        bad.report(
            SemnbInputError(
                folder,
                "holds no images",
                f"add images ({', '.join(IMAGE_EXTENSIONS)}) or remove the empty folder",
            )
        )
    return images


def _has_images(folder: Path) -> bool:
    return any(
        p.suffix.lower() in IMAGE_EXTENSIONS and not is_mask_file(p)
        for p in folder.iterdir()
        if p.is_file()
    )


def _find_mask(folder: Path, names: dict[str, str], stem: str) -> Path | None:
    """`<stem>_mask.<ext>` in any readable image type, extension in any case (PNG first)."""
    for suffix in IMAGE_EXTENSIONS:
        name = names.get(f"{stem}{MASK_SUFFIX}{suffix}".lower())
        if name is not None and name.startswith(f"{stem}{MASK_SUFFIX}"):
            return folder / name
    return None


def _mask_beside(path: Path, names: dict[str, str]) -> Path | None:
    return _find_mask(path.parent, names, path.stem)


def _csv_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() == ".csv" and not p.name.startswith(".")
    )


def _csv_kind(path: Path, columns: _CsvColumns = _CsvColumns()) -> str | None:
    """Which layout a CSV's header line announces: "carinthia", "csv", or None."""
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        header = handle.readline().strip().lower()
    if set(CARINTHIA_COLUMNS) <= _header_names(header, ";"):
        return "carinthia"
    if _is_manifest_header(_header_names(header, ","), columns):
        return "csv"
    if _is_manifest_header(_header_names(header, ";"), columns):
        raise _separator_error(path)
    return None


def _header_names(header: str, sep: str) -> set[str]:
    return {c.strip().strip('"') for c in header.split(sep)}


def _is_manifest_header(names: set[str], columns: _CsvColumns) -> bool:
    label = columns.label_column
    labels_found = label is None or label in names or (label == "label" and "class" in names)
    return columns.path_column in names and labels_found


def _separator_error(csv_path: Path) -> SemnbInputError:
    """A manifest saved with ';' (a spreadsheet's habit where ',' is the decimal mark)."""
    return SemnbInputError(
        csv_path,
        "separates its columns with ';', but a csv-layout manifest is read with ','",
        "save it with ',' between columns (only the Carinthia layout, "
        "image_path;file_name;label, uses ';')",
    )


def _single_csv(folder: Path, kind: str, columns: _CsvColumns = _CsvColumns()) -> Path:
    """The folder's one CSV of `kind`; for csv, else its only CSV of no known kind (so that
    reading it names the columns it lacks and lists those it has)."""
    kinds = {p: _csv_kind(p, columns) for p in _csv_files(folder)}
    found = [p for p, k in kinds.items() if k == kind]
    unknown = [p for p, k in kinds.items() if k is None]
    if not found and kind == "csv" and len(unknown) == 1:
        return unknown[0]
    if len(found) != 1:
        problem = (
            f"holds no {kind} CSV"
            if not found
            else f"holds {len(found)} {kind} CSVs ({', '.join(p.name for p in found)})"
        )
        raise SemnbInputError(folder, problem, "pass the CSV file itself as the data path")
    return found[0]


def _read_table(csv_path: Path, sep: str, text_columns: tuple = ()) -> pd.DataFrame:
    """A CSV with lower-case column names, read as text ("" where empty) so that labels such
    as "01" stay as written; extra columns (not `text_columns`) become numbers where they all are."""
    try:
        table = pd.read_csv(
            csv_path, sep=sep, encoding="utf-8-sig", dtype=str, keep_default_na=False
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise SemnbInputError(
            csv_path,
            f"cannot be read as a CSV ({' '.join(str(error).split())})",
            f"save it as UTF-8 text with '{sep}' between columns and as many on every row",
        ) from error
    table.columns = [str(c).strip().lower() for c in table.columns]
    if sep == "," and len(table.columns) == 1 and ";" in table.columns[0]:
        raise _separator_error(csv_path)
    for column in table.columns:
        if column not in CORE_COLUMNS + CARINTHIA_COLUMNS + tuple(text_columns):
            table[column] = _numbers_if_possible(table[column])
    return table


def _numbers_if_possible(column: pd.Series) -> pd.Series:
    filled = column != ""
    converted = pd.to_numeric(column.where(filled), errors="coerce")
    return converted if converted.notna().sum() == filled.sum() else column


_CSV_FOLDER = "the CSV's folder"


def _listed_file(
    csv_path: Path,
    row_number: int,
    relative: str,
    bad: _BadFiles,
    base: Path | None = None,
    hint: str = "",
) -> Path | None:
    """The file a CSV row lists, relative to `base` (default: the CSV's folder), or None if bad."""
    if not relative.strip():
        bad.report(
            SemnbInputError(
                csv_path,
                f"row {row_number} has an empty path",
                "fill in the path or delete the row",
            )
        )
        return None
    path = (base or csv_path.parent) / _portable(relative)
    if not path.is_file():
        bad.report(
            SemnbInputError(
                path,
                f"listed in {csv_path} (row {row_number}) but not found",
                f"fix the path, relative to {base or _CSV_FOLDER}{hint}",
            )
        )
        return None
    return path


def _carinthia_label(raw: str, csv_path: Path, row_number: int) -> str | None:
    """The class name for a Carinthia label ("3" or "3.0" -> "3"), None when empty; a code
    outside 1-6 is refused rather than made an extra class."""
    raw = raw.strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    codes = f"use one of the codes {', '.join(CARINTHIA_CLASSES)}, or leave it empty for unlabelled"
    if not value.is_integer():
        raise SemnbInputError(
            csv_path, f"row {row_number} has label {raw!r}, not an integer class code", codes
        )
    label = str(int(value))
    if label not in CARINTHIA_CLASSES:
        raise SemnbInputError(
            csv_path, f"row {row_number} has label {raw!r}, not a Carinthia class code", codes
        )
    return label


def _lower(name: str | None) -> str | None:
    return None if name is None else name.strip().lower()


def _portable(text: str) -> str:
    """A path written on Windows (backslashes) read the same on Linux."""
    return text.strip().replace("\\", "/")


def _natural_key(name: str) -> tuple:
    """Sort "2" before "10" and numbers before words."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)

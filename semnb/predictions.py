"""`semnb.predict(model, images, out_dir)`: a fitted model over thousands of images, to files.

What it writes in `out_dir`:
- `maps/NNNNNN_<name>.png`: the defect map (segment, stm) as a 16-bit PNG, value =
  round(clip(map / hi, 0, 1) * 65535) with (lo, hi) = the model's `map_range` (in run.json);
- `masks/NNNNNN_<name>.png`: the map at the threshold, 0 / 255;
- `predictions.parquet` and `predictions.csv`: one row per image (path, score, class and
  probabilities, cluster and distance, embedding in the parquet only, or the error that
  made an image unreadable), in the order the images were listed;
- `report.html`: counts, score histogram, the highest-scoring images with their maps.

Why it is built this way: images are read a batch at a time (`workers` processes decode
ahead), so memory stays flat in the number of images; batch k is always images
[k * batch_size, (k + 1) * batch_size) and its rows are written to `parts/` only after its
images' files, all atomically, so an interrupted run resumes at the first missing batch and
recomputes nothing that is done; and the same model on the same images gives the same bytes.

Taught in: 00_quickstart and 09_report.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from semnb.data.image_io import read_image
from semnb.data.listing import list_images
from semnb.errors import SemnbInputError
from semnb.fitted import FittedModel, ImagePrediction
from semnb.io_utils import (
    atomic_path,
    remove_leftover_temporaries,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

RUN_FILE = "run.json"
TABLE_FILE = "predictions.parquet"
CSV_FILE = "predictions.csv"
REPORT_FILE = "report.html"
PARTS, MAPS, MASKS = "parts", "maps", "masks"
PNG_LEVELS = 65535


def model_fingerprint(model: FittedModel) -> str:
    """SHA-256 of a model's settings and tensors: what says two runs used the same model."""
    digest = hashlib.sha256(json.dumps(model.settings(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.tensors().items()):
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def output_stem(index: int, path: Path) -> str:
    """`000012_wafer_3`: the position keeps names unique and sorted, the file name keeps them readable."""
    return f"{index:06d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(path).stem)[:80]}"


class _ReadImages(Dataset):
    """Item i: (i, the image as float32 [0, 1] or None, the reason it could not be read or None)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return index, read_image(self.paths[index]), None
        except SemnbInputError as err:
            return index, None, f"{err.problem}. Fix: {err.fix}"


def _unbatched(items):
    return items


@dataclass
class Predictions:
    """What `predict` wrote: the table, and each image's map and mask read from disk when asked.

    Taught in: 00_quickstart.
    """

    folder: Path

    @cached_property
    def run(self) -> dict:
        return json.loads((self.folder / RUN_FILE).read_text())

    @cached_property
    def table(self) -> pd.DataFrame:
        """One row per image, without the embeddings (an archive's would fill the memory; see `embeddings`)."""
        import pyarrow.parquet as pq

        columns = [name for name in pq.read_schema(self.folder / TABLE_FILE).names if name != "embedding"]
        return pd.read_parquet(self.folder / TABLE_FILE, columns=columns)

    def embeddings(self) -> np.ndarray:
        """The retrieval embeddings [N, D] float32 of the readable images, in table order (retrieval models)."""
        import pyarrow.parquet as pq

        values = pq.read_table(self.folder / TABLE_FILE, columns=["embedding"])["embedding"].drop_null()
        return np.asarray(values.to_pylist(), dtype=np.float32)

    @property
    def report(self) -> Path:
        return self.folder / REPORT_FILE

    def defect_map(self, row: int) -> np.ndarray | None:
        """The defect map of table row `row`, back in the model's units (None without a map)."""
        name = self.table["map_file"].iloc[row]
        if not isinstance(name, str):
            return None
        lo, hi = self.run["map_range"]
        levels = np.asarray(Image.open(self.folder / name), dtype=np.float64)
        return (lo + levels / PNG_LEVELS * (hi - lo)).astype(np.float32)

    def mask(self, row: int) -> np.ndarray | None:
        name = self.table["mask_file"].iloc[row]
        return None if not isinstance(name, str) else np.asarray(Image.open(self.folder / name)) > 0


def predict(model: FittedModel, images: str | Path | Sequence[str | Path], out_dir: str | Path,
            threshold: float | None = None, batch_size: int = 16, workers: int = 0, overwrite: bool = False,
            top_n: int = 12, progress: bool = False) -> Predictions:
    """Run `model` over `images` (a folder, a CSV of paths, or a list of files) into `out_dir`; resumable.

    `threshold` overrides the model's own (segment, stm). An `out_dir` that holds an unfinished
    run of the same model, images and settings is continued; one of another run is refused
    unless `overwrite`. `semnb.ray_engine.predict_with_ray` does the same on a Ray cluster,
    into the same files.

    Taught in: 00_quickstart.
    """
    job = start_run(model, images, out_dir, threshold, batch_size, overwrite)
    loader = DataLoader(_ReadImages(job.paths), batch_sampler=[job.batch(k) for k in job.pending],
                        num_workers=workers, collate_fn=_unbatched)
    said = set()
    for k, items in tqdm(zip(job.pending, loader), total=len(job.pending), desc="predict", disable=not progress):
        write_batch(model, job, k, items, said)
    return finish_run(job, top_n)


@dataclass(frozen=True)
class PredictJob:
    """One run in its folder: the images, the run record and the batches still to compute.

    Why one object: both engines (local here, Ray in `semnb.ray_engine`) compute the same fixed
    batches into the same files, so a run started by one can be resumed by the other.
    """

    paths: list[Path]
    out: Path
    run: dict
    pending: list[int]

    @property
    def n_batches(self) -> int:
        return -(-len(self.paths) // self.run["batch_size"])

    def batch(self, k: int) -> list[int]:
        """The positions of batch k's images: always [k * batch_size, (k + 1) * batch_size)."""
        size = self.run["batch_size"]
        return list(range(k * size, min((k + 1) * size, len(self.paths))))

    def part(self, k: int) -> Path:
        return self.out / PARTS / f"part-{k:06d}.parquet"


def start_run(model: FittedModel, images: str | Path | Sequence[str | Path], out_dir: str | Path,
              threshold: float | None, batch_size: int, overwrite: bool) -> PredictJob:
    """List the images, start or continue the run in `out_dir` (or refuse to mix two), find what is left."""
    paths = [Path(p) for p in images] if isinstance(images, (list, tuple)) else list_images(images)
    if batch_size < 1:
        raise SemnbInputError("--batch-size", f"got {batch_size}", "use 1 or more")
    out = Path(out_dir)
    run = _run_record(model, paths, threshold, batch_size)
    _prepare_folder(out, run, overwrite)
    job = PredictJob(paths, out, run, pending=[])
    return replace(job, pending=[k for k in range(job.n_batches) if not job.part(k).is_file()])


def read_batch(job: PredictJob, k: int) -> list[tuple]:
    """Batch k's images read in this process, as the local engine's reader processes give them."""
    reader = _ReadImages(job.paths)
    return [reader[i] for i in job.batch(k)]


def write_batch(model: FittedModel, job: PredictJob, k: int, items, said: set) -> None:
    """Predict batch k's images (`items` from `_ReadImages`), write their maps, then the batch's part, atomically.

    `said` holds the warnings this process has given already, so each is given once.
    """
    support_shapes = {tuple(s) for s in model.training.get("image_shapes", [])}
    rows = _predict_batch(model, items, job.paths, job.out, job.run, support_shapes, said)
    _write_table(pd.DataFrame(rows), job.part(k))


def finish_run(job: PredictJob, top_n: int) -> Predictions:
    """Assemble the parts (all there once every batch is done) into the table, the CSV and the report."""
    missing = [k for k in range(job.n_batches) if not job.part(k).is_file()]
    if missing:
        raise RuntimeError(f"{len(missing)} batches of {job.out} have no part (first: {missing[0]}): run again "
                           "to compute them")
    _join_parts([job.part(k) for k in range(job.n_batches)], job.out / TABLE_FILE, job.out / CSV_FILE)
    from semnb.predictions_report import inspection_report  # matplotlib: only once the work is done

    predictions = Predictions(job.out)
    write_text_atomic(job.out / REPORT_FILE, inspection_report(predictions, top_n))
    return predictions


def _join_parts(parts: Sequence[Path], table_path: Path, csv_path: Path) -> None:
    """The parts, in order, into one parquet file and one CSV (without embeddings), a part at a time.

    Why a part at a time: an archive's table (millions of rows with their embeddings) need never
    be in memory at once. Parts can differ in columns and types (a batch whose images were all
    unreadable has no embedding; a column of only nulls has no type), so each is first put on
    the schema of them all.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.unify_schemas([pq.read_schema(p) for p in parts], promote_options="permissive")
    with atomic_path(table_path) as table_tmp, atomic_path(csv_path) as csv_tmp, \
            pq.ParquetWriter(table_tmp, schema) as writer, open(csv_tmp, "w", encoding="utf-8", newline="") as csv:
        for i, path in enumerate(parts):
            part = _on_schema(pq.read_table(path), schema)
            writer.write_table(part)
            text_columns = [name for name in schema.names if name != "embedding"]
            part.select(text_columns).to_pandas().to_csv(csv, index=False, header=i == 0)


def _on_schema(part, schema):
    """`part` with every column of `schema`, in its order and types (a missing column: all null)."""
    import pyarrow as pa

    columns = [part[name] if name in part.column_names else pa.nulls(len(part), schema.field(name).type)
               for name in schema.names]
    return pa.Table.from_arrays(columns, schema=schema) if part.schema != schema else part


def _run_record(model: FittedModel, paths: Sequence[Path], threshold: float | None, batch_size: int) -> dict:
    settings = model.settings()
    return {
        "task": model.task,
        "model": model_fingerprint(model),
        "method": settings.get("method"),
        "backbone": settings.get("backbone"),
        "class_names": settings.get("class_names"),
        "threshold": float(threshold) if threshold is not None else settings.get("threshold"),
        "threshold_rule": "given with --threshold" if threshold is not None else settings.get("threshold_rule"),
        "map_range": settings.get("map_range"),
        "n_images": len(paths),
        "images": hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest(),
        "batch_size": batch_size,
    }


def _prepare_folder(out: Path, run: dict, overwrite: bool) -> None:
    """Start `out`, continue the same run there, or refuse to mix two runs."""
    record = out / RUN_FILE
    if out.exists() and any(out.iterdir()):
        same = record.is_file() and json.loads(record.read_text()) == run
        if not same and not overwrite:
            raise SemnbInputError(f"--out {out}", "holds other files or the predictions of another run (another "
                                                  "model, images, threshold or batch size)",
                                  "pass --overwrite to replace them, or choose another --out")
        if not same:
            shutil.rmtree(out)
    for folder in (out, out / PARTS, out / MAPS, out / MASKS):
        folder.mkdir(parents=True, exist_ok=True)
        remove_leftover_temporaries(folder)  # a killed run's half-written files: their batches are redone
    if not record.is_file():
        write_json_atomic(record, run)


def _predict_batch(model: FittedModel, items, paths, out: Path, run: dict, support_shapes: set, said: set) -> list[dict]:
    readable = [(i, image) for i, image, error in items if error is None]
    predictions = model.predict([image for _, image in readable]) if readable else []
    by_index = dict(zip((i for i, _ in readable), predictions))
    rows = []
    for i, image, error in items:
        if image is not None and support_shapes and image.shape not in support_shapes and "size" not in said:
            said.add("size")
            warnings.warn(f"{paths[i]} is {image.shape[1]}x{image.shape[0]} px, not a size the model was fit on "
                          f"({', '.join(f'{w}x{h}' for h, w in sorted(support_shapes))}): images are resized to the "
                          "model's input as the support was, and maps come back at each image's own size",
                          stacklevel=2)
        rows.append(_row(i, paths[i], error, by_index.get(i), out, run))
    return rows


def _row(i: int, path: Path, error: str | None, prediction: ImagePrediction | None, out: Path, run: dict) -> dict:
    row = {"index": i, "path": str(path), "error": error, "score": np.nan, "label": None, "cluster": -1,
           "distance": np.nan, "defective": None, "defect_fraction": np.nan, "map_file": None, "mask_file": None}
    if prediction is None:
        return row
    row.update(score=_float(prediction.score), label=prediction.label, distance=_float(prediction.distance),
               cluster=-1 if prediction.cluster is None else int(prediction.cluster))
    for name, p in (prediction.probabilities or {}).items():
        row[f"p_{name}"] = float(p)
    if prediction.embedding is not None:
        row["embedding"] = np.asarray(prediction.embedding, np.float32).tolist()
    if prediction.defect_map is not None:
        row.update(_write_maps(i, path, prediction.defect_map, out, run))
    return row


def _float(value) -> float:
    return np.nan if value is None else float(value)


def _write_maps(i: int, path: Path, defect_map: np.ndarray, out: Path, run: dict) -> dict:
    """The map as a 16-bit PNG in the model's range, and its mask at the threshold."""
    lo, hi = run["map_range"]
    levels = np.round(np.clip((defect_map - lo) / max(hi - lo, 1e-12), 0, 1) * PNG_LEVELS).astype(np.uint16)
    mask = defect_map >= run["threshold"]
    stem = output_stem(i, path)
    map_name, mask_name = f"{MAPS}/{stem}.png", f"{MASKS}/{stem}.png"
    write_bytes_atomic(out / map_name, _png(levels))
    write_bytes_atomic(out / mask_name, _png(mask.astype(np.uint8) * 255))
    return {"map_file": map_name, "mask_file": mask_name, "defective": bool(mask.any()),
            "defect_fraction": float(mask.mean())}


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)  # 3x faster than the default, ~same size
    return buffer.getvalue()


def _write_table(table: pd.DataFrame, path: Path) -> None:
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    write_bytes_atomic(path, buffer.getvalue())


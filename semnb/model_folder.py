"""A fitted model on disk: `weights.safetensors` + `config.json`, a folder anyone can inspect.

Why this form: safetensors holds only named tensors (no code, nothing executed on load, unlike
pickle), and `config.json` says in plain text what the model is: task, method, backbone and the
weights really loaded, image size, precision, class names, normal class, threshold and how it
was chosen, the semnb version and a summary of the training data (images per class and a hash
of every file). Loading checks the format version, the weights' hash and (in the model's
`restore`) that the backbone loads the same weights it was fit on.

Taught in: 00_quickstart.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from semnb.errors import SemnbInputError
from semnb.fitted import FittedModel
from semnb.io_utils import file_sha256

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
MODEL_CLASSES = {  # task -> (module, class): imported only when a model of that task is loaded
    "segment": ("semnb.fewshot.model", "SegmentModel"),
    "classify": ("semnb.fewshot.model", "ClassifyModel"),
    "cluster": ("semnb.clustering.model", "ClusterModel"),
    "retrieve": ("semnb.retrieval.model", "RetrievalModel"),
    "stm": ("semnb.stm.model", "StmModel"),
}


def semnb_version() -> str:
    try:
        return version("semnb")
    except PackageNotFoundError:
        return "unknown"


def save_model(model: FittedModel, folder: str | Path, training: Mapping | None = None,
               overwrite: bool = False) -> Path:
    """Write `model` to `folder` (staged beside it and renamed, so a crash never leaves half a model).

    Taught in: 00_quickstart.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise SemnbInputError(f"--out {folder}", "already exists", "choose a new folder, or pass --overwrite")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.tensors().items()}
        save_file(tensors, staging / WEIGHTS_FILE)
        config = {
            "format_version": FORMAT_VERSION,
            "semnb_version": semnb_version(),
            "task": model.task,
            "settings": model.settings(),
            "weights_file": {"name": WEIGHTS_FILE, "sha256": file_sha256(staging / WEIGHTS_FILE),
                             "tensors": {name: list(t.shape) for name, t in tensors.items()}},
            "training": dict(training or {}),
        }
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=False) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def read_config(folder: str | Path) -> dict:
    """The model folder's config.json, checked: present, readable, a format this semnb reads.

    Taught in: 00_quickstart.
    """
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise SemnbInputError(folder, f"has no {CONFIG_FILE}, so it is not a semnb model folder",
                              "pass the folder `semnb fit ... --out` wrote")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SemnbInputError(path, f"cannot be read ({err})", "fit the model again, or restore the file") from err
    found = config.get("format_version")
    if found != FORMAT_VERSION:
        raise SemnbInputError(folder, f"is model format {found!r} (written by semnb {config.get('semnb_version')}); "
                                      f"this semnb {semnb_version()} reads format {FORMAT_VERSION}",
                              f"fit the model again with this semnb, or install semnb {config.get('semnb_version')}")
    if config.get("task") not in MODEL_CLASSES:
        raise SemnbInputError(path, f"names an unknown task {config.get('task')!r}",
                              f"use a model of one of {', '.join(MODEL_CLASSES)}")
    return config


def load_model(folder: str | Path, device: str = "auto", precision: str | None = None) -> FittedModel:
    """The model saved in `folder`, on `device` (its saved precision unless `precision` is given).

    Taught in: 00_quickstart.
    """
    folder = Path(folder)
    config = read_config(folder)
    weights = folder / config.get("weights_file", {}).get("name", WEIGHTS_FILE)
    if not weights.is_file():
        raise SemnbInputError(folder, f"has no {weights.name}", "copy the whole model folder, or fit it again")
    if file_sha256(weights) != config["weights_file"].get("sha256"):
        raise SemnbInputError(weights, "does not match the hash in config.json (changed or truncated)",
                              "copy the model folder again, or fit it again")
    tensors: dict[str, torch.Tensor] = load_file(weights)
    module, name = MODEL_CLASSES[config["task"]]
    model = getattr(import_module(module), name).restore(config["settings"], tensors, device=device,
                                                         precision=precision)
    model.training = config.get("training", {})
    return model

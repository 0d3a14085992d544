"""`semnb.fit(task, data, **options)`: fit a method on a user's images, ready to save and predict.

Why here and not in each method package: turning a folder of labelled images into the arrays
a method fits on, and recording what it was fit on (images per class, a hash of every file),
is the same for every task. Each task's fit function lives in its package's `model.py` and
takes arrays:

| task       | function                               | what `data` must hold                                  |
|------------|----------------------------------------|--------------------------------------------------------|
| `segment`  | `semnb.fewshot.model.fit_segment`      | defect images with masks (and defect-free ones)        |
| `classify` | `semnb.fewshot.model.fit_classify`     | two classes or more                                     |
| `cluster`  | `semnb.clustering.model.fit_cluster`   | unlabelled images (labels are ignored)                  |
| `retrieve` | `semnb.retrieval.model.fit_retrieve`   | images, labelled or not (the labelled ones guide it)    |
| `stm`      | `semnb.stm.model.fit_stm`              | scans X.npy with masks X_mask.npy (`load_scans`)        |

Taught in: 00_quickstart.
"""
from __future__ import annotations

from importlib import import_module
from pathlib import Path

import numpy as np

from semnb.data import ImageSet, load_dataset
from semnb.data.scans import ScanSet, load_scans
from semnb.errors import SemnbInputError
from semnb.fitted import FittedModel
from semnb.io_utils import file_sha256
from semnb.model_folder import load_model

FIT_FUNCTIONS = {
    "segment": ("semnb.fewshot.model", "fit_segment"),
    "classify": ("semnb.fewshot.model", "fit_classify"),
    "cluster": ("semnb.clustering.model", "fit_cluster"),
    "retrieve": ("semnb.retrieval.model", "fit_retrieve"),
    "stm": ("semnb.stm.model", "fit_stm"),
}

__all__ = ["fit", "load_model", "training_summary"]


def fit(task: str, data: ImageSet | ScanSet | str | Path, **options) -> FittedModel:
    """Fit `task`'s method on every image of `data` (they are the support); `options` go to its fit function.

    `data` is a loaded `ImageSet` (`semnb.data.load_dataset`), `ScanSet` (`load_scans`, for stm)
    or a folder, loaded with the default layout detection.

    Taught in: 00_quickstart.
    """
    if task not in FIT_FUNCTIONS:
        raise SemnbInputError("task", f"unknown task {task!r}", f"use one of {', '.join(FIT_FUNCTIONS)}")
    if isinstance(data, (str, Path)):
        data = load_scans(data) if task == "stm" else load_dataset(data)
    module, name = FIT_FUNCTIONS[task]
    fit_function = getattr(import_module(module), name)
    if task == "stm":
        pixels = [s.raw for s in data]
        model = fit_function(pixels, [s.mask for s in data], **options)
    else:
        arrays = _arrays(task, data)
        pixels = arrays["pixels"]
        model = fit_function(**arrays, **options)
    model.training = training_summary(data, pixels)
    return model


def _arrays(task: str, images: ImageSet) -> dict:
    """The keyword arrays `task`'s fit function takes, read from `images` at their own size."""
    if len(images) == 0:
        raise SemnbInputError(str(images.root), "holds no image", "point at a folder of images")
    pixels = [images.image(i) for i in range(len(images))]
    if task == "cluster":
        return {"pixels": pixels}
    if task == "retrieve":
        return {"pixels": pixels, "labels": np.asarray(images.labels), "class_names": list(images.class_names),
                "names": [_relative(p, images.root) for p in images.paths]}
    masks = [images.mask(i) for i in range(len(images))]
    if task == "segment":
        from semnb.fewshot.episodes import require_masks

        require_masks(images.mask_paths, images.is_normal, images.paths)
        masks = [m if m is not None else np.zeros(p.shape, bool) for m, p in zip(masks, pixels)]
        return {"pixels": pixels, "masks": masks, "is_normal": np.asarray(images.is_normal)}
    classes = sorted({int(label) for label in images.labels if label >= 0})
    if len(classes) < 2:
        found = "no labelled image (a flat folder has no classes)" if not classes else \
            f"one class only ({images.class_names[classes[0]]})"
        raise SemnbInputError(str(images.root), f"holds {found}",
                              "classification needs two classes or more: put the images in one folder per class "
                              "(the defect-free ones too, e.g. good/)")
    has_all_masks = all(m is not None for m, normal in zip(masks, images.is_normal) if not normal)
    return {"pixels": pixels, "labels": np.asarray(images.labels), "class_names": list(images.class_names),
            "normal_class": images.normal_class, "masks": masks if has_all_masks else None}


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def training_summary(data: ImageSet | ScanSet, pixels) -> dict:
    """What a model was fit on, for its config.json: the source, images per class, their sizes, every file's hash.

    Taught in: 00_quickstart.
    """
    if isinstance(data, ScanSet):
        files = [s.path for s in data]
        per_class = {"scans": len(data)}
        root = Path(data.source)
    else:
        files, root = list(data.paths), Path(data.root)
        names = [data.class_names[label] if label >= 0 else "(unlabelled)" for label in data.labels]
        per_class = {name: names.count(name) for name in dict.fromkeys(names)}
    return {"source": str(root), "n_images": len(files), "per_class": per_class,
            "image_shapes": [list(shape) for shape in sorted({np.shape(p) for p in pixels})],
            "files": [{"path": _relative(p, root), "sha256": file_sha256(p)} for p in files]}


"""Data for semnb: read image sets in four layouts, preprocess SEM images, synthetic SEM data.

Taught in: 01_sem_data.
"""

import importlib

from semnb.data.dataset import ImageSet
from semnb.data.image_io import IMAGE_EXTENSIONS, image_shape, read_image, read_mask
from semnb.data.loaders import LAYOUTS, detect_layout, load_dataset
from semnb.data.preprocess import (
    crop_border,
    detect_banner,
    normalize_intensity,
    preprocess,
    resize,
)
from semnb.data.scans import LabelledScan, ScanSet, load_scans

__all__ = [
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "ImageSet",
    "LabelledScan",
    "crop_border",
    "detect_banner",
    "detect_layout",
    "image_shape",
    "load_dataset",
    "load_scans",
    "ScanSet",
    "normalize_intensity",
    "preprocess",
    "read_image",
    "read_mask",
    "resize",
]

# The synthetic-data generator pulls in scipy and tqdm; import it on first use only, so that
# reading images stays light. `from semnb.data import generate_sem_image` works as usual.
_SYNTHETIC = {
    "CLASSES": "semnb.data.synth_sem",
    "generate_sem_image": "semnb.data.synth_sem",
    "write_sem_dataset": "semnb.data.synth_writer",
}


def __getattr__(name: str):
    if name not in _SYNTHETIC:
        raise AttributeError(f"module 'semnb.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_SYNTHETIC[name]), name)

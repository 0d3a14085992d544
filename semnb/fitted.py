"""What every fitted model shares: the interface `fit`, `save`, `load_model` and `predict` rely on.

Why one interface: a user fits a method on a few labelled images, saves it, and applies it to
thousands of unlabelled ones. The model folder (`semnb.model_folder`) and the streaming
predictor (`semnb.predictions`) do the same for every task, so each method only says how to fit,
what its state is (tensors + JSON-able settings, never pickle) and how to predict a batch.

Taught in: 00_quickstart (fit -> save -> predict) and 09_report (the daily inspection report).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import numpy as np
import torch

from semnb.errors import SemnbInputError


@dataclass
class ImagePrediction:
    """What a model says about one image; fields a task does not produce stay None.

    score: the image score (segment, stm: defect score, higher = more defective; classify: the
        predicted class's probability; cluster: distance to the centroid; retrieve: None).
    defect_map: float32 [H, W] at the image's own size, in the model's `map_range` (segment, stm).
    label: the predicted class (classify) or cluster name (cluster).
    probabilities: class -> probability (classify).
    cluster, distance: the nearest centroid's index and the distance to it (cluster).
    embedding: the retrieval embedding (retrieve), float32.

    Taught in: 00_quickstart.
    """

    score: float | None = None
    defect_map: np.ndarray | None = None
    label: str | None = None
    probabilities: dict[str, float] | None = None
    cluster: int | None = None
    distance: float | None = None
    embedding: np.ndarray | None = None


class FittedModel:
    """Base class of every task's fitted model.

    Subclasses set `task` and implement `settings`, `tensors`, `restore` and `predict`:
    - `settings()`: JSON-able dict with at least `method`, `image_size`, `precision` and, when
      a backbone is used, `backbone` and `backbone_weights` (what `load_backbone` really
      loaded); segment/stm also `threshold`, `threshold_rule` and `map_range` (lo, hi).
    - `tensors()`: the learned state as named CPU tensors (written as safetensors).
    - `restore(settings, tensors, device, precision)`: the model back, ready to predict.
    - `predict(pixels)`: one `ImagePrediction` per image of a batch, each as `semnb.data.read_image`
      reads it (gray float32 [0, 1], any size; an STM scan's heights stretched to [0, 1], as
      `load_scans` reads them for fitting).

    Taught in: 00_quickstart.
    """

    task: ClassVar[str]
    training: Mapping = MappingProxyType({})  # what it was fit on: set by semnb.fit and load_model, saved in config.json

    def settings(self) -> dict:
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def restore(cls, settings: Mapping, tensors: Mapping[str, torch.Tensor], device: str = "auto",
                precision: str | None = None) -> FittedModel:
        raise NotImplementedError

    def predict(self, pixels: Sequence[np.ndarray]) -> list[ImagePrediction]:
        raise NotImplementedError

    @property
    def threshold(self) -> float | None:
        return self.settings().get("threshold")

    def save(self, folder, overwrite: bool = False):
        """Write this model to `folder` (`semnb.model_folder`); `semnb.load_model(folder)` reads it back.

        Taught in: 00_quickstart.
        """
        from semnb.model_folder import save_model  # the folder format imports this module

        return save_model(self, folder, self.training, overwrite=overwrite)


def check_backbone_weights(loaded_weights: str, settings: Mapping, where: str) -> None:
    """Refuse to predict with a backbone whose weights differ from those the model was fit on.

    Why: a head trained on one backbone's features gives confident nonsense on another's.

    Taught in: 00_quickstart.
    """
    expected = settings.get("backbone_weights")
    if expected is not None and loaded_weights != expected:
        raise SemnbInputError(where, f"was fit on backbone {settings.get('backbone')} with weights {expected!r}, "
                                     f"but this machine loads {loaded_weights!r}",
                              "load the same weights (same checkpoint file or pretrained tag), or fit the model again "
                              "on this backbone")

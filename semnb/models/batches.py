"""Images -> the resized batches a backbone encodes, decoded and resized in worker processes.

Why: on a GPU the network is fast enough that reading and resizing on the main process
leaves it idle; a torch `DataLoader` with `workers` processes prepares the next batches
while the GPU encodes this one, and pinned memory makes the copy to the GPU asynchronous.
On the CPU the default `workers=0` does the same work in the main process, in the same order.

Items are in-memory images (arrays) or image files (read with `semnb.data.read_image`, so
files never have to be loaded all at once).

Taught in: 03_vv_attention.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from semnb.data.image_io import read_image
from semnb.errors import SemnbInputError
from semnb.models.pixels import as_gray_unit, resize_gray

Source = Sequence[np.ndarray | str | os.PathLike] | np.ndarray


class ResizedImages(Dataset):
    """Item i: image i as a float32 gray tensor [1, size, size] (what the feature cache hashes).

    Taught in: 03_vv_attention.
    """

    def __init__(self, source: Source, size: int):
        if len(source) == 0:
            raise SemnbInputError("images", "is empty", "pass at least one image")
        self.source = source
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self.source[index]
        image = read_image(item) if isinstance(item, (str, os.PathLike)) else as_gray_unit(item, index)
        return resize_gray([image], self.size)[0]


def resized_batches(source: Source, size: int, batch_size: int, workers: int = 0,
                    pin_memory: bool = False) -> DataLoader:
    """Batches [B, 1, size, size] of `source` in order; `workers` processes decode and resize ahead.

    Taught in: 03_vv_attention.
    """
    if batch_size < 1:
        raise SemnbInputError("--batch-size", f"got {batch_size}", "use 1 or more")
    if workers < 0:
        raise SemnbInputError("--workers", f"got {workers}", "use 0 (the main process) or more")
    return DataLoader(ResizedImages(source, size), batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=False)

"""`ImageSet`: the one in-memory form of a data set that every semnb method reads.

It holds paths, labels and metadata only; pixels are read from disk when asked for, so a
set of 10,000 images costs a few megabytes, not gigabytes.

Taught in: 01_sem_data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from semnb.data.image_io import image_shape, read_image, read_mask
from semnb.data.preprocess import resize
from semnb.errors import SemnbInputError

UNLABELLED = -1


@dataclass(repr=False)
class ImageSet:
    """Images of one data set with their labels, masks, splits and metadata, read lazily.

    `labels[i]` indexes `class_names` (-1 = unlabelled); `mask_paths[i]` is None where an
    image has no mask file; `splits[i]` is "train", "test" or ""; `meta` has one row per
    image (path, class, label, mask, split and any extra manifest columns); `skipped` lists
    the files `load_dataset(skip_bad=True)` left out, with the reason.

    Taught in: 01_sem_data.
    """

    root: Path
    layout: str
    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    mask_paths: list[Path | None]
    splits: list[str]
    meta: pd.DataFrame
    normal_class: str | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.paths)
        if not (
            len(self.labels) == len(self.mask_paths) == len(self.splits) == len(self.meta) == n
        ):
            raise ValueError("ImageSet fields must all have one entry per image")

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}: {count}" for name, count in self.class_counts().items())
        return (
            f"ImageSet({len(self)} images, layout={self.layout!r}, root='{self.root}', "
            f"classes {{{counts}}}, normal_class={self.normal_class!r}, "
            f"masks={sum(p is not None for p in self.mask_paths)}, skipped={len(self.skipped)})"
        )

    def image(self, i: int, size: int | tuple[int, int] | None = None) -> np.ndarray:
        """Image `i` as float32 gray HxW in [0, 1], read from disk now; resized if `size` is given.

        Taught in: 01_sem_data.
        """
        img = read_image(self.paths[i])
        return img if size is None else resize(img, size, method="bicubic")

    def mask(self, i: int, size: int | tuple[int, int] | None = None) -> np.ndarray | None:
        """Defect mask of image `i` as bool HxW (nearest-neighbour resize), or None if unknown.

        An image of the normal class without a mask file is known to be defect-free and gets
        an all-False mask (as MVTec-AD stores no masks for good images); any other image
        without a mask file gets None.

        Taught in: 01_sem_data.
        """
        mask_path = self.mask_paths[i]
        if mask_path is not None:
            label = self.labels[i]
            defect_class = self.class_names[label] if label >= 0 else None
            mask = read_mask(
                mask_path, shape=image_shape(self.paths[i], verify=False), image_path=self.paths[i],
                defect_class=None if defect_class == self.normal_class else defect_class,
            )
        elif self.normal_class is not None and self.labels[i] == self.class_names.index(
            self.normal_class
        ):
            mask = np.zeros(image_shape(self.paths[i], verify=False), dtype=bool)
        else:
            return None
        return mask if size is None else resize(mask, size, method="nearest")

    def images(self, indices=None, size: int | tuple[int, int] | None = None) -> np.ndarray:
        """Stack images (all, or `indices`) into float32 NxHxW; give `size` when sizes differ.

        Taught in: 01_sem_data.
        """
        indices = range(len(self)) if indices is None else self._positions(indices)
        stack = [self.image(i, size) for i in indices]
        shapes = {img.shape for img in stack}
        if len(shapes) > 1:
            raise SemnbInputError(
                "size",
                f"images under {self.root} have {len(shapes)} different sizes",
                "pass size=... to resize them to one size",
            )
        return np.stack(stack) if stack else np.zeros((0, 0, 0), dtype=np.float32)

    def subset(self, indices) -> ImageSet:
        """A new ImageSet of the images at `indices` (ints or a bool array), order kept as given.

        Taught in: 01_sem_data.
        """
        positions = self._positions(indices)
        return ImageSet(
            root=self.root,
            layout=self.layout,
            paths=[self.paths[i] for i in positions],
            labels=self.labels[positions],
            class_names=list(self.class_names),
            mask_paths=[self.mask_paths[i] for i in positions],
            splits=[self.splits[i] for i in positions],
            meta=self.meta.iloc[positions].reset_index(drop=True),
            normal_class=self.normal_class,
            skipped=list(self.skipped),
        )

    @property
    def is_normal(self) -> np.ndarray:
        """Bool per image: True where the label is the normal (defect-free) class."""
        if self.normal_class is None:
            return np.zeros(len(self), dtype=bool)
        return self.labels == self.class_names.index(self.normal_class)

    @property
    def has_masks(self) -> bool:
        """True when at least one image has a mask file."""
        return any(p is not None for p in self.mask_paths)

    def class_counts(self) -> pd.Series:
        """Images per class, in `class_names` order, plus "(unlabelled)" when some have no label."""
        counts = np.bincount(self.labels[self.labels >= 0], minlength=len(self.class_names))
        series = pd.Series(counts, index=list(self.class_names), name="images")
        n_unlabelled = int(np.sum(self.labels == UNLABELLED))
        if n_unlabelled:
            series["(unlabelled)"] = n_unlabelled
        return series

    def _positions(self, indices) -> np.ndarray:
        positions = np.asarray(indices)
        if positions.dtype == np.bool_:
            if positions.shape != (len(self),):
                raise SemnbInputError(
                    "indices",
                    f"bool mask of shape {positions.shape} for {len(self)} images",
                    "pass one bool per image",
                )
            return np.flatnonzero(positions)
        return positions.astype(np.int64).reshape(-1)

"""N-way K-shot episodes: which images teach a few-shot method (support) and which it is scored on (queries).

An episode draws K labelled images of every class (the support, K = 1, 2, 5 or 10 in the
paper) with a seed; every other labelled image is a query. Each class's images are put in
one seeded random order and the support is the first K of it, so for one seed the 1-shot
support is inside the 2-shot support, and so on: a k-shot curve adds examples instead of
drawing new ones. Unlabelled images (label -1) take no part.

Taught in: 04_segmentation and 05_classification.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from semnb.errors import SemnbInputError

PAPER_SHOTS = (1, 2, 5, 10)
_EPISODE_STREAM = 104  # keeps episode draws apart from other seeded draws that use the same seed
_SUBSAMPLE_STREAM = 105


@dataclass(frozen=True)
class Episode:
    """One draw: `support` image indices (grouped by class, in class order) with their labels, and the `queries`.

    Taught in: 04_segmentation.
    """

    seed: int
    shots: int
    classes: tuple[int, ...]
    support: np.ndarray
    support_labels: np.ndarray
    queries: np.ndarray

    @property
    def ways(self) -> int:
        return len(self.classes)


def _class_name(class_names: Sequence[str] | None, cls: int) -> str:
    return repr(class_names[cls]) if class_names is not None else str(cls)


def sample_episode(labels: Sequence[int] | np.ndarray, shots: int, seed: int,
                   class_names: Sequence[str] | None = None) -> Episode:
    """Draw K support images per class with `seed`; all other labelled images are queries.

    Every class of `class_names` (default: every label present) must have at least `shots`
    images; a class with exactly `shots` images has no query left (allowed, and visible in
    the episode). Raises SemnbInputError for a class without images, too few images or
    no query at all.

    Taught in: 04_segmentation and 05_classification.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if int(shots) != shots or shots < 1:
        raise SemnbInputError("--shots", f"got {shots}", "use a whole number of labelled images per class, e.g. 1, 2, 5 or 10")
    shots = int(shots)
    classes = range(len(class_names)) if class_names is not None else np.unique(labels[labels >= 0])
    rng = np.random.default_rng([int(seed), _EPISODE_STREAM])
    support, support_labels = [], []
    for cls in classes:
        members = np.flatnonzero(labels == cls)
        if len(members) == 0:
            raise SemnbInputError(f"class {_class_name(class_names, cls)}", "has no images",
                                  "remove its empty folder or add images of it")
        if len(members) < shots:
            raise SemnbInputError("--shots", f"is {shots} but class {_class_name(class_names, cls)} has only "
                                  f"{len(members)} image(s)", f"use --shots {len(members)} or fewer, or add images")
        chosen = np.sort(rng.permutation(members)[:shots])
        support.append(chosen)
        support_labels.append(np.full(shots, cls, dtype=np.int64))
    if not support:
        raise SemnbInputError("labels", "no labelled image", "load a data set with class labels")
    support_all = np.concatenate(support)
    taken = np.zeros(len(labels), dtype=bool)
    taken[support_all] = True
    queries = np.flatnonzero(~taken & (labels >= 0))
    if len(queries) == 0:
        raise SemnbInputError("--shots", f"is {shots}, which leaves no image to score",
                              "use fewer shots or add images")
    return Episode(seed=int(seed), shots=shots, classes=tuple(int(c) for c in classes), support=support_all,
                   support_labels=np.concatenate(support_labels), queries=queries)


def halves(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fold 0 or 1 for each of `rows`, in a seeded random order (halves differ by one at most): the 2-fold
    cross-fits on a support (the saved segmenter's threshold, semnb's calibrations).

    Taught in: 04_segmentation.
    """
    fold = np.empty(len(rows), dtype=int)
    fold[rng.permutation(len(rows))] = np.arange(len(rows)) % 2
    return fold


def subsample_per_class(labels: Sequence[int] | np.ndarray, max_per_class: int | None) -> np.ndarray:
    """Indices of at most `max_per_class` images of each class (a fixed seeded draw, sorted), to keep runs small.

    The draw does not depend on the episode seeds, so every seed sees the same images.
    Unlabelled images are dropped.

    Taught in: 02_prompts (and, through `prepare_fewshot(max_per_class=...)`, 04_segmentation).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if max_per_class is None:
        return np.flatnonzero(labels >= 0)
    if int(max_per_class) < 1:
        raise SemnbInputError("--max-per-class", f"got {max_per_class}", "use 1 or more, or leave it out for all images")
    rng = np.random.default_rng(_SUBSAMPLE_STREAM)
    keep = [rng.permutation(np.flatnonzero(labels == cls))[:int(max_per_class)] for cls in np.unique(labels[labels >= 0])]
    return np.sort(np.concatenate(keep))


def missing_masks(mask_paths: Sequence[object], is_normal: np.ndarray) -> list[int]:
    """Indices of the defect images without a mask file (a normal image needs none: its mask is empty).

    Taught in: 04_segmentation.
    """
    return [i for i, (m, normal) in enumerate(zip(mask_paths, is_normal)) if m is None and not normal]


def require_masks(mask_paths: Sequence[object], is_normal: np.ndarray, paths: Sequence[object]) -> None:
    """Refuse segmentation when a defect image has no mask file (a normal image needs none: its mask is empty).

    Taught in: 04_segmentation.
    """
    missing = missing_masks(mask_paths, is_normal)
    if missing:
        raise SemnbInputError(str(paths[missing[0]]), f"has no defect mask ({len(missing)} defect image(s) lack one)",
                              "put X_mask.png beside image X (layout folders) or under ground_truth/ (mvtec), "
                              "or use `semnb eval classify`, which needs no masks")

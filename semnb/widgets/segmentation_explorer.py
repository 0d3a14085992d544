"""Segmentation explorer: SEM-CLIP few-shot defect maps under shots, level, path and threshold switches.

Why: the numbers of `semnb eval segment` summarise thousands of pixels; looking at one map
while changing one thing at a time shows what each part of the method does (the paper's
Table 3 ablations, by hand): more shots, a single level instead of all, the Z path, the V
path or both, and where a threshold would cut.

What it computes, from a `semnb.fewshot.FewShotData` prepared once (features encoded and
cached): for the chosen shots and seed an N-way K-shot episode (`sample_episode`), the
segmenter (`SemClipSegmenter`, transformation layer trained on the support) and its maps of
every image. The map A = A_Z + A_V is shown divided by its number of terms (levels x paths),
a defect probability in [0, 1], so one threshold slider means the same for every setting
(a monotone rescaling: AUROC and F1-max do not change). Metrics over the episode's queries
are `semnb.fewshot.evaluate.segmentation_scores` (as `semnb eval segment`); F1 at the
threshold is the defect class's F1 of `semnb.metrics.classification_report` over pixels.
A trained setting is kept in `cache`, so moving the threshold or picking another image
does not train again.

Taught in: 04_segmentation.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from semnb import metrics
from semnb.errors import SemnbInputError
from semnb.fewshot.episodes import Episode, sample_episode
from semnb.fewshot.evaluate import FewShotData, segmentation_scores
from semnb.fewshot.segmentation import (
    PatchFeatures,
    SegmentationConfig,
    SegmentationOutput,
    SemClipSegmenter,
)
from semnb.viz import MASK_COLOR, show_image
from semnb.widgets.base import Explorer, RenderResult, random_weights_note

PATHS = ("both", "z", "v")
MAP_NAMES = {"both": "A_Z + A_V", "z": "A_Z", "v": "A_V"}
PREDICTION_COLOR = "#00c7ff"
MAX_SHOTS = 10


@dataclass
class SegmentationRun:
    """One trained setting: its episode, the maps of every image in [0, 1] ([N, S, S]) and the query metrics.

    Taught in: 04_segmentation.
    """

    episode: Episode
    maps: np.ndarray
    query_scores: dict[str, float]


def _level_features(patches: PatchFeatures, level: str | int) -> PatchFeatures:
    """All levels ("all"), or only level j (1-based, as the paper counts encoding blocks)."""
    if level == "all":
        return patches
    m = len(patches.z)
    if not isinstance(level, (int, np.integer)) or not 1 <= int(level) <= m:
        raise SemnbInputError("level", f"got {level!r}", f"use 'all' or a level from 1 to {m}")
    j = int(level) - 1
    return replace(patches, z=patches.z[j:j + 1], v=None if patches.v is None else patches.v[j:j + 1])


def segment_setting(data: FewShotData, shots: int, level: str | int = "all", path: str = "both", seed: int = 0,
                    cache: dict | None = None, config: SegmentationConfig | None = None) -> SegmentationRun:
    """Train SEM-CLIP on a `shots`-shot episode (seeded) with the chosen level(s) and path(s); map every image.

    `config` sets the other knobs (default: `semnb eval segment`'s); `path` overrides its use_z/use_v.

    Taught in: 04_segmentation.
    """
    if data.patches is None or data.masks is None:
        raise SemnbInputError("data", "was prepared for classification", "use prepare_fewshot(..., task='segment')")
    if path not in PATHS:
        raise SemnbInputError("path", f"got {path!r}", f"use one of {', '.join(PATHS)}")
    if path != "z" and data.patches.v is None:
        raise SemnbInputError("path", f"{path!r} needs the V-V path of a dual-path CLIP backbone, which "
                              f"{data.backbone} does not have", "use path 'z'")
    key = (int(shots), level, path, int(seed), config)
    if cache is not None and key in cache:
        return cache[key]
    feats = _level_features(data.patches, level)
    episode = sample_episode(data.labels, shots, seed, data.class_names)
    config = replace(config or SegmentationConfig(), use_z=path in ("both", "z"), use_v=path in ("both", "v"))
    text = data.text.get("expert") if data.has_text else None
    model = SemClipSegmenter(config).fit(feats.subset(episode.support), data.masks[episode.support], text, seed=seed)
    out = model.predict(feats, data.image_size)
    maps = out.maps / (len(feats.z) * len(out.patch_maps))
    q = episode.queries
    scores = segmentation_scores(SegmentationOutput(maps=maps[q], scores=out.scores[q]), data.masks[q],
                                 data.is_defect[q])
    run = SegmentationRun(episode, maps, scores)
    if cache is not None:
        cache[key] = run
    return run


def _defect_f1(masks: np.ndarray, predicted: np.ndarray) -> float:
    """Pixel F1 of the defect class at a fixed threshold (NaN when no pixel is a defect)."""
    if not masks.any():
        return float("nan")
    report = metrics.classification_report(masks.ravel().astype(np.int64), predicted.ravel().astype(np.int64),
                                           ["normal", "defect"])
    return report["per_class"]["defect"]["f1"]


def render_segmentation(data: FewShotData, image: int, shots: int = 1, threshold: float = 0.5,
                        level: str | int = "all", path: str = "both", seed: int = 0,
                        cache: dict | None = None, config: SegmentationConfig | None = None) -> RenderResult:
    """Image `image` with its defect map and the region above `threshold`, and the episode's query metrics.

    Taught in: 04_segmentation.
    """
    n = len(data.pixels)
    if not 0 <= int(image) < n:
        raise SemnbInputError("image", f"got {image} for {n} images", f"use 0 to {n - 1}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise SemnbInputError("threshold", f"got {threshold}", "use a defect probability from 0 to 1")
    image, threshold = int(image), float(threshold)
    run = segment_setting(data, shots, level, path, seed, cache, config)
    queries = run.episode.queries
    defect_map, mask = run.maps[image], data.masks[image]
    predicted = defect_map >= threshold
    label = int(data.labels[image])
    role = "support (the layer was trained on it)" if image in run.episode.support else "query"
    summary = {
        "image": _title(data, image),
        "class": data.class_names[label] if label >= 0 else "unknown",
        "role": role,
        "shots": int(shots), "level": level, "path": path, "threshold": threshold,
        "predicted defect area (this image)": float(predicted.mean()),
        "mask area (this image)": float(mask.mean()),
        "F1 at threshold (this image)": _defect_f1(mask, predicted),
        "queries": int(len(queries)),
        "pixel AUROC (queries)": run.query_scores["pixel_auroc"],
        "pixel F1-max (queries)": run.query_scores["pixel_f1_max"],
        "predicted defect area (queries)": float(np.mean(run.maps[queries] >= threshold)),
        "F1 at threshold (queries)": _defect_f1(data.masks[queries], run.maps[queries] >= threshold),
        "AUPRO (queries)": run.query_scores["aupro"],
        "image AUROC (queries)": run.query_scores["image_auroc"],
    }
    notes = list(data.warnings)
    note = random_weights_note(data.backbone, data.weights)
    if note and not any("random weights" in w for w in notes):
        notes.insert(0, note)
    level_name = "all levels" if level == "all" else f"level {level}"
    figure = _segmentation_figure(data.pixels[image], mask, defect_map, predicted,
                                  f"{summary['image']} ({summary['class']}, {role.split(' ')[0]})",
                                  f"{shots}-shot map {MAP_NAMES[path]}, {level_name}",
                                  summary["F1 at threshold (this image)"], threshold)
    return RenderResult(figure, summary, notes)


def _title(data: FewShotData, i: int) -> str:
    return Path(data.images.paths[i]).name


def _segmentation_figure(pixels: np.ndarray, mask: np.ndarray, defect_map: np.ndarray, predicted: np.ndarray,
                         title: str, map_title: str, f1: float, threshold: float) -> Figure:
    """Image with its mask, the defect map, and the predicted region (cyan) against the mask (red)."""
    fig = Figure(figsize=(10, 3.3))
    left, middle, right = fig.subplots(1, 3, width_ratios=[1, 1.2, 1], gridspec_kw={"wspace": 0.25})
    fig.subplots_adjust(left=0.02, right=0.98, top=0.9, bottom=0.04)
    show_image(left, pixels, mask, title)
    heat = middle.imshow(defect_map, cmap="inferno", vmin=0, vmax=1)
    if mask.any():
        middle.contour(mask.astype(float), levels=[0.5], colors=[MASK_COLOR], linewidths=0.8)
    middle.set_title(map_title, fontsize=8)
    middle.set_axis_off()
    fig.colorbar(heat, ax=middle, shrink=0.8, label="defect probability")
    right.imshow(pixels, cmap="gray", vmin=0, vmax=1)
    right.imshow(np.ma.masked_where(~predicted, predicted), cmap="cool", alpha=0.45, vmin=0, vmax=1)
    if predicted.any() and not predicted.all():
        right.contour(predicted.astype(float), levels=[0.5], colors=[PREDICTION_COLOR], linewidths=0.8)
    if mask.any():
        right.contour(mask.astype(float), levels=[0.5], colors=[MASK_COLOR], linewidths=0.8)
    f1_text = "undefined" if np.isnan(f1) else f"{f1:.2f}"
    right.set_title(f"map >= {threshold:.2f} (cyan) vs mask (red), F1 {f1_text}", fontsize=8)
    right.set_axis_off()
    return fig


def segmentation_explorer(data: FewShotData, image: int | None = None, shots: int = 1, threshold: float = 0.5,
                          seed: int = 0, config: SegmentationConfig | None = None) -> Explorer:
    """The segmentation explorer widget: image, shots, threshold, level and path controls over one defect map.

    Example: `segmentation_explorer(prepare_fewshot(load_dataset(folder), "segment", backbone="semnb-tiny"))`.

    Taught in: 04_segmentation.
    """
    if data.patches is None or data.masks is None:
        raise SemnbInputError("data", "was prepared for classification", "use prepare_fewshot(..., task='segment')")
    counts = np.bincount(data.labels[data.labels >= 0], minlength=len(data.class_names))
    fewest = int(counts.min())
    max_shots = max(1, min(MAX_SHOTS, fewest - 1 if fewest > 1 else fewest))
    if image is None:  # the first defect image that the first episode leaves as a query
        queries = sample_episode(data.labels, min(int(shots), max_shots), seed, data.class_names).queries
        defect_queries = queries[data.is_defect[queries]]
        image = int(defect_queries[0]) if len(defect_queries) else int(queries[0])
    names = [f"{i}: {_title(data, i)} ({data.class_names[c] if c >= 0 else '?'})" for i, c in enumerate(data.labels)]
    paths = [("Z + V", "both"), ("Z", "z"), ("V", "v")] if data.patches.v is not None else [("Z", "z")]
    levels = [("all levels", "all")] + [(f"level {j}", j) for j in range(1, len(data.patches.z) + 1)]
    controls = {
        "image": widgets.Dropdown(options=[(name, i) for i, name in enumerate(names)], value=int(image),
                                  description="image"),
        "shots": widgets.IntSlider(value=min(int(shots), max_shots), min=1, max=max_shots, description="shots",
                                   continuous_update=False),
        "threshold": widgets.FloatSlider(value=float(threshold), min=0.0, max=1.0, step=0.01, description="threshold",
                                         continuous_update=False),
        "level": widgets.Dropdown(options=levels, value="all", description="level"),
        "path": widgets.ToggleButtons(options=paths, value=paths[0][1], description="path"),
    }
    cache: dict = {}

    def render(values: dict) -> RenderResult:
        return render_segmentation(data, seed=seed, cache=cache, config=config, **values)

    return Explorer(render, controls, title=f"Few-shot segmentation explorer ({data.backbone}, seed {seed})")

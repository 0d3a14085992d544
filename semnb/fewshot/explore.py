"""Explorers of SEM-CLIP: the prompt editor (02_prompts) and the segmentation explorer (04_segmentation).

## Prompt editor

Why: which phrases describe an SEM defect class well is found by trying (SEM-CLIP section
3.1, notebook 02_prompts). The editor shows, for the chosen image:
- class probabilities: CLIP zero-shot, softmax_c(100 cos(image embedding, t_c)), t_c the
  ensemble of class c's composite prompts (state x template), as `semnb.prompts.zero_shot`;
- the defect map: SEM-CLIP's map without the transformation layer (`SemClipSegmenter.untrained`),
  A = sum_j softmax(100 cos(Z'_j, t))[defect] + A_V, with t = (normal, defect) built from the
  edited prompts as `semnb.prompts.normal_defect_embeddings` builds it; shown divided by its
  number of terms (levels x paths), so it reads as a defect probability in [0, 1].

Speed: the images are encoded once (`prepare_prompt_editor`); each edit encodes only the
prompts it has not seen before (`PromptEncoder`).

## Segmentation explorer

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

The figures of both are drawn by `semnb.fewshot.viz`; this module holds the computation and the widgets.

Taught in: 02_prompts (prompt editor) and 04_segmentation (segmentation explorer).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import torch
import torch.nn.functional as F

from semnb import metrics
from semnb.data.preprocess import resize
from semnb.errors import SemnbInputError
from semnb.fewshot.episodes import Episode, sample_episode
from semnb.fewshot.evaluate import FewShotData, segmentation_scores
from semnb.fewshot.segmentation import (
    PatchFeatures,
    SegmentationConfig,
    SegmentationOutput,
    SemClipSegmenter,
    patch_features,
)
from semnb.fewshot.viz import prompt_editor_figure, segmentation_explorer_figure
from semnb.models import Backbone, FeatureCache, cached_text_embeddings, encode_images
from semnb.prompts import (
    PromptKB,
    compose_classes,
    encode_ensembles,
    load_prompt_kb,
    normal_defect_prompts,
    state_phrases,
    zero_shot,
)
from semnb.widgets.base import Explorer, RenderResult, phrase_lines, random_weights_note


# ------------------------------------------------------------------ prompt editor (02_prompts)
class PromptEncoder:
    """Unit text embeddings of prompts, each prompt encoded once: an edit encodes only what is new.

    Taught in: 02_prompts.
    """

    def __init__(self, backbone: Backbone, cache: FeatureCache | None = None):
        self.backbone = backbone
        self.cache = cache
        self.known: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """[P, E] unit vectors, in the order of `prompts`."""
        new = [p for p in dict.fromkeys(prompts) if p not in self.known]
        if new:
            encoded = F.normalize(cached_text_embeddings(self.backbone, new, self.cache).float(), dim=-1)
            self.known.update(zip(new, encoded))
        return torch.stack([self.known[p] for p in prompts])


@dataclass
class PromptEditorData:
    """What the editor computes once: the images as the backbone saw them, their features, a prompt encoder.

    pixels: [N, S, S] gray in [0, 1]; masks: bool [S, S] or None per image; labels: class
    index per image (-1 = unknown); patches: projected multi-level patch tokens; embeddings:
    [N, E] image embeddings.

    Taught in: 02_prompts.
    """

    pixels: np.ndarray
    masks: list[np.ndarray | None]
    labels: np.ndarray
    titles: list[str]
    patches: PatchFeatures
    embeddings: torch.Tensor
    class_names: list[str]
    normal_class: str
    obj: str
    backbone_name: str
    weights: str
    encode: PromptEncoder


def prepare_prompt_editor(backbone: Backbone, pixels: Sequence[np.ndarray] | np.ndarray, class_names: Sequence[str],
                          normal_class: str = "good", labels: Sequence[int] | None = None,
                          masks: Sequence[np.ndarray | None] | None = None, titles: Sequence[str] | None = None,
                          obj: str | None = None, kb: PromptKB | None = None, cache: FeatureCache | None = None,
                          progress: bool = False) -> PromptEditorData:
    """Encode the images once (cached when `cache` is given) for the prompt editor.

    Example: `data = prepare_prompt_editor(load_backbone("semnb-tiny"), pixels, ["good", "scratch"])`.

    Taught in: 02_prompts.
    """
    if not backbone.has_text:
        raise SemnbInputError(f"backbone {backbone.name}", "has no text tower, so it cannot read prompts",
                              "use a CLIP backbone (e.g. ViT-B-16-plus-240:laion400m_e32, or semnb-tiny to try)")
    class_names = [str(c) for c in class_names]
    if len(class_names) < 2 or normal_class not in class_names:
        raise SemnbInputError("class_names", f"{class_names} must hold the normal class {normal_class!r} and a defect class",
                              "pass every class name and set normal_class")
    n = len(pixels)
    labels = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    masks = [None] * n if masks is None else list(masks)
    titles = [f"image {i}" for i in range(n)] if titles is None else [str(t) for t in titles]
    if not (len(labels) == len(masks) == len(titles) == n) or n == 0:
        raise SemnbInputError("labels/masks/titles", f"must have one entry for each of the {n} images",
                              "pass one label, mask (or None) and title per image")
    size = backbone.image_size
    levels = encode_images(backbone, pixels, cache, progress=progress)
    return PromptEditorData(
        pixels=backbone.gray(pixels)[:, 0].numpy(),
        masks=[None if m is None else resize(np.asarray(m, dtype=bool), size, method="nearest") for m in masks],
        labels=labels, titles=titles, patches=patch_features(levels), embeddings=levels.embedding,
        class_names=class_names, normal_class=normal_class, obj=obj or (kb or load_prompt_kb()).object,
        backbone_name=backbone.name, weights=backbone.weights, encode=PromptEncoder(backbone, cache))


def default_phrases(class_names: Sequence[str], normal_class: str = "good",
                    kb: PromptKB | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """The knowledge base's state phrases of each class and its template phrases: the editor's starting text.

    Taught in: 02_prompts.
    """
    kb = kb or load_prompt_kb()
    states = {c: list(state_phrases(c, c == normal_class, kb)) for c in class_names}
    return states, list(kb.templates)


def edited_text_embeddings(data: PromptEditorData, states: Mapping[str, str | Sequence[str]],
                           templates: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """(class embeddings [C, E], (normal, defect) embeddings [2, E], prompts per class) from edited phrases.

    Phrases are given one per line (a Textarea's text) or as lists; each class's prompts are
    every template filled with every state, ensembled as `semnb.prompts` does.

    Taught in: 02_prompts.
    """
    templates = phrase_lines(templates)
    if not templates:
        raise SemnbInputError("templates", "has no phrase", "write at least one template phrase, e.g. 'an SEM image of the {}.'")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise SemnbInputError(f"template {bad[0]!r}", "lacks the placeholder {}", "put {} where the state phrase goes")
    phrases = {}
    for name in data.class_names:
        phrases[name] = phrase_lines(states.get(name, ""))
        if not phrases[name]:
            raise SemnbInputError(f"states of {name}", "has no phrase", "write at least one state phrase, e.g. '{obj} with a scratch'")
    prompts = compose_classes(phrases, templates, data.obj)
    classes = encode_ensembles(data.encode, [prompts[name] for name in data.class_names])
    pair = encode_ensembles(data.encode, normal_defect_prompts(prompts, data.normal_class))
    return classes, pair, {name: len(p) for name, p in prompts.items()}


def zero_shot_defect_map(patches: PatchFeatures, pair: torch.Tensor, image_size: int) -> np.ndarray:
    """SEM-CLIP's untrained map (A_Z + A_V over all levels) divided by its number of terms: [B, S, S] in [0, 1].

    Taught in: 02_prompts.
    """
    segmenter = SemClipSegmenter.untrained(pair)
    return segmenter.predict(patches, image_size).maps / segmenter.num_terms(patches)


def render_prompt_editor(data: PromptEditorData, image: int, states: Mapping[str, str | Sequence[str]],
                         templates: str | Sequence[str]) -> RenderResult:
    """Image `image`'s class probabilities and defect map under the given phrases.

    Taught in: 02_prompts.
    """
    if not 0 <= int(image) < len(data.pixels):
        raise SemnbInputError("image", f"got {image} for {len(data.pixels)} images", f"use 0 to {len(data.pixels) - 1}")
    image = int(image)
    classes, pair, counts = edited_text_embeddings(data, states, templates)
    proba = zero_shot(data.embeddings[image:image + 1], classes)[0].numpy()
    defect_map = zero_shot_defect_map(data.patches.subset([image]), pair, data.pixels.shape[-1])[0]
    mask = data.masks[image]
    label = int(data.labels[image])
    summary = {
        "image": data.titles[image],
        "true class": data.class_names[label] if label >= 0 else "unknown",
        "predicted class": data.class_names[int(np.argmax(proba))],
        "prompts": int(sum(counts.values())),
        "defect map max": float(defect_map.max()),
        "defect map mean": float(defect_map.mean()),
    }
    if mask is not None and mask.any() and not mask.all():
        summary["pixel AUROC of this image"] = metrics.pixel_auroc(defect_map[None], mask[None], num_thresholds=None)
    summary["class probabilities"] = {c: float(p) for c, p in zip(data.class_names, proba)}
    summary["prompts per class"] = counts
    notes = [n for n in [random_weights_note(data.backbone_name, data.weights)] if n]
    return RenderResult(prompt_editor_figure(data.pixels[image], mask, defect_map, data.class_names, proba,
                                            summary["image"], summary["true class"]), summary, notes)


def prompt_editor(data: PromptEditorData, kb: PromptKB | None = None, image: int = 0) -> Explorer:
    """The prompt editor widget: an image picker, one Textarea per class's states and one for the templates.

    Edits apply when a Textarea loses focus. Example:
    `prompt_editor(prepare_prompt_editor(load_backbone("semnb-tiny"), images, ["good", "scratch"]))`.

    Taught in: 02_prompts.
    """
    states, templates = default_phrases(data.class_names, data.normal_class, kb)
    box = widgets.Layout(width="95%")
    controls: dict[str, widgets.Widget] = {
        "image": widgets.Dropdown(options=[(t, i) for i, t in enumerate(data.titles)], value=int(image),
                                  description="image"),
        "templates": widgets.Textarea(value="\n".join(templates), description="templates", rows=6,
                                      continuous_update=False, layout=box),
    }
    for name in data.class_names:
        controls[f"states:{name}"] = widgets.Textarea(value="\n".join(states[name]), description=name, rows=4,
                                                      continuous_update=False, layout=box)

    def render(values: dict) -> RenderResult:
        edited = {name: values[f"states:{name}"] for name in data.class_names}
        return render_prompt_editor(data, values["image"], edited, values["templates"])

    return Explorer(render, controls, title="Prompt editor: one phrase per line; {} is where a template takes "
                                            "the state, {obj} the object")


# ------------------------------------------------------------------ segmentation explorer (04_segmentation)
PATHS = ("both", "z", "v")
MAP_NAMES = {"both": "A_Z + A_V", "z": "A_Z", "v": "A_V"}
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
    model = SemClipSegmenter(config, data.compute).fit(feats.subset(episode.support), data.masks[episode.support], text, seed=seed)
    out = model.predict(feats, data.image_size)
    maps = out.maps / model.num_terms(feats)
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
    figure = segmentation_explorer_figure(data.pixels[image], mask, defect_map, predicted,
                                          f"{summary['image']} ({summary['class']}, {role.split(' ')[0]})",
                                          f"{shots}-shot map {MAP_NAMES[path]}, {level_name}",
                                          summary["F1 at threshold (this image)"], threshold)
    return RenderResult(figure, summary, notes)


def _title(data: FewShotData, i: int) -> str:
    return Path(data.images.paths[i]).name


def _opening_image(run: SegmentationRun, is_defect: np.ndarray, threshold: float) -> int:
    """The image an explorer opens on: a view that shows something, not an all-black map.

    The first defect query whose map reaches `threshold`; else the defect query with the
    highest map; without defect queries, the first query.
    """
    queries = run.episode.queries
    defects = queries[is_defect[queries]]
    if not len(defects):
        return int(queries[0])
    peaks = run.maps[defects].reshape(len(defects), -1).max(axis=1)
    reaching = np.flatnonzero(peaks >= threshold)
    return int(defects[reaching[0] if len(reaching) else np.argmax(peaks)])


def segmentation_explorer(data: FewShotData, image: int | None = None, shots: int = 1, threshold: float = 0.5,
                          seed: int = 0, config: SegmentationConfig | None = None) -> Explorer:
    """The segmentation explorer widget: image, shots, threshold, level and path controls over one defect map.

    Without `image` it opens on a view that shows something (`_opening_image`): the first
    defect query whose map reaches `threshold`, not an image whose map is all black.

    Example: `segmentation_explorer(prepare_fewshot(load_dataset(folder), "segment", backbone="semnb-tiny"))`.

    Taught in: 04_segmentation.
    """
    if data.patches is None or data.masks is None:
        raise SemnbInputError("data", "was prepared for classification", "use prepare_fewshot(..., task='segment')")
    counts = np.bincount(data.labels[data.labels >= 0], minlength=len(data.class_names))
    fewest = int(counts.min())
    max_shots = max(1, min(MAX_SHOTS, fewest - 1 if fewest > 1 else fewest))
    shots = min(int(shots), max_shots)
    names = [f"{i}: {_title(data, i)} ({data.class_names[c] if c >= 0 else '?'})" for i, c in enumerate(data.labels)]
    paths = [("Z + V", "both"), ("Z", "z"), ("V", "v")] if data.patches.v is not None else [("Z", "z")]
    cache: dict = {}
    if image is None:
        image = _opening_image(segment_setting(data, shots, "all", paths[0][1], seed, cache, config), data.is_defect,
                               float(threshold))
    levels = [("all levels", "all")] + [(f"level {j}", j) for j in range(1, len(data.patches.z) + 1)]
    controls = {
        "image": widgets.Dropdown(options=[(name, i) for i, name in enumerate(names)], value=int(image),
                                  description="image"),
        "shots": widgets.IntSlider(value=shots, min=1, max=max_shots, description="shots", continuous_update=False),
        "threshold": widgets.FloatSlider(value=float(threshold), min=0.0, max=1.0, step=0.01, description="threshold",
                                         continuous_update=False),
        "level": widgets.Dropdown(options=levels, value="all", description="level"),
        "path": widgets.ToggleButtons(options=paths, value=paths[0][1], description="path"),
    }

    def render(values: dict) -> RenderResult:
        return render_segmentation(data, seed=seed, cache=cache, config=config, **values)

    return Explorer(render, controls, title=f"Few-shot segmentation explorer ({data.backbone}, seed {seed})")

"""Prompt editor: edit the state- and template-level phrases, watch one image's class probabilities and defect map.

Why: which phrases describe an SEM defect class well is found by trying (SEM-CLIP section
3.1, notebook 02_prompts). The editor shows, for the chosen image:
- class probabilities: CLIP zero-shot, softmax_c(100 cos(image embedding, t_c)), t_c the
  ensemble of class c's composite prompts (state x template), as `semnb.prompts.zero_shot`;
- the defect map: SEM-CLIP's map without the transformation layer (`semnb.fewshot.segmentation`),
  A = sum_j softmax(100 cos(Z'_j, t))[defect] + A_V, with t = (normal, defect) built from the
  edited prompts as `semnb.prompts.normal_defect_embeddings` builds it; shown divided by its
  number of terms (levels x paths), so it reads as a defect probability in [0, 1].

Speed: the images are encoded once (`prepare_prompt_editor`); each edit encodes only the
prompts it has not seen before (`PromptEncoder`).

Taught in: 02_prompts.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from semnb import metrics
from semnb.data.preprocess import resize
from semnb.errors import SemnbInputError
from semnb.fewshot.segmentation import (
    PatchFeatures,
    patch_features,
    upsample_and_smooth,
    v_path_map,
    z_path_map,
)
from semnb.models import Backbone, FeatureCache, cached_text_embeddings, encode_images
from semnb.prompts import PromptKB, compose, ensemble, load_prompt_kb, state_phrases, zero_shot
from semnb.viz import show_image
from semnb.widgets.base import Explorer, RenderResult, phrase_lines, random_weights_note

LOGIT_SCALE = 100.0
SMOOTHING_SIGMA = 4.0


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


def prepare_prompt_editor(backbone: Backbone, images: Sequence[np.ndarray] | np.ndarray, class_names: Sequence[str],
                          normal_class: str = "good", labels: Sequence[int] | None = None,
                          masks: Sequence[np.ndarray | None] | None = None, titles: Sequence[str] | None = None,
                          obj: str | None = None, kb: PromptKB | None = None, cache: FeatureCache | None = None,
                          progress: bool = False) -> PromptEditorData:
    """Encode the images once (cached when `cache` is given) for the prompt editor.

    Example: `data = prepare_prompt_editor(load_backbone("semnb-tiny"), images, ["good", "scratch"])`.

    Taught in: 02_prompts.
    """
    if not backbone.has_text:
        raise SemnbInputError(f"backbone {backbone.name}", "has no text tower, so it cannot read prompts",
                              "use a CLIP backbone (e.g. ViT-B-16-plus-240:laion400m_e32, or semnb-tiny to try)")
    class_names = [str(c) for c in class_names]
    if len(class_names) < 2 or normal_class not in class_names:
        raise SemnbInputError("class_names", f"{class_names} must hold the normal class {normal_class!r} and a defect class",
                              "pass every class name and set normal_class")
    n = len(images)
    labels = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    masks = [None] * n if masks is None else list(masks)
    titles = [f"image {i}" for i in range(n)] if titles is None else [str(t) for t in titles]
    if not (len(labels) == len(masks) == len(titles) == n) or n == 0:
        raise SemnbInputError("labels/masks/titles", f"must have one entry for each of the {n} images",
                              "pass one label, mask (or None) and title per image")
    pixels = backbone.gray(images)[:, 0].numpy()
    size = backbone.image_size
    levels = encode_images(backbone, images, cache, progress=progress)
    return PromptEditorData(
        pixels=pixels,
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


def _class_words(name: str) -> str:
    """A class name as the {defect} placeholder reads it: 'copper_residue' -> 'copper residue'."""
    return re.sub(r"[_\-]+", " ", name).strip()


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
    prompts = {}
    for name in data.class_names:
        phrases = phrase_lines(states.get(name, ""))
        if not phrases:
            raise SemnbInputError(f"states of {name}", "has no phrase", "write at least one state phrase, e.g. '{obj} with a scratch'")
        prompts[name] = compose(phrases, templates, data.obj, _class_words(name))
    flat = [p for name in data.class_names for p in prompts[name]]
    encoded = data.encode(flat)
    per_class, start = {}, 0
    for name in data.class_names:
        per_class[name] = encoded[start:start + len(prompts[name])]
        start += len(prompts[name])
    classes = torch.stack([ensemble(per_class[name]) for name in data.class_names])
    defects = torch.cat([per_class[name] for name in data.class_names if name != data.normal_class])
    pair = torch.stack([ensemble(per_class[data.normal_class]), ensemble(defects)])
    return classes, pair, {name: len(p) for name, p in prompts.items()}


def zero_shot_defect_map(patches: PatchFeatures, pair: torch.Tensor, image_size: int) -> np.ndarray:
    """SEM-CLIP's untrained map (A_Z + A_V over all levels) divided by its number of terms: [B, S, S] in [0, 1].

    Taught in: 02_prompts.
    """
    levels = len(patches.z)
    maps = z_path_map(patches.z, [pair] * levels, LOGIT_SCALE)
    terms = levels
    if patches.v is not None:
        maps = maps + v_path_map(patches.v, pair, LOGIT_SCALE)
        terms += levels
    return upsample_and_smooth(maps / terms, patches.grid, image_size, SMOOTHING_SIGMA).numpy()


def render_prompt_editor(data: PromptEditorData, image: int, states: Mapping[str, str | Sequence[str]],
                         templates: str | Sequence[str]) -> RenderResult:
    """Image `image`'s class probabilities and defect map under the given phrases.

    Taught in: 02_prompts.
    """
    if not 0 <= int(image) < len(data.pixels):
        raise SemnbInputError("image", f"got {image} for {len(data.pixels)} images", f"use 0 to {len(data.pixels) - 1}")
    image = int(image)
    classes, pair, counts = edited_text_embeddings(data, states, templates)
    proba = zero_shot(data.embeddings[image:image + 1], classes, LOGIT_SCALE)[0].numpy()
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
    return RenderResult(_prompt_figure(data.pixels[image], mask, defect_map, data.class_names, proba,
                                       summary["image"], summary["true class"]), summary, notes)


def _prompt_figure(pixels: np.ndarray, mask: np.ndarray | None, defect_map: np.ndarray, class_names: Sequence[str],
                   proba: np.ndarray, title: str, true_class: str) -> Figure:
    """Image with its mask, the defect map over it, and the class probabilities as bars."""
    fig = Figure(figsize=(11, 3.2))
    left, middle, right = fig.subplots(1, 3, width_ratios=[1, 1.2, 1.2], gridspec_kw={"wspace": 0.6})
    fig.subplots_adjust(left=0.02, right=0.98, top=0.9, bottom=0.16)
    show_image(left, pixels, mask, f"{title} ({true_class})")
    middle.imshow(pixels, cmap="gray", vmin=0, vmax=1)
    heat = middle.imshow(defect_map, cmap="inferno", alpha=0.55, vmin=0, vmax=1)
    middle.set_title("defect map (zero-shot)", fontsize=8)
    middle.set_axis_off()
    fig.colorbar(heat, ax=middle, shrink=0.8, label="defect probability")
    order = np.arange(len(class_names))[::-1]
    colors = ["tab:orange" if c == true_class else "tab:blue" for c in class_names]
    right.barh([class_names[i] for i in order], proba[order], color=[colors[i] for i in order])
    right.set_xlim(0, 1)
    right.set_xlabel("zero-shot probability", fontsize=8)
    right.tick_params(labelsize=7)
    return fig


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

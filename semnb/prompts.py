"""Expert prompts (SEM-CLIP section 3.1): state-level x template-level phrases, ensembled per class.

Why: CLIP knows "scratch" from photos, not from SEM review images. Describing each class by
several appearances an engineer would name ("fish scale-shaped scratches", "accidental
connectivity") and several ways the image was taken ("a blurry SEM image of ...") gives
each class many prompts; averaging their embeddings gives a text vector that is robust to
any single wording. The phrases live in `prompt_kb.yaml`, which an engineer can edit.

Taught in: 02_prompts.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from semnb.errors import SemnbInputError
from semnb.models.backbone import Backbone
from semnb.models.feature_cache import FeatureCache, cached_text_embeddings

STYLES = ("expert", "generic")
NORMAL_KEY = "good"


@dataclass(frozen=True)
class PromptKB:
    """The knowledge base: object word, templates, per-class states, aliases, fallback, generic set.

    Taught in: 02_prompts.
    """

    object: str
    templates: tuple[str, ...]
    states: dict[str, tuple[str, ...]]
    aliases: dict[str, str]  # normalised alias -> class key
    fallback_defect: tuple[str, ...]
    generic_templates: tuple[str, ...]
    generic_normal: tuple[str, ...]
    generic_defect: tuple[str, ...]
    source: str


@dataclass
class ClassTextEmbeddings:
    """One text embedding per class ([C, E], unit length) and the prompts behind each.

    Taught in: 02_prompts.
    """

    class_names: list[str]
    embeddings: torch.Tensor
    prompts: dict[str, list[str]]
    style: str


def _key(name: str) -> str:
    """Class-name spelling that aliases are matched on: lower case, underscores."""
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _words(name: str) -> str:
    """A class name as words for a prompt: 'copper_residue' -> 'copper residue'."""
    return re.sub(r"[_\-]+", " ", str(name)).strip()


def _phrases(data: dict, field: str, source: str, placeholder: str) -> tuple[str, ...]:
    value = data
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise SemnbInputError(source, f"`{field}` must be a non-empty list of phrases", "fix the prompt file")
    bad = [v for v in value if placeholder not in v]
    if bad:
        raise SemnbInputError(source, f"`{field}` phrase {bad[0]!r} lacks the placeholder {placeholder}",
                              f"put {placeholder} where it belongs")
    return tuple(value)


def load_prompt_kb(path: str | os.PathLike | None = None) -> PromptKB:
    """Read and check a prompt knowledge base (default: the packaged `prompt_kb.yaml`).

    Taught in: 02_prompts.
    """
    if path is None:
        source = "semnb/prompt_kb.yaml"
        text = resources.files("semnb").joinpath("prompt_kb.yaml").read_text(encoding="utf-8")
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise SemnbInputError(source, f"cannot be read ({err.strerror})", "give the path of a prompt YAML file") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SemnbInputError(source, f"is not valid YAML ({err})", "fix the syntax") from err
    if not isinstance(data, dict) or not isinstance(data.get("states"), dict):
        raise SemnbInputError(source, "has no `states` mapping", "start from semnb/prompt_kb.yaml")
    if NORMAL_KEY not in data["states"]:
        raise SemnbInputError(source, f"`states` has no `{NORMAL_KEY}` (defect-free) class", "add it")
    states = {_key(name): _phrases(data["states"], name, source, "{obj}") for name in data["states"]}
    aliases = {key: key for key in states}
    for target, names in (data.get("aliases") or {}).items():
        if _key(target) not in states or not isinstance(names, list):
            raise SemnbInputError(source, f"alias entry `{target}` is not a class with a list of names", "fix it")
        aliases.update({_key(alias): _key(target) for alias in names})
    return PromptKB(
        object=str(data.get("object") or "object"),
        templates=_phrases(data, "templates", source, "{}"),
        states=states,
        aliases=aliases,
        fallback_defect=_phrases(data, "fallback.defect", source, "{defect}"),
        generic_templates=_phrases(data, "generic.templates", source, "{}"),
        generic_normal=_phrases(data, "generic.normal", source, "{obj}"),
        generic_defect=_phrases(data, "generic.defect", source, "{obj}"),
        source=source,
    )


def state_phrases(class_name: str, is_normal: bool, kb: PromptKB, style: str = "expert") -> tuple[str, ...]:
    """The state-level phrases of one class (placeholders unfilled).

    Expert: the class's phrases from the knowledge base (matched through its aliases); a
    defect class the base does not know gets the fallback phrases about its name.
    Generic: "{obj}" for the normal class, "damaged {obj}" (and its name) for defects.

    Taught in: 02_prompts.
    """
    if style not in STYLES:
        raise SemnbInputError("style", f"got {style!r}", f"use one of {STYLES}")
    if style == "generic":
        return kb.generic_normal if is_normal else kb.generic_defect
    if is_normal:
        return kb.states[NORMAL_KEY]
    known = kb.aliases.get(_key(class_name))
    if known is not None and known != NORMAL_KEY:
        return kb.states[known]
    return kb.fallback_defect


def compose(states: Sequence[str], templates: Sequence[str], obj: str, defect: str = "") -> list[str]:
    """Every template filled with every state: the composite prompts, in a stable order.

    Taught in: 02_prompts.
    """
    filled = [s.replace("{obj}", obj).replace("{defect}", defect) for s in states]
    return [t.replace("{}", state) for state in filled for t in templates]


def class_prompts(class_names: Sequence[str], normal_class: str = "good", style: str = "expert",
                  obj: str | None = None, kb: PromptKB | None = None) -> dict[str, list[str]]:
    """Composite prompts per class: state phrases x template phrases.

    `normal_class` names the defect-free class (e.g. `free` for magnetic_tile); `obj` is the
    imaged object (default: the knowledge base's, "wafer").

    Taught in: 02_prompts.
    """
    kb = kb or load_prompt_kb()
    if not class_names:
        raise SemnbInputError("class_names", "is empty", "pass the data set's class names")
    templates = kb.generic_templates if style == "generic" else kb.templates
    states = {name: state_phrases(name, name == normal_class, kb, style) for name in class_names}
    return compose_classes(states, templates, obj or kb.object)


def compose_classes(states: Mapping[str, Sequence[str]], templates: Sequence[str], obj: str) -> dict[str, list[str]]:
    """Composite prompts per class from each class's state phrases; {defect} reads the class name as words.

    The knowledge base's phrases (`class_prompts`) and the prompt editor's edited ones are composed here alike.

    Taught in: 02_prompts.
    """
    return {name: compose(phrases, templates, obj, _words(name)) for name, phrases in states.items()}


def normal_defect_prompts(per_class: Mapping[str, Sequence[str]], normal_class: str) -> list[list[str]]:
    """[normal prompts, defect prompts]: the defect list holds every defect class's prompts, in class order.

    Taught in: 02_prompts.
    """
    defects = [p for name, prompts in per_class.items() if name != normal_class for p in prompts]
    if normal_class not in per_class or not defects:
        raise SemnbInputError("class_names", f"needs the normal class {normal_class!r} and at least one defect class",
                              "pass all class names and set normal_class")
    return [list(per_class[normal_class]), defects]


def ensemble(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean of unit-length prompt embeddings [P, E], renormalised to unit length [E].

    Taught in: 02_prompts.
    """
    return F.normalize(F.normalize(embeddings, dim=-1).mean(dim=0), dim=-1)


def encode_ensembles(encode: Callable[[list[str]], torch.Tensor],
                     prompt_lists: Sequence[Sequence[str]]) -> torch.Tensor:
    """One unit ensemble per list of prompts [L, E]: all prompts encoded in one call of `encode`, each list averaged.

    `encode` maps prompts to embeddings [P, E] (the backbone through the feature cache, or the
    prompt editor's encoder that encodes each prompt once); one call keeps one cache entry.

    Taught in: 02_prompts.
    """
    flat = [p for prompts in prompt_lists for p in prompts]
    encoded = encode(flat)
    return torch.stack([ensemble(part) for part in torch.split(encoded, [len(p) for p in prompt_lists])])


def class_text_embeddings(backbone: Backbone, class_names: Sequence[str], normal_class: str = "good",
                          style: str = "expert", obj: str | None = None, kb: PromptKB | None = None,
                          cache: FeatureCache | None = None) -> ClassTextEmbeddings:
    """Encode every class's composite prompts and ensemble them: one unit vector per class.

    All prompts are encoded in one pass (and cached when `cache` is a FeatureCache).

    Taught in: 02_prompts.
    """
    prompts = class_prompts(class_names, normal_class, style, obj, kb)
    embeddings = encode_ensembles(lambda flat: cached_text_embeddings(backbone, flat, cache),
                                  [prompts[name] for name in class_names])
    return ClassTextEmbeddings(list(class_names), embeddings, prompts, style)


def zero_shot(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
              logit_scale: float = 100.0) -> torch.Tensor:
    """CLIP zero-shot class probabilities [B, C]: softmax of scaled cosine similarity image-text.

    `logit_scale` 100 is CLIP's trained temperature (exp of its logit_scale, capped at 100).

    Taught in: 02_prompts.
    """
    sims = F.normalize(image_embeddings, dim=-1) @ F.normalize(text_embeddings, dim=-1).T
    return (logit_scale * sims).softmax(dim=-1)


def normal_defect_embeddings(backbone: Backbone, class_names: Sequence[str], normal_class: str = "good",
                             style: str = "expert", obj: str | None = None, kb: PromptKB | None = None,
                             cache: FeatureCache | None = None) -> torch.Tensor:
    """Two text vectors [2, E], (normal, defect): the defect vector ensembles every defect class's prompts.

    This is the text side of a two-class defect map (section 3.3).

    Taught in: 02_prompts.
    """
    pair = normal_defect_prompts(class_prompts(class_names, normal_class, style, obj, kb), normal_class)
    return encode_ensembles(lambda flat: cached_text_embeddings(backbone, flat, cache), pair)


# WinCLIP's compositional prompt ensemble (Jeong et al., CVPR 2023, appendix), {obj} the object's name.
WINCLIP_NORMAL_STATES = ("{obj}", "flawless {obj}", "perfect {obj}", "unblemished {obj}", "{obj} without flaw",
                         "{obj} without defect", "{obj} without damage")
WINCLIP_DEFECT_STATES = ("damaged {obj}", "{obj} with flaw", "{obj} with defect", "{obj} with damage")
WINCLIP_TEMPLATES = (
    "a cropped photo of the {}.", "a cropped photo of a {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of the {}.", "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.", "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.",
    "a blurry photo of a {}.", "a photo of a {}.", "a photo of the {}.", "a photo of a small {}.",
    "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.",
    "a photo of the {} for visual inspection.", "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.", "a photo of a {} for anomaly detection.",
)


def winclip_text_embeddings(backbone: Backbone, obj: str = "object", cache: FeatureCache | None = None) -> torch.Tensor:
    """WinCLIP's (normal, defect) text pair [2, E]: every state in every template, each side ensembled.

    Taught in: 04_segmentation.
    """
    pair = [compose(WINCLIP_NORMAL_STATES, WINCLIP_TEMPLATES, obj), compose(WINCLIP_DEFECT_STATES, WINCLIP_TEMPLATES, obj)]
    return encode_ensembles(lambda flat: cached_text_embeddings(backbone, flat, cache), pair)

"""`semnb eval segment` and `semnb eval classify`: semnb, SEM-CLIP and the baselines on the same episodes.

Protocol:
- every image is read at the backbone's input size S (non-square images stretched, as the
  encoder sees them), masks resized with nearest neighbour, and encoded once per
  backbone/precision through the feature cache;
- for each seed an N-way K-shot episode (`episodes.sample_episode`): K support images of
  every class, the normal class included; all other images are queries;
- segmentation: semnb (recommended, semnb.fewshot.recommended), semclip, patchcore (faithful,
  coreset `coreset_fraction`, 10 % by default) and nn_visual each map every query; pixel AUROC, pixel F1-max and AUPRO over the
  queries' maps at S x S, image AUROC of the image scores (normal queries vs defect queries;
  undefined when the data set has no defect-free image);
- classification: each method predicts the class of every query (all classes, normal
  included); accuracy, macro precision/recall/F1, confusion matrix. `semnb` (recommended, first;
  with masks only) and, next to the paper's method and its baselines, `defect_pooled` (semnb.fewshot.defect_pooling) classifies the
  defect region the segmenter finds; it needs a mask for every defect image and is skipped,
  with a warning, on data sets without them;
- device and precision: resolved once, by the backbone (`load_backbone`); the features are
  moved to that device once and every method computes there (its models under the
  precision's autocast), each episode's maps and probabilities coming back to the CPU;
- figures: the mean over seeds and the sample std (`semnb.metrics.mean_std_over_seeds`);
  timing: seconds per episode of each method's fitting and predicting.

Taught in: 04_segmentation and 05_classification.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from semnb import metrics
from semnb.components import image_scores, upsample_and_smooth
from semnb.data.dataset import ImageSet
from semnb.errors import SemnbInputError
from semnb.fewshot import baselines
from semnb.fewshot.classification import ClassificationConfig, SemClipClassifier
from semnb.fewshot.defect_pooling import DefectPooledClassifier, DefectPoolingConfig
from semnb.fewshot.episodes import (
    Episode,
    missing_masks,
    require_masks,
    sample_episode,
    subsample_per_class,
)
from semnb.fewshot.recommended import (
    SemnbClassifier,
    SemnbClassifyConfig,
    SemnbSegmentConfig,
    SemnbSegmenter,
)
from semnb.fewshot.segmentation import (
    PatchFeatures,
    SegmentationConfig,
    SegmentationOutput,
    SemClipSegmenter,
    mask_coverage,
    patch_features,
)
from semnb.hardware import Compute
from semnb.models import DEFAULT_BACKBONE, EncodedLevels, FeatureCache, encode_images, load_backbone
from semnb.models.dual_path import window_indices
from semnb.models.tiny_clip import TINY_NAME
from semnb.prompts import (
    NORMAL_KEY,
    class_text_embeddings,
    normal_defect_embeddings,
    winclip_text_embeddings,
)
from semnb.results import EvalResult

DEFAULT_SHOTS = 5
SEGMENT_METHODS = ("semnb", "semclip", "winclip", "patchcore", "nn_visual")  # winclip: CLIP backbones only
CLASSIFY_METHODS = ("semnb", "semclip", "linear_probe", "prototype", "defect_pooled")
SEGMENT_METRICS = ("image_auroc", "pixel_auroc", "pixel_f1_max", "aupro")
CLASSIFY_METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")
# The paper's Table 3, as changes to the method's settings (prompt style handled apart).
SEGMENT_ABLATIONS = {
    "semclip_no_transform": {"transform": False},
    "semclip_generic_prompts": {},
    "semclip_last_level": {"last_level_only": True},
    "semclip_z_only": {"use_v": False},
    "semclip_v_only": {"use_z": False},
}
CLASSIFY_ABLATIONS = {
    "semclip_generic_prompts": {},
    "semclip_last_level": {"last_level_only": True},
    "semclip_a0": {"alpha": 0.0},
    "semclip_a1": {"alpha": 1.0},
}


@dataclass
class FewShotData:
    """What every episode reads, computed once: features, masks and pixels at S x S, text embeddings.

    `compute`: the device and precision the backbone resolved; `levels`, `patches` (and the
    PatchCore features) are on its device, pixels and masks are numpy arrays.

    Taught in: 04_segmentation and 05_classification.
    """

    images: ImageSet
    task: str
    backbone: str
    weights: str
    compute: Compute
    image_size: int
    levels: EncodedLevels
    pixels: np.ndarray
    masks: np.ndarray | None
    text: dict[str, torch.Tensor] = field(default_factory=dict)
    class_text: dict[str, torch.Tensor] = field(default_factory=dict)
    patches: PatchFeatures | None = None
    windows: dict[int, torch.Tensor] | None = None
    warnings: list[str] = field(default_factory=list)
    encode_s: float = 0.0
    _patchcore: torch.Tensor | None = field(default=None, repr=False)

    @property
    def has_text(self) -> bool:
        return self.levels.has_text

    @property
    def precision(self) -> str:
        return self.compute.precision

    @property
    def device(self) -> torch.device:
        return self.compute.device

    @property
    def labels(self) -> np.ndarray:
        return self.images.labels

    @property
    def class_names(self) -> list[str]:
        return list(self.images.class_names)

    @property
    def is_defect(self) -> np.ndarray:
        return ~self.images.is_normal

    def patchcore_features(self) -> torch.Tensor:
        """PatchCore's locally aware features of every image (`baselines.patchcore_embedding`), computed once and kept.

        Taught in: 04_segmentation.
        """
        if self._patchcore is None:
            self._patchcore = baselines.patchcore_embedding(self.levels.patch_z, self.levels.grid)
        return self._patchcore


def _prompt_class_names(images: ImageSet) -> tuple[list[str], str]:
    """Class names for the prompts and the normal class's name (added when the data set has no normal image)."""
    names = list(images.class_names)
    normal = images.normal_class or NORMAL_KEY
    return (names if normal in names else [*names, normal]), normal


def backbone_warnings(backbone_name: str, has_text: bool, task: str) -> list[str]:
    """What a reader must know about the numbers a backbone gives (random weights, no text).

    Taught in: 04_segmentation.
    """
    out = []
    if backbone_name == TINY_NAME:
        out.append(f"{TINY_NAME} has random weights: these numbers test the pipeline and measure nothing about CLIP")
    if not has_text and task == "segment":
        out.append(f"{backbone_name} has no text tower and no V-V path: semclip's A_Z compares the trained "
                   "transformation layer's tokens with two learned anchors (normal, defect) initialised from the "
                   "support masks' mean features instead of text, and A_V is absent (A = A_Z); WinCLIP+ needs a "
                   "text tower and is not run (nn_visual is the visual nearest neighbour alone); the ablations generic_prompts, z_only and v_only do not apply")
    if not has_text and task == "classify":
        out.append(f"{backbone_name} has no text tower: semclip's P_S (text similarity) is replaced by visual "
                   "prototypes, softmax of 100 x the cosine of the pooled image embedding to each class's mean "
                   "support embedding; P = 0.2 P_prototype + 0.8 P_C (P_C: the linear head on the 4 stages' pooled "
                   "features); the ablation generic_prompts does not apply")
    return out


def prepare_fewshot(images: ImageSet, task: str = "segment", backbone: str = DEFAULT_BACKBONE,
                    precision: str = "auto", image_size: int | None = None, max_per_class: int | None = None,
                    cache: FeatureCache | None = None, prompt_styles: Sequence[str] = ("expert",),
                    progress: bool = False, device: str = "auto", batch_size: int = 16,
                    workers: int = 0) -> FewShotData:
    """Read, encode (once, cached) and embed the prompts of a data set for few-shot episodes.

    `device` and `precision` are resolved once, by `load_backbone`; the features are then
    moved to that device, where every episode's methods compute. `batch_size` images are
    encoded at a time (halved on out-of-memory) while `workers` processes resize the next ones.

    `task` is "segment" (masks required for every defect image) or "classify". For "classify"
    the masks, patch features and (CLIP) normal/defect text are kept too when every defect
    image has a mask, for `defect_pooled`; otherwise `masks` is None.

    Taught in: 04_segmentation and 05_classification.
    """
    if task not in ("segment", "classify"):
        raise SemnbInputError("task", f"got {task!r}", "use 'segment' or 'classify'")
    if len(images) == 0:
        raise SemnbInputError(str(images.root), "holds no image", "point --data at a folder of images")
    keep = subsample_per_class(images.labels, max_per_class)
    if len(keep) == 0:
        raise SemnbInputError(str(images.root), "holds no labelled image", "use a layout with class labels")
    images = images.subset(keep)
    if task == "classify" and len(np.unique(images.labels)) < 2:
        raise SemnbInputError(str(images.root), f"holds one class only ({images.class_names[images.labels[0]]})",
                              "classification needs two classes or more: add a folder of images per defect class")
    if task == "segment":
        if images.is_normal.all():
            raise SemnbInputError(str(images.root), "holds only defect-free images", "add defect images with masks")
        require_masks(images.mask_paths, images.is_normal, images.paths)
    model = load_backbone(backbone, precision=precision, image_size=image_size, device=device)
    size = model.image_size
    tick = time.perf_counter()
    pixels = np.stack([images.image(i, size) for i in tqdm(range(len(images)), desc="read images", disable=not progress)])
    with_masks = task == "segment" or not missing_masks(images.mask_paths, images.is_normal)
    masks = np.stack([images.mask(i, size) for i in range(len(images))]) if with_masks else None
    levels = encode_images(model, pixels, cache, batch_size, progress, workers).to(model.device)
    data = FewShotData(images=images, task=task, backbone=model.name, weights=model.weights, compute=model.compute,
                       image_size=size, levels=levels, pixels=pixels, masks=masks,
                       warnings=backbone_warnings(model.name, model.has_text, task))
    if model.has_text:
        names, normal = _prompt_class_names(images)
        for style in prompt_styles:
            if with_masks:
                data.text[style] = normal_defect_embeddings(model, names, normal, style=style, cache=cache)
            if task == "segment":
                data.text["winclip"] = winclip_text_embeddings(model, cache=cache).to(model.device)
            if task == "classify":
                data.class_text[style] = class_text_embeddings(model, images.class_names, normal, style=style,
                                                               cache=cache).embeddings
    if with_masks:
        data.patches = patch_features(levels)
    if model.has_text and task == "segment":  # WinCLIP+'s windows, through the image tower (not cached)
        data.windows = {k: v.to(model.device) for k, v in model.encode_windows(pixels, batch_size=batch_size).items()}
    data.encode_s = time.perf_counter() - tick
    if images.normal_class is None or not images.is_normal.any():
        hint = (f"if one of the classes ({', '.join(images.class_names)}) is defect-free, name it with "
                "--normal-class")
        data.warnings.append(f"no defect-free images: image AUROC is undefined (null), pixel metrics are computed; {hint}"
                             if task == "segment" else f"no defect-free class: every class is a defect class; {hint}")
    return data


# ------------------------------------------------------------------ one episode, one method
def _finish_maps(patch_maps: torch.Tensor, data: FewShotData, sigma: float, top_fraction: float) -> SegmentationOutput:
    maps = upsample_and_smooth(patch_maps, data.levels.grid, data.image_size, sigma)
    return SegmentationOutput(maps=maps.cpu().numpy(), scores=image_scores(maps, top_fraction).cpu().numpy(),
                              patch_maps={"map": patch_maps.reshape(-1, *data.levels.grid).cpu().numpy()})


def segment_episode(data: FewShotData, episode: Episode, method: str = "semclip",
                    config: SegmentationConfig | None = None, prompt_style: str = "expert",
                    coreset_fraction: float = baselines.PATCHCORE_CORESET) -> tuple[SegmentationOutput, dict[str, float]]:
    """One method's defect maps of the episode's queries, and its seconds spent fitting and predicting.

    Taught in: 04_segmentation.
    """
    config = config or SegmentationConfig()
    if data.masks is None or data.patches is None:
        raise SemnbInputError("data", "was prepared for classification", "prepare_fewshot(..., task='segment')")
    support, queries = episode.support, episode.queries
    text = data.text.get(prompt_style) if data.has_text else None
    if data.has_text and text is None:
        raise SemnbInputError("prompt_style", f"{prompt_style!r} was not prepared", "pass it in prepare_fewshot(prompt_styles=...)")
    tick = time.perf_counter()
    if method == "semclip":
        model = SemClipSegmenter(config, data.compute).fit(data.patches.subset(support), data.masks[support], text,
                                                           seed=episode.seed)
        fit_s = time.perf_counter() - tick
        tick = time.perf_counter()
        out = model.predict(data.patches.subset(queries), data.image_size)
        return out, {"fit_s": fit_s, "predict_s": time.perf_counter() - tick}
    if method == "semnb":
        features = data.patchcore_features()
        model = SemnbSegmenter(SemnbSegmentConfig(config, coreset_fraction), data.compute).fit(
            data.patches.subset(support), features[support], data.masks[support], data.images.is_normal[support],
            data.image_size, text, seed=episode.seed)
        fit_s = time.perf_counter() - tick
        tick = time.perf_counter()
        out = model.predict(data.patches.subset(queries), features[queries], data.image_size)
        return out, {"fit_s": fit_s, "predict_s": time.perf_counter() - tick}
    coverage = data.compute.to(mask_coverage(data.masks[support], data.levels.grid).reshape(len(support), -1))
    memory = baselines.memory_rows(coverage, data.images.is_normal[support])
    if method == "winclip":
        if data.windows is None:
            raise SemnbInputError("winclip", "needs a CLIP backbone (text tower and image windows)",
                                  "use a CLIP backbone, or nn_visual / patchcore")
        coverage = data.compute.to(mask_coverage(data.masks[support], data.levels.grid).reshape(len(support), -1))
        memory = baselines.memory_rows(coverage, data.images.is_normal[support])
        bank = {k: v[support][memory[:, window_indices(data.levels.grid, k).to(memory.device)].all(dim=-1)]
                for k, v in data.windows.items()}  # the windows of defect-free patches only
        fit_s = time.perf_counter() - tick
        tick = time.perf_counter()
        maps, scores = baselines.winclip_plus({k: v[queries] for k, v in data.windows.items()}, bank,
                                              data.levels.embedding[queries], data.text["winclip"], data.levels.grid)
        smooth = upsample_and_smooth(maps, data.levels.grid, data.image_size, config.sigma)
        out = SegmentationOutput(maps=smooth.cpu().numpy(), scores=scores.cpu().numpy(),
                                 patch_maps={"map": maps.reshape(-1, *data.levels.grid).cpu().numpy()})
    elif method == "nn_visual":
        patches = data.patches
        fit_s = time.perf_counter() - tick
        tick = time.perf_counter()
        maps = baselines.nn_visual_patch_maps([t[queries] for t in patches.z], [t[support] for t in patches.z],
                                              memory, text)
        out = _finish_maps(maps, data, config.sigma, config.top_fraction)
    elif method == "patchcore":
        features = data.patchcore_features()
        bank = baselines.patchcore_memory(features[support], memory, coreset_fraction, seed=episode.seed)
        fit_s = time.perf_counter() - tick
        tick = time.perf_counter()
        maps = baselines.patchcore_patch_maps(features[queries], bank)
        smooth = baselines.nearest_upsample_and_smooth(maps, data.levels.grid, data.image_size, config.sigma)
        out = SegmentationOutput(maps=smooth.cpu().numpy(),
                                 scores=baselines.reweighted_image_scores(features[queries], maps, bank).cpu().numpy(),
                                 patch_maps={"map": maps.reshape(-1, *data.levels.grid).cpu().numpy()})
    else:
        raise SemnbInputError("method", f"got {method!r}", f"use one of {', '.join(SEGMENT_METHODS)}")
    return out, {"fit_s": fit_s, "predict_s": time.perf_counter() - tick}


def segmentation_scores(out: SegmentationOutput, masks: np.ndarray, is_defect: np.ndarray) -> dict[str, float]:
    """image AUROC (NaN without normal queries), pixel AUROC, pixel F1-max and AUPRO of one method's maps.

    The pixel scores are first replaced by their dense rank over all query pixels. The rank is
    a monotone map, so AUROC, F1-max and AUPRO do not change, but trained maps saturate near 0
    and `pixel_metrics`' equal-width score bins would otherwise tie many normal and defect
    pixels there; over ranks every bin holds the same number of distinct scores.

    Taught in: 04_segmentation.
    """
    ranks = np.unique(out.maps, return_inverse=True)[1].reshape(out.maps.shape).astype(np.float64)
    pixel = metrics.pixel_metrics(ranks, masks)
    return {"image_auroc": metrics.image_auroc(out.scores, is_defect),
            **{k: float(pixel[k]) for k in ("pixel_auroc", "pixel_f1_max", "aupro")}}


def classify_episode(data: FewShotData, episode: Episode, method: str = "semclip",
                     config: ClassificationConfig | DefectPoolingConfig | None = None,
                     prompt_style: str = "expert") -> tuple[np.ndarray, dict[str, float]]:
    """One method's class probabilities [Q, C] for the episode's queries, and its seconds fitting and predicting.

    `config`: a `DefectPoolingConfig` for "defect_pooled", a `ClassificationConfig` for "semclip".

    Taught in: 05_classification.
    """
    config = config or (DefectPoolingConfig() if method == "defect_pooled" else ClassificationConfig())
    n_classes = len(data.class_names)
    support, queries, labels = episode.support, episode.queries, episode.support_labels
    tick = time.perf_counter()
    if method == "semclip":
        class_text = data.class_text.get(prompt_style) if data.has_text else None
        if data.has_text and class_text is None and config.alpha < 1:
            raise SemnbInputError("prompt_style", f"{prompt_style!r} was not prepared",
                                  "pass it in prepare_fewshot(prompt_styles=...)")
        model = SemClipClassifier(config, data.compute).fit(data.levels.subset(support), labels, n_classes,
                                                            class_text, seed=episode.seed)
        fit_s = time.perf_counter() - tick
        tick = time.perf_counter()
        proba = model.predict(data.levels.subset(queries)).proba
    elif method == "linear_probe":
        last = data.levels.cls[-1]
        proba = baselines.linear_probe_proba(last[support], labels, last[queries], n_classes)
        fit_s = 0.0  # fitting and predicting are one call
    elif method == "prototype":
        emb = data.levels.embedding
        proba = baselines.prototype_proba(emb[support], labels, emb[queries], n_classes)
        fit_s = 0.0
    elif method == "semnb":
        if data.masks is None or data.patches is None:
            raise SemnbInputError("semnb", "needs a defect mask for every defect image, and this data set lacks some",
                                  "add X_mask.png beside each defect image X, or use another method")
        text = data.text.get(prompt_style) if data.has_text else None
        config = config if isinstance(config, SemnbClassifyConfig) else SemnbClassifyConfig()
        features = data.patchcore_features()
        tokens = data.levels.cls[-1]
        model = SemnbClassifier(config, data.compute).fit(
            data.patches.subset(support), features[support], tokens[support], data.masks[support],
            data.images.is_normal[support], labels, n_classes, data.image_size, text, seed=episode.seed)
        fit_s = time.perf_counter() - tick
        tick = time.perf_counter()
        proba = model.predict_proba(data.patches.subset(queries), features[queries], tokens[queries])
    elif method == "defect_pooled":
        if data.masks is None or data.patches is None:
            raise SemnbInputError("defect_pooled", "needs a defect mask for every defect image, and this data set "
                                  "lacks some", "add X_mask.png beside each defect image X, or use another method")
        text = data.text.get(prompt_style) if data.has_text else None
        if data.has_text and text is None:
            raise SemnbInputError("prompt_style", f"{prompt_style!r} was not prepared",
                                  "pass it in prepare_fewshot(prompt_styles=...)")
        model = DefectPooledClassifier(config, data.compute).fit(data.patches.subset(support), data.masks[support],
                                                                 labels, n_classes, text, seed=episode.seed)
        fit_s = time.perf_counter() - tick
        tick = time.perf_counter()
        proba = model.predict_proba(data.patches.subset(queries))
    else:
        raise SemnbInputError("method", f"got {method!r}", f"use one of {', '.join(CLASSIFY_METHODS)}")
    return proba, {"fit_s": fit_s, "predict_s": time.perf_counter() - tick}


# ------------------------------------------------------------------ whole evaluations
@dataclass(frozen=True)
class _Variant:
    """A method or ablation as run on one episode: its name, base method, settings and prompt style."""

    name: str
    method: str
    config: object
    prompt_style: str = "expert"


def _segment_variants(data: FewShotData, config: SegmentationConfig, ablations: bool) -> tuple[list[_Variant], list[str]]:
    variants = [_Variant(m, m, config) for m in SEGMENT_METHODS if m != "winclip" or data.windows is not None]
    skipped = []
    if ablations:
        for name, change in SEGMENT_ABLATIONS.items():
            if not data.has_text and name in ("semclip_generic_prompts", "semclip_z_only", "semclip_v_only"):
                skipped.append(name)
                continue
            style = "generic" if name == "semclip_generic_prompts" else "expert"
            variants.append(_Variant(name, "semclip", replace(config, **change), style))
    return variants, skipped


def _classify_variants(data: FewShotData, config: ClassificationConfig, ablations: bool,
                       coreset_fraction: float) -> tuple[list[_Variant], list[str]]:
    variants = []
    if data.masks is not None:
        variants.append(_Variant("semnb", "semnb", SemnbClassifyConfig(
            SemnbSegmentConfig(coreset_fraction=coreset_fraction))))
    variants += [_Variant(m, m, config) for m in CLASSIFY_METHODS if m not in ("semnb", "defect_pooled")]
    if data.masks is not None:
        variants.append(_Variant("defect_pooled", "defect_pooled", DefectPoolingConfig()))
    skipped = []
    if ablations:
        for name, change in CLASSIFY_ABLATIONS.items():
            if not data.has_text and name == "semclip_generic_prompts":
                skipped.append(name)
                continue
            style = "generic" if name == "semclip_generic_prompts" else "expert"
            variants.append(_Variant(name, "semclip", replace(config, **change), style))
    return variants, skipped


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise SemnbInputError("--seeds", "no seed given", "write e.g. --seeds 0,1,2")
    return seeds


def _run(data: FewShotData, task: str, shots: int, seeds: list[int], variants: list[_Variant],
         score: Callable[[_Variant, Episode], tuple[dict, dict]], progress: bool) -> tuple[dict, dict, list[Episode]]:
    """Every variant on every seed's episode: per-variant lists of metrics dicts and of timings."""
    per_seed: dict[str, list[dict]] = {v.name: [] for v in variants}
    times: dict[str, list[dict]] = {v.name: [] for v in variants}
    episodes = [sample_episode(data.labels, shots, seed, data.class_names) for seed in seeds]
    steps = tqdm(total=len(episodes) * len(variants), desc=f"{task} episodes", disable=not progress)
    for episode in episodes:
        for variant in variants:
            values, timing = score(variant, episode)
            per_seed[variant.name].append(values)
            times[variant.name].append(timing)
            steps.update()
    steps.close()
    return per_seed, times, episodes


def _timing(times: dict[str, list[dict]], main: Sequence[str], encode_s: float, total_s: float) -> dict[str, float]:
    out = {"encode_s": encode_s, "total_s": total_s}
    for name in main:
        for key in ("fit_s", "predict_s"):
            out[f"{name}_{key}"] = float(np.mean([t[key] for t in times[name]]))
    out["episode_s"] = float(sum(out[f"{name}_fit_s"] + out[f"{name}_predict_s"] for name in main))
    return out


def _result(data: FewShotData, task: str, shots: int, seeds: list[int]) -> EvalResult:
    return EvalResult(task=task, data=str(data.images.root), backbone=data.backbone, weights=data.weights,
                      precision=data.precision, shots=shots, seeds=seeds, n_images=len(data.images),
                      warnings=list(data.warnings))


def _query_warnings(data: FewShotData, episodes: list[Episode]) -> list[str]:
    out = []
    for cls, name in enumerate(data.class_names):
        if all(not np.any(data.labels[e.queries] == cls) for e in episodes):
            out.append(f"class {name!r} has no query images left after the support (all its images are shots)")
    return out


def _prepared(images: ImageSet | FewShotData, task: str, backbone: str, precision: str, image_size: int | None,
              max_per_class: int | None, cache: FeatureCache | None, ablations: bool, progress: bool,
              device: str, batch_size: int, workers: int) -> FewShotData:
    """`images` ready for episodes: as given when already prepared, else read and encoded once
    (with the generic prompts too when the ablations need them)."""
    if isinstance(images, FewShotData):
        return images
    styles = ("expert", "generic") if ablations else ("expert",)
    return prepare_fewshot(images, task, backbone, precision, image_size, max_per_class, cache, styles, progress,
                           device, batch_size, workers)


def evaluate_segmentation(images: ImageSet | FewShotData, backbone: str = DEFAULT_BACKBONE, shots: int = DEFAULT_SHOTS,
                          seeds: Sequence[int] = (0, 1, 2), precision: str = "auto", image_size: int | None = None,
                          ablations: bool = False, max_per_class: int | None = None,
                          config: SegmentationConfig | None = None,
                          coreset_fraction: float = baselines.PATCHCORE_CORESET,
                          cache: FeatureCache | None = None, progress: bool = False, device: str = "auto",
                          batch_size: int = 16, workers: int = 0) -> EvalResult:
    """SEM-CLIP segmentation, WinCLIP+-style and PatchCore-style baselines (and, with `ablations`, Table 3).

    `images` may be a `FewShotData` already prepared (then backbone, precision, image_size,
    max_per_class, cache, device, batch_size and workers are not used), so a shot sweep encodes nothing twice.
    `device` (`auto|cpu|cuda|cuda:N|mps`) and `precision` (`auto|fp32|bf16|fp16`): where and how
    the backbone and every method compute. `extra` holds: ablations (method -> metrics) when
    asked, class_names, image_size, n_queries, settings, device.

    Taught in: 04_segmentation.
    """
    started = time.perf_counter()
    seeds = _check_seeds(seeds)
    config = config or SegmentationConfig()
    data = _prepared(images, "segment", backbone, precision, image_size, max_per_class, cache, ablations, progress,
                     device, batch_size, workers)
    variants, skipped = _segment_variants(data, config, ablations)

    def score(variant: _Variant, episode: Episode) -> tuple[dict, dict]:
        out, timing = segment_episode(data, episode, variant.method, variant.config, variant.prompt_style,
                                      coreset_fraction)
        return segmentation_scores(out, data.masks[episode.queries], data.is_defect[episode.queries]), timing

    per_seed, times, episodes = _run(data, "segment", shots, seeds, variants, score, progress)
    result = _result(data, "segment", shots, seeds)
    aggregated = {name: metrics.mean_std_over_seeds(values) for name, values in per_seed.items()}
    methods = [m for m in SEGMENT_METHODS if m in aggregated]
    result.results = {m: aggregated[m] for m in methods}
    result.timing = _timing(times, methods, data.encode_s, time.perf_counter() - started)
    result.warnings += _query_warnings(data, episodes)
    if skipped:
        result.warnings.append(f"ablations not applicable to {data.backbone} (no text / no V-V path): {', '.join(skipped)}")
    result.extra = {
        "class_names": data.class_names, "normal_class": data.images.normal_class, "image_size": data.image_size,
        "n_queries": int(np.mean([len(e.queries) for e in episodes])),
        "settings": {**asdict(config), "coreset_fraction": coreset_fraction},
        "image_score": f"mean of the top {config.top_fraction:.0%} of each smoothed map",
        "device": str(data.device),
    }
    if ablations:
        result.extra["ablations"] = {name: aggregated[name] for name in aggregated if name not in SEGMENT_METHODS}
    return result


def evaluate_classification(images: ImageSet | FewShotData, backbone: str = DEFAULT_BACKBONE,
                            shots: int = DEFAULT_SHOTS, seeds: Sequence[int] = (0, 1, 2), precision: str = "auto",
                            image_size: int | None = None, ablations: bool = False,
                            max_per_class: int | None = None, config: ClassificationConfig | None = None,
                            cache: FeatureCache | None = None, progress: bool = False,
                            device: str = "auto", batch_size: int = 16, workers: int = 0,
                            coreset_fraction: float = baselines.PATCHCORE_CORESET) -> EvalResult:
    """SEM-CLIP classification, linear-probe and prototype baselines, defect_pooled (and, with `ablations`, Table 3).

    defect_pooled runs when the data set has a mask for every defect image; otherwise it is
    left out of `results` and a warning says why.

    `device` and `precision`, and a prepared `images`, as in `evaluate_segmentation`.
    `extra` holds: confusion_matrix (method -> counts summed over seeds, rows = true class),
    per_class (method -> class -> precision/recall/f1 means over seeds), ablations when asked,
    class_names, image_size, n_queries, settings, device.

    Taught in: 05_classification.
    """
    started = time.perf_counter()
    seeds = _check_seeds(seeds)
    config = config or ClassificationConfig()
    data = _prepared(images, "classify", backbone, precision, image_size, max_per_class, cache, ablations, progress,
                     device, batch_size, workers)
    if len(data.class_names) < 2:
        raise SemnbInputError(str(data.images.root), "has only one class", "classification needs two classes or more")
    variants, skipped = _classify_variants(data, config, ablations, coreset_fraction)
    reports: dict[str, list[dict]] = {v.name: [] for v in variants}

    def score(variant: _Variant, episode: Episode) -> tuple[dict, dict]:
        proba, timing = classify_episode(data, episode, variant.method, variant.config, variant.prompt_style)
        report = metrics.classification_report(data.labels[episode.queries], proba.argmax(axis=1), data.class_names)
        reports[variant.name].append(report)
        return report, timing

    per_seed, times, episodes = _run(data, "classify", shots, seeds, variants, score, progress)
    result = _result(data, "classify", shots, seeds)
    aggregated = {name: metrics.mean_std_over_seeds(values) for name, values in per_seed.items()}
    methods = [m for m in CLASSIFY_METHODS if m in aggregated]
    result.results = {m: aggregated[m] for m in methods}
    result.timing = _timing(times, methods, data.encode_s, time.perf_counter() - started)
    result.warnings += _query_warnings(data, episodes)
    if "defect_pooled" not in methods:
        result.warnings.append("defect_pooled skipped: it needs a defect mask for every defect image and this data "
                               "set lacks some (put X_mask.png beside image X, layout folders, or use mvtec's "
                               "ground_truth/)")
    if skipped:
        result.warnings.append(f"ablations not applicable to {data.backbone} (no text): {', '.join(skipped)}")
    result.extra = {
        "class_names": data.class_names, "normal_class": data.images.normal_class, "image_size": data.image_size,
        "n_queries": int(np.mean([len(e.queries) for e in episodes])),
        "settings": {**asdict(config),
                     **({"defect_pooled": asdict(DefectPoolingConfig())} if "defect_pooled" in methods else {})},
        "confusion_matrix": {m: np.sum([r["confusion_matrix"] for r in reports[m]], axis=0).tolist()
                             for m in methods},
        "per_class": {m: _per_class_means(reports[m]) for m in methods},
        "device": str(data.device),
    }
    if ablations:
        result.extra["ablations"] = {name: aggregated[name] for name in aggregated if name not in CLASSIFY_METHODS}
    return result


def _per_class_means(reports: list[dict]) -> dict[str, dict[str, float]]:
    names = reports[0]["per_class"].keys()
    return {name: {k: float(np.mean([r["per_class"][name][k] for r in reports])) for k in ("precision", "recall", "f1")}
            for name in names}


def shot_sweep(data: FewShotData, shots: Sequence[int] = (1, 2, 5, 10), seeds: Sequence[int] = (0, 1, 2),
               progress: bool = False, **options) -> pd.DataFrame:
    """Evaluate at several shot counts on prepared data: one row per (shots, method) with every metric and its std.

    Shot counts that some class cannot supply are skipped.

    Taught in: 04_segmentation and 05_classification.
    """
    evaluate = evaluate_segmentation if data.task == "segment" else evaluate_classification
    counts = np.bincount(data.labels[data.labels >= 0], minlength=len(data.class_names))
    rows = []
    for k in shots:
        if k > counts.min():
            continue
        result = evaluate(data, shots=k, seeds=seeds, progress=progress, **options)
        tables = {**result.results, **result.extra.get("ablations", {})}
        for method, values in tables.items():
            rows.append({"shots": k, "method": method, **values, "episode_s": result.timing["episode_s"]})
    return pd.DataFrame(rows)

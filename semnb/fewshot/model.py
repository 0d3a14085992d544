"""Fitted few-shot models: segment or classify with everything learned from a user's support, ready to save.

Why: `evaluate.py` draws episodes from a labelled set and scores them; a user instead has a
few labelled images (the support: all of them) and many unlabelled ones. `fit_segment` and
`fit_classify` train the package's methods (semnb's recommended ones, the default; SEM-CLIP and
its baselines, unchanged) on the whole support and return a `FittedModel` whose state is named
tensors plus JSON-able settings (no pickle: the scikit-learn probes are kept as their arrays and rebuilt), so that
`restore(settings, tensors)` predicts exactly what the fitted model predicts.

Segmentation threshold (stored with the sentence `threshold_rule`): a 2-fold cross-fit on the
support (a seeded split, stratified by defect-free/defect): each half is mapped by the method
fit on the other half, and the threshold is the pixel F1-max threshold over the pooled
held-out maps, so it is chosen on maps of images the model did not see. With one defect
image no half can hold one: the threshold is then the 0.995 quantile of the held-out
defect-free images' pixel scores (or, with no defect-free image either, of the defect image's
own scores outside its mask). The maps' range is (0, hi), hi the largest held-out map value,
so that a map written as round(clip(map / hi, 0, 1) * 65535) uses the 16 bits.

Taught in: 00_quickstart (fit -> save -> predict) and 09_report (the daily inspection report).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from semnb import metrics
from semnb.components import image_scores, upsample_and_smooth
from semnb.data.preprocess import resize
from semnb.errors import SemnbInputError
from semnb.fewshot import baselines
from semnb.fewshot.classification import ClassHead, ClassificationConfig, SemClipClassifier
from semnb.fewshot.defect_pooling import DefectPooledClassifier, DefectPoolingConfig
from semnb.fewshot.episodes import halves
from semnb.fewshot.recommended import SemnbClassifier, SemnbClassifyConfig, SemnbSegmentConfig, SemnbSegmenter
from semnb.fewshot.segmentation import (
    SegmentationConfig,
    SemClipSegmenter,
    TransformationLayer,
    mask_coverage,
    patch_features,
)
from semnb.fitted import FittedModel, ImagePrediction, check_backbone_weights
from semnb.hardware import Compute
from semnb.models import DEFAULT_BACKBONE, Backbone, EncodedLevels, encode_images, load_backbone
from semnb.prompts import NORMAL_KEY, class_text_embeddings, normal_defect_embeddings

# What `semnb fit` can save; the first is the default (the evaluation's recommended method).
SEGMENT_METHODS = ("semnb", "semclip", "patchcore", "nn_visual")
CLASSIFY_METHODS = ("semnb", "semclip", "linear_probe", "prototype", "defect_pooled")
NORMAL_QUANTILE = 0.995  # the fallback threshold: this quantile of defect-free pixel scores
DEFECT_CLASS = "defect"  # the defect prompts' class when fit_segment is given no class names
_BACKBONE_KEYS = ("method", "backbone", "backbone_weights", "backbone_seed", "image_size", "precision", "tensors")


# ------------------------------------------------------------------ shared pieces
def _check_pixels(pixels: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    pixels = list(pixels)
    if not pixels:
        raise SemnbInputError(what, "holds no image", "pass at least one image")
    return pixels


def _shape(image: np.ndarray) -> tuple[int, int]:
    return tuple(int(n) for n in np.shape(image)[:2])


def _encode(backbone: Backbone, pixels: Sequence[np.ndarray], progress: bool = False) -> EncodedLevels:
    """The images' levels on the backbone's device (resized to its input size as `encode_images` does)."""
    return encode_images(backbone, pixels, progress=progress).to(backbone.device)


def _masks_at(masks: Sequence[np.ndarray | None], pixels: Sequence[np.ndarray], size: int,
              needed: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The masks at each image's own size (None -> empty where allowed) and at the backbone's S x S (nearest)."""
    own = []
    for i, (mask, image) in enumerate(zip(masks, pixels)):
        if mask is None:
            if needed[i]:
                raise SemnbInputError(f"support image {i}", "is a defect image without a mask",
                                      "add its mask (X_mask.png beside image X), or leave the image out")
            mask = np.zeros(_shape(image), dtype=bool)
        mask = np.asarray(mask) > 0
        if mask.shape != _shape(image):
            raise SemnbInputError(f"support mask {i}", f"has shape {mask.shape} for an image of {_shape(image)}",
                                  "give each image the mask drawn on it, at its size")
        own.append(mask)
    return own, np.stack([resize(m, size, method="nearest") for m in own])


def _backbone_settings(backbone: Backbone, method: str, seed: int) -> dict:
    return {"method": method, "backbone": backbone.name, "backbone_weights": backbone.weights,
            "backbone_seed": int(seed), "image_size": backbone.image_size, "precision": backbone.precision}


def _cpu(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _check_state(settings: Mapping, tensors: Mapping[str, torch.Tensor], keys: Sequence[str], methods: Sequence[str],
                 where: str) -> None:
    """Refuse settings or tensors that lack what restore reads, in one line that says what to do."""
    missing = [k for k in keys if k not in settings]
    missing += [n for n in settings.get("tensors", ()) if n not in tensors]
    fix = "fit the model again with this version of semnb (semnb fit ...)"
    if missing:
        raise SemnbInputError(where, f"is incomplete or from another version (missing {', '.join(missing)})", fix)
    if settings["method"] not in methods:
        raise SemnbInputError(where, f"is incomplete or from another version (method {settings['method']!r})", fix)


def _config(kind: type, values: Mapping, where: str):
    """A config dataclass from its settings; unknown keys mean another version."""
    try:
        if kind is DefectPoolingConfig:
            return DefectPoolingConfig(**{**values, "segmentation": SegmentationConfig(**values["segmentation"])})
        if kind is SemnbSegmentConfig:
            return SemnbSegmentConfig(**{**values, "segmentation": SegmentationConfig(**values["segmentation"])})
        if kind is SemnbClassifyConfig:
            return SemnbClassifyConfig(**{**values, "segment": _config(SemnbSegmentConfig, values["segment"], where)})
        return kind(**values)
    except (TypeError, KeyError) as err:
        raise SemnbInputError(where, f"is incomplete or from another version (its config: {err})",
                              "fit the model again with this version of semnb (semnb fit ...)") from err


def _restore_backbone(settings: Mapping, device: str, precision: str | None, where: str) -> Backbone:
    backbone = load_backbone(settings["backbone"], precision=precision or settings["precision"],
                             image_size=settings["image_size"], seed=settings["backbone_seed"], device=device)
    check_backbone_weights(backbone.weights, settings, where)
    return backbone


def _segmenter_tensors(segmenter: SemClipSegmenter, prefix: str) -> dict[str, torch.Tensor]:
    """What a fitted `SemClipSegmenter` learned: the transformation layer, the anchors (no text), the text."""
    out = {} if segmenter.layer is None else {f"{prefix}layer.{k}": v for k, v in segmenter.layer.state_dict().items()}
    out.update({f"{prefix}anchor.{j}": a for j, a in enumerate(segmenter.anchors)})
    if segmenter.text is not None:
        out[f"{prefix}text"] = segmenter.text
    return out


def _restore_segmenter(config: SegmentationConfig, compute: Compute, tensors: Mapping[str, torch.Tensor],
                       prefix: str) -> SemClipSegmenter:
    segmenter = SemClipSegmenter(config, compute)
    layer = {k[len(prefix) + 6:]: v for k, v in tensors.items() if k.startswith(f"{prefix}layer.")}
    if layer:
        weights = [layer[f"maps.{j}.weight"] for j in range(len(layer) // 2)]
        with torch.device("cpu"):  # built as fit builds it, then given the stored weights
            restored = TransformationLayer([int(w.shape[1]) for w in weights], int(weights[0].shape[0]), True,
                                           torch.Generator())
        restored.load_state_dict(layer)
        segmenter.layer = restored.to(compute.device)
    count = sum(k.startswith(f"{prefix}anchor.") for k in tensors)
    segmenter.anchors = [compute.to(tensors[f"{prefix}anchor.{j}"]) for j in range(count)]
    if f"{prefix}text" in tensors:
        segmenter.text = compute.to(tensors[f"{prefix}text"])
    return segmenter


def _semnb_segmenter_tensors(segmenter: SemnbSegmenter, prefix: str) -> dict[str, torch.Tensor]:
    """What a fitted `SemnbSegmenter` learned: its SEM-CLIP part, the PatchCore coreset, the distance calibration."""
    out = {**_segmenter_tensors(segmenter.semclip, f"{prefix}semclip."), f"{prefix}memory": segmenter.bank,
           f"{prefix}calibration": torch.tensor(segmenter.calibration, dtype=torch.float64, device="cpu")}
    if segmenter.score_gate is not None:
        out[f"{prefix}score_gate"] = torch.tensor(segmenter.score_gate, dtype=torch.float64, device="cpu")
    out[f"{prefix}sigma"] = torch.tensor(segmenter.sigma, dtype=torch.float64, device="cpu")
    if segmenter.score_mix is not None:  # nn_visual's memory enters the image score
        out[f"{prefix}score_mix"] = torch.tensor(segmenter.score_mix, dtype=torch.float64, device="cpu")
        out.update({f"{prefix}visual.{j}": v for j, v in enumerate(segmenter.visual)})
    return out


def _restore_semnb_segmenter(config: SemnbSegmentConfig, compute: Compute, tensors: Mapping[str, torch.Tensor],
                             prefix: str) -> SemnbSegmenter:
    segmenter = SemnbSegmenter(config, compute)
    segmenter.semclip = _restore_segmenter(config.segmentation, compute, tensors, f"{prefix}semclip.")
    segmenter.bank = compute.to(tensors[f"{prefix}memory"])
    segmenter.calibration = tuple(float(v) for v in tensors[f"{prefix}calibration"])
    if f"{prefix}score_gate" in tensors:
        segmenter.score_gate = tuple(float(v) for v in tensors[f"{prefix}score_gate"])
    if f"{prefix}sigma" in tensors:  # models saved before the smoothing was chosen keep the config's
        segmenter.sigma = float(tensors[f"{prefix}sigma"])
    if f"{prefix}score_mix" in tensors:
        segmenter.score_mix = tuple(float(v) for v in tensors[f"{prefix}score_mix"])
        count = sum(k.startswith(f"{prefix}visual.") for k in tensors)
        segmenter.visual = [compute.to(tensors[f"{prefix}visual.{j}"]) for j in range(count)]
    return segmenter


def _probe_tensors(probe: Pipeline, prefix: str) -> dict[str, torch.Tensor]:
    """A fitted standardise + logistic-regression probe as its arrays (float64, exact)."""
    scaler, logistic = probe[0], probe[-1]
    arrays = {"mean": scaler.mean_, "scale": scaler.scale_, "coef": logistic.coef_,
              "intercept": logistic.intercept_, "classes": logistic.classes_}
    return {f"{prefix}{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def _restore_probe(tensors: Mapping[str, torch.Tensor], prefix: str) -> Pipeline:
    """The probe rebuilt from its arrays: scikit-learn predicts from exactly these attributes."""
    scaler, logistic = StandardScaler(), LogisticRegression()
    scaler.mean_ = tensors[f"{prefix}mean"].numpy()
    scaler.scale_ = tensors[f"{prefix}scale"].numpy()
    scaler.var_ = scaler.scale_ ** 2
    logistic.coef_ = tensors[f"{prefix}coef"].numpy()
    logistic.intercept_ = tensors[f"{prefix}intercept"].numpy()
    logistic.classes_ = tensors[f"{prefix}classes"].numpy()
    scaler.n_features_in_ = logistic.n_features_in_ = int(scaler.mean_.shape[0])
    return make_pipeline(scaler, logistic)


def _own_size(maps: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Each S x S map resized (bilinear) to its image's own (H, W): CPU float32 arrays."""
    return [F.interpolate(m[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0].cpu().numpy()
            for m, shape in zip(maps, shapes)]


# ------------------------------------------------------------------ segmentation
class SegmentModel(FittedModel):
    """A few-shot segmenter fit on a whole support: a defect map per image, its score, and a threshold.

    `method`: "semnb" (the recommended `SemnbSegmenter`: SEM-CLIP's supervised map times PatchCore's
    calibrated memory map, as `semnb eval segment` measures it), "semclip" (the trained `SemClipSegmenter`),
    or the memory-bank baselines "nn_visual" and "patchcore" (the support's defect-free patches,
    `baselines.memory_rows`; PatchCore's locally aware features and 10 % coreset; its map smoothed as
    semclip's, its score the top 1 % mean).

    Taught in: 00_quickstart.
    """

    task = "segment"

    def __init__(self, backbone: Backbone, method: str, config: SegmentationConfig, info: Mapping,
                 segmenter: SemClipSegmenter | SemnbSegmenter | None = None, memory: Sequence[torch.Tensor] = (),
                 text: torch.Tensor | None = None):
        self.backbone, self.method, self.config, self.info = backbone, method, config, dict(info)
        self.segmenter, self.memory, self.text = segmenter, list(memory), text

    @classmethod
    def _fit(cls, backbone: Backbone, method: str, config: SegmentationConfig, levels: EncodedLevels,
             masks: np.ndarray, is_normal: np.ndarray, text: torch.Tensor | None, seed: int) -> SegmentModel:
        """The method fit on these support features and S x S masks (no threshold yet)."""
        compute = backbone.compute
        if method == "semclip":
            segmenter = SemClipSegmenter(config, compute).fit(patch_features(levels), masks, text, seed=seed)
            return cls(backbone, method, config, {}, segmenter=segmenter, text=text)
        if method == "semnb":
            segmenter = SemnbSegmenter(SemnbSegmentConfig(config), compute).fit(
                patch_features(levels), baselines.patchcore_embedding(levels.patch_z, levels.grid), masks, is_normal,
                backbone.image_size, text, seed=seed)
            return cls(backbone, method, config, {}, segmenter=segmenter)
        coverage = compute.to(mask_coverage(masks, levels.grid).reshape(len(masks), -1))
        rows = baselines.memory_rows(coverage, is_normal)
        if method == "nn_visual":
            memory = [z[rows] for z in patch_features(levels).z]
        else:
            features = baselines.patchcore_embedding(levels.patch_z, levels.grid)
            memory = [baselines.patchcore_memory(features, rows, seed=seed)]
        return cls(backbone, method, config, {}, memory=memory, text=text)

    @property
    def image_size(self) -> int:
        return self.backbone.image_size

    @property
    def map_range(self) -> tuple[float, float]:
        lo, hi = self.info["map_range"]
        return float(lo), float(hi)

    def _smoothed(self, levels: EncodedLevels) -> tuple[torch.Tensor, torch.Tensor]:
        """The method's patch maps, upsampled and smoothed to S x S as evaluate does, and the image scores."""
        if self.method == "semnb":
            return self.segmenter.smoothed(patch_features(levels),
                                           baselines.patchcore_embedding(levels.patch_z, levels.grid),
                                           self.image_size)[:2]
        if self.method == "semclip":
            patch_maps = sum(self.segmenter.patch_maps(patch_features(levels)).values())
        else:
            every = torch.ones(1, len(self.memory[0]), dtype=torch.bool, device=self.memory[0].device)
            bank = [m[None] for m in self.memory]
            if self.method == "nn_visual":
                patch_maps = baselines.nn_visual_patch_maps(patch_features(levels).z, bank, every, self.text)
            else:
                patch_maps = baselines.patchcore_patch_maps(
                    baselines.patchcore_embedding(levels.patch_z, levels.grid), self.memory[0])
        maps = upsample_and_smooth(patch_maps, levels.grid, self.image_size, self.config.sigma)
        return maps, image_scores(maps, self.config.top_fraction)

    def _maps(self, levels: EncodedLevels, shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        return _own_size(self._smoothed(levels)[0], shapes)

    def predict(self, pixels: Sequence[np.ndarray]) -> list[ImagePrediction]:
        """One map per image at its own size, clipped to `map_range`, and the image score (top 1 % mean at S x S).

        Taught in: 00_quickstart.
        """
        pixels = _check_pixels(pixels, "images")
        maps, scores = self._smoothed(_encode(self.backbone, pixels))
        lo, hi = self.map_range
        return [ImagePrediction(score=float(score), defect_map=np.clip(m, lo, hi).astype(np.float32))
                for m, score in zip(_own_size(maps, [_shape(p) for p in pixels]), scores.cpu().numpy())]

    def settings(self) -> dict:
        config = self.segmenter.config if self.method == "semnb" else self.config
        return {**_backbone_settings(self.backbone, self.method, self.info["backbone_seed"]), **self.info,
                "config": asdict(config), "tensors": sorted(self.tensors())}

    def tensors(self) -> dict[str, torch.Tensor]:
        if self.method == "semnb":
            return _cpu(_semnb_segmenter_tensors(self.segmenter, "segmenter."))
        out = {} if self.segmenter is None else _segmenter_tensors(self.segmenter, "segmenter.")
        out.update({f"memory.{j}": m for j, m in enumerate(self.memory)})
        if self.text is not None and self.method == "nn_visual":
            out["text"] = self.text
        return _cpu(out)

    @classmethod
    def restore(cls, settings: Mapping, tensors: Mapping[str, torch.Tensor], device: str = "auto",
                precision: str | None = None) -> SegmentModel:
        """The fitted model back from `settings()` and `tensors()`, on `device`.

        Taught in: 00_quickstart.
        """
        where = "segment model"
        _check_state(settings, tensors, (*_BACKBONE_KEYS, "config", "threshold", "threshold_rule", "map_range"),
                     SEGMENT_METHODS, where)
        method = settings["method"]
        config = _config(SemnbSegmentConfig if method == "semnb" else SegmentationConfig, settings["config"], where)
        backbone = _restore_backbone(settings, device, precision, where)
        compute = backbone.compute
        info = {k: v for k, v in settings.items() if k not in (*_BACKBONE_KEYS, "config")}
        info["backbone_seed"] = settings["backbone_seed"]
        if method == "semnb":
            segmenter = _restore_semnb_segmenter(config, compute, tensors, "segmenter.")
            return cls(backbone, method, config.segmentation, info, segmenter=segmenter)
        segmenter = _restore_segmenter(config, compute, tensors, "segmenter.") if method == "semclip" else None
        memory = [compute.to(tensors[f"memory.{j}"]) for j in range(sum(k.startswith("memory.") for k in tensors))]
        text = compute.to(tensors["text"]) if "text" in tensors else None
        return cls(backbone, method, config, info, segmenter=segmenter, memory=memory, text=text)


def _choose_threshold(held_out: Callable[[np.ndarray, np.ndarray], list[np.ndarray]],
                      in_sample: Callable[[], list[np.ndarray]], masks: list[np.ndarray], is_normal: np.ndarray,
                      seed: int) -> tuple[float, float, str]:
    """(threshold, hi, rule) from held-out maps of the support (see the module docstring).

    `held_out(train, test)`: the maps of the `test` images by the method fit on `train`, at their own sizes.
    """
    rng = np.random.default_rng(seed)
    defect, normal = np.flatnonzero(~is_normal), np.flatnonzero(is_normal)
    maps, truth = [], []
    if len(defect) >= 2:
        fold = np.empty(len(masks), dtype=int)
        fold[defect], fold[normal] = halves(defect, rng), halves(normal, rng)
        for k in (0, 1):
            test = np.flatnonzero(fold == k)
            maps += held_out(np.flatnonzero(fold != k), test)
            truth += [masks[i] for i in test]
        pooled = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
        threshold = metrics.f1_max_threshold(pooled, np.concatenate([t.ravel() for t in truth]))
        rule = (f"2-fold cross-fit on the {len(masks)} support images (split seeded with {seed}, stratified by "
                "defect-free/defect): each half mapped by the method fit on the other half; threshold = the pixel "
                "F1-max threshold over the pooled held-out maps")
        return threshold, float(pooled.max()), rule
    if len(normal):
        fold = halves(normal, rng)
        for k in sorted(set(fold)):
            maps += held_out(np.r_[defect, normal[fold != k]], normal[fold == k])
        pooled = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
        rule = (f"the support has one defect image, so no held-out half could hold one: threshold = the "
                f"{NORMAL_QUANTILE} quantile of the {len(normal)} defect-free images' pixel scores, each half mapped "
                "by the method fit on the defect image and the other defect-free images")
    else:
        maps = in_sample()
        pooled = np.concatenate([m[~t].ravel() for m, t in zip(maps, masks)]).astype(np.float64)
        rule = (f"the support is one defect image, so nothing could be held out: threshold = the {NORMAL_QUANTILE} "
                "quantile of its map outside its mask, as the fitted model maps it (in-sample: may be too low)")
    hi = max(float(m.max()) for m in maps)
    return float(np.quantile(pooled, NORMAL_QUANTILE)), hi, rule


def fit_segment(pixels: Sequence[np.ndarray], masks: Sequence[np.ndarray | None], is_normal: Sequence[bool],
                backbone: str = DEFAULT_BACKBONE, method: str = SEGMENT_METHODS[0], image_size: int | None = None,
                device: str = "auto", precision: str = "auto", seed: int = 0, progress: bool = False,
                class_names: Sequence[str] | None = None, normal_class: str = NORMAL_KEY,
                config: SegmentationConfig | None = None) -> SegmentModel:
    """Fit a defect segmenter on every support image: defect images with masks, defect-free ones (masks may be None).

    `method`: "semnb" by default (the recommended segmenter, which `semnb eval segment` prints first).

    `class_names` (optional, with `normal_class`): the support's classes, whose expert prompts
    give a CLIP backbone its (normal, defect) text; without them the defect prompts are the
    knowledge base's fallback about "defect". The threshold and map range are chosen from
    the support as the module docstring says, and stored in the settings.

    Taught in: 00_quickstart.
    """
    pixels = _check_pixels(pixels, "support")
    is_normal = np.asarray(is_normal, dtype=bool)
    masks = list(masks)
    if not len(masks) == len(is_normal) == len(pixels):
        raise SemnbInputError("support", f"{len(pixels)} images, {len(masks)} masks, {len(is_normal)} is_normal flags",
                              "pass one mask (None for a defect-free image) and one flag per image")
    if method not in SEGMENT_METHODS:
        raise SemnbInputError("--method", f"got {method!r}", f"use one of {', '.join(SEGMENT_METHODS)}")
    if is_normal.all():
        raise SemnbInputError("support", f"holds only defect-free images ({len(pixels)})",
                              "add defect images with their masks (X_mask.png beside image X)")
    config = config or SegmentationConfig()
    model = load_backbone(backbone, precision=precision, image_size=image_size, seed=seed, device=device)
    own, masks_s = _masks_at(masks, pixels, model.image_size, ~is_normal)
    levels = _encode(model, pixels, progress)
    text, prompt_classes = None, None
    if model.has_text:
        prompt_classes = list(class_names or [normal_class, DEFECT_CLASS])
        prompt_classes += [] if normal_class in prompt_classes else [normal_class]
        text = normal_defect_embeddings(model, prompt_classes, normal_class)
    shapes = [_shape(p) for p in pixels]

    def fitted(rows: np.ndarray) -> SegmentModel:
        return SegmentModel._fit(model, method, config, levels.subset(rows), masks_s[rows], is_normal[rows], text, seed)

    def held_out(train: np.ndarray, test: np.ndarray) -> list[np.ndarray]:
        return fitted(train)._maps(levels.subset(test), [shapes[i] for i in test])

    everything = np.arange(len(pixels))
    result = fitted(everything)
    threshold, hi, rule = _choose_threshold(held_out, lambda: result._maps(levels, shapes), own, is_normal, seed)
    result.info = {
        "backbone_seed": int(seed), "threshold": threshold, "threshold_rule": rule,
        "map_range": [0.0, max(hi, threshold)],
        "map_range_rule": "(0, the largest value of the maps the threshold was chosen on); larger values are clipped",
        "image_score": (f"sqrt(P(defect | PatchCore's eq. 7 score) x the mean of the top {config.top_fraction:.0%} of "
                        "the smoothed map), P calibrated on the support's cross-fit"
                        if method == "semnb" and result.segmenter.score_gate is not None else
                        f"mean of the top {config.top_fraction:.0%} of each smoothed map at the backbone's size")
                       + (", averaged (standardised on the support's cross-fit) with nn_visual's image score"
                          if method == "semnb" and result.segmenter.score_mix is not None else ""),
        "prompt_classes": prompt_classes, "normal_class": normal_class if prompt_classes else None,
        "n_support": len(pixels), "n_defect_free": int(is_normal.sum()),
    }
    return result


# ------------------------------------------------------------------ classification
class ClassifyModel(FittedModel):
    """A few-shot classifier fit on a whole support: the class of each image and every class's probability.

    `method`: "semnb" (the recommended `SemnbClassifier`), "semclip" (`SemClipClassifier`), "defect_pooled"
    (`DefectPooledClassifier`), or the baselines "linear_probe" (last-level class token) and "prototype"
    (image embedding).

    Taught in: 00_quickstart.
    """

    task = "classify"

    def __init__(self, backbone: Backbone, method: str, class_names: Sequence[str], info: Mapping,
                 classifier: SemClipClassifier | DefectPooledClassifier | SemnbClassifier | None = None,
                 probe: Pipeline | None = None,
                 prototypes: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.backbone, self.method, self.class_names, self.info = backbone, method, list(class_names), dict(info)
        self.classifier, self.probe, self.prototypes = classifier, probe, prototypes

    def _proba(self, levels: EncodedLevels) -> np.ndarray:
        n = len(self.class_names)
        if self.method == "semclip":
            return self.classifier.predict(levels).proba
        if self.method == "defect_pooled":
            return self.classifier.predict_proba(patch_features(levels))
        if self.method == "semnb":
            return self.classifier.predict_proba(patch_features(levels),
                                                 baselines.patchcore_embedding(levels.patch_z, levels.grid),
                                                 levels.cls[-1])
        if self.method == "linear_probe":
            return baselines.linear_probe_predict(self.probe, levels.cls[-1], n)
        embeddings, labels = self.prototypes
        return baselines.prototype_proba(embeddings, labels.cpu().numpy(), levels.embedding, n)

    def predict(self, pixels: Sequence[np.ndarray]) -> list[ImagePrediction]:
        """The most probable class of each image, every class's probability, and the top probability as score.

        Taught in: 00_quickstart.
        """
        proba = self._proba(_encode(self.backbone, _check_pixels(pixels, "images")))
        return [ImagePrediction(score=float(row.max()), label=self.class_names[int(row.argmax())],
                                probabilities={name: float(p) for name, p in zip(self.class_names, row)})
                for row in proba]

    def settings(self) -> dict:
        config = {} if self.classifier is None else {"config": asdict(self.classifier.config)}
        return {**_backbone_settings(self.backbone, self.method, self.info["backbone_seed"]), **self.info, **config,
                "class_names": self.class_names, "tensors": sorted(self.tensors())}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        if self.method == "semclip":
            clf = self.classifier
            out.update({} if clf.head is None else {f"head.{k}": v for k, v in clf.head.state_dict().items()})
            out.update({f"anchor.{j}": a for j, a in enumerate(clf.anchors)})
        if self.method == "defect_pooled":
            out.update(_segmenter_tensors(self.classifier.segmenter, "segmenter."))
            out.update(_probe_tensors(self.classifier.probe, "probe."))
        if self.method == "semnb":
            clf = self.classifier
            out.update(_semnb_segmenter_tensors(clf.segmenter, "segmenter."))
            out.update(_probe_tensors(clf.probe, "probe."))
            if clf.gate is not None:
                out.update({"gate.coef": torch.from_numpy(clf.gate.coef_), "gate.intercept":
                            torch.from_numpy(clf.gate.intercept_), "gate.normal": torch.tensor(clf.normal, device="cpu")})
        if self.method == "linear_probe":
            out.update(_probe_tensors(self.probe, "probe."))
        if self.method == "prototype":
            out["support_embedding"], out["support_labels"] = self.prototypes
        return _cpu(out)

    @classmethod
    def restore(cls, settings: Mapping, tensors: Mapping[str, torch.Tensor], device: str = "auto",
                precision: str | None = None) -> ClassifyModel:
        """The fitted model back from `settings()` and `tensors()`, on `device`.

        Taught in: 00_quickstart.
        """
        where = "classify model"
        _check_state(settings, tensors, (*_BACKBONE_KEYS, "class_names", "normal_class"), CLASSIFY_METHODS, where)
        method, names = settings["method"], list(settings["class_names"])
        if method in ("semnb", "semclip", "defect_pooled") and "config" not in settings:
            _check_state({}, tensors, ("config",), CLASSIFY_METHODS, where)
        backbone = _restore_backbone(settings, device, precision, where)
        compute = backbone.compute
        info = {k: v for k, v in settings.items() if k not in (*_BACKBONE_KEYS, "config", "class_names")}
        info["backbone_seed"] = settings["backbone_seed"]
        model = cls(backbone, method, names, info)
        if method == "semclip":
            clf = SemClipClassifier(_config(ClassificationConfig, settings["config"], where), compute)
            if "head.linear.weight" in tensors:
                weight = tensors["head.linear.weight"]
                with torch.device("cpu"):  # built as fit builds it, then given the stored weights
                    head = ClassHead([int(weight.shape[1])], int(weight.shape[0]), torch.Generator())
                head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
                clf.head = head.to(compute.device)
            count = sum(k.startswith("anchor.") for k in tensors)
            clf.anchors = [compute.to(tensors[f"anchor.{j}"]) for j in range(count)]
            clf.uses_text = backbone.has_text
            model.classifier = clf
        elif method == "defect_pooled":
            config = _config(DefectPoolingConfig, settings["config"], where)
            clf = DefectPooledClassifier(config, compute)
            clf.segmenter = _restore_segmenter(config.segmentation, compute, tensors, "segmenter.")
            clf.probe, clf.n_classes = _restore_probe(tensors, "probe."), len(names)
            model.classifier = clf
        elif method == "semnb":
            if "probe_features" not in settings:
                _check_state({}, tensors, ("probe_features",), CLASSIFY_METHODS, where)
            config = _config(SemnbClassifyConfig, settings["config"], where)
            clf = SemnbClassifier(config, compute)
            clf.segmenter = _restore_semnb_segmenter(config.segment, compute, tensors, "segmenter.")
            clf.probe, clf.n_classes = _restore_probe(tensors, "probe."), len(names)
            clf.features = settings["probe_features"]
            if "gate.coef" in tensors:  # the gate's logistic regression, from the arrays it predicts with
                clf.gate = LogisticRegression()
                clf.gate.coef_, clf.gate.intercept_ = tensors["gate.coef"].numpy(), tensors["gate.intercept"].numpy()
                clf.gate.classes_, clf.gate.n_features_in_ = np.array([0, 1]), 1
                clf.normal = int(tensors["gate.normal"])
            model.classifier = clf
        elif method == "linear_probe":
            model.probe = _restore_probe(tensors, "probe.")
        else:
            model.prototypes = (compute.to(tensors["support_embedding"]), tensors["support_labels"])
        return model


def fit_classify(pixels: Sequence[np.ndarray], labels: Sequence[int], class_names: Sequence[str],
                 normal_class: str | None = None, masks: Sequence[np.ndarray | None] | None = None,
                 backbone: str = DEFAULT_BACKBONE, method: str | None = None, image_size: int | None = None,
                 device: str = "auto", precision: str = "auto", seed: int = 0,
                 progress: bool = False) -> ClassifyModel:
    """Fit a defect classifier on every support image (`labels` index `class_names`).

    `method` None: "semnb" (the recommended classifier) when every defect image (every image not
    of `normal_class`) has a mask, as it classifies the region the segmenter marks; else "semclip".

    Taught in: 00_quickstart.
    """
    pixels = _check_pixels(pixels, "support")
    labels = np.asarray(labels, dtype=np.int64)
    names = list(class_names)
    if len(labels) != len(pixels) or (masks is not None and len(masks) != len(pixels)):
        raise SemnbInputError("support", f"{len(pixels)} images, {len(labels)} labels"
                              + ("" if masks is None else f", {len(masks)} masks"), "pass one label (and mask) per image")
    if labels.min() < 0 or labels.max() >= len(names):
        raise SemnbInputError("labels", f"range {labels.min()}..{labels.max()} for {len(names)} class names",
                              "label every support image with the index of one of class_names")
    present = np.unique(labels)
    if len(present) < 2:
        raise SemnbInputError("support", f"holds one class only ({names[present[0]]})",
                              "classification needs two classes or more: add a second class folder (e.g. the "
                              "defect-free images, or another defect class)")
    if len(present) < len(names):
        absent = [n for i, n in enumerate(names) if i not in present]
        raise SemnbInputError("support", f"has no image of class {absent[0]!r}", "add its images or drop the class")
    if normal_class is not None and normal_class not in names:
        raise SemnbInputError("--normal-class", f"{normal_class!r} is not one of the classes ({', '.join(names)})",
                              "name the defect-free class folder, or leave it out")
    is_normal = labels == (names.index(normal_class) if normal_class is not None else -1)
    with_masks = masks is not None and all(m is not None for m, n in zip(masks, is_normal) if not n)
    asked, method = method, method or ("semnb" if with_masks else "semclip")
    if method not in CLASSIFY_METHODS:
        raise SemnbInputError("--method", f"got {method!r}", f"use one of {', '.join(CLASSIFY_METHODS)}")
    if method in ("semnb", "defect_pooled") and not with_masks:
        raise SemnbInputError(method, "needs a defect mask for every defect image, and this support lacks "
                              "some", "add X_mask.png beside each defect image X, or use --method semclip")
    model = load_backbone(backbone, precision=precision, image_size=image_size, seed=seed, device=device)
    compute = model.compute
    levels = _encode(model, pixels, progress)
    prompt_normal = normal_class or NORMAL_KEY
    info = {"backbone_seed": int(seed), "normal_class": normal_class, "n_support": len(pixels),
            "count_per_class": {n: int((labels == i).sum()) for i, n in enumerate(names)},
            "method_rule": ("asked for" if asked else "the default: semnb, as every defect image has a mask"
                            if with_masks else "the default: semclip, as semnb needs a mask for every defect "
                            "image and some have none")}
    result = ClassifyModel(model, method, names, info)
    if method == "semclip":
        text = (class_text_embeddings(model, names, prompt_normal).embeddings if model.has_text else None)
        result.classifier = SemClipClassifier(ClassificationConfig(), compute).fit(levels, labels, len(names), text,
                                                                                   seed=seed)
    elif method in ("semnb", "defect_pooled"):
        prompt_classes = names if prompt_normal in names else [*names, prompt_normal]
        text = normal_defect_embeddings(model, prompt_classes, prompt_normal) if model.has_text else None
        masks_s = _masks_at(masks, pixels, model.image_size, ~is_normal)[1]
        if method == "semnb":
            result.classifier = SemnbClassifier(SemnbClassifyConfig(), compute).fit(
                patch_features(levels), baselines.patchcore_embedding(levels.patch_z, levels.grid), levels.cls[-1],
                masks_s, is_normal, labels, len(names), model.image_size, text, seed=seed)
            result.info["probe_features"] = result.classifier.features
        else:
            result.classifier = DefectPooledClassifier(DefectPoolingConfig(), compute).fit(
                patch_features(levels), masks_s, labels, len(names), text, seed=seed)
    elif method == "linear_probe":
        result.probe = baselines.fit_linear_probe(levels.cls[-1], labels)
    else:
        result.prototypes = (levels.embedding, torch.from_numpy(labels))
    return result

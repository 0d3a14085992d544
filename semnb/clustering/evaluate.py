"""The clustering protocol: the SSL embedding against its baselines, on the same images, scored alike.

Every method (`METHODS`) turns the same preprocessed images into one feature vector per
image (`baseline_specs` for the baselines; `ssl`, semnb's ImageNet-initialised self-supervised
mode of `semnb.clustering.ssl_imagenet`; `ssl_paper`, the paper's multi-resolution SimSiam of
`semnb.clustering.ssl`; each with its untrained control); all of them then
go through the same k-means, with k = number of classes, and the same scores
(`semnb.clustering.kmeans`). Labels are used only to score.

`evaluate_methods` runs every method on preprocessed pixel arrays; `evaluate_clustering` is
`semnb eval cluster`: it takes an `ImageSet`, chooses the images to cluster
(`split_for_clustering`), preprocesses them (optionally cut to a window around each located
defect) and returns the results contract (`EvalResult`) with what notebook 06 plots.

The networks (SSL training and embedding, the frozen ImageNet and CLIP baselines, the defect
locator) compute on the `device` and `precision` resolved once by `evaluate_clustering`;
k-means, the scores and the texture features (GLCM, LBP, wavelet, PCA) are numpy and
scikit-learn code and stay on the CPU.

Taught in: 06_ssl_clustering.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from tqdm.auto import tqdm

from semnb import metrics
from semnb.clustering.baselines import (
    backbone_features,
    glcm_features,
    lbp_histograms,
    pca_features,
    wavelet_energies,
)
from semnb.clustering.defect_crop import NORMAL_AND_SELF, CropConfig, crop_images, locate_defects
from semnb.clustering.kmeans import UNSCALED_METHODS, kmeans_clusters, score_clusters
from semnb.clustering.ssl import (
    PAPER_IMAGE_SIZE,
    SSLConfig,
    SSLRun,
    create_model,
    embed,
    prepare_images,
    train_ssl,
)
from semnb.clustering.ssl_imagenet import (
    FinetuneConfig,
    FinetuneRun,
    Tail,
    embed_finetuned,
    train_finetune,
    trunk_features,
)
from semnb.data.dataset import ImageSet
from semnb.data.preprocess import crop_border, detect_banner
from semnb.errors import SemnbInputError
from semnb.hardware import Compute
from semnb.models import DEFAULT_BACKBONE, PAPER_CLIP, available_weights, load_backbone
from semnb.models.tiny_clip import TINY_NAME
from semnb.results import NOT_IN_JSON, EvalResult

METRICS = ("silhouette", "nmi", "ari")  # what the table shows, in this order
METHODS = ("ssl", "ssl_paper", "glcm", "lbp", "wavelet", "pca", "imagenet", "clip", "ssl_untrained",
           "ssl_paper_untrained")
"""semnb's recommended SSL mode first, the paper's beside it, then the baselines, then the controls:
each SSL encoder with its initial weights, untrained (`ssl_untrained`: the ImageNet weights with the
same defect-region pooling; `ssl_paper_untrained`: the paper's CNN with random seeded weights). When
a control scores like its trained method, training taught the encoder nothing the clustering can use."""
SSL_MODES = {"both": ("ssl", "ssl_untrained", "ssl_paper", "ssl_paper_untrained"),
             "semnb": ("ssl", "ssl_untrained"), "paper": ("ssl_paper", "ssl_paper_untrained")}
"""`--ssl-mode`: which SSL rows the default method list holds (`semnb`: the ImageNet-initialised mode only)."""
SSL_METHODS = SSL_MODES["both"]
IMAGENET_SIZE = 224  # side the "imagenet" baseline (DEFAULT_BACKBONE) encodes at
CROPS = (None, "defect")  # what evaluate_clustering clusters: whole images, or windows around the located defect


# ---------------------------------------------------------------- features per method


@dataclass
class FeatureSpec:
    """How one method makes features: `extract(images, seed)`, whether the seed matters, what it loaded."""

    extract: Callable[[np.ndarray, int], np.ndarray]
    seeded: bool
    backbone: str = ""
    weights: str = ""


def baseline_specs(methods: Sequence[str], backbone: str | None = None, progress: bool = False,
                   warnings: list[str] | None = None, device: str = "auto",
                   precision: str = "auto") -> dict[str, FeatureSpec]:
    """Feature extractors of the baselines in `methods` (everything but the SSL rows, `SSL_METHODS`).

    "imagenet" loads `DEFAULT_BACKBONE` (the ImageNet efficientnet-lite0); "clip" loads `backbone` when it names a CLIP
    model, else the default CLIP when its weights are on this machine. When "clip" was not
    asked for by name (`methods` is the default list) and no weights exist, it is left out
    with a note in `warnings` instead of failing; a random model is never called CLIP. The
    frozen networks are loaded onto `device` at `precision`; the texture features run on the CPU.

    Taught in: 06_ssl_clustering.
    """
    specs: dict[str, FeatureSpec] = {}
    simple = {"glcm": glcm_features, "lbp": lbp_histograms, "wavelet": wavelet_energies}
    for method in methods:
        if method in simple:
            specs[method] = FeatureSpec(lambda x, seed, f=simple[method]: f(x, progress=progress), seeded=False)
        elif method == "pca":
            specs[method] = FeatureSpec(lambda x, seed: pca_features(x, seed=seed), seeded=True)
        elif method == "imagenet":
            net = load_backbone(DEFAULT_BACKBONE, image_size=IMAGENET_SIZE, device=device, precision=precision)
            specs[method] = FeatureSpec(lambda x, seed, b=net: backbone_features(x, b, progress=progress),
                                        seeded=False, backbone=net.name, weights=net.weights)
        elif method == "clip":
            name = backbone if backbone not in (None, "", DEFAULT_BACKBONE) else PAPER_CLIP
            if name == PAPER_CLIP and not available_weights()[PAPER_CLIP].startswith("found"):
                note = f"clip: left out, no CLIP weights on this machine ({available_weights()[PAPER_CLIP]})"
                if warnings is None:
                    raise SemnbInputError("--methods clip", "no CLIP weights on this machine",
                                          "give --backbone MODEL:/path/to/checkpoint or clip:/path/to/checkpoint")
                warnings.append(note)
                continue
            net = load_backbone(name, image_size=224 if name == TINY_NAME else None, device=device, precision=precision)
            if name == TINY_NAME and warnings is not None:
                warnings.append("clip: semnb-tiny has random weights, NOT CLIP; its row is for tests only")
            specs[method] = FeatureSpec(lambda x, seed, b=net: backbone_features(x, b, progress=progress),
                                        seeded=False, backbone=net.name, weights=net.weights)
        elif method not in SSL_METHODS:
            raise SemnbInputError("--methods", f"unknown method {method!r}", f"use some of {', '.join(METHODS)}")
    return specs


# ---------------------------------------------------------------- evaluation


@dataclass
class ClusterEvaluation(EvalResult):
    """The results contract (what `semnb eval cluster` writes) plus what notebook 06 plots, which the JSON leaves out.

    `pixels` are the preprocessed images clustered, `labels` their classes (-1 unlabelled);
    `features` and `clusters` hold, per method, the features and k-means clusters of the
    first seed; `ssl_run` is that seed's trained paper model (`ssl_paper`) and history,
    `finetune_run` that seed's trained `ssl` tail and history.
    """

    pixels: np.ndarray | None = field(default=None, repr=False, metadata=NOT_IN_JSON)
    labels: np.ndarray | None = field(default=None, repr=False, metadata=NOT_IN_JSON)
    class_names: list[str] = field(default_factory=list, metadata=NOT_IN_JSON)
    features: dict[str, np.ndarray] = field(default_factory=dict, repr=False, metadata=NOT_IN_JSON)
    clusters: dict[str, np.ndarray] = field(default_factory=dict, repr=False, metadata=NOT_IN_JSON)
    ssl_run: SSLRun | None = field(default=None, repr=False, metadata=NOT_IN_JSON)
    finetune_run: FinetuneRun | None = field(default=None, repr=False, metadata=NOT_IN_JSON)


def evaluate_methods(pixels: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                     methods: Sequence[str] | None = None, seeds: Sequence[int] = (0,), k: int | None = None,
                     ssl_config: SSLConfig | None = None, backbone: str | None = None, data: str = "arrays",
                     progress: bool = False, device: str = "auto", precision: str = "auto",
                     finetune_config: FinetuneConfig | None = None, ssl_mode: str = "both") -> ClusterEvaluation:
    """Features, k-means and scores for every method on preprocessed images [N, S, S] (`prepare_images`).

    For each seed: both SSL models are trained with that seed (`finetune_config.seed` for `ssl`,
    `ssl_config.seed` for `ssl_paper`, replaced) and every method's k-means uses it; deterministic
    features (GLCM, LBP, wavelet, frozen networks, the frozen trunk of `ssl`) are computed once.
    Results are means over seeds with `<metric>_std`. `methods=None` runs all of `METHODS` whose SSL
    rows `ssl_mode` keeps (`SSL_MODES`), leaving out "clip" without weights. `device` and
    `precision` are resolved once here and replace those of the configs; the result records
    the resolved ones (`precision`, `extra["device"]`).

    Taught in: 06_ssl_clustering.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(pixels):
        raise SemnbInputError("labels", f"{len(labels)} labels for {len(pixels)} images", "give one label per image")
    if ssl_mode not in SSL_MODES:
        raise SemnbInputError("--ssl-mode", f"got {ssl_mode!r}", f"use one of {', '.join(SSL_MODES)}")
    requested = list(METHODS if methods is None else methods)
    if methods is None:
        requested = [m for m in requested if m not in SSL_METHODS or m in SSL_MODES[ssl_mode]]
    if not requested:
        raise SemnbInputError("--methods", "is empty", f"use some of {', '.join(METHODS)}")
    if not seeds:
        raise SemnbInputError("--seeds", "no seed given", "write e.g. --seeds 0,1,2")
    k = _number_of_clusters(labels, k)
    compute = Compute.resolve(device, precision)
    hardware = {"device": str(compute.device), "precision": compute.precision}
    warnings: list[str] = []
    load_start = time.perf_counter()
    specs = baseline_specs(requested, backbone, progress, warnings if methods is None else None, **hardware)
    load_s = time.perf_counter() - load_start
    order = [m for m in requested if m in SSL_METHODS or m in specs]
    ssl_config = replace(ssl_config or SSLConfig(), **hardware)
    finetune_config = replace(finetune_config or FinetuneConfig(), **hardware)
    trunk = None
    if {"ssl", "ssl_untrained"} & set(order):
        start = time.perf_counter()
        trunk = trunk_features(pixels, progress=progress, **hardware)
        load_s += time.perf_counter() - start
    timing: dict[str, float] = {m: 0.0 for m in order}
    per_seed: dict[str, list[dict[str, float]]] = {m: [] for m in order}
    first_features: dict[str, np.ndarray] = {}
    first_clusters: dict[str, np.ndarray] = {}
    first_run: SSLRun | None = None
    first_finetune: FinetuneRun | None = None
    fixed: dict[str, np.ndarray] = {}  # features that do not depend on the seed, computed once
    for seed in tqdm(seeds, desc="seeds", disable=not progress or len(seeds) == 1):
        for method in order:
            start = time.perf_counter()
            if method == "ssl":
                tuned = train_finetune(trunk, replace(finetune_config, seed=int(seed)), progress=progress)
                features = embed_finetuned(tuned.tail, trunk, **hardware)
                first_finetune = first_finetune or tuned
            elif method == "ssl_untrained":
                if method not in fixed:  # the ImageNet weights: the same for every seed
                    fixed[method] = embed_finetuned(Tail(), trunk, **hardware)
                features = fixed[method]
            elif method == "ssl_paper":
                run = train_ssl(pixels, replace(ssl_config, seed=int(seed)), progress=progress)
                features = embed(run.model, pixels, channels_last=ssl_config.channels_last, **hardware)
                first_run = first_run or run
            elif method == "ssl_paper_untrained":
                features = embed(create_model(replace(ssl_config, seed=int(seed))), pixels,
                                 channels_last=ssl_config.channels_last, **hardware)
            elif specs[method].seeded or method not in fixed:
                features = fixed[method] = specs[method].extract(pixels, seed)
            else:
                features = fixed[method]
            standardized = method not in UNSCALED_METHODS
            clusters = kmeans_clusters(features, k, seed, standardized=standardized)
            per_seed[method].append(score_clusters(features, clusters, labels, standardized))
            timing[method] += time.perf_counter() - start
            first_features.setdefault(method, features)
            first_clusters.setdefault(method, clusters)
    frozen = [m for m in order if m in specs and specs[m].backbone]
    result = ClusterEvaluation(
        task="cluster", data=data,
        backbone=", ".join(f"{m}: {specs[m].backbone}" for m in frozen) or "none",
        weights=", ".join(f"{m}: {specs[m].weights}" for m in frozen) or "none",
        precision=compute.precision, shots=None, seeds=[int(s) for s in seeds], n_images=len(pixels),
        results={m: metrics.mean_std_over_seeds(per_seed[m]) for m in order},
        timing={"load_models_s": round(load_s, 3), **{f"{m}_s": round(t, 3) for m, t in timing.items()}},
        warnings=warnings,
        extra={"device": str(compute.device), "k": k, "class_names": list(class_names),
               "image_size": int(pixels.shape[-1]),
               "n_labelled": int((labels >= 0).sum()),
               "nmi_random_assignment": metrics.random_assignment_nmi(labels, k)},
        pixels=pixels, labels=labels, class_names=list(class_names), features=first_features,
        clusters=first_clusters, ssl_run=first_run, finetune_run=first_finetune,
    )
    if first_finetune is not None:
        result.timing["ssl_train_images_per_s"] = round(first_finetune.history.images_per_second, 2)
        result.extra["ssl"] = _finetune_summary(first_finetune)
    if first_run is not None:
        result.timing["ssl_paper_train_images_per_s"] = round(first_run.history.images_per_second, 2)
        result.extra["ssl_paper"] = _ssl_summary(first_run)
    return result


def split_for_clustering(images: ImageSet) -> tuple[ImageSet, ImageSet]:
    """The images `evaluate_clustering` clusters, and the defect-free ones the defect locator may use as normal memory.

    In the MVTec layout (with both splits present) only the test split is clustered: train/
    holds defect-free images only and would make that class dominate; its defect-free images
    are the reference. Otherwise every image is clustered and the reference is empty: normal
    images among those clustered would place crops by label.

    Taught in: 06_ssl_clustering.
    """
    test = [i for i, split in enumerate(images.splits) if split == "test"]
    if images.layout == "mvtec" and 0 < len(test) < len(images):
        reference = [i for i in range(len(images)) if images.splits[i] == "train" and images.is_normal[i]]
        return images.subset(test), images.subset(reference)
    return images, images.subset([])


def evaluate_clustering(images: ImageSet, methods: Sequence[str] | None = None, seeds: Sequence[int] = (0,),
                        epochs: int = 15, image_size: int = PAPER_IMAGE_SIZE, k: int | None = None,
                        backbone: str | None = None, border: int = 0, banner: int | str = "auto",
                        threads: int | None = None, crop: str | None = None, crop_config: CropConfig | None = None,
                        ssl_augment: bool = False, progress: bool = False, device: str = "auto",
                        precision: str = "auto", ssl_mode: str = "both") -> ClusterEvaluation:
    """`semnb eval cluster`: preprocess an `ImageSet` (crop, resize, normalise) and run `evaluate_methods`.

    The images clustered are those of `split_for_clustering` (in the MVTec layout the test
    split only). Unlabelled images are clustered but not scored.
    `crop="defect"` clusters, for every method, a window around each image's most anomalous
    place instead of the whole image (`semnb.clustering.defect_crop`; the train/ defect-free
    images, when there are any, are the locator's normal memory); `extra["crop"]` says how the
    windows were found and how often they hold the true defect, where masks exist
    (`semnb.metrics.window_hit_rate`). `ssl_augment=True` trains the paper's encoder on randomly
    augmented pyramid levels (`SSLConfig.augment_levels`; not the paper's). `ssl_mode` picks the
    SSL rows (`SSL_MODES`); `epochs` applies to both SSL modes. `device` and
    `precision` (`semnb.hardware`) are resolved once, here, for every network of the run.

    Taught in: 06_ssl_clustering (the CLI runs the same function).
    """
    if crop not in CROPS:
        raise SemnbInputError("--crop", f"got {crop!r}", "leave it out (whole images) or use --crop defect")
    compute = Compute.resolve(device, precision)
    hardware = {"device": str(compute.device), "precision": compute.precision}
    notes = []
    clustered, reference = split_for_clustering(images)
    if len(clustered) < len(images):
        notes.append(f"mvtec layout: clustered the {len(clustered)} test images only "
                     "(train/ holds defect-free images only)")
    crop_extra = None
    if crop == "defect":
        source, crop_extra = _defect_crops(clustered, reference, border, banner, crop_config, progress, hardware)
        notes.append(crop_extra.pop("note"))
        border, banner = 0, 0  # already cut before locating
    else:
        source = _LazyImages(clustered)
    start = time.perf_counter()
    pixels = prepare_images(source, size=image_size, border=border, banner=banner, progress=progress)
    preprocess_s = time.perf_counter() - start
    evaluation = evaluate_methods(pixels, clustered.labels, clustered.class_names, methods=methods, seeds=seeds, k=k,
                                  ssl_config=SSLConfig(epochs=epochs, threads=threads, augment_levels=ssl_augment),
                                  finetune_config=FinetuneConfig(epochs=epochs, threads=threads), ssl_mode=ssl_mode,
                                  backbone=backbone, data=str(clustered.root), progress=progress, **hardware)
    evaluation.timing = {"preprocess_s": round(preprocess_s, 3), **evaluation.timing}
    evaluation.warnings[:0] = notes
    if crop_extra is not None:
        evaluation.timing = {"locate_defects_s": crop_extra.pop("locate_s"), **evaluation.timing}
        evaluation.extra["crop"] = crop_extra
    return evaluation


def _defect_crops(clustered: ImageSet, reference: ImageSet, border: int, banner: int | str,
                  config: CropConfig | None, progress: bool, hardware: dict) -> tuple[list[np.ndarray], dict]:
    """Border- and banner-cut images cropped around their located defect, and the record of how (see evaluate_clustering)."""
    config = config or CropConfig()
    tick = time.perf_counter()
    cut, masks = [], []
    for i in tqdm(range(len(clustered)), desc="cut borders", disable=not progress):
        pixels, mask = _cut(clustered.image(i), clustered.mask(i), border, banner)
        cut.append(pixels)
        masks.append(mask)
    normal = [_cut(reference.image(i), None, border, banner)[0] for i in range(len(reference))]
    found = locate_defects(cut, normal, config, progress=progress, **hardware)
    hits = metrics.window_hit_rate(found.windows, masks)
    side = found.windows[:, 2] - found.windows[:, 0]
    own = f"the image's own patches beyond {config.exclude_radius} grid steps"
    how = (f"PatchCore-style distance to the nearest of the {found.memory_patches} patches of {len(normal)} "
           f"defect-free train/ images and {own}" if found.reference == NORMAL_AND_SELF else
           f"self-referential distance, to {own} (no defect-free train/ images)")
    note = (f"crop=defect: every method clustered a {side.min()}-{side.max()} px window ({config.fraction:g} of the "
            f"shorter side) around each image's most anomalous place, not the whole image; located by {how}, "
            f"{DEFAULT_BACKBONE} at {config.encode_size} px")
    extra = {"mode": "defect", "reference": found.reference, "n_normal_images": len(normal),
             "memory_patches": found.memory_patches, "locator_backbone": DEFAULT_BACKBONE,
             "config": asdict(config), "windows": found.windows.tolist(), **hits,
             "locate_s": round(time.perf_counter() - tick, 3), "note": note}
    return crop_images(cut, found.windows), extra


def _cut(image: np.ndarray, mask: np.ndarray | None, border: int, banner: int | str):
    """Image and mask with the same banner rows and border cut off (the banner is found on the image)."""
    rows = detect_banner(image) if banner == "auto" else banner
    return (crop_border(image, border, rows),
            None if mask is None else crop_border(mask.astype(np.float32), border, rows) > 0.5)


class _LazyImages(Sequence):
    """The pixels of an ImageSet, read one image at a time (a whole set of large images may not fit in memory)."""

    def __init__(self, images: ImageSet):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self.images):
            raise IndexError(i)
        return self.images.image(i)


def _number_of_clusters(labels: np.ndarray, k: int | None) -> int:
    if k is not None:
        if not 2 <= k <= len(labels):
            raise SemnbInputError("--k", f"got {k} for {len(labels)} images", "use 2 <= k <= number of images")
        return int(k)
    classes = np.unique(labels[labels >= 0])
    if len(classes) < 2:
        raise SemnbInputError("--k", f"the data have {len(classes)} labelled classes, so k cannot be taken from them",
                              "pass --k (number of clusters) or use a labelled data set")
    return len(classes)


def _finetune_summary(run: FinetuneRun) -> dict:
    """The first seed's `ssl` training curve and settings, for the JSON record."""
    c = run.config
    return {"mode": "semnb (ImageNet efficientnet-lite0, last block + head fine-tuned, lightly VICReg, "
                    "defect-region pooling)", "epochs": c.epochs, "batch_size": c.batch_size, "lr": c.lr,
            "threads": c.threads, "loss": [round(v, 5) for v in run.history.loss]}


def _ssl_summary(run: SSLRun) -> dict:
    """The first seed's `ssl_paper` training curve and settings, for the JSON record."""
    h, c = run.history, run.config
    return {"epochs": c.epochs, "batch_size": c.batch_size, "lr": c.lr, "channels_last": c.channels_last,
            "threads": c.threads, "augment_levels": c.augment_levels, "loss": [round(v, 5) for v in h.loss],
            "std_projection": [round(v, 5) for v in h.std_projection],
            "std_embedding": [round(v, 5) for v in h.std_embedding],
            "healthy_std": round(1 / float(np.sqrt(c.embedding_dim)), 5)}

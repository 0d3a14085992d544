"""A fitted clustering model: learn an embedding from unlabelled images, group them, assign new ones.

Why: a materials scientist with a few hundred unlabelled micrographs wants them sorted into
morphologies, and next week's images sorted into the same groups. `fit_cluster` embeds the
images ("ssl": semnb's mode, `semnb.clustering.ssl_imagenet`, an ImageNet encoder fine-tuned on
them and pooled on the defect region; "ssl_paper": the paper's multi-resolution SimSiam,
`semnb.clustering.ssl`, trained on them; or, without time to train, frozen ImageNet
efficientnet-lite0 features as the "imagenet" baseline of `semnb.clustering.evaluate` computes
them), standardises each embedding dimension,
runs the seeded k-means of `semnb.clustering.kmeans` and keeps the centroids. `ClusterModel`
assigns any image to its nearest centroid.

The space the centroids live in: the embedding standardised with the fit images' per-dimension
mean and standard deviation (`feature_mean`, `feature_scale`; a constant dimension keeps
scale 1), exactly what `kmeans.standardize` does, with the statistics kept so new images are
moved the same way. A centroid is the mean of its cluster's fit images in that space.

Choosing k (`k="auto"`): k-means for every k of `k_range` (at most the number of images
minus one, where the silhouette is defined), and the k with the highest mean silhouette
(Euclidean, in the standardised space; ties go to the smaller k). Every k's silhouette is
kept in `settings()["k_scores"]`, the rule in `settings()["k_rule"]`.

Taught in: 00_quickstart (fit -> save -> predict) and 06_ssl_clustering (the method).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from semnb import metrics
from semnb.clustering.baselines import backbone_features
from semnb.clustering.evaluate import IMAGENET_SIZE
from semnb.clustering.kmeans import kmeans_clusters
from semnb.clustering.ssl import SSLConfig, create_model, embed, prepare_images, train_ssl
from semnb.clustering.ssl_imagenet import (
    WORKING_SIZE,
    FinetuneConfig,
    Tail,
    embed_finetuned,
    train_finetune,
    trunk_features,
)
from semnb.errors import SemnbInputError
from semnb.fitted import FittedModel, ImagePrediction, check_backbone_weights
from semnb.hardware import Compute
from semnb.models import DEFAULT_BACKBONE, load_backbone

METHODS = ("ssl", "ssl_paper", "imagenet")
TRAINED = ("ssl", "ssl_paper")  # methods whose network weights the model folder holds
MIN_IMAGES = 3  # k-means needs 2 clusters, and the silhouette needs a cluster of more than one image
K_RULE_AUTO = ("highest mean silhouette (Euclidean, in the standardised embedding) of seeded k-means over "
               "k = {low}..{high}; ties go to the smaller k")
K_RULE_GIVEN = "given by the user"
SSL_PREFIX = "ssl."  # tensor names of the SSL network's state dict
SPACE_TENSORS = ("centroids", "feature_mean", "feature_scale")
SETTINGS_KEYS = ("method", "image_size", "precision", "k", "seed", "border", "banner", "embedding_dim")


def _rename_legacy_tail_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Folders saved before the tail became `EfficientNetTail` name its head batch norm "bn", now "bn_head"."""
    return {"bn_head." + name[len("bn."):] if name.startswith("bn.") else name: t for name, t in state.items()}


class ClusterModel(FittedModel):
    """Embedding network + standardisation + k centroids; `predict` gives each image its nearest centroid.

    Build it with `fit_cluster` (or `restore` from a model folder). For method "ssl" `network`
    is the fine-tuned `Tail` (the frozen trunk is reloaded from the ImageNet weights); for
    "ssl_paper" the trained `MultiResSimSiam` (only its encoder embeds); for "imagenet" the frozen
    efficientnet-lite0 backbone.

    Taught in: 00_quickstart.
    """

    task = "cluster"

    def __init__(self, network, compute: Compute, centroids: np.ndarray, mean: np.ndarray, scale: np.ndarray,
                 settings: Mapping):
        self.network = network
        self.compute = compute
        self.centroids = np.asarray(centroids, dtype=np.float64)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self._settings = {**settings, "precision": compute.precision}

    def settings(self) -> dict:
        return dict(self._settings)

    def tensors(self) -> dict[str, torch.Tensor]:
        arrays = {"centroids": self.centroids, "feature_mean": self.mean, "feature_scale": self.scale}
        out = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}
        if self._settings["method"] in TRAINED:
            out.update({SSL_PREFIX + name: t.detach().cpu().contiguous()
                        for name, t in self.network.state_dict().items()})
        return out

    @classmethod
    def restore(cls, settings: Mapping, tensors: Mapping[str, torch.Tensor], device: str = "auto",
                precision: str | None = None) -> ClusterModel:
        """The model back from `settings()` and `tensors()`; `precision=None` is the one it was fit at.

        Taught in: 00_quickstart.
        """
        _check_complete(settings, tensors)
        compute = Compute.resolve(device, precision or settings["precision"])
        if settings["method"] in TRAINED:
            network = Tail() if settings["method"] == "ssl" else create_model(_ssl_config(settings, compute))
            state = {name[len(SSL_PREFIX):]: t for name, t in tensors.items() if name.startswith(SSL_PREFIX)}
            if settings["method"] == "ssl":
                state = _rename_legacy_tail_keys(state)
            try:
                network.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise _incomplete(f"its SSL network weights do not fit the network ({err})") from err
            network = network.to(compute.device).eval()
        else:
            network = load_backbone(settings["backbone"], image_size=settings["backbone_image_size"],
                                    device=compute.device, precision=compute.precision)
            check_backbone_weights(network.weights, settings, "model folder")
        return cls(network, compute, tensors["centroids"].numpy(), tensors["feature_mean"].numpy(),
                   tensors["feature_scale"].numpy(), settings)

    def embed(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """Standardised embeddings [N, D] (float64) of gray images of any size: the space of the centroids.

        Taught in: 06_ssl_clustering.
        """
        s = self._settings
        prepared = prepare_images(pixels, size=s["image_size"], border=s["border"], banner=s["banner"])
        return (_embed(self.network, s, prepared, self.compute) - self.mean) / self.scale

    def predict(self, pixels: Sequence[np.ndarray]) -> list[ImagePrediction]:
        """Per image: the nearest centroid (`cluster`, label "cluster_<i>") and the Euclidean distance to it
        in the standardised embedding (`distance`, also the `score`: large = unlike every group).

        Taught in: 00_quickstart.
        """
        if len(pixels) == 0:
            return []
        distances = _distances(self.embed(pixels), self.centroids)
        nearest = distances.argmin(axis=1)
        return [ImagePrediction(score=float(d), label=f"cluster_{c}", cluster=int(c), distance=float(d))
                for c, d in zip(nearest, distances[np.arange(len(nearest)), nearest])]


def fit_cluster(pixels: Sequence[np.ndarray], k: int | str = "auto", method: str = "ssl", epochs: int = 15,
                image_size: int = 128, k_range: tuple[int, int] = (2, 10), device: str = "auto",
                precision: str = "auto", seed: int = 0, progress: bool = False) -> ClusterModel:
    """Fit a clustering model on unlabelled gray images (float [0, 1], any size): embed, standardise, k-means.

    `method="ssl"` fine-tunes semnb's ImageNet-initialised encoder on these images for `epochs`
    (`semnb.clustering.ssl_imagenet`; `image_size` a multiple of 32; its frozen trunk reads at
    min(image_size, WORKING_SIZE), recorded as `trunk_size`); `method="ssl_paper"` trains
    the paper's multi-resolution SimSiam (`semnb.clustering.ssl`); `method="imagenet"` uses frozen efficientnet-lite0 features
    (no training; the quick start). `k` is the number of clusters, or "auto": the k of `k_range`
    (inclusive) with the highest mean silhouette (see the module docstring). Same seed, same
    images, same machine -> the same model.

    Taught in: 00_quickstart.
    """
    n = len(pixels)
    if n < MIN_IMAGES:
        raise SemnbInputError("--images", f"only {n} image{'' if n == 1 else 's'} to cluster",
                              f"give at least {MIN_IMAGES} images")
    if method not in METHODS:
        raise SemnbInputError("--method", f"got {method!r}", f"use one of {', '.join(METHODS)}")
    candidates = _k_candidates(k, k_range, n)
    compute = Compute.resolve(device, precision)
    settings = {"method": method, "image_size": int(image_size), "seed": int(seed), "border": 0, "banner": "auto",
                "n_images": n}
    prepared = prepare_images(pixels, size=image_size, progress=progress)
    trunk = None
    if method == "ssl":
        settings["trunk_size"] = min(int(image_size), WORKING_SIZE)
        trunk = trunk_features(prepared, device=str(compute.device), precision=compute.precision, progress=progress,
                               working_size=settings["trunk_size"])
        tuned = FinetuneConfig(epochs=epochs, seed=seed, device=str(compute.device), precision=compute.precision)
        run = train_finetune(trunk, tuned, progress=progress)
        network = run.tail
        settings.update(epochs=tuned.epochs, batch_size=tuned.batch_size, lr=tuned.lr,
                        weight_decay=tuned.weight_decay, ssl_loss=[round(v, 6) for v in run.history.loss])
    elif method == "ssl_paper":
        config = SSLConfig(epochs=epochs, seed=seed, device=str(compute.device), precision=compute.precision)
        run = train_ssl(prepared, config, progress=progress)
        network = run.model
        settings.update(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                        embedding_dim=config.embedding_dim, predictor_hidden=config.predictor_hidden,
                        channels_last=config.channels_last, augment_levels=config.augment_levels,
                        ssl_loss=[round(v, 6) for v in run.history.loss])
    else:
        network = load_backbone(DEFAULT_BACKBONE, image_size=IMAGENET_SIZE, device=compute.device,
                                precision=compute.precision)
        settings.update(backbone=network.name, backbone_weights=network.weights, backbone_image_size=IMAGENET_SIZE)
    features = _embed(network, settings, prepared, compute, trunk)
    mean, scale = features.mean(axis=0), features.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    space = (features - mean) / scale
    settings["embedding_dim"] = int(space.shape[1])
    scores, clusterings = {}, {}
    for candidate in candidates:
        clusterings[candidate] = kmeans_clusters(space, candidate, seed, standardized=False)
        scores[candidate] = metrics.silhouette(space, clusterings[candidate])
    chosen = candidates[0] if len(candidates) == 1 else max(candidates, key=lambda c: _finite(scores[c]))
    clusters = clusterings[chosen]
    centroids = np.stack([space[clusters == c].mean(axis=0) for c in range(chosen)])
    settings.update(k=int(chosen), k_range=[int(v) for v in k_range] if k == "auto" else None,
                    k_rule=K_RULE_AUTO.format(low=candidates[0], high=candidates[-1]) if k == "auto" else K_RULE_GIVEN,
                    k_scores={str(c): _json_float(scores[c]) for c in candidates},
                    cluster_sizes=np.bincount(clusters, minlength=chosen).tolist())
    return ClusterModel(network, compute, centroids, mean, scale, settings)


def _k_candidates(k: int | str, k_range: tuple[int, int], n: int) -> list[int]:
    """The k values to try: [k] when given, else k_range (inclusive) cut to n - 1, where the silhouette is defined."""
    if k != "auto":
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= n:
            raise SemnbInputError("--k", f"got {k!r} clusters for {n} images",
                                  "use a whole number with 2 <= k <= number of images, or --k auto")
        return [int(k)]
    try:
        low, high = (int(v) for v in k_range)
        valid = tuple(k_range) == (low, high) and 2 <= low <= high
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise SemnbInputError("--k-range", f"got {k_range!r}", "give two whole numbers LOW <= HIGH, LOW at least 2")
    if low > n - 1:
        raise SemnbInputError("--k-range", f"starts at {low} clusters but there are only {n} images",
                              f"give at least {low + 1} images or a k range starting at most at {n - 1}")
    return list(range(low, min(high, n - 1) + 1))


def _embed(network, settings: Mapping, prepared: np.ndarray, compute: Compute, trunk=None) -> np.ndarray:
    """Raw embeddings [N, D] (float64) of preprocessed images: the fine-tuned tail's defect-region pooling, the
    paper encoder's L0 output, or the frozen backbone's. `trunk`: the images' `trunk_features` when already computed."""
    if settings["method"] == "ssl":
        trunk = trunk or trunk_features(prepared, device=str(compute.device), precision=compute.precision,
                                        working_size=settings.get("trunk_size", settings["image_size"]))
        features = embed_finetuned(network, trunk, device=str(compute.device), precision=compute.precision)
    elif settings["method"] == "ssl_paper":
        features = embed(network, prepared, channels_last=settings["channels_last"], device=compute.device,
                         precision=compute.precision)
    else:
        features = backbone_features(prepared, network)
    return features.astype(np.float64)


def _distances(space: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Euclidean distances [N, k] of every row to every centroid."""
    return np.sqrt(((space[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2))


def _ssl_config(settings: Mapping, compute: Compute) -> SSLConfig:
    return SSLConfig(epochs=settings["epochs"], batch_size=settings["batch_size"], lr=settings["lr"],
                     embedding_dim=settings["embedding_dim"], predictor_hidden=settings["predictor_hidden"],
                     seed=settings["seed"], channels_last=settings["channels_last"],
                     augment_levels=settings["augment_levels"], device=str(compute.device),
                     precision=compute.precision)


def _check_complete(settings: Mapping, tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuse settings or tensors that miss what this version needs, or whose shapes disagree."""
    method = settings.get("method")
    needed = SETTINGS_KEYS + {"ssl": ("epochs", "batch_size", "lr", "weight_decay"),
                              "ssl_paper": ("epochs", "batch_size", "lr", "predictor_hidden", "channels_last",
                                            "augment_levels")}.get(method, ("backbone", "backbone_weights",
                                                                            "backbone_image_size"))
    missing = [key for key in needed if key not in settings]
    if method not in METHODS or missing:
        raise _incomplete(f"its settings lack {', '.join(missing)}" if missing else f"unknown method {method!r}")
    absent = [name for name in SPACE_TENSORS if name not in tensors]
    if method in TRAINED and not any(name.startswith(SSL_PREFIX) for name in tensors):
        absent.append(f"{SSL_PREFIX}*")
    if absent:
        raise _incomplete(f"tensors {', '.join(absent)} are missing")
    k, dim = settings["k"], settings["embedding_dim"]
    shapes = {name: tuple(tensors[name].shape) for name in SPACE_TENSORS}
    if shapes != {"centroids": (k, dim), "feature_mean": (dim,), "feature_scale": (dim,)}:
        raise _incomplete(f"tensor shapes {shapes} do not fit k={k} and embedding_dim={dim}")


def _incomplete(problem: str) -> SemnbInputError:
    return SemnbInputError("model folder", f"this model folder is incomplete or from another version: {problem}",
                           "fit the model again with this version of semnb (semnb fit cluster)")


def _finite(value: float) -> float:
    return value if np.isfinite(value) else -np.inf


def _json_float(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None

"""A fitted retrieval model: the trained embedding plus the gallery of the images it was fit on.

Why the gallery travels with the model: `semnb search MODEL_DIR --query IMAGE` must answer
right after loading, without the fit images and without re-encoding them. So the model holds
the embedding network (the tuned backbone layers and the projection; the frozen lower layers
come back from `load_split_backbone`, checked by their weights label) and, per fit image, its
embedding, its name (a file path, say) and its label (-1 = unlabelled). Its search goes through
the query gate of the general recipe (`embedding.query_gate`), rebuilt at restore from the
labelled gallery rows, so nothing more is stored.

Method: "ours" (triplet, classifier and reconstruction losses in every step, the embedding holding the
projection and the pooled features; `RetrievalConfig(recipe="paper")`: the paper's classifier
warm-up and alternated epochs; see `embedding`) when at least two classes have two or more
labelled images, which is what its triplets need; otherwise "autoencoder", which needs no
labels. Any of `embedding.METHODS` can be asked for by name ("frozen": ImageNet features, no
training).

Taught in: 00_quickstart (fit -> save -> predict) and 07_retrieval.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import numpy as np
import torch

from semnb.errors import SemnbInputError
from semnb.fitted import FittedModel, ImagePrediction, check_backbone_weights
from semnb.hardware import Compute
from semnb.models import DEFAULT_BACKBONE
from semnb.retrieval.embedding import (
    METHODS,
    EmbeddingNet,
    RetrievalConfig,
    TrainedEmbedding,
    build_view_bank,
    load_split_backbone,
    query_gate,
    train_embedding,
)
from semnb.retrieval.index import RetrievalIndex

N_EXPAND = 5
"""Neighbours averaged into a query by `search(..., expand=True)`: the number `evaluate_retrieval` uses."""
GALLERY = "gallery_embeddings"
NET_PREFIX = "net."
FROZEN_PREFIX = "backbone.frozen."
SETTINGS_KEYS = ("method", "image_size", "precision", "backbone", "backbone_weights", "seed", "config",
                 "channels", "dims", "names", "class_names", "gallery_labels")


def _incomplete(problem: str) -> SemnbInputError:
    return SemnbInputError("model", f"{problem}: this model folder is incomplete or from another version",
                           "fit the model again with this semnb version (semnb fit retrieve)")


class RetrievalModel(FittedModel):
    """Embedding network + gallery: `predict` embeds images, `search` finds the nearest gallery images.

    Taught in: 00_quickstart and 07_retrieval.
    """

    task = "retrieve"

    def __init__(self, embedding: TrainedEmbedding, gallery: np.ndarray, names: Sequence[str],
                 labels: np.ndarray, class_names: Sequence[str], config: RetrievalConfig, seed: int):
        self.embedding = embedding
        self.gallery = np.ascontiguousarray(gallery, dtype=np.float32)
        self.names = [str(n) for n in names]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.config = config
        self.seed = int(seed)
        gate = query_gate(embedding, self.gallery[self.labels >= 0], config)  # from the gallery: the same at restore
        self.index = RetrievalIndex(self.gallery, self.names, self.labels, self.class_names,
                                    device=embedding.compute.device, gate=gate)

    @property
    def method(self) -> str:
        return self.embedding.method

    def settings(self) -> dict:
        net = self.embedding.net
        projected = isinstance(net.projection, torch.nn.Linear)
        return {
            "method": self.method,
            "image_size": int(self.embedding.image_size),
            "precision": self.embedding.compute.precision,
            "backbone": self.embedding.backbone.name,
            "backbone_weights": self.embedding.backbone.weights,
            "seed": self.seed,
            "config": {**asdict(self.config), "scale_range": list(self.config.scale_range)},
            "channels": int(net.projection.in_features) if projected else net.dims,
            "dims": int(net.projection.out_features) if projected else None,
            "pooled_weight": net.pooled_weight,
            "names": list(self.names),
            "class_names": list(self.class_names),
            "gallery_labels": [int(c) for c in self.labels],
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tuned layers and the projection (the frozen layers are rebuilt and checked), and the gallery."""
        state = {NET_PREFIX + key: value.detach().cpu().contiguous()
                 for key, value in self.embedding.net.state_dict().items() if not key.startswith(FROZEN_PREFIX)}
        return {**state, GALLERY: torch.from_numpy(self.gallery.copy())}

    @classmethod
    def restore(cls, settings: Mapping, tensors: Mapping[str, torch.Tensor], device: str = "auto",
                precision: str | None = None) -> RetrievalModel:
        """The model back from `settings()` and `tensors()`; `precision=None`: the precision it was fit in.

        Taught in: 00_quickstart.
        """
        missing = [key for key in SETTINGS_KEYS if key not in settings]
        if missing:
            raise _incomplete(f"the settings lack {', '.join(missing)}")
        if GALLERY not in tensors:
            raise _incomplete(f"the tensors lack {GALLERY}")
        saved = settings["config"]  # a model saved before the query gate keeps searching without it
        config = RetrievalConfig(**{"gate_quantile": None, **saved, "scale_range": tuple(saved["scale_range"]),
                                    "gate_scales": tuple(saved.get("gate_scales", RetrievalConfig.gate_scales))})
        compute = Compute.resolve(device, precision or settings["precision"])
        backbone = load_split_backbone(settings["backbone"], config.tuned_blocks, seed=settings["seed"],
                                       device=compute)
        check_backbone_weights(backbone.weights, settings, "model")
        with torch.device("cpu"):  # the projection's start is overwritten below; built where the fit built it
            net = EmbeddingNet(backbone, int(settings["channels"]), settings["dims"], settings.get("pooled_weight", 0.0))
        state = net.state_dict()
        stored = {key[len(NET_PREFIX):]: value for key, value in tensors.items() if key.startswith(NET_PREFIX)}
        expected = {key for key in state if not key.startswith(FROZEN_PREFIX)}
        if set(stored) != expected:
            odd = sorted(expected ^ set(stored))
            raise _incomplete(f"the network weights differ from what this version expects ({', '.join(odd[:3])} ...)")
        net.load_state_dict({**state, **stored})
        net = net.to(compute.device).eval()
        gallery = tensors[GALLERY].detach().cpu().float().numpy()
        names, labels = settings["names"], settings["gallery_labels"]
        if gallery.ndim != 2 or len(gallery) == 0 or not len(gallery) == len(names) == len(labels):
            raise _incomplete(f"the gallery holds {tuple(gallery.shape)} embeddings for {len(names)} names "
                              f"and {len(labels)} labels")
        embedding = TrainedEmbedding(settings["method"], net, int(settings["image_size"]))
        return cls(embedding, gallery, names, np.asarray(labels), settings["class_names"], config, settings["seed"])

    def predict(self, pixels: Sequence[np.ndarray]) -> list[ImagePrediction]:
        """One `ImagePrediction(embedding=...)` per image (gray [0, 1], any size: resized inside); no score.

        Taught in: 00_quickstart.
        """
        if len(pixels) == 0:
            return []
        return [ImagePrediction(embedding=row) for row in self.embedding.encode(pixels)]

    def search(self, query_pixels: Sequence[np.ndarray], k: int = 10,
               expand: bool = False) -> list[list[tuple[str, float]]]:
        """The `k` nearest gallery images of each query: (name, Euclidean distance), nearest first.

        `k` larger than the gallery is cut to the gallery's size with a warning (every image
        comes back, which is what such a request wants); `k < 1` is an error. `expand=True`:
        average query expansion (the query averaged with its 5 nearest, searched again; the
        distances are then those of the expanded query). A query that is itself a gallery
        image finds itself first, at distance 0.

        Taught in: 07_retrieval.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise SemnbInputError("--k", f"is {k!r}", "ask for at least one result, e.g. --k 10")
        if k > len(self.index):
            warnings.warn(f"--k {k}: the gallery holds only {len(self.index)} images, so all of them come back",
                          UserWarning, stacklevel=2)
            k = len(self.index)
        if len(query_pixels) == 0:
            return []
        queries = self.embedding.encode(query_pixels)
        if expand:
            squared, ids = self.index.search_expanded(queries, int(k), n_expand=min(N_EXPAND, len(self.index)))
        else:
            squared, ids = self.index.search(queries, int(k))
        distances = np.sqrt(np.maximum(squared, 0.0))
        return [[(self.names[i], float(d)) for i, d in zip(row_ids, row_d)]
                for row_ids, row_d in zip(ids, distances)]


def default_method(labels: np.ndarray) -> str:
    """"ours" when at least two classes have two or more labelled images (its triplets need them), else "autoencoder".

    Taught in: 00_quickstart.
    """
    counts = np.bincount(labels[labels >= 0]) if np.any(labels >= 0) else np.zeros(0, np.int64)
    return "ours" if np.sum(counts >= 2) >= 2 else "autoencoder"


def fit_retrieve(pixels: Sequence[np.ndarray], labels=None, class_names: Sequence[str] | None = None,
                 names: Sequence[str] | None = None, backbone: str = DEFAULT_BACKBONE, method: str | None = None,
                 config: RetrievalConfig | None = None, device: str = "auto", precision: str = "auto", seed: int = 0,
                 progress: bool = False) -> RetrievalModel:
    """Train the retrieval embedding on `pixels` and keep their embeddings as the gallery to search.

    `labels`: one int per image, -1 = unlabelled (None: all unlabelled); `class_names[c]`
    names label c (default "class_<c>"). `names`: one string per image (e.g. its file path;
    default "image_<i>"), what `search` returns. `method` None picks by the labels (see
    `default_method`). Same seed, same model.

    Taught in: 00_quickstart and 07_retrieval.
    """
    n = len(pixels)
    if n == 0:
        raise SemnbInputError("images", "is empty: a retrieval model needs a gallery", "pass at least one image")
    labels = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
    names = [f"image_{i}" for i in range(n)] if names is None else [str(name) for name in names]
    for what, values in (("labels", labels), ("names", names)):
        if len(values) != n:
            raise SemnbInputError(what, f"{len(values)} entries for {n} images", "pass one entry per image")
    if np.any(labels < -1):
        raise SemnbInputError("labels", f"holds {int(labels.min())}", "use class indices 0, 1, ... and -1 for unlabelled")
    n_classes = int(labels.max()) + 1
    class_names = [f"class_{c}" for c in range(n_classes)] if class_names is None else [str(c) for c in class_names]
    if len(class_names) < n_classes:
        raise SemnbInputError("class_names", f"names {len(class_names)} classes but the labels go up to {n_classes - 1}",
                              "pass one name per class")
    method = default_method(labels) if method is None else method
    if method not in METHODS:
        raise SemnbInputError("--method", f"unknown retrieval method {method!r}", f"use one of {', '.join(METHODS)}")
    config = config or RetrievalConfig()
    compute = Compute.resolve(device, precision)
    split = load_split_backbone(backbone, config.tuned_blocks, seed=seed, device=compute)
    n_views = config.views if method != "frozen" else 0
    bank = build_view_bank(split, pixels, config.image_size, n_views, seed, config, progress=progress)
    trained = train_embedding(method, split, bank, labels, config, seed, progress)
    return RetrievalModel(trained, trained.encode_frozen(bank.clean), names, labels, class_names, config, seed)

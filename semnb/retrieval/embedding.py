"""Semi-supervised image embeddings for retrieval (the IMAGO TEM retrieval paper), and its baselines.

The embedding f: an ImageNet CNN, global average pooling, a linear layer to M dimensions and
a standardising layer (each embedding gets zero mean and unit standard deviation over its M
components, so every embedding has length sqrt(M) and Euclidean ranking equals cosine
ranking). Training ("ours", `RetrievalConfig.recipe="paper"`, the paper's procedure):
1. fine-tune as a classifier (cross-entropy) on the labelled images of the known classes;
2. then alternate, one epoch each, (a) a triplet loss with margin R on labelled images, with
   semi-hard negative mining (`mine_semihard`), and (b) an autoencoder reconstruction loss on
   all images, labelled or not, through a decoder that mirrors the backbone from its last
   convolutional map (`MirrorDecoder`).
The default recipe "general" keeps the two losses but sums them in every step (so no epoch
undoes the other's), with a classifier's cross-entropy on the projection beside the triplet
loss and the reconstruction at 32 px, and retrieves with the projection followed by the
standardised pooled features (`EmbeddingNet.pooled_weight`): the labels shape the projection, and the pooled
features keep what the labelled classes do not need, which is what classes nobody labelled
are found by (leave-one-class-out).
Baselines through the same code: "autoencoder" (b only), "siamese" (a only), "classifier"
(1 only) and "frozen" (ImageNet features, no training).

CPU budget: the backbone is cut in two (`SplitBackbone`). The lower layers stay frozen at
their ImageNet weights and run once per image and augmented view (`ViewBank`); only the
upper layers, the projection, the heads and the decoder train. Each epoch then costs a
fraction of a full forward pass, which makes five methods, several seeds and
leave-one-class-out affordable on two cores. Augmented views (shifts, horizontal flips,
scale changes) are drawn once per seed: `views` per image.

Device and precision: `load_split_backbone(..., device, precision)` puts the backbone on one
`semnb.hardware.Compute`; the view bank, training and embedding run there (forward passes
under its autocast, training with its gradient scaler). Networks are initialised and
augmentations drawn on the CPU, so a seed gives the same weights and views on every device;
the view bank and the embeddings come back to the CPU.

Method modules never read files and never plot: images come in as arrays.

Taught in: 07_retrieval.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import TripletMarginMiner
from torch import nn
from tqdm.auto import tqdm

from semnb.errors import SemnbInputError
from semnb.hardware import CPU, Compute, run_in_batches
from semnb.models import DEFAULT_BACKBONE
from semnb.models.efficientnet import (
    EFFICIENTNET_NAME,
    MEAN,
    STD,
    EfficientNetTail,
    create_efficientnet_lite0,
)
from semnb.models.pixels import normalize, resize_gray
from semnb.retrieval.index import NoveltyGate

RECIPES = ("general", "paper")
"""How "ours" trains: "general" (default: both losses every step, projection + pooled embedding) or "paper"."""
METHODS = ("ours", "autoencoder", "siamese", "classifier", "frozen")
"""The paper's method first, then its baselines (results contract order)."""
LABEL_METHODS = ("ours", "siamese", "classifier")
"""Methods that learn from labels (and project to M dimensions); the others use none."""

TINY_CNN = "semnb-tiny-cnn"
"""A random 4-layer CNN for tests and smoke runs (not `semnb-tiny`, which names the tiny random CLIP)."""
BACKBONES = (EFFICIENTNET_NAME, TINY_CNN)
"""The backbones retrieval can cut in two: convolutional ones only."""


@dataclass
class RetrievalConfig:
    """Every knob of embedding training. Defaults are the CPU-affordable settings used in 07_retrieval.

    `margin` R is measured between unit-length embeddings (Euclidean distance in [0, 2]).
    `epochs` is the training budget of every trained method: "ours" spends
    `classifier_epochs` (default epochs // 3, at least 1) on the classifier, then alternates
    triplet and autoencoder epochs; each baseline spends all epochs on its one loss.
    `tuned_blocks`: how many of the backbone's last blocks are fine-tuned (the rest stay frozen).
    `recipe` (how "ours" trains, see `train_embedding`): "paper" is the paper's procedure
    (classifier warm-up of epochs // 3, then triplet and autoencoder epochs alternated, the
    retrieval embedding is the triplet-trained projection); "general" (default) sums both
    losses in every step (`recon_weight` weighs the reconstruction) and retrieves with the
    projection followed by the pooled features at `pooled_weight` times its length, so the
    labels of the known classes sharpen the embedding without erasing what it holds about
    the others. `classifier_epochs` None: epochs // 3 warm-up for "paper", none for "general".
    Two more knobs of "general" only (the paper recipe and the baselines ignore them):
    `classify_weight` weighs a cross-entropy loss of a linear classifier on the projection,
    summed with the triplet loss (0: triplet alone), which lifts the labelled classes;
    `recon_size` is the side the decoder rebuilds the augmented view at (the view averaged
    down to it; None: `image_size`). Why 32 and not the input size: the two finest decoder
    levels cost most of a training step and the retrieval figures do not move without them.
    `gate_quantile` (general recipe, searching): each query weighs the pooled half by its
    novelty (`semnb.retrieval.index.NoveltyGate`: the query's pooled half times
    `gate_scales[0]` when its projection lies as near the labelled training images as the
    `gate_quantile` of theirs to each other, else times `gate_scales[1]`); None: no gate, one
    fixed weight for every query. Why: the projection alone ranks the labelled classes best,
    the pooled features rank the unlabelled ones best, and a fixed weight trades one for the other.

    Taught in: 07_retrieval.
    """

    dims: int = 128
    margin: float = 0.2
    epochs: int = 9
    classifier_epochs: int | None = None
    batch_size: int = 32
    per_class: int = 4
    lr: float = 1e-3
    backbone_lr: float = 3e-4
    weight_decay: float = 1e-4
    image_size: int = 128
    tuned_blocks: int = 3
    views: int = 3
    max_shift: float = 0.1
    scale_range: tuple[float, float] = (0.8, 1.25)
    recipe: str = "general"
    recon_weight: float = 1.0
    pooled_weight: float = 1.0
    recon_size: int | None = 32
    classify_weight: float = 1.0
    gate_quantile: float | None = 0.7
    gate_scales: tuple[float, float] = (0.25, 4.0)

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise SemnbInputError("--recipe", f"unknown recipe {self.recipe!r}", f"use one of {', '.join(RECIPES)}")

    def warmup_epochs(self) -> int:
        if self.classifier_epochs is not None:
            return int(self.classifier_epochs)
        return max(1, self.epochs // 3) if self.recipe == "paper" else 0


# ---------------------------------------------------------------------------------------------
# Backbone: frozen lower part + fine-tuned upper part
# ---------------------------------------------------------------------------------------------


class SplitBackbone(nn.Module):
    """A CNN cut in two: `frozen` (lower layers, ImageNet weights kept) and `tuned` (upper layers).

    `frozen(pixels)` gives an intermediate map that is computed once per image view;
    `tuned(map)` gives the last convolutional map [B, C, h, w] that pooling and the decoder use.
    `mean`/`std` are the input normalisation the weights were trained with. `compute`: where
    the layers live and in which precision everything built on this backbone runs.

    Taught in: 07_retrieval.
    """

    def __init__(self, name: str, weights: str, frozen: nn.Module, tuned: nn.Module,
                 mean: Sequence[float], std: Sequence[float], stride: int, compute: Compute = CPU):
        super().__init__()
        self.name, self.weights, self.stride, self.compute = name, weights, stride, compute
        self.mean, self.std = tuple(mean), tuple(std)
        self.frozen = frozen.eval().requires_grad_(False)
        self.tuned = tuned

    def train(self, mode: bool = True) -> SplitBackbone:
        super().train(mode)
        self.frozen.eval()  # BatchNorm statistics of the frozen layers never move
        return self

    def pixels(self, gray: torch.Tensor) -> torch.Tensor:
        """Gray [B, 1, S, S] in [0, 1] (on the CPU) -> the network's input on the device: 3 channels, normalised."""
        return self.compute.to(normalize(gray, self.mean, self.std))

    @torch.no_grad()
    def frozen_features(self, gray: torch.Tensor) -> torch.Tensor:
        """The frozen layers' map of CPU gray images, on the device, under the backbone's autocast."""
        with self.compute.autocast():
            return self.frozen(self.pixels(gray))

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        with self.compute.autocast():
            return self.tuned(self.frozen_features(gray))


class _EfficientNetBottom(nn.Module):
    def __init__(self, net: nn.Module, first_tuned: int):
        super().__init__()
        self.conv_stem, self.bn0, self.act = net._conv_stem, net._bn0, net._swish
        self.blocks = nn.ModuleList(net._blocks[:first_tuned])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn0(self.conv_stem(x)))
        for block in self.blocks:
            x = block(x)
        return x


def _tiny_cnn_parts() -> tuple[nn.Module, nn.Module]:
    def stage(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(*stage(3, 8), *stage(8, 16)), nn.Sequential(*stage(16, 32), *stage(32, 64))


def load_split_backbone(name: str = DEFAULT_BACKBONE, tuned_blocks: int = 3, seed: int = 0,
                        device: str | torch.device | Compute = "auto", precision: str = "auto") -> SplitBackbone:
    """The retrieval backbone by name: `efficientnet-lite0` (ImageNet, offline) or `semnb-tiny-cnn`.

    `semnb-tiny-cnn` is a 4-layer CNN with random weights (stride 16, 64 channels): for tests
    and smoke runs only, its embeddings mean nothing before training. Retrieval needs a
    convolutional map to mirror, so CLIP names (`semnb-tiny` included) are refused.
    Built on the CPU (same seed, same weights everywhere), then moved to `device`; `device`
    and `precision` as `semnb.hardware.Compute.resolve` takes them (a resolved `Compute` too).

    Taught in: 07_retrieval.
    """
    if name not in BACKBONES:
        raise SemnbInputError(f"--backbone {name}", "is not a convolutional backbone retrieval can use",
                              f"use one of {', '.join(BACKBONES)} ({EFFICIENTNET_NAME}: ImageNet, offline; "
                              f"{TINY_CNN}: random, tests only)")
    compute = Compute.resolve(device, precision)
    with torch.device("cpu"):
        backbone = _split_backbone_on_cpu(name, tuned_blocks, seed)
    backbone.compute = compute
    return backbone.to(compute.device)


def _split_backbone_on_cpu(name: str, tuned_blocks: int, seed: int) -> SplitBackbone:
    if name == EFFICIENTNET_NAME:
        net, path = create_efficientnet_lite0()
        n_blocks = len(net._blocks)
        if not 1 <= int(tuned_blocks) <= n_blocks:
            raise SemnbInputError("tuned_blocks", f"got {tuned_blocks}", f"use 1..{n_blocks}")
        first = n_blocks - int(tuned_blocks)
        weights = f"ImageNet ({path.name}); last {tuned_blocks} of {n_blocks} blocks + head fine-tuned"
        return SplitBackbone(name, weights, _EfficientNetBottom(net, first), EfficientNetTail(net, first),
                             MEAN, STD, stride=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        frozen, tuned = _tiny_cnn_parts()
    weights = f"random-init tiny CNN ({TINY_CNN}, seed {seed}): NOT ImageNet, for tests only"
    return SplitBackbone(name, weights, frozen, tuned, (0.5,) * 3, (0.25,) * 3, stride=16)


# ---------------------------------------------------------------------------------------------
# Embedding network and decoder
# ---------------------------------------------------------------------------------------------


class Standardize(nn.Module):
    """Each embedding to zero mean and unit (population) standard deviation over its components.

    Why per embedding and not per batch: a query embedded alone gets exactly the vector it
    gets inside a batch, so stored and fresh embeddings are comparable.

    Taught in: 07_retrieval.
    """

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z - z.mean(dim=1, keepdim=True)
        return z / (z.pow(2).mean(dim=1, keepdim=True) + self.eps).sqrt()


class EmbeddingNet(nn.Module):
    """Tuned backbone layers -> global average pooling -> linear to `dims` (None: no projection) -> Standardize.

    `pooled_weight` > 0 (with a projection) appends the standardised pooled features, scaled
    to `pooled_weight` times the projection's length: the trained projection separates the
    labelled classes, the pooled features keep what it was not asked about (classes nobody
    labelled). Then `dims` is the length of the whole embedding.

    Taught in: 07_retrieval.
    """

    def __init__(self, backbone: SplitBackbone, channels: int, dims: int | None, pooled_weight: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.projection = nn.Linear(channels, dims) if dims else nn.Identity()
        self.pooled_weight = float(pooled_weight) if dims else 0.0
        self.dims = (int(dims) + (int(channels) if self.pooled_weight else 0)) if dims else int(channels)
        self.standardize = Standardize()

    def conv_map(self, frozen_features: torch.Tensor) -> torch.Tensor:
        return self.backbone.tuned(frozen_features)

    def project(self, conv_map: torch.Tensor) -> torch.Tensor:
        """Pool in float32, project (in the autocast precision), then standardise in float32: what the triplet loss sees."""
        return self.standardize(self.projection(conv_map.float().mean(dim=(2, 3))).float())

    def embed_map(self, conv_map: torch.Tensor) -> torch.Tensor:
        """The retrieval embedding: `project`, followed by the weighted pooled features when `pooled_weight` > 0."""
        projected = self.project(conv_map)
        if not self.pooled_weight:
            return projected
        pooled = self.standardize(conv_map.float().mean(dim=(2, 3)))
        scale = self.pooled_weight * math.sqrt(projected.shape[1] / pooled.shape[1])
        return torch.cat([projected, scale * pooled], dim=1)

    def forward(self, frozen_features: torch.Tensor) -> torch.Tensor:
        return self.embed_map(self.conv_map(frozen_features))


def mirror_levels(backbone: SplitBackbone, image_size: int) -> list[tuple[int, int]]:
    """(side, channels) of the backbone's feature maps at every resolution, finest first.

    The channel count at a resolution is the narrowest map the backbone makes there (for
    an inverted-residual network: the block outputs, e.g. 16, 24, 40, 80 and 192 for
    EfficientNet-Lite0), found by running one blank image with forward hooks.

    Taught in: 07_retrieval.
    """
    narrowest: dict[int, int] = {}

    def record(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.ndim == 4:
            side = int(output.shape[-1])
            narrowest[side] = min(narrowest.get(side, 1 << 30), int(output.shape[1]))

    leaves = [m for m in backbone.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    was_training = backbone.training
    try:
        backbone.eval()
        with torch.no_grad():
            backbone(torch.zeros(1, 1, image_size, image_size, device="cpu"))
    finally:
        for hook in hooks:
            hook.remove()
        backbone.train(was_training)
    return sorted(((side, ch) for side, ch in narrowest.items() if side < image_size), reverse=True)


class MirrorDecoder(nn.Module):
    """Reconstruct the gray input from the last convolutional map, retracing the backbone's resolutions.

    First a 1x1 convolution (the mirror of a head convolution) to the channel count the
    backbone has at the coarsest resolution; then, for each finer resolution the backbone
    passed through, an upsampling (nearest) and conv3x3 + BatchNorm + ReLU to that
    resolution's channel count; a last conv3x3 and a sigmoid give one gray channel at the
    input size.

    Taught in: 07_retrieval.
    """

    def __init__(self, levels: Sequence[tuple[int, int]], in_channels: int, image_size: int):
        super().__init__()
        coarse_to_fine = sorted(levels)
        channels = coarse_to_fine[0][1]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
        for side, width in coarse_to_fine[1:]:
            layers += [nn.Upsample(size=(side, side), mode="nearest"),
                       nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        layers += [nn.Upsample(size=(image_size, image_size), mode="nearest"),
                   nn.Conv2d(channels, 1, 3, padding=1), nn.Sigmoid()]
        self.layers = nn.Sequential(*layers)

    def forward(self, conv_map: torch.Tensor) -> torch.Tensor:
        return self.layers(conv_map)


# ---------------------------------------------------------------------------------------------
# Augmented views through the frozen layers, computed once
# ---------------------------------------------------------------------------------------------


def augment(gray: torch.Tensor, generator: torch.Generator, max_shift: float = 0.1,
            scale_range: tuple[float, float] = (0.8, 1.25)) -> torch.Tensor:
    """Random shift (up to `max_shift` of the side), horizontal flip and scale change per image.

    Why horizontal flips only: a cross-section has a top (the surface) and a bottom (the
    substrate); mirroring left-right keeps it a plausible image, upside-down does not.
    Borders are filled by reflection. The random numbers are drawn on the generator's device
    (the CPU for `torch.Generator()`), so a seed gives the same views on every device.

    Taught in: 07_retrieval.
    """
    n, draw = gray.shape[0], generator.device
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    zoom = torch.exp(torch.empty(n, device=draw).uniform_(lo, hi, generator=generator))
    flip = torch.where(torch.rand(n, generator=generator, device=draw) < 0.5, -1.0, 1.0)
    shift = torch.empty(n, 2, device=draw).uniform_(-2 * max_shift, 2 * max_shift, generator=generator)
    theta = torch.zeros(n, 2, 3, device=draw)
    theta[:, 0, 0] = flip / zoom
    theta[:, 1, 1] = 1.0 / zoom
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(gray.device), list(gray.shape), align_corners=False)
    return F.grid_sample(gray, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


@dataclass
class ViewBank:
    """Frozen-layer features of every image: `clean` [N, ...] and `views` [N, V, ...] of augmented copies.

    `targets` [N, V, 1, S, S] uint8 holds the augmented gray images the autoencoder rebuilds.
    All on the CPU (training moves one batch at a time), so a bank fits however small the GPU.

    Taught in: 07_retrieval.
    """

    clean: torch.Tensor
    views: torch.Tensor | None
    targets: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.clean)


def build_view_bank(backbone: SplitBackbone, pixels, image_size: int, n_views: int = 0, seed: int = 0,
                    config: RetrievalConfig | None = None, batch_size: int = 32, progress: bool = False) -> ViewBank:
    """Run the frozen layers once over every image (and over `n_views` augmented copies of each).

    Same seed, same views (augmented on the CPU, then through the frozen layers on the
    backbone's device). Stored as float16 on the CPU to halve memory (the frozen features
    are activations of moderate range; the tuned layers compute in float32 or autocast).

    Taught in: 07_retrieval.
    """
    config = config or RetrievalConfig()
    generator = torch.Generator().manual_seed(int(seed))
    clean, views, targets = [], [], []
    n = len(pixels)
    for start in tqdm(range(0, n, batch_size), desc="frozen layers", disable=not progress):
        gray = resize_gray(pixels[start:start + batch_size], image_size)
        clean.append(backbone.frozen_features(gray).half().cpu())
        if n_views:
            stacked = torch.stack([augment(gray, generator, config.max_shift, config.scale_range)
                                   for _ in range(n_views)], dim=1)  # [B, V, 1, S, S]
            features = backbone.frozen_features(stacked.flatten(0, 1))
            views.append(features.half().cpu().unflatten(0, tuple(stacked.shape[:2])))
            targets.append((stacked * 255).round().to(torch.uint8))
    return ViewBank(
        clean=torch.cat(clean),
        views=torch.cat(views) if n_views else None,
        targets=torch.cat(targets) if n_views else None,
    )


# ---------------------------------------------------------------------------------------------
# Semi-hard triplet mining
# ---------------------------------------------------------------------------------------------


def embedding_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between unit-length copies of the embeddings: the metric of the triplet loss.

    Taught in: 07_retrieval.
    """
    return LpDistance(normalize_embeddings=True, p=2)(embeddings)


def mine_semihard(embeddings: torch.Tensor, labels: torch.Tensor, margin: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triplets (anchor, positive, negative) indices, one per anchor-positive pair.

    Semi-hard negative (FaceNet): farther from the anchor than the positive but within the
    margin, d(a,p) < d(a,n) < d(a,p) + R; of those the closest is taken. When a pair has no
    semi-hard negative, the closest negative of all is taken instead. Anchors without any
    negative in the batch are dropped. Computed on the embeddings' device.

    Taught in: 07_retrieval.
    """
    labels = torch.as_tensor(labels, device=embeddings.device)
    with torch.no_grad():
        dist = embedding_distances(embeddings)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=embeddings.device)
    anchors, positives = torch.nonzero(same & ~eye, as_tuple=True)
    negative = ~same[anchors]
    d_ap = dist[anchors, positives][:, None]
    d_an = dist[anchors]
    semihard = negative & (d_an > d_ap) & (d_an < d_ap + margin)
    inf = torch.tensor(float("inf"), device=dist.device)
    closest_semihard = torch.where(semihard, d_an, inf).argmin(dim=1)
    closest_negative = torch.where(negative, d_an, inf).argmin(dim=1)
    negatives = torch.where(semihard.any(dim=1), closest_semihard, closest_negative)
    keep = negative.any(dim=1)
    return anchors[keep], positives[keep], negatives[keep]


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def phase_schedule(method: str, epochs: int, warmup_epochs: int, recipe: str = "paper") -> list[str]:
    """The loss of each epoch: "classifier", "triplet", "autoencoder" or "joint" (empty for "frozen").

    "ours": `warmup_epochs` classifier epochs, then triplet and autoencoder alternate
    (`recipe="paper"`) or "joint" epochs, both losses in every step (`recipe="general"`).

    Taught in: 07_retrieval.
    """
    if method not in METHODS:
        raise SemnbInputError("method", f"unknown method {method!r}", f"use one of {', '.join(METHODS)}")
    if method == "frozen":
        return []
    if method == "ours":
        warmup = min(int(warmup_epochs), int(epochs))
        if recipe == "general":
            return ["classifier"] * warmup + ["joint"] * (int(epochs) - warmup)
        return ["classifier"] * warmup + [("triplet", "autoencoder")[i % 2] for i in range(int(epochs) - warmup)]
    return [{"autoencoder": "autoencoder", "siamese": "triplet", "classifier": "classifier"}[method]] * int(epochs)


@dataclass
class TrainedEmbedding:
    """A trained (or frozen) embedding: `encode(images)` for any image; `history` per epoch.

    It computes where its backbone lives (`compute`) and returns numpy arrays.

    Taught in: 07_retrieval.
    """

    method: str
    net: EmbeddingNet
    image_size: int
    history: list[dict] = field(default_factory=list)

    @property
    def backbone(self) -> SplitBackbone:
        return self.net.backbone

    @property
    def compute(self) -> Compute:
        return self.backbone.compute

    @torch.no_grad()
    def encode_frozen(self, frozen_features: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """Embeddings [N, M] float32 from precomputed frozen-layer features (`ViewBank.clean`, on the CPU).

        Batches are halved and retried if the device runs out of memory (each embedding
        depends on its own image only, so the result is the same).
        """
        self.net.eval()
        compute = self.compute

        def embed(chunk: torch.Tensor) -> torch.Tensor:
            with compute.autocast():
                return self.net(compute.to(chunk.float())).float().cpu()

        out = list(run_in_batches(embed, frozen_features, batch_size, "embedding batch"))
        return torch.cat(out).numpy().astype(np.float32)

    def encode(self, pixels, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Embeddings [N, M] float32 of gray images (arrays HxW in [0, 1], any size), e.g. a new query.

        Taught in: 07_retrieval.
        """
        bank = build_view_bank(self.backbone, pixels, self.image_size, batch_size=batch_size, progress=progress)
        return self.encode_frozen(bank.clean, batch_size)


def query_gate(trained: TrainedEmbedding, labelled_embeddings: np.ndarray, config: RetrievalConfig) -> NoveltyGate | None:
    """The per-query gate of a general-recipe embedding (`RetrievalConfig.gate_quantile`), fit on the labelled images' embeddings.

    None for any other embedding (no pooled half to weigh), with `gate_quantile` None, or
    with fewer than two labelled images.

    Taught in: 07_retrieval.
    """
    net = trained.net
    if config.gate_quantile is None or not net.pooled_weight:
        return None
    known, novel = config.gate_scales
    return NoveltyGate.fit(labelled_embeddings, int(net.projection.out_features), float(config.gate_quantile),
                           float(known), float(novel))


def _contiguous(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels -> 0..C-1 for the labelled ones (-1 stays -1), and C."""
    known = np.unique(labels[labels >= 0])
    lookup = {int(c): k for k, c in enumerate(known)}
    return np.array([lookup.get(int(c), -1) for c in labels]), len(known)


def _check_labels(method: str, labels: np.ndarray) -> None:
    if method not in LABEL_METHODS:
        return
    counts = np.bincount(labels[labels >= 0]) if np.any(labels >= 0) else np.zeros(0)
    if np.sum(counts >= 2) < 2:
        raise SemnbInputError("labels", f"method {method!r} needs at least two classes with two or more "
                              "labelled training images", "label more images or use more shots")


def _pk_batches(labels: np.ndarray, batch_size: int, per_class: int, n_batches: int,
                rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of `per_class` images from each of several classes, so every anchor has positives."""
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels[labels >= 0])]
    by_class = [members for members in by_class if len(members) >= 2]
    n_classes = max(2, min(len(by_class), batch_size // per_class))
    batches = []
    for _ in range(n_batches):
        chosen = rng.choice(len(by_class), size=n_classes, replace=False)
        batches.append(np.concatenate([rng.choice(by_class[c], size=per_class, replace=len(by_class[c]) < per_class)
                                       for c in chosen]))
    return batches


def train_embedding(method: str, backbone: SplitBackbone, bank: ViewBank, labels, config: RetrievalConfig,
                    seed: int = 0, progress: bool = False) -> TrainedEmbedding:
    """Train the embedding of `method` on the images of `bank`; `labels` -1 = unlabelled.

    The classifier and triplet losses see only labelled images; the autoencoder sees all.
    Every step draws one of the precomputed augmented views of each image. Same seed, same
    model. "ours" with `config.recipe="general"`: each step takes a P x K batch of labelled
    images and as many images drawn from all (labelled or not), one forward pass; the loss
    is the triplet loss on the projection (semi-hard triplets from pytorch-metric-learning's
    `TripletMarginMiner`) plus `classify_weight` times a linear classifier's cross-entropy on
    the projection of the labelled half, plus `recon_weight` times the reconstruction error
    (at `recon_size`) of the half drawn from all; the embedding is the projection and the
    weighted pooled features. The backbone is modified in place: load a fresh one per method. Trains on the
    backbone's `compute` (its device, autocast and gradient scaler); the heads are
    initialised on the CPU first, so a seed gives the same start on every device.

    Taught in: 07_retrieval.
    """
    labels, n_classes = _contiguous(np.asarray(labels, dtype=np.int64))
    if len(labels) != len(bank):
        raise SemnbInputError("labels", f"{len(labels)} labels for {len(bank)} images", "pass one label per image")
    _check_labels(method, labels)
    schedule = phase_schedule(method, config.epochs, config.warmup_epochs(), config.recipe)
    general = method == "ours" and config.recipe == "general"
    compute = backbone.compute
    backbone.eval()
    with torch.no_grad():
        channels = int(backbone.tuned(compute.to(bank.clean[:1].float())).shape[1])
    recon_size = min(int(config.recon_size or config.image_size), config.image_size) if general else config.image_size
    levels = mirror_levels(backbone, config.image_size)
    levels = [(side, width) for side, width in levels if side < recon_size] or levels[-1:]
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(int(seed))
        net = EmbeddingNet(backbone, channels, config.dims if method in LABEL_METHODS else None,
                           config.pooled_weight if general else 0.0)
        head = nn.Linear(config.dims if method in LABEL_METHODS else net.dims, max(n_classes, 1))
        decoder = MirrorDecoder(levels, channels, recon_size)
    net, head, decoder = net.to(compute.device), head.to(compute.device), decoder.to(compute.device)
    trained = TrainedEmbedding(method, net, config.image_size)
    if not schedule:
        return trained
    if bank.views is None:
        raise SemnbInputError("bank", "has no augmented views", "build it with n_views >= 1 for training")
    optimizer = torch.optim.AdamW(
        [{"params": backbone.tuned.parameters(), "lr": config.backbone_lr},
         {"params": [*net.projection.parameters(), *head.parameters(), *decoder.parameters()], "lr": config.lr}],
        weight_decay=config.weight_decay)
    scaler = compute.grad_scaler()
    triplet_loss = TripletMarginLoss(margin=config.margin, distance=LpDistance(normalize_embeddings=True, p=2))
    miner = TripletMarginMiner(margin=config.margin, type_of_triplets="semihard",
                               distance=LpDistance(normalize_embeddings=True, p=2))
    rng = np.random.default_rng([int(seed), 7])
    labelled = np.flatnonzero(labels >= 0)
    n_views = bank.views.shape[1]

    def features(indices: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        view = rng.integers(0, n_views, len(indices))
        return compute.to(bank.views[indices, view].float()), view

    net.train()
    decoder.train()
    for epoch, phase in enumerate(tqdm(schedule, desc=f"train {method}", disable=not progress)):
        losses = []
        n_batches = max(1, math.ceil(len(labelled) / config.batch_size))
        if phase == "joint":  # a P x K batch of labelled images, then as many drawn from all images
            pk = _pk_batches(labels, config.batch_size, config.per_class, n_batches, rng)
            others = np.resize(rng.permutation(len(labels)), (n_batches, config.batch_size))
            batches = [np.concatenate([batch, more]) for batch, more in zip(pk, others)]
        elif phase == "autoencoder":
            order = rng.permutation(len(labels))
            batches = [order[s:s + config.batch_size] for s in range(0, len(order), config.batch_size)]
        elif phase == "classifier":
            order = rng.permutation(labelled)
            batches = [order[s:s + config.batch_size] for s in range(0, len(order), config.batch_size)]
        else:
            batches = _pk_batches(labels, config.batch_size, config.per_class, n_batches, rng)
        for batch in batches:
            if len(batch) < 2:
                continue
            x, view = features(batch)
            n_labelled = len(batch) - config.batch_size if phase == "joint" else len(batch)
            n_rebuilt = n_labelled if phase == "joint" else 0  # "joint" rebuilds the images drawn from all only
            with compute.autocast():  # the networks in the autocast precision, the losses in float32
                conv_map = net.conv_map(x)
                rebuilt = decoder(conv_map[n_rebuilt:]).float() if phase in ("autoencoder", "joint") else None
                output = None if phase == "autoencoder" else net.project(conv_map[:n_labelled])
                logits = head(output) if phase == "classifier" or (phase == "joint" and config.classify_weight) else None
            loss = torch.zeros((), device=compute.device)
            if rebuilt is not None:
                target = compute.to(bank.targets[batch[n_rebuilt:], view[n_rebuilt:]]).float() / 255.0
                if recon_size != target.shape[-1]:
                    target = F.interpolate(target, size=(recon_size, recon_size), mode="area")
                loss = F.mse_loss(rebuilt, target) * (config.recon_weight if phase == "joint" else 1.0)
            if phase == "classifier":
                loss = F.cross_entropy(logits.float(), compute.to(torch.from_numpy(labels[batch])))
            elif phase in ("triplet", "joint"):
                output = output.float()
                batch_labels = compute.to(torch.from_numpy(labels[batch[:n_labelled]]))
                mined = (miner(output, batch_labels) if phase == "joint"
                         else mine_semihard(output, batch_labels, config.margin))
                loss = loss + triplet_loss(output, batch_labels, indices_tuple=mined)
                if logits is not None:
                    loss = loss + config.classify_weight * F.cross_entropy(logits.float(), batch_labels)
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
        trained.history.append({"epoch": epoch + 1, "phase": phase, "loss": float(np.mean(losses)) if losses else float("nan")})
    net.eval()
    return trained

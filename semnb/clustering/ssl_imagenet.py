"""semnb's `ssl` mode: self-supervised fine-tuning of an ImageNet encoder, clustered on the defect region.

Why not the paper's method (`semnb.clustering.ssl`, reported as `ssl_paper`): measured in notebook 06
and /work/notes/issue18.md, its pyramid levels are near copies once pooled (cosine of the untrained
encoder's L0 and L1 embeddings 0.999), so the cross-scale task is almost solved at initialisation;
training then learns the background (linear probe on the background kind 0.78 -> 0.89) and not the
defect (probe on the defect class 0.22 -> 0.22, chance 0.14). A small CNN from scratch on a few
hundred images also starts far below frozen ImageNet features.

How:
1. trunk (frozen): the offline ImageNet EfficientNet-Lite0 (`semnb.models.DEFAULT_BACKBONE`) reads
   every image once at the eval size; the output of block 14 (192 channels, stride 32) is kept, and a
   label-free anomaly map of the stride-16 patches (the self-referential distance of
   `semnb.clustering.defect_crop`: a repeating background is explained by its own repeats, a defect is
   not) says where the defect is (`trunk_features`);
2. tail (trained): the network's last block and head convolution (ImageNet-initialised, batch-norm
   statistics frozen) and lightly's projection head;
3. views (not copies): two independent random crops of each image's block-14 map (half of them centred
   near the anomaly peak), each resized to 3/4 of the map side, turned by a random dihedral move, with
   channel dropout (`feature_views`);
4. loss: lightly's VICReg (variance-invariance-covariance) between the two views;
5. embedding: the tail's 1280-d head map pooled with softmax weights of the standardised anomaly map,
   i.e. on the defect region rather than the whole field of view (`embed_finetuned`).
`ssl_untrained` is the same pipeline with zero epochs: the ImageNet weights, pooled the same way.

Chosen by measurement (notebook 06, sections 11-12): VICReg over SimCLR (NT-Xent) and over training
more of the network (blocks 11-15: 4x slower, no better); anomaly-softmax pooling over mean pooling
and over top-k pooling. SwAV and DINO (lightly's, with prototypes), anomaly-weighted pooling while
training, a 10x learning rate and PCA or whitening before k-means were tried as well (section 12):
none moved NMI beyond the untrained control by more than the k-means noise. What it gives
(magnetic tiles, 660 images, 256 px, seeds 0,1,2): NMI .227 +- .058 against the frozen ImageNet
baseline's .166 +- .018 and the best texture feature's .064, but its untrained control scores
.223 +- .020: the gain comes from the ImageNet weights and the defect-region pooling, not (yet) from
the self-supervised fine-tuning.

Taught in: 06_ssl_clustering.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from semnb.clustering.defect_crop import self_referential_distance
from semnb.components import patchcore_features, torch_threads
from semnb.errors import SemnbInputError
from semnb.hardware import Compute
from semnb.models import DEFAULT_BACKBONE, load_backbone
from semnb.models.efficientnet import EfficientNetTail, create_efficientnet_lite0

TRUNK_BLOCKS = 15  # blocks 0..14 are frozen; block 15 and the head convolution are trained
TRUNK_CHANNELS = 192
WORKING_SIZE = 256  # the frozen trunk reads larger images resized to this side (see trunk_features)
HEAD_CHANNELS = 1280
EXCLUDE_RADIUS = 2  # grid steps the self-referential anomaly score skips (defect_crop's default)
VIEW_SCALE = 0.75  # a view is resized to this fraction of the map side
CROP_SIDE = (0.5, 1.0)  # side of a view's crop, as a fraction of the map side
CENTRED_SHARE = 0.5  # share of crops centred near the anomaly peak
CHANNEL_DROP = 0.1
PROJECTION = (512, 256)  # hidden and output width of the projection head


@dataclass
class FinetuneConfig:
    """Settings of the `ssl` mode (chosen by measurement, see the module docstring).

    `epochs=0` gives the untrained control. `device`, `precision` and `threads` change where it runs,
    not the method.
    """

    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-4  # the tail's; the projection head learns at 10x
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise SemnbInputError("--epochs", f"got {self.epochs}", "use 0 or more epochs")
        if self.batch_size < 2:
            raise SemnbInputError("batch_size", f"got {self.batch_size}", "use 2 or more (VICReg's variance needs it)")


@dataclass
class TrunkFeatures:
    """Per image: the frozen block-14 map [N, 192, h, w] and the defect-region pooling weights [N, 1, h, w] (sum 1)."""

    maps: torch.Tensor
    weights: torch.Tensor
    peaks: torch.Tensor  # [N] index (row-major, on the h x w grid) of the highest anomaly

    def __len__(self) -> int:
        return len(self.maps)


@dataclass
class FinetuneHistory:
    """Per epoch: mean VICReg loss and seconds."""

    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    images_seen: int = 0

    @property
    def images_per_second(self) -> float:
        """Training throughput (two views per image)."""
        return self.images_seen / max(sum(self.seconds), 1e-9)


class Tail(EfficientNetTail):
    """EfficientNet-Lite0's last block and head convolution with their ImageNet weights: block-14 map -> 1280-d map.

    Taught in: 06_ssl_clustering.
    """

    def __init__(self):
        with torch.device("cpu"):
            net, _ = create_efficientnet_lite0()
        super().__init__(net, TRUNK_BLOCKS)

    def train(self, mode: bool = True) -> Tail:
        """Train the weights, but keep the ImageNet batch-norm statistics (a few hundred images cannot re-estimate them)."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self


@dataclass
class FinetuneRun:
    """A trained tail (on `compute.device`), its config and history."""

    tail: Tail
    config: FinetuneConfig
    history: FinetuneHistory
    compute: Compute


def pooling_weights(anomaly: torch.Tensor, grid: tuple[int, int], out: tuple[int, int]) -> torch.Tensor:
    """[B, h*w] anomaly scores on `grid` -> softmax weights [B, 1, *out] of the scores standardised per image.

    Standardising makes the weighting the same whatever the feature units: patches one standard
    deviation above the image's mean weigh e times more. Taught in: 06_ssl_clustering.
    """
    a = F.adaptive_avg_pool2d(anomaly.reshape(len(anomaly), 1, *grid), out).flatten(1)
    z = (a - a.mean(1, keepdim=True)) / (a.std(1, correction=0, keepdim=True) + 1e-6)
    return torch.softmax(z, dim=1).reshape(len(a), 1, *out)


@torch.inference_mode()
def trunk_features(pixels: np.ndarray, batch_size: int = 16, device: str = "auto", precision: str = "auto",
                   progress: bool = False, working_size: int | None = None) -> TrunkFeatures:
    """The frozen part, computed once per image: block-14 maps and defect-region weights (see the module docstring).

    `pixels`: preprocessed gray images [N, S, S] (`semnb.clustering.ssl.prepare_images`), S a multiple of 32.
    Why a fixed working side: everything after the trunk works on its maps, so images larger than
    `working_size` (None: `WORKING_SIZE`) are read at that side (the backbone resizes them) and the cost
    stops growing with `--image-size` (at 512 px: trunk and training several times faster, measured by
    `benchmarks/bench_cluster.py --ssl-speed-only --full-size-too`; notebook 06, section 12).
    Taught in: 06_ssl_clustering.
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[1] != pixels.shape[2] or pixels.shape[1] % 32:
        raise SemnbInputError("--image-size", f"images of shape {pixels.shape[1:]} for the ssl mode",
                              "use square images whose side is a multiple of 32 (e.g. --image-size 256)")
    side = min(pixels.shape[1], working_size or WORKING_SIZE)
    with torch.device("cpu"):  # built on the CPU, then moved to `device` by load_backbone
        backbone = load_backbone(DEFAULT_BACKBONE, image_size=side, device=device, precision=precision)
    captured: list[torch.Tensor] = []
    hook = backbone.model._blocks[TRUNK_BLOCKS - 1].register_forward_hook(lambda m, i, o: captured.append(o.float()))
    maps, weights, peaks = [], [], []
    try:
        for start in tqdm(range(0, len(pixels), batch_size), desc="ssl: frozen trunk", disable=not progress):
            levels = backbone.encode_levels(pixels[start:start + batch_size], on_device=True)
            block = captured.pop()
            anomaly = self_referential_distance(patchcore_features(levels.patch_z, levels.grid), levels.grid,
                                                EXCLUDE_RADIUS)
            w = pooling_weights(anomaly.float(), levels.grid, tuple(block.shape[-2:]))
            maps.append(block.cpu())
            weights.append(w.cpu())
            peaks.append(w.flatten(1).argmax(1).cpu())
    finally:
        hook.remove()
    return TrunkFeatures(torch.cat(maps), torch.cat(weights), torch.cat(peaks))


def feature_views(maps: torch.Tensor, peaks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random view per map [B, C, h, w] -> [B, C, s, s], s = VIEW_SCALE x h (see the module docstring).

    Every draw comes from `generator` (on the CPU), so the same state gives the same views.
    Taught in: 06_ssl_clustering.
    """
    n, channels, height, width = maps.shape
    side_out = max(2, int(round(VIEW_SCALE * height)))
    views = []
    for i in range(n):
        draw = torch.rand(5, generator=generator, device="cpu").tolist()
        side = max(2, int(round((CROP_SIDE[0] + (CROP_SIDE[1] - CROP_SIDE[0]) * draw[0]) * min(height, width))))
        if draw[1] < CENTRED_SHARE:
            row, col = divmod(int(peaks[i]), width)
            top = int(np.clip(row - side // 2 + round(2 * draw[2] - 1), 0, height - side))
            left = int(np.clip(col - side // 2 + round(2 * draw[3] - 1), 0, width - side))
        else:
            top, left = int(draw[2] * (height - side + 1)), int(draw[3] * (width - side + 1))
        view = F.interpolate(maps[i:i + 1, :, top:top + side, left:left + side], size=(side_out, side_out),
                             mode="bilinear", align_corners=False)
        turns = int(draw[4] * 8)
        view = torch.rot90(view, turns % 4, (2, 3))
        views.append(view.flip(3) if turns >= 4 else view)
    out = torch.cat(views)
    keep = (torch.rand(n, channels, 1, 1, generator=generator, device="cpu") > CHANNEL_DROP).float().to(out.device)
    return out * keep / (1 - CHANNEL_DROP)


def train_finetune(trunk: TrunkFeatures, config: FinetuneConfig | None = None, progress: bool = False) -> FinetuneRun:
    """Fine-tune the tail on two views per image with lightly's VICReg loss. No labels are used.

    Same seed, same thread count -> the same weights. Taught in: 06_ssl_clustering.
    """
    try:  # imported here: only training needs it
        from lightly.loss import VICRegLoss
        from lightly.models.modules.heads import VICRegProjectionHead
    except ImportError as err:
        raise SemnbInputError("--methods ssl", "the package lightly is not installed",
                              "pip install --no-deps lightly==1.6.0 (or run --ssl-mode paper)") from err

    config = config or FinetuneConfig()
    compute = Compute.resolve(config.device, config.precision)
    if len(trunk) < 2:
        raise SemnbInputError("pixels", f"only {len(trunk)} image", "train on at least 2 images")
    tail = Tail().to(compute.device)  # ImageNet weights: the same for every seed (the head and views are seeded)
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(config.seed)
        head = VICRegProjectionHead(HEAD_CHANNELS, PROJECTION[0], PROJECTION[1], num_layers=2)
    head = head.to(compute.device)
    optimizer = torch.optim.AdamW([{"params": tail.parameters(), "lr": config.lr},
                                   {"params": head.parameters(), "lr": 10 * config.lr}],
                                  weight_decay=config.weight_decay)
    criterion = VICRegLoss()
    generator = torch.Generator().manual_seed(config.seed)
    history = FinetuneHistory()
    n = len(trunk)
    with torch_threads(config.threads):
        tail.train()
        head.train()
        for _ in tqdm(range(config.epochs), desc="ssl epochs", disable=not progress):
            start, total = time.perf_counter(), 0.0
            order = torch.randperm(n, generator=generator, device="cpu")
            for first in range(0, n, config.batch_size):
                batch = order[first:first + config.batch_size]
                if len(batch) < 2:
                    continue
                maps = compute.to(trunk.maps[batch])
                views = [feature_views(maps, trunk.peaks[batch], generator) for _ in range(2)]
                with compute.autocast():
                    z = [head(tail(v).mean(dim=(2, 3))).float() for v in views]
                loss = criterion(z[0], z[1])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
                history.images_seen += len(batch)
            history.seconds.append(time.perf_counter() - start)
            history.loss.append(total / max(n, 1))
    tail.eval()
    return FinetuneRun(tail, config, history, compute)


@torch.inference_mode()
def embed_finetuned(tail: Tail, trunk: TrunkFeatures, batch_size: int = 64, device: str = "auto",
                    precision: str = "auto") -> np.ndarray:
    """[N, 1280] float32: the tail's head map pooled with the defect-region weights. Taught in: 06_ssl_clustering."""
    compute = Compute.resolve(device, precision)
    tail = tail.to(compute.device).eval()
    out = []
    for start in range(0, len(trunk), batch_size):
        with compute.autocast():
            fmap = tail(compute.to(trunk.maps[start:start + batch_size])).float()
        out.append((fmap * compute.to(trunk.weights[start:start + batch_size])).sum(dim=(2, 3)).cpu())
    return torch.cat(out).numpy()

"""Self-supervised multi-resolution learning of SEM defect morphology (SimSiam across scales).

The method of "Self-supervised multi-resolution learning for label-agnostic morphology
representation and clustering of semiconductor thin-film SEM defects" (Sci. Rep. 2026):

1. each image is cropped (border, info banner), resized to 512x512 (bicubic) and normalised
   (`prepare_images`, which calls `semnb.data.preprocess`);
2. a pyramid L0/L1/L2 = 512/256/128 is made by area interpolation (`build_pyramid`);
3. one small CNN (`ConvEncoder`, weights shared by all levels) embeds every level into 128-d;
   a projection head and a predictor sit on top during training only;
4. the loss asks every pair of levels to agree (`cross_scale_loss`): the predictor output of
   one level should have a high cosine with the stop-gradient projection of the other;
5. after training, the L0 embedding without the projection head describes the image
   (`embed`); `semnb.clustering.kmeans` runs k-means on it.

Which pairs and which side is stopped (the paper says "pairs of levels", SimSiam-style):
all three pairs (L0,L1), (L0,L2), (L1,L2), each symmetrised as in SimSiam,
    pair loss(i, j) = 1/2 * D(p_i, stopgrad(z_j)) + 1/2 * D(p_j, stopgrad(z_i)),
    D(p, z) = -cos(p, z),
and the loss is the mean over the three pairs, so it lies in [-1, 1] (-1 = perfect agreement).
Here z = projector(encoder(level)) and p = predictor(z); the target side z is detached,
so gradients flow only through the predicting side.

Opt-in augmentation (`SSLConfig.augment_levels`, not in the paper): the levels of one image,
globally pooled, are nearly the same picture, so agreeing across them may teach little
(measured: the trained encoder's NMI is close to its untrained self's). SimSiam learns
from agreeing across strong random views instead; with `augment_levels=True` every level of
every image gets its own random crop, dihedral turn, blur, brightness/contrast and noise
(`augment_level`) before the encoder. The clustering embedding is never augmented.

Collapse watch: SimSiam can collapse to a constant output. The per-dimension standard
deviation of the L2-normalised outputs is about 1/sqrt(d) when they spread over the sphere
and tends to 0 when they collapse (`embedding_std`); training records it every epoch.

Taught in: 06_ssl_clustering.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from semnb.components import torch_threads
from semnb.data.preprocess import preprocess
from semnb.errors import SemnbInputError
from semnb.hardware import PRECISION_CHOICES, Compute, run_in_batches

PAPER_IMAGE_SIZE = 512
NUM_LEVELS = 3
LEVEL_PAIRS = ((0, 1), (0, 2), (1, 2))


# ---------------------------------------------------------------- preprocessing and pyramid


def prepare_images(pixels: Sequence[np.ndarray], size: int = PAPER_IMAGE_SIZE, border: int = 0,
                   banner: int | str = "auto", progress: bool = False) -> np.ndarray:
    """The paper's preprocessing for every image: crop border and banner, bicubic resize, normalise.

    Images are gray, float in [0, 1] (as `semnb.data` reads them) or integer (scaled by their
    type's maximum, e.g. uint8 / 255). Returns float32 [N, size, size] in [0, 1] (percentile
    normalisation). `size` must be a multiple of 4 so the pyramid levels size/2 and size/4 are whole.

    Taught in: 06_ssl_clustering.
    """
    check_image_size(size)
    if len(pixels) == 0:
        raise SemnbInputError("pixels", "is empty", "pass at least one image")
    out = np.empty((len(pixels), size, size), dtype=np.float32)
    for i, image in enumerate(tqdm(pixels, desc="preprocess", disable=not progress)):
        image = np.asarray(image)
        if np.issubdtype(image.dtype, np.integer):
            image = image.astype(np.float32) / np.iinfo(image.dtype).max
        out[i] = preprocess(image, size=size, border=border, banner=banner, normalize="percentile")
    return out


def check_image_size(size: int, levels: int = NUM_LEVELS) -> None:
    """Raise a clear error unless `size` halves cleanly `levels - 1` times and stays usable."""
    factor = 2 ** (levels - 1)
    if int(size) != size or size < 8 * factor or size % factor:
        raise SemnbInputError("--image-size", f"got {size}",
                              f"use a multiple of {factor} of at least {8 * factor} (the paper uses {PAPER_IMAGE_SIZE})")


def build_pyramid(pixels: torch.Tensor, levels: int = NUM_LEVELS) -> list[torch.Tensor]:
    """[B, 1, S, S] -> [L0, L1, L2] of sizes S, S/2, S/4 by area interpolation (box average).

    Area interpolation by a whole factor f makes each output pixel the mean of an f x f block,
    which keeps the total intensity and does not alias fine texture.

    Taught in: 06_ssl_clustering.
    """
    if pixels.ndim != 4 or pixels.shape[1] != 1:
        raise SemnbInputError("pixels", f"has shape {tuple(pixels.shape)}", "pass a batch [B, 1, S, S]")
    size = pixels.shape[-1]
    check_image_size(size, levels)
    return [pixels] + [F.interpolate(pixels, size=(size // 2**level,) * 2, mode="area") for level in range(1, levels)]


# ---------------------------------------------------------------- augmentation (opt-in)

CROP_AREA = (0.5, 1.0)  # fraction of the level a random crop keeps
CROP_ASPECT = (3 / 4, 4 / 3)  # width / height of the crop, drawn log-uniformly
BLUR_PROBABILITY = 0.5
BLUR_SIGMA = (0.1, 1.5)  # pixels of the level
BLUR_RADIUS = 4
CONTRAST = (0.6, 1.4)  # factor about the image mean
BRIGHTNESS = (-0.2, 0.2)  # added, on the [0, 1] scale
NOISE_STD = (0.0, 0.05)  # of added Gaussian noise, on the [0, 1] scale


def augmentation_generator(seed: int) -> torch.Generator:
    """The augmentation's own random stream for `seed`, independent of the batch shuffle's.

    Separate so that turning augmentation off leaves the shuffle, hence training, exactly as before.
    """
    stream = np.random.SeedSequence(int(seed), spawn_key=(1,)).generate_state(1)[0]
    return torch.Generator().manual_seed(int(stream))


def _uniform(n: int, bounds: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(n, generator=generator, device="cpu")


def _random_geometry(n: int, generator: torch.Generator) -> torch.Tensor:
    """Affine matrices [n, 2, 3] for `grid_sample`: a random crop of the level, turned by one of the 8 dihedral moves.

    A random quarter turn and a random horizontal flip give all 8 (a vertical flip is a half turn
    and a horizontal flip); defects on a wafer have no up or down.
    """
    area = _uniform(n, CROP_AREA, generator)
    aspect = torch.exp(_uniform(n, (float(np.log(CROP_ASPECT[0])), float(np.log(CROP_ASPECT[1]))), generator))
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (1 - width) * (2 * torch.rand(n, generator=generator, device="cpu") - 1)
    centre_y = (1 - height) * (2 * torch.rand(n, generator=generator, device="cpu") - 1)
    turns = torch.randint(0, 4, (n,), generator=generator, device="cpu")
    flip = 1.0 - 2.0 * (torch.rand(n, generator=generator, device="cpu") < 0.5).float()
    cos, sin = torch.cos(turns * torch.pi / 2).round(), torch.sin(turns * torch.pi / 2).round()
    turn = torch.stack([torch.stack([cos * flip, -sin], 1), torch.stack([sin * flip, cos], 1)], 1)
    scale = torch.diag_embed(torch.stack([width, height], 1))
    return torch.cat([scale @ turn, torch.stack([centre_x, centre_y], 1)[:, :, None]], 2)


def _random_blur(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian blur of a random sigma on about half of the images (the others pass unchanged)."""
    n = x.shape[0]
    sigma = _uniform(n, BLUR_SIGMA, generator)
    blurred = torch.rand(n, generator=generator, device="cpu") < BLUR_PROBABILITY
    offsets = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=torch.float32, device="cpu")
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernel = torch.where(blurred[:, None], kernel / kernel.sum(1, keepdim=True), (offsets == 0).float()[None])
    kernel = kernel.to(x.device)
    size = x.shape[-1]
    rows = F.conv2d(F.pad(x.reshape(1, n, size, size), (0, 0, BLUR_RADIUS, BLUR_RADIUS), mode="reflect"),
                    kernel[:, None, :, None], groups=n)
    both = F.conv2d(F.pad(rows, (BLUR_RADIUS, BLUR_RADIUS, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=n)
    return both.reshape(n, 1, size, size)


def augment_level(level: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random view per image of a pyramid level [B, 1, S, S]: same shape, values in [0, 1].

    Per image, independently: a random crop (`CROP_AREA`, `CROP_ASPECT`) resized back to S x S
    (bilinear) and turned/flipped, a Gaussian blur on half of them, contrast and brightness
    jitter, Gaussian noise, clipped to [0, 1]. Every draw comes from `generator`, so the same
    generator state gives the same views. The numbers are drawn on the CPU (the same on every
    device) and applied on the level's device.

    Taught in: 06_ssl_clustering.
    """
    n, size, device = level.shape[0], level.shape[-1], level.device
    x = level.float().contiguous()
    grid = F.affine_grid(_random_geometry(n, generator).to(device), [n, 1, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = _random_blur(x, generator)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = _uniform(n, CONTRAST, generator)[:, None, None, None].to(device)
    brightness = _uniform(n, BRIGHTNESS, generator)[:, None, None, None].to(device)
    noise_std = _uniform(n, NOISE_STD, generator)[:, None, None, None].to(device)
    x = (x - mean) * contrast + mean + brightness
    x = x + noise_std * torch.randn(x.shape, generator=generator, device="cpu").to(device)
    return x.clamp(0.0, 1.0)


def augment_pyramid(levels: Sequence[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """Every level gets its own draw from `generator` (`augment_level`): two levels of one image are two views.

    Taught in: 06_ssl_clustering.
    """
    return [augment_level(level, generator) for level in levels]


# ---------------------------------------------------------------- networks


class ConvEncoder(nn.Module):
    """The shared encoder: 3 x [conv 3x3 stride 2 padding 1, batch norm, ReLU], 1 -> 32 -> 64 -> 128
    channels, adaptive average pooling and a linear layer to a 128-d embedding.

    Being fully convolutional up to the pooling, one set of weights reads every pyramid level.

    Taught in: 06_ssl_clustering.
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128), embedding_dim: int = 128):
        super().__init__()
        blocks, in_channels = [], 1
        for out_channels in channels:
            blocks += [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_channels, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(self.features(x)).flatten(1))


def _mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """linear -> batch norm -> ReLU -> linear."""
    return nn.Sequential(nn.Linear(dim_in, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim_out))


class MultiResSimSiam(nn.Module):
    """Encoder + projection head (linear, BN, ReLU, linear; 128-d) + predictor.

    The predictor is SimSiam's bottleneck MLP (linear, BN, ReLU, linear) with a hidden
    width of a quarter of the embedding (SimSiam: 2048 -> 512 -> 2048). The paper does not
    give its width; `predictor_hidden` changes it.

    Taught in: 06_ssl_clustering.
    """

    def __init__(self, embedding_dim: int = 128, predictor_hidden: int | None = None):
        super().__init__()
        self.encoder = ConvEncoder(embedding_dim=embedding_dim)
        self.projector = _mlp(embedding_dim, embedding_dim, embedding_dim)
        self.predictor = _mlp(embedding_dim, predictor_hidden or embedding_dim // 4, embedding_dim)

    def forward(self, levels: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Per level: projections z and predictions p; also the L0 encoder output h (for the collapse watch)."""
        h = [self.encoder(level) for level in levels]
        z = [self.projector(e) for e in h]
        p = [self.predictor(e) for e in z]
        return z, p, h[0]


# ---------------------------------------------------------------- loss and collapse watch


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, stopgrad(z)), averaged over the batch: SimSiam's loss term.

    Taught in: 06_ssl_clustering.
    """
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def cross_scale_loss(z: Sequence[torch.Tensor], p: Sequence[torch.Tensor],
                     pairs: Sequence[tuple[int, int]] = LEVEL_PAIRS) -> torch.Tensor:
    """Mean over level pairs (i, j) of 1/2 D(p_i, sg(z_j)) + 1/2 D(p_j, sg(z_i)); see the module docstring.

    Taught in: 06_ssl_clustering.
    """
    terms = [0.5 * (negative_cosine(p[i], z[j]) + negative_cosine(p[j], z[i])) for i, j in pairs]
    return torch.stack(terms).mean()


def embedding_std(embeddings: torch.Tensor | np.ndarray) -> float:
    """Mean over dimensions of the std (over the batch) of L2-normalised embeddings.

    About 1/sqrt(d) for embeddings spread over the unit sphere, 0 for a collapsed (constant) output.

    Taught in: 06_ssl_clustering.
    """
    x = embeddings if isinstance(embeddings, torch.Tensor) else torch.from_numpy(np.asarray(embeddings))
    x = x.detach().float()
    return float(F.normalize(x, dim=1).std(dim=0).mean())


# ---------------------------------------------------------------- training


@dataclass
class SSLConfig:
    """Training settings; the defaults are the paper's (Adam, lr 1e-3, batch 32, 15 epochs).

    `device` and `precision` say where and how training and embedding compute (`semnb.hardware`:
    `auto` is the first GPU with bf16 or fp16 autocast, else the CPU with fp32 unless it has
    AMX). `channels_last`, `precision` and `threads` change speed, not the method. Measured with
    benchmarks/bench_cluster.py on a shared 2-core AVX2 CPU (256 px, images/s): channels_last
    8.8 vs 4.1 for the default layout; bf16 autocast 1.2 (AVX2 has no bf16 arithmetic; it may
    pay on CPUs with AMX); one thread 8.8 vs two 6.0 (two OpenMP threads spin against other
    jobs; on an idle machine two should win). `threads=None` keeps torch's setting.

    `augment_levels=True` (not the paper's) gives every pyramid level of every training image its
    own random view (`augment_level`), so the levels stop being near copies; off, training is
    exactly the paper's method. Measured with `semnb eval cluster` (synthetic SEM, 140 images,
    128 px, 15 epochs, seeds 0,1): NMI 0.089 +- 0.027 with it, 0.108 +- 0.035 without, 0.113
    untrained; no reliable gain yet, and about 30% slower training.
    """

    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    embedding_dim: int = 128
    predictor_hidden: int | None = None
    seed: int = 0
    channels_last: bool = True
    precision: str = "auto"
    device: str = "auto"
    threads: int | None = None
    augment_levels: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise SemnbInputError("--epochs", f"got {self.epochs}", "use 1 or more epochs")
        if self.batch_size < 2:
            raise SemnbInputError("batch_size", f"got {self.batch_size}", "use 2 or more (batch norm needs it)")
        if self.precision not in PRECISION_CHOICES:
            raise SemnbInputError("precision", f"got {self.precision!r}", f"use one of {', '.join(PRECISION_CHOICES)}")


@dataclass
class TrainingHistory:
    """Per epoch: mean loss, collapse watch on the projections z and on the L0 embeddings h, seconds."""

    loss: list[float] = field(default_factory=list)
    std_projection: list[float] = field(default_factory=list)
    std_embedding: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    images_seen: int = 0

    @property
    def images_per_second(self) -> float:
        """Training throughput: images (each with its whole pyramid) per second of training."""
        return self.images_seen / max(sum(self.seconds), 1e-9)


@dataclass
class SSLRun:
    """A trained model (on `compute.device`), its config, its training history and where it trained."""

    model: MultiResSimSiam
    config: SSLConfig
    history: TrainingHistory
    compute: Compute


def _in_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _to_batch(pixels: np.ndarray, channels_last: bool, compute: Compute) -> torch.Tensor:
    """Images [B, S, S] as a [B, 1, S, S] float32 batch on the compute device."""
    x = compute.to(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[:, None])
    return _in_layout(x, channels_last)


def create_model(config: SSLConfig) -> MultiResSimSiam:
    """A freshly initialised model, the same for the same `config.seed` (the global RNG is left untouched).

    It is initialised on the CPU, so a seed gives the same weights whatever the device;
    `train_ssl` and `embed` move it to theirs.

    Taught in: 06_ssl_clustering.
    """
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(config.seed)
        model = MultiResSimSiam(config.embedding_dim, config.predictor_hidden)
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def train_ssl(pixels: np.ndarray, config: SSLConfig | None = None, progress: bool = False) -> SSLRun:
    """Train the multi-resolution SimSiam on preprocessed images [N, S, S] (from `prepare_images`).

    No labels are used. Batches are drawn by a seeded shuffle; a last batch of one image is
    dropped (batch norm needs two). Same seed, same thread count -> same weights. With
    `config.augment_levels` each level is augmented (`augment_pyramid`) from its own seeded stream.
    Trains on `config.device` under autocast to `config.precision` (a gradient scaler for fp16
    on CUDA); the shuffle and the augmentation draws stay on the CPU, so they are the same on every device.

    Taught in: 06_ssl_clustering.
    """
    config = config or SSLConfig()
    compute = Compute.resolve(config.device, config.precision)
    pixels = _check_images(pixels)
    if len(pixels) < 2:
        raise SemnbInputError("pixels", f"only {len(pixels)} image", "train on at least 2 images")
    model = create_model(config).to(compute.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scaler = compute.grad_scaler()
    generator = torch.Generator().manual_seed(config.seed)
    views = augmentation_generator(config.seed) if config.augment_levels else None
    history = TrainingHistory()
    n = len(pixels)
    with torch_threads(config.threads):
        model.train()
        bar = tqdm(range(config.epochs), desc="ssl epochs", disable=not progress)
        for _ in bar:
            start = time.perf_counter()
            order = torch.randperm(n, generator=generator, device="cpu").numpy()
            losses, weights, z_all, h_all = [], [], [], []
            for first in range(0, n, config.batch_size):
                batch = order[first:first + config.batch_size]
                if len(batch) < 2:
                    continue
                levels = build_pyramid(_to_batch(pixels[batch], config.channels_last, compute))
                if views is not None:
                    levels = [_in_layout(level, config.channels_last) for level in augment_pyramid(levels, views)]
                with compute.autocast():
                    z, p, h = model(levels)
                    loss = cross_scale_loss([t.float() for t in z], [t.float() for t in p])
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(loss.item())
                weights.append(len(batch))
                z_all.append(z[0].detach().float())
                h_all.append(h.detach().float())
                history.images_seen += len(batch)
            history.seconds.append(time.perf_counter() - start)
            history.loss.append(float(np.average(losses, weights=weights)))
            history.std_projection.append(embedding_std(torch.cat(z_all)))
            history.std_embedding.append(embedding_std(torch.cat(h_all)))
            bar.set_postfix(loss=f"{history.loss[-1]:.3f}", std=f"{history.std_projection[-1]:.3f}")
    model.eval()
    return SSLRun(model, config, history, compute)


@torch.inference_mode()
def embed(model: MultiResSimSiam, pixels: np.ndarray, batch_size: int = 32, channels_last: bool = True,
          progress: bool = False, device: str = "auto", precision: str = "auto") -> np.ndarray:
    """L0 embeddings [N, 128] of preprocessed images: the encoder only, projection head removed.

    Computes on `device` (the model is moved there) under autocast to `precision`, halving
    the batch on out-of-memory; returns float32 numpy on the CPU.

    Taught in: 06_ssl_clustering.
    """
    compute = Compute.resolve(device, precision)
    pixels = _check_images(pixels)
    model.to(compute.device).eval()

    def encode(part: np.ndarray) -> torch.Tensor:
        with compute.autocast():
            return model.encoder(_to_batch(part, channels_last, compute)).float().cpu()

    batches = run_in_batches(encode, pixels, batch_size, "image")
    out = list(tqdm(batches, desc="embed", total=-(-len(pixels) // batch_size), disable=not progress))
    return torch.cat(out).numpy()


@torch.inference_mode()
def embed_pyramid(model: MultiResSimSiam, pixels: np.ndarray, batch_size: int = 32, device: str = "auto",
                  precision: str = "auto") -> list[np.ndarray]:
    """Encoder embeddings of every pyramid level, [L0, L1, L2] each [N, 128]: how scale-consistent they are.

    Computes on `device` (the model is moved there) under autocast to `precision`; returns numpy on the CPU.

    Taught in: 06_ssl_clustering.
    """
    compute = Compute.resolve(device, precision)
    pixels = _check_images(pixels)
    model.to(compute.device).eval()

    def encode(part: np.ndarray) -> list[torch.Tensor]:
        with compute.autocast():
            return [model.encoder(x).float().cpu() for x in build_pyramid(_to_batch(part, False, compute))]

    per_batch = list(run_in_batches(encode, pixels, batch_size, "image"))
    return [torch.cat([levels[i] for levels in per_batch]).numpy() for i in range(NUM_LEVELS)]


def _check_images(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[1] != pixels.shape[2]:
        raise SemnbInputError("pixels", f"has shape {pixels.shape}",
                              "pass square preprocessed images [N, S, S] (semnb.clustering.ssl.prepare_images makes them)")
    check_image_size(pixels.shape[1])
    return pixels

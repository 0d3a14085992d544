"""SEM-CLIP few-shot defect segmentation (arXiv 2502.14884, section 3.3, eq. 8-17).

For every image, from the multi-level patch tokens of the dual-path encoder (semnb.models):
1. transformation layer: Z'_j = W_j x_j + b_j, one linear map per level j into the joint
   text-image space, trained on the k-shot support images and their masks;
2. Z path: A_Z = sum_j softmax_c(s * cos(Z'_j, t_c))[defect], with t = (normal, defect) text
   embeddings of the expert prompts and s = 100, CLIP's logit scale;
3. V path: V^m_j = norm(V'_j) (elementwise product) norm(t_c), V^r_j = mean of V^m_j over the
   image's patches, A_V = sum_j softmax_c(s * sum_e (V^m_j - V^r_j))[defect], where V'_j is the
   V-V token in the joint space (CLIP's own projection, untrained);
4. A = A_Z + A_V on the patch grid, upsampled bilinearly to the image size and smoothed with
   a Gaussian (sigma 4 px, as in April-GAN);
5. image score: the mean of the top 1 % of the smoothed map (a max that one noisy pixel
   cannot decide).

Choices the paper leaves open, and why:
- The layer's input x_j is CLIP's own projection of Z_j (ln_post, proj) and W_j starts as the
  identity: W_j composed with the projection is still one linear map of the normalised token
  into the joint space, but at step 0 it is CLIP's zero-shot readout, so a single shot
  fine-tunes it instead of learning 640 x 896 numbers from scratch. "Without the
  transformation layer" (the paper's Table 3) is exactly the untrained map. Adam, full batch,
  60 steps; learning rate 1e-3 (April-GAN's) when fine-tuning CLIP's map, 1e-2 for the
  randomly initialised map of a backbone without text.
- Loss: focal (gamma 2) + dice on the defect probability, summed over levels, as in April-GAN
  (the VAND 2023 method whose linear layers SEM-CLIP's follow). Defect pixels are few (0.1 to
  25 % of an image), so cross-entropy is dominated by easy background pixels: focal loss
  down-weights them, dice scores overlap whatever the defect's size. The map is compared with
  the mask at 2 x the patch grid (logits upsampled bilinearly, the mask area-averaged, so a
  thin defect stays a small fraction instead of vanishing).
- V^r_j is a mean over the patches, not over the classes: a mean over the classes adds the
  same number to every class's score and cancels inside the softmax, so it would remove
  nothing; the mean over the image's patches is what every patch shares (CLIP Surgery's
  "redundant" global feature), and removing it leaves what is local.
- Device and precision: the segmenter trains and maps on `compute.device`, the layer's
  forward passes (and the loss) under `compute.autocast()`, with `compute.grad_scaler()`;
  the layer is initialised on the CPU from a seeded CPU generator, so a seed starts from the
  same weights on every device, and the maps come back as CPU float32 arrays.
- Without a text tower (efficientnet-lite0) the layer maps the layer-normalised stage features
  into a 64-d space, the text pair t is replaced, per level, by two learned anchors (normal,
  defect) initialised from the mask-weighted mean features of the support, and there is no
  A_V (no V-V path): A = A_Z.

Taught in: 04_segmentation.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from semnb.components import image_scores, upsample_and_smooth
from semnb.errors import SemnbInputError
from semnb.hardware import Compute
from semnb.models.levels import EncodedLevels

NORMAL, DEFECT = 0, 1
_CHUNK = 16  # images per chunk where a [B, N, 2, E] product would be large


@dataclass(frozen=True)
class SegmentationConfig:
    """Every knob of SEM-CLIP segmentation; the defaults are the ones `semnb eval segment` uses.

    `transform`, `use_z`, `use_v` and `last_level_only` switch the paper's Table 3 ablations.

    Taught in: 04_segmentation.
    """

    steps: int = 60
    lr_text: float = 1e-3
    lr_visual: float = 1e-2
    focal_gamma: float = 2.0
    logit_scale: float = 100.0
    loss_upsample: int = 2
    sigma: float = 4.0
    top_fraction: float = 0.01
    visual_dim: int = 64
    transform: bool = True
    use_z: bool = True
    use_v: bool = True
    last_level_only: bool = False


@dataclass
class PatchFeatures:
    """Per-level patch tokens in the form the segmenter reads (float32).

    z: m tensors [B, N, d]: the transformation layer's input (CLIP: the projected Z_j, d = E;
    no text: the layer-normalised Z_j). v: m tensors [B, N, E], the projected V_j, or None.
    `in_joint_space` says whether z already lives where text embeddings do.

    The tokens are on the device of the features they came from (`patch_features`), `to` moves them.

    Taught in: 04_segmentation.
    """

    z: list[torch.Tensor]
    v: list[torch.Tensor] | None
    grid: tuple[int, int]
    in_joint_space: bool

    @property
    def num_images(self) -> int:
        return int(self.z[0].shape[0])

    def subset(self, indices: Sequence[int] | np.ndarray) -> PatchFeatures:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long, device=self.z[0].device)
        return replace(self, z=[t[idx] for t in self.z], v=None if self.v is None else [t[idx] for t in self.v])

    def to(self, device: torch.device | str) -> PatchFeatures:
        """The same tokens on another device (no copy where they are there already)."""
        return replace(self, z=[t.to(device) for t in self.z], v=None if self.v is None else [t.to(device) for t in self.v])

    def last_level(self) -> PatchFeatures:
        return replace(self, z=self.z[-1:], v=None if self.v is None else self.v[-1:])


@torch.no_grad()
def patch_features(levels: EncodedLevels) -> PatchFeatures:
    """Project (CLIP) or normalise (no text) every level's patch tokens once, for all episodes to share.

    Computed on the device the levels are on, and kept there.

    Taught in: 04_segmentation.
    """
    if levels.has_text:
        z = [levels.project(t) for t in levels.patch_z]
        v = None if levels.patch_v is None else [levels.project(t) for t in levels.patch_v]
        return PatchFeatures(z, v, levels.grid, in_joint_space=True)
    z = [F.layer_norm(t, t.shape[-1:]) for t in levels.patch_z]
    return PatchFeatures(z, None, levels.grid, in_joint_space=False)


# ------------------------------------------------------------------ the equations
def cosine(tokens: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [B, N, C] of tokens [B, N, E] to anchors [C, E] (text or learned).

    Taught in: 04_segmentation.
    """
    return F.normalize(tokens, dim=-1) @ F.normalize(anchors, dim=-1).T


def z_path_map(z_joint: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor], logit_scale: float = 100.0) -> torch.Tensor:
    """A_Z = sum_j softmax_c(s * cos(Z'_j, t_c))[defect]: [B, N] from m levels [B, N, E] and anchors [2, E] each.

    Taught in: 04_segmentation.
    """
    return sum((logit_scale * cosine(z, t)).softmax(dim=-1)[..., DEFECT] for z, t in zip(z_joint, anchors))


def v_path_map(v_joint: Sequence[torch.Tensor], text: torch.Tensor, logit_scale: float = 100.0) -> torch.Tensor:
    """A_V = sum_j softmax_c(s * sum_e (V^m_j - V^r_j))[defect] with redundant features V^r removed: [B, N].

    V^m_j[b, n, c] = norm(V_j[b, n]) * norm(t_c) (elementwise, [B, N, 2, E]); V^r_j is its mean
    over the N patches of the image. Computed in chunks of images to bound memory.

    Taught in: 04_segmentation.
    """
    unit_text = F.normalize(text, dim=-1)
    total = []
    for start in range(0, int(v_joint[0].shape[0]), _CHUNK):
        out = 0.0
        for v in v_joint:
            v_m = F.normalize(v[start:start + _CHUNK], dim=-1)[:, :, None, :] * unit_text[None, None]
            v_r = v_m.mean(dim=1, keepdim=True)
            out = out + (logit_scale * (v_m - v_r).sum(dim=-1)).softmax(dim=-1)[..., DEFECT]
        total.append(out)
    return torch.cat(total)


def mask_coverage(masks: torch.Tensor | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Fraction [K, h, w] of each cell of an h x w grid that the masks [K, H, W] cover (area average).

    Computed on the CPU, where masks are read (a [K, h, w] result is cheaper to move than the masks).

    Taught in: 04_segmentation.
    """
    masks = torch.as_tensor(np.asarray(masks), dtype=torch.float32, device="cpu")
    return F.adaptive_avg_pool2d(masks[:, None], size)[:, 0]


def focal_dice_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal + dice loss of defect logits [K, h, w] (upsampled bilinearly to the target) against target [K, H, W] in [0, 1].

    The two-class softmax's defect probability is sigmoid(logit), with logit = s * (cos_defect - cos_normal);
    working with the logit keeps log-probabilities finite where the softmax saturates.

    Taught in: 04_segmentation.
    """
    z = F.interpolate(logits[:, None], size=target.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    p = torch.sigmoid(z)
    focal = -(target * (1 - p) ** gamma * F.logsigmoid(z) + (1 - target) * p ** gamma * F.logsigmoid(-z)).mean()
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return focal + dice


# ------------------------------------------------------------------ the trained parts
class TransformationLayer(nn.Module):
    """One linear map per level into the joint space (eq. 8): identity-initialised on CLIP's projection, else random.

    Taught in: 04_segmentation.
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int, identity: bool, generator: torch.Generator):
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(d, out_dim) for d in in_dims)
        with torch.no_grad():
            for layer, d in zip(self.maps, in_dims):
                if identity:
                    layer.weight.copy_(torch.eye(out_dim, d))
                else:
                    layer.weight.copy_(torch.randn(out_dim, d, generator=generator) / math.sqrt(d))
                layer.bias.zero_()

    def forward(self, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [layer(t) for layer, t in zip(self.maps, tokens)]


def mask_prototypes(tokens: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """Two anchors [2, E]: the mean token outside and inside the defects, weighted by mask coverage [K, N].

    Taught in: 04_segmentation.
    """
    w_defect = coverage.reshape(-1, 1)
    flat = tokens.reshape(-1, tokens.shape[-1])
    flat = F.normalize(flat, dim=-1)
    normal = (flat * (1 - w_defect)).sum(0) / (1 - w_defect).sum().clamp_min(1e-6)
    defect = (flat * w_defect).sum(0) / w_defect.sum().clamp_min(1e-6)
    return torch.stack([normal, defect])


@dataclass
class SegmentationOutput:
    """Defect maps [B, S, S] (smoothed, numpy float32), image scores [B], and the raw patch maps per path.

    Taught in: 04_segmentation.
    """

    maps: np.ndarray
    scores: np.ndarray
    patch_maps: dict[str, np.ndarray] = field(default_factory=dict)


class SemClipSegmenter:
    """SEM-CLIP's few-shot segmenter: fit on the support (features + masks), then map any image.

    `anchors` are the learned (normal, defect) anchors per level of a backbone without text;
    in CLIP's joint space the text pair is every level's anchor and `anchors` stays empty.
    `device` and `precision` as `semnb.hardware.Compute.resolve` reads them (or a resolved
    `Compute` as `device`): features given on another device are moved there.

    Taught in: 04_segmentation.
    """

    def __init__(self, config: SegmentationConfig | None = None, device: str | torch.device | Compute = "auto",
                 precision: str = "auto"):
        self.config = config or SegmentationConfig()
        self.compute = Compute.resolve(device, precision)
        if not (self.config.use_z or self.config.use_v):
            raise SemnbInputError("SegmentationConfig", "uses neither the Z nor the V path", "set use_z or use_v")
        self.layer: TransformationLayer | None = None
        self.anchors: list[torch.Tensor] = []
        self.text: torch.Tensor | None = None
        self.loss_history: list[float] = []

    @classmethod
    def untrained(cls, text: torch.Tensor, config: SegmentationConfig | None = None,
                  device: str | torch.device | Compute = "auto", precision: str = "auto") -> SemClipSegmenter:
        """The segmenter without the transformation layer, on CLIP features: its map reads the text alone.

        This is `fit` with `transform=False` on a CLIP backbone (the paper's Table 3 "without the
        transformation layer"), which learns nothing from the support, so it needs none: the
        prompt editor (02_prompts) maps edited prompts with it.

        Taught in: 02_prompts and 04_segmentation.
        """
        model = cls(replace(config or SegmentationConfig(), transform=False), device, precision)
        model.text = F.normalize(model.compute.to(text.float()), dim=-1)
        return model

    def _select(self, feats: PatchFeatures) -> PatchFeatures:
        return feats.last_level() if self.config.last_level_only else feats

    def _anchors(self, levels: int) -> list[torch.Tensor]:
        """Each level's (normal, defect) anchors [2, E]: the learned ones, or the text in the joint space."""
        if self.anchors:
            return self.anchors
        if self.text is None:
            raise SemnbInputError("SemClipSegmenter", "is not fitted", "call fit(...) on the support first")
        return [self.text] * levels

    def num_terms(self, feats: PatchFeatures) -> int:
        """How many (level, path) terms A = A_Z + A_V sums on these features: A / num_terms is in [0, 1].

        Taught in: 04_segmentation.
        """
        feats = self._select(feats)
        paths = int(self.config.use_z) + int(self.config.use_v and feats.v is not None and self.text is not None)
        return len(feats.z) * paths

    def fit(self, support: PatchFeatures, masks: torch.Tensor | np.ndarray, text: torch.Tensor | None = None,
            seed: int = 0, progress: bool = False) -> SemClipSegmenter:
        """Train the transformation layer (and, without text, the anchors) on the support images and masks [K, S, S].

        Taught in: 04_segmentation.
        """
        cfg, compute = self.config, self.compute
        feats = self._select(support).to(compute.device)
        if feats.in_joint_space and text is None:
            raise SemnbInputError("text", "is missing for a CLIP backbone", "pass the (normal, defect) text embeddings")
        if feats.v is None and not cfg.use_z:
            raise SemnbInputError("V path", "needs a dual-path CLIP backbone (this one has no V-V tokens)",
                                  "use the Z path, or a CLIP backbone")
        masks = torch.as_tensor(np.asarray(masks), dtype=torch.float32, device="cpu")
        if masks.ndim != 3 or masks.shape[0] != feats.num_images:
            raise SemnbInputError("masks", f"has shape {tuple(masks.shape)} for {feats.num_images} support images",
                                  "pass one mask [S, S] per support image")
        self.text = None if text is None else F.normalize(compute.to(text.float()), dim=-1)
        self.loss_history = []
        if not cfg.use_z:
            return self
        generator = torch.Generator().manual_seed(int(seed))
        coverage = compute.to(mask_coverage(masks, feats.grid).reshape(feats.num_images, -1))
        self.layer = None
        if cfg.transform:
            dims = [int(t.shape[-1]) for t in feats.z]
            out_dim = int(text.shape[-1]) if feats.in_joint_space else cfg.visual_dim
            with torch.device("cpu"):  # the same initial weights on every device
                layer = TransformationLayer(dims, out_dim, identity=feats.in_joint_space, generator=generator)
            self.layer = layer.to(compute.device)
        self.anchors = []
        if not feats.in_joint_space:
            with torch.no_grad(), compute.autocast():
                self.anchors = [mask_prototypes(z, coverage).float() for z in self._map(feats.z)]
        if self.layer is not None and cfg.steps > 0:
            self._train(feats, masks, generator, progress)
        return self

    def _map(self, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(tokens) if self.layer is None else self.layer(tokens)

    def _train(self, feats: PatchFeatures, masks: torch.Tensor, generator: torch.Generator, progress: bool) -> None:
        cfg, compute = self.config, self.compute
        h, w = feats.grid
        target = compute.to(mask_coverage(masks, (h * cfg.loss_upsample, w * cfg.loss_upsample)))
        params = list(self.layer.parameters())
        if not feats.in_joint_space:  # no text: the anchors are learned too
            self.anchors = [nn.Parameter(a.clone()) for a in self.anchors]
            params += self.anchors
        optimizer = torch.optim.Adam(params, lr=cfg.lr_text if feats.in_joint_space else cfg.lr_visual)
        scaler = compute.grad_scaler()
        for _ in tqdm(range(cfg.steps), desc="train transformation layer", disable=not progress):
            optimizer.zero_grad()
            with compute.autocast():
                loss = 0.0
                for z, t in zip(self.layer(feats.z), self._anchors(len(feats.z))):
                    cos = cosine(z, t)
                    logits = cfg.logit_scale * (cos[..., DEFECT] - cos[..., NORMAL])
                    loss = loss + focal_dice_loss(logits.float().reshape(-1, h, w), target, cfg.focal_gamma)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            self.loss_history.append(float(loss.detach()))
        self.anchors = [a.detach() for a in self.anchors]

    @torch.no_grad()
    def patch_maps(self, feats: PatchFeatures) -> dict[str, torch.Tensor]:
        """Raw maps on the patch grid [B, N]: "z" (A_Z) and "v" (A_V), each present when its path is used.

        float32, on the segmenter's device (`predict` brings its maps back to the CPU).

        Taught in: 04_segmentation.
        """
        cfg = self.config
        feats = self._select(feats).to(self.compute.device)
        out = {}
        with self.compute.autocast():
            if cfg.use_z:
                out["z"] = z_path_map(self._map(feats.z), self._anchors(len(feats.z)), cfg.logit_scale)
            if cfg.use_v and feats.v is not None and self.text is not None:
                out["v"] = v_path_map(feats.v, self.text, cfg.logit_scale)
        return {k: v.float() for k, v in out.items()}

    @torch.no_grad()
    def predict(self, feats: PatchFeatures, image_size: int) -> SegmentationOutput:
        """A = A_Z + A_V, upsampled to `image_size` and smoothed, with one score per image (CPU float32 arrays).

        Taught in: 04_segmentation.
        """
        parts = self.patch_maps(feats)
        combined = sum(parts.values())
        maps = upsample_and_smooth(combined, feats.grid, image_size, self.config.sigma)
        scores = image_scores(maps, self.config.top_fraction)
        return SegmentationOutput(maps=maps.cpu().numpy(), scores=scores.cpu().numpy(),
                                  patch_maps={k: v.reshape(-1, *feats.grid).cpu().numpy() for k, v in parts.items()})

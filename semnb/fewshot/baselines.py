"""The baselines SEM-CLIP is measured against, on the same features and the same episodes.

Segmentation (each keeps a memory of defect-free support patches; a query patch far from all
of them is a defect):
- `patchcore_*`, PatchCore (Roth et al., CVPR 2022), as anomalib implements it: the two middle
  levels, each averaged over its 3 x 3 neighbourhood with zero padding ("locally aware"),
  concatenated; a greedy coreset keeps 10 % of the memory; the patch map is the Euclidean
  distance to the nearest memory patch, upsampled by nearest neighbour and smoothed with a
  Gaussian (sigma 4 px); the image score is eq. 7's re-weighted maximum.
- `winclip_plus`, WinCLIP+ (Jeong et al., CVPR 2023), CLIP backbones only: 2 x 2 and 3 x 3 windows
  through the image tower, harmonic aggregation, WinCLIP's prompt ensemble, CLIP's temperature;
- `nn_visual_patch_maps`: the visual nearest neighbour of WinCLIP+'s few-shot branch on patch
  tokens (cosine), without WinCLIP's windows; with a text tower averaged with the zero-shot map.
The memory holds the patches of the support's defect-free images, as in both papers; when
an episode has none (a data set of defect images only), it holds the support patches that
no mask touches.

Classification:
- `linear_probe_proba`: logistic regression on the standardised last-level class token
  (CLIP's linear-probe protocol, scikit-learn L-BFGS);
- `prototype_proba`: nearest class mean of the unit-length image embeddings (cosine).

The maps are computed on the device of the features given (a GPU computes PatchCore's
nearest-patch distances far faster), in float32; the classifiers' scikit-learn fits run on the CPU.

Taught in: 04_segmentation (patchcore, nn_visual) and 05_classification (linear_probe, prototype).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from semnb.components import greedy_coreset, middle_levels, nearest_distance, upsample_and_smooth
from semnb.errors import SemnbInputError
from semnb.fewshot.segmentation import DEFECT, cosine
from semnb.models.dual_path import window_indices as window_indices_for

CLIP_LOGIT_SCALE = 1 / 0.07  # CLIP's temperature (exp of its initial logit scale), the one WinCLIP uses


def memory_rows(coverage: torch.Tensor, is_normal: np.ndarray) -> torch.Tensor:
    """Bool [K, N]: which support patches enter the defect-free memory (see the module docstring).

    Taught in: 04_segmentation.
    """
    is_normal = torch.as_tensor(np.asarray(is_normal, dtype=bool), device=coverage.device)
    if bool(is_normal.any()):
        return is_normal[:, None].expand_as(coverage).clone()
    return coverage <= 0


def nn_visual_patch_maps(query_z: Sequence[torch.Tensor], support_z: Sequence[torch.Tensor], memory: torch.Tensor,
                         text: torch.Tensor | None = None, logit_scale: float = CLIP_LOGIT_SCALE) -> torch.Tensor:
    """Visual nearest-neighbour map [B, N]: min over the memory of (1 - cos) / 2, averaged over levels.

    With text (a CLIP backbone) it is averaged with the zero-shot map softmax(s * cos(patch, t))[defect] of the
    last level, s = CLIP's 1/0.07: WinCLIP+'s two terms on patch tokens, without its windows or prompt
    ensemble, hence not named WinCLIP. query_z, support_z: per level [B, N, d] tokens; memory: bool [K, N].

    Taught in: 04_segmentation.
    """
    visual = 0.0
    for q, s in zip(query_z, support_z):
        distance = nearest_distance(q.reshape(-1, q.shape[-1]), s[memory], metric="cosine")
        visual = visual + distance.reshape(q.shape[:2])
    visual = visual / len(query_z)
    if text is None:
        return visual
    zero_shot = (logit_scale * cosine(query_z[-1], text.to(query_z[-1].device))).softmax(dim=-1)[..., DEFECT]
    return (zero_shot + visual) / 2


def harmonic_patch_map(window_scores: torch.Tensor, indices: torch.Tensor, n_patches: int) -> torch.Tensor:
    """Each patch's harmonic mean [B, N] of the scores [B, W] of the windows [W, k] that contain it (WinCLIP eq. 4).

    Taught in: 04_segmentation.
    """
    idx = indices.to(window_scores.device).reshape(-1)
    inv = torch.zeros(window_scores.shape[0], n_patches, device=window_scores.device)
    inv.index_add_(1, idx, (1 / window_scores.clamp_min(1e-12)).repeat_interleave(indices.shape[1], dim=1))
    count = torch.bincount(idx, minlength=n_patches).to(inv.dtype)
    return count / inv.clamp_min(1e-12)


def mean_patch_map(window_scores: torch.Tensor, indices: torch.Tensor, n_patches: int) -> torch.Tensor:
    """Each patch's arithmetic mean [B, N] of the scores [B, W] of the windows [W, k] that contain it.

    Taught in: 04_segmentation.
    """
    idx = indices.to(window_scores.device).reshape(-1)
    total = torch.zeros(window_scores.shape[0], n_patches, device=window_scores.device)
    total.index_add_(1, idx, window_scores.repeat_interleave(indices.shape[1], dim=1))
    return total / torch.bincount(idx, minlength=n_patches).to(total.dtype)


def winclip_plus(query_windows: dict[int, torch.Tensor], normal_windows: dict[int, torch.Tensor],
                 query_embedding: torch.Tensor, text: torch.Tensor, grid: tuple[int, int],
                 logit_scale: float = CLIP_LOGIT_SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """WinCLIP+ (Jeong et al., CVPR 2023): the patch map [B, N] and image score [B].

    `normal_windows`: per size, the memory's window embeddings [..., E] (the defect-free support's windows).
    Per window size k (2 x 2 and 3 x 3 windows through the whole image tower, `ClipBackbone.encode_windows`):
    zero-shot window score softmax(s cos(w, t))[defect], s = 1/0.07, t = WinCLIP's prompt ensemble; few-shot
    window score min over the defect-free support's windows r of the same size of (1 - cos(w, r)) / 2.
    Patch maps: zero-shot, the harmonic mean over every window of every size containing the patch; few-shot,
    the mean over the windows containing it, averaged over sizes. Map = (zero-shot + few-shot) / 2; image
    score = (zero-shot score of the whole image's embedding + max of the few-shot map) / 2.
    Left out: the paper's extra few-shot term on the penultimate layer's patch tokens and the whole-image
    scale of the zero-shot map.

    Taught in: 04_segmentation.
    """
    n = grid[0] * grid[1]
    text = F.normalize(text.to(query_embedding.device), dim=-1)
    inv, count, few = 0.0, 0, []
    for size, windows in query_windows.items():
        idx = window_indices_for(grid, size)
        zero = (logit_scale * F.normalize(windows, dim=-1) @ text.T).softmax(dim=-1)[..., DEFECT]  # [B, W]
        harmonic = harmonic_patch_map(zero, idx, n)
        covered = torch.bincount(idx.reshape(-1), minlength=n).to(harmonic.device, harmonic.dtype)
        inv, count = inv + covered / harmonic, count + covered
        bank = normal_windows[size].reshape(-1, windows.shape[-1])
        far = nearest_distance(windows.reshape(-1, windows.shape[-1]), bank, metric="cosine").reshape(windows.shape[:2])
        few.append(mean_patch_map(far, idx, n))
    zero_shot = count / inv
    few_shot = torch.stack(few).mean(dim=0)
    image_zero = (logit_scale * F.normalize(query_embedding, dim=-1) @ text.T).softmax(dim=-1)[:, DEFECT]
    return (zero_shot + few_shot) / 2, (image_zero + few_shot.amax(dim=1)) / 2


PATCHCORE_CORESET = 0.1  # the paper's and anomalib's default share of the memory kept
PATCHCORE_NEIGHBOURS = 9  # b of eq. 7 (anomalib's num_neighbors)


def patchcore_embedding(patch_z: Sequence[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """PatchCore's locally aware patch features [B, N, sum d]: the two middle levels, each averaged over its 3 x 3
    neighbourhood with zero padding (anomalib's AvgPool2d(3, 1, 1)), concatenated as they are (no normalisation).

    Taught in: 04_segmentation.
    """
    picked = [patch_z[j] for j in middle_levels(len(patch_z))]
    out = []
    for t in picked:
        b, n, d = t.shape
        pooled = F.avg_pool2d(t.transpose(1, 2).reshape(b, d, *grid), 3, stride=1, padding=1, count_include_pad=True)
        out.append(pooled.reshape(b, d, n).transpose(1, 2))
    return torch.cat(out, dim=-1)


def patchcore_memory(support_features: torch.Tensor, memory: torch.Tensor,
                     coreset_fraction: float = PATCHCORE_CORESET, seed: int = 0) -> torch.Tensor:
    """The memory bank [M, D]: the defect-free support patches, reduced by greedy coreset to `coreset_fraction`.

    Taught in: 04_segmentation.
    """
    if not 0 < coreset_fraction <= 1:
        raise SemnbInputError("coreset_fraction", f"got {coreset_fraction}", "use a fraction in (0, 1] (PatchCore: 0.1)")
    bank = support_features[memory]
    if len(bank) == 0:
        raise SemnbInputError("support", "holds no defect-free patch for the memory", "add defect-free support images")
    if coreset_fraction < 1 and len(bank) > 1:
        bank = bank[greedy_coreset(bank, int(round(coreset_fraction * len(bank))), seed)]
    return bank


def reweighted_image_scores(query_features: torch.Tensor, patch_distances: torch.Tensor, bank: torch.Tensor,
                            neighbours: int = PATCHCORE_NEIGHBOURS) -> torch.Tensor:
    """PatchCore's image score (eq. 7) [B]: s = (1 - exp||m_test - m*|| / sum_{m in N_b(m*)} exp||m_test - m||) s*.

    m_test: the query patch farthest from the memory, s* its distance; m*: its nearest memory patch; N_b(m*):
    the b memory patches nearest to m* (m* itself included, as in anomalib). The weight is near 0 when
    m* sits alone in a sparse part of the memory, so a lone far-off patch counts less.

    Taught in: 04_segmentation.
    """
    rows = torch.arange(len(query_features), device=query_features.device)
    worst = patch_distances.argmax(dim=1)
    m_test = query_features[rows, worst]  # [B, D]
    s_star = patch_distances[rows, worst]
    m_star = bank[torch.cdist(m_test, bank).argmin(dim=1)]  # [B, D]
    b = min(int(neighbours), len(bank))
    around = torch.cdist(m_star, bank).topk(b, dim=1, largest=False).indices  # [B, b], m* first
    distances = torch.linalg.vector_norm(m_test[:, None] - bank[around], dim=-1)  # [B, b]
    return (1 - distances.softmax(dim=1)[:, 0]) * s_star


def nearest_upsample_and_smooth(patch_maps: torch.Tensor, grid: tuple[int, int], size: int,
                                sigma: float = 4.0) -> torch.Tensor:
    """PatchCore's map [B, size, size]: nearest-neighbour upsampling of the patch grid, then a Gaussian of `sigma` px.

    Taught in: 04_segmentation.
    """
    full = F.interpolate(patch_maps.reshape(-1, 1, *grid).float(), size=(size, size), mode="nearest")[:, 0]
    return upsample_and_smooth(full, (size, size), size, sigma)


def patchcore_patch_maps(query_features: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """PatchCore's patch map [B, N]: the Euclidean distance of each query patch to its nearest memory patch.

    `query_features` from `patchcore_embedding`, `bank` from `patchcore_memory`.

    Taught in: 04_segmentation.
    """
    b, n, d = query_features.shape
    return nearest_distance(query_features.reshape(-1, d), bank).reshape(b, n)


def fit_linear_probe(support_tokens: torch.Tensor, support_labels: np.ndarray) -> Pipeline:
    """The linear probe: a logistic regression on standardised tokens [K, D], fit on the CPU.

    Apart from `linear_probe_proba` so that a fitted model (semnb.fewshot.model) can keep it.

    Taught in: 05_classification.
    """
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return model.fit(support_tokens.float().cpu().numpy(), np.asarray(support_labels))


def linear_probe_predict(model: Pipeline, query_tokens: torch.Tensor, n_classes: int) -> np.ndarray:
    """Class probabilities [Q, n_classes] of a fitted probe (a class absent from its support gets 0).

    Taught in: 05_classification.
    """
    out = np.zeros((len(query_tokens), n_classes))
    out[:, model.classes_] = model.predict_proba(query_tokens.float().cpu().numpy())
    return out


def linear_probe_proba(support_tokens: torch.Tensor, support_labels: np.ndarray, query_tokens: torch.Tensor,
                       n_classes: int) -> np.ndarray:
    """Class probabilities [Q, n_classes] of a logistic regression on standardised tokens [K, D].

    Taught in: 05_classification.
    """
    return linear_probe_predict(fit_linear_probe(support_tokens, support_labels), query_tokens, n_classes)


def prototype_proba(support_embeddings: torch.Tensor, support_labels: np.ndarray, query_embeddings: torch.Tensor,
                    n_classes: int, logit_scale: float = 100.0) -> np.ndarray:
    """Nearest class mean: softmax of scaled cosine similarity [Q, n_classes] to each class's mean unit embedding.

    Classes without support examples get probability 0.

    Taught in: 05_classification.
    """
    labels = torch.as_tensor(np.asarray(support_labels), dtype=torch.long, device=support_embeddings.device)
    unit = F.normalize(support_embeddings, dim=-1)
    present = torch.unique(labels)
    prototypes = torch.stack([F.normalize(unit[labels == c].mean(0), dim=0) for c in present])
    sims = F.normalize(query_embeddings, dim=-1) @ prototypes.T
    out = np.zeros((len(query_embeddings), n_classes))
    out[:, present.cpu().numpy()] = (logit_scale * sims).softmax(dim=-1).cpu().numpy()
    return out

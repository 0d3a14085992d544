"""The baselines SEM-CLIP is measured against, on the same features and the same episodes.

Segmentation (both keep a memory of defect-free support patches; a query patch far from all
of them is a defect):
- `winclip_patch_maps`, WinCLIP+-style (Jeong et al., CVPR 2023): the zero-shot text map
  softmax(s * cos(patch, t))[defect] of the last level, averaged with the few-shot visual map
  min over memory of (1 - cos) / 2, itself averaged over levels. "Style": patch tokens stand
  in for WinCLIP's sliding-window embeddings. Without text, the visual map alone.
- `patchcore_patch_maps`, PatchCore-style (Roth et al., CVPR 2022): the middle levels' patch
  tokens, each averaged over its 3 x 3 neighbourhood ("locally aware") and layer-normalised,
  concatenated; the Euclidean distance to the nearest memory patch; an optional greedy
  coreset keeps a fraction of the memory.
The memory holds the patches of the support's defect-free images, as in both papers; when
an episode has none (a data set of defect images only), it holds the support patches that
no mask touches.

Classification:
- `linear_probe_proba`: logistic regression on the standardised last-level class token
  (CLIP's linear-probe protocol, scikit-learn L-BFGS);
- `prototype_proba`: nearest class mean of the unit-length image embeddings (cosine).

The maps are computed on the device of the features given (a GPU computes PatchCore's
nearest-patch distances far faster), in float32; the classifiers' scikit-learn fits run on the CPU.

Taught in: 04_segmentation (winclip, patchcore) and 05_classification (linear_probe, prototype).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from semnb.components import greedy_coreset, nearest_distance
from semnb.errors import SemnbInputError
from semnb.fewshot.segmentation import DEFECT, cosine


def memory_rows(coverage: torch.Tensor, is_normal: np.ndarray) -> torch.Tensor:
    """Bool [K, N]: which support patches enter the defect-free memory (see the module docstring).

    Taught in: 04_segmentation.
    """
    is_normal = torch.as_tensor(np.asarray(is_normal, dtype=bool), device=coverage.device)
    if bool(is_normal.any()):
        return is_normal[:, None].expand_as(coverage).clone()
    return coverage <= 0


def winclip_patch_maps(query_z: Sequence[torch.Tensor], support_z: Sequence[torch.Tensor], memory: torch.Tensor,
                       text: torch.Tensor | None = None, logit_scale: float = 100.0) -> torch.Tensor:
    """WinCLIP+-style map [B, N]: (zero-shot text map + few-shot visual map) / 2, or the visual map alone without text.

    query_z, support_z: per level [B, N, d] tokens (CLIP: projected into the joint space); memory: bool [K, N].

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


def patchcore_patch_maps(query_features: torch.Tensor, support_features: torch.Tensor, memory: torch.Tensor,
                         coreset_fraction: float = 1.0, seed: int = 0) -> torch.Tensor:
    """PatchCore-style map [B, N]: Euclidean distance of each query patch to its nearest memory patch.

    `query_features`, `support_features` come from `patchcore_features`; `coreset_fraction` < 1 keeps that
    share of the memory (greedy coreset).

    Taught in: 04_segmentation.
    """
    if not 0 < coreset_fraction <= 1:
        raise SemnbInputError("coreset_fraction", f"got {coreset_fraction}", "use a fraction in (0, 1]")
    bank = support_features[memory]
    if coreset_fraction < 1 and len(bank) > 1:
        bank = bank[greedy_coreset(bank, int(round(coreset_fraction * len(bank))), seed)]
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

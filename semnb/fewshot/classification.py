"""SEM-CLIP few-shot defect classification (arXiv 2502.14884, section 3.4, eq. 18-23).

Two opinions on each image, mixed:
- P_S, from text: the class token of every level j, projected into the joint space, is
  compared with each class's expert-prompt embedding t_c; P_S = softmax_c(s * max_j
  cos(CLS'_j, t_c)), s = 100 (CLIP's logit scale). The max over levels lets the level that
  sees a class best speak for it.
- P_C, from the support: a linear head on the m class tokens (each layer-normalised, then
  concatenated), trained with cross-entropy on the k-shot support (Adam, full batch).
- P = (1 - a) P_S + a P_C, a = 0.8 by default (the paper's): the head, trained on SEM
  images, leads; the text prior helps most when shots are few.

Without a text tower (efficientnet-lite0) P_S is replaced by visual prototypes in place of
text: softmax_c(s * cos(e, p_c)), e = the backbone's pooled image embedding, p_c = the mean
unit embedding of class c's support images. Why not the max over levels: CNN stages do not
share one space as CLIP's projected tokens do, and an early stage, where every image looks
alike, wins every max (measured: 5-shot accuracy on magnetic_tile 0.21 with the max over
stages, 0.47 with the pooled embedding).

The head trains and predicts on `compute.device` under `compute.autocast()` (with
`compute.grad_scaler()`); it is initialised on the CPU from a seeded CPU generator, so a seed
starts from the same weights on every device; probabilities come back as CPU float32 arrays.

Taught in: 05_classification.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semnb.errors import SemnbInputError
from semnb.hardware import Compute
from semnb.models.levels import EncodedLevels


@dataclass(frozen=True)
class ClassificationConfig:
    """Every knob of SEM-CLIP classification; `alpha` = a of P = (1 - a) P_S + a P_C.

    Taught in: 05_classification.
    """

    alpha: float = 0.8
    steps: int = 200
    lr: float = 1e-2
    weight_decay: float = 1e-4
    logit_scale: float = 100.0
    last_level_only: bool = False


def normalized_tokens(cls_tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each level's class tokens [B, D_j], layer-normalised (no learned scale): the head's and prototypes' input.

    Taught in: 05_classification.
    """
    return [F.layer_norm(t, t.shape[-1:]) for t in cls_tokens]


def max_level_probabilities(cls_tokens: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor],
                            logit_scale: float = 100.0) -> torch.Tensor:
    """softmax_c(s * max_j cos(CLS_j, anchor_j,c)): [B, C] from per-level tokens [B, D_j] and anchors [C, D_j].

    With text, every level's anchors are the class text embeddings (P_S, eq. 18-19).

    Taught in: 05_classification.
    """
    sims = torch.stack([F.normalize(t, dim=-1) @ F.normalize(a, dim=-1).T for t, a in zip(cls_tokens, anchors)])
    return (logit_scale * sims.amax(dim=0)).softmax(dim=-1)


def class_prototypes(tokens: Sequence[torch.Tensor], labels: np.ndarray, n_classes: int) -> list[torch.Tensor]:
    """For each token set [B, D], the mean unit-length token of each class [C, D] (the visual stand-in for text).

    Taught in: 05_classification.
    """
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=tokens[0].device)
    missing = sorted(set(range(n_classes)) - set(labels.tolist()))
    if missing:
        raise SemnbInputError("support", f"has no example of class {missing[0]}", "draw at least one shot per class")
    out = []
    for t in tokens:
        unit = F.normalize(t, dim=-1)
        out.append(torch.stack([unit[labels == c].mean(0) for c in range(n_classes)]))
    return out


def mix_probabilities(p_s: torch.Tensor, p_c: torch.Tensor, alpha: float) -> torch.Tensor:
    """P = (1 - a) P_S + a P_C (eq. 23).

    Taught in: 05_classification.
    """
    if not 0 <= alpha <= 1:
        raise SemnbInputError("alpha", f"got {alpha}", "use a value in [0, 1] (the paper: 0.8)")
    return (1 - alpha) * p_s + alpha * p_c


class ClassHead(nn.Module):
    """The linear head on the m class tokens: layer-normalise each, concatenate, one linear map to C logits.

    Taught in: 05_classification.
    """

    def __init__(self, dims: Sequence[int], n_classes: int, generator: torch.Generator):
        super().__init__()
        self.linear = nn.Linear(int(sum(dims)), n_classes)
        with torch.no_grad():
            fan_in = self.linear.in_features
            self.linear.weight.copy_(torch.randn(n_classes, fan_in, generator=generator) / fan_in ** 0.5)
            self.linear.bias.zero_()

    def forward(self, cls_tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.linear(torch.cat(normalized_tokens(cls_tokens), dim=-1))


@dataclass
class ClassificationOutput:
    """P [B, C] and its parts P_S and P_C (None where a = 1 or a = 0 made one unnecessary).

    Taught in: 05_classification.
    """

    proba: np.ndarray
    p_s: np.ndarray | None
    p_c: np.ndarray | None

    @property
    def predicted(self) -> np.ndarray:
        return self.proba.argmax(axis=1)


class SemClipClassifier:
    """SEM-CLIP's few-shot classifier: fit the head on the support, mix with text (or prototype) probabilities.

    `device` and `precision` as `semnb.hardware.Compute.resolve` reads them (or a resolved
    `Compute` as `device`): features given on another device are moved there.

    Taught in: 05_classification.
    """

    def __init__(self, config: ClassificationConfig | None = None, device: str | torch.device | Compute = "auto",
                 precision: str = "auto"):
        self.config = config or ClassificationConfig()
        self.compute = Compute.resolve(device, precision)
        mix_probabilities(torch.zeros(1), torch.zeros(1), self.config.alpha)  # checks alpha
        self.head: ClassHead | None = None
        self.anchors: list[torch.Tensor] = []
        self.uses_text = False
        self.loss_history: list[float] = []

    def _tokens(self, levels: EncodedLevels) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(raw class tokens for the head, tokens compared with the anchors), at the levels in use, on the device."""
        cls = [self.compute.to(t) for t in (levels.cls[-1:] if self.config.last_level_only else levels.cls)]
        if levels.has_text:
            return cls, [levels.project(t) for t in cls]
        return cls, [self.compute.to(levels.embedding)]

    def fit(self, support: EncodedLevels, labels: Sequence[int] | np.ndarray, n_classes: int,
            class_text: torch.Tensor | None = None, seed: int = 0) -> SemClipClassifier:
        """Train the head on the support's class tokens; keep the text (or prototype) anchors for P_S.

        Taught in: 05_classification.
        """
        cfg = self.config
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) != support.num_images:
            raise SemnbInputError("labels", f"{len(labels)} labels for {support.num_images} support images",
                                  "pass one label per support image")
        if support.has_text and class_text is None and cfg.alpha < 1:
            raise SemnbInputError("class_text", "is missing for a CLIP backbone", "pass the class text embeddings")
        raw, compared = self._tokens(support)
        self.uses_text = support.has_text
        if cfg.alpha < 1:
            with torch.no_grad():
                self.anchors = ([self.compute.to(class_text.float())] * len(compared) if support.has_text
                                else class_prototypes(compared, labels, n_classes))
        self.head, self.loss_history = None, []
        if cfg.alpha > 0:
            generator = torch.Generator().manual_seed(int(seed))
            with torch.device("cpu"):  # the same initial weights on every device
                head = ClassHead([int(t.shape[-1]) for t in raw], n_classes, generator)
            self.head = head.to(self.compute.device)
            target = torch.as_tensor(labels, device=self.compute.device)
            optimizer = torch.optim.Adam(self.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            scaler = self.compute.grad_scaler()
            for _ in range(cfg.steps):
                optimizer.zero_grad()
                with self.compute.autocast():
                    loss = F.cross_entropy(self.head(raw), target)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                self.loss_history.append(float(loss.detach()))
        return self

    @torch.no_grad()
    def predict(self, levels: EncodedLevels) -> ClassificationOutput:
        """P = (1 - a) P_S + a P_C for every image (CPU float32 arrays).

        Taught in: 05_classification.
        """
        cfg = self.config
        raw, compared = self._tokens(levels)
        with self.compute.autocast():
            p_s = max_level_probabilities(compared, self.anchors, cfg.logit_scale).float() if cfg.alpha < 1 else None
            p_c = self.head(raw).softmax(dim=-1).float() if cfg.alpha > 0 else None
        proba = mix_probabilities(p_s if p_s is not None else torch.zeros_like(p_c),
                                  p_c if p_c is not None else torch.zeros_like(p_s), cfg.alpha)
        return ClassificationOutput(proba.cpu().numpy(), None if p_s is None else p_s.cpu().numpy(),
                                    None if p_c is None else p_c.cpu().numpy())

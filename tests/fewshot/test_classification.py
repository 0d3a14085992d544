"""SEM-CLIP classification: P_S, P_C, the mix (eq. 18-23), head dimensions, training, determinism."""
import numpy as np
import pytest
import torch

from semnb.errors import SemnbInputError
from semnb.fewshot.baselines import prototype_proba
from semnb.fewshot.classification import (
    ClassHead,
    ClassificationConfig,
    SemClipClassifier,
    max_level_probabilities,
    mix_probabilities,
)
from semnb.models.levels import EncodedLevels

DIMS = (6, 10, 12)
N_CLASSES = 3


def _levels(n_per_class=4, seed=0, text=True):
    """Class tokens where class c shifts dimension c of every level; a linear 'projection' when text=True."""
    g = torch.Generator().manual_seed(seed)
    labels = np.repeat(np.arange(N_CLASSES), n_per_class)
    cls = []
    for d in DIMS:
        t = torch.randn(len(labels), d, generator=g)
        t[torch.arange(len(labels)), torch.as_tensor(labels)] += 5.0
        cls.append(t)
    proj = torch.randn(max(DIMS), 5, generator=torch.Generator().manual_seed(99))
    projector = (lambda t: t @ proj[:t.shape[-1]]) if text else None
    embedding = torch.cat(cls, dim=-1)
    return EncodedLevels(cls=cls, patch_z=[c[:, None] for c in cls], patch_v=None, embedding=embedding,
                         grid=(1, 1), projector=projector), labels


def test_p_s_is_the_softmax_of_the_max_over_levels_of_text_similarity():
    g = torch.Generator().manual_seed(1)
    tokens = [torch.randn(4, 5, generator=g) for _ in range(3)]
    text = torch.randn(N_CLASSES, 5, generator=g)
    got = max_level_probabilities(tokens, [text] * 3, logit_scale=50.0).numpy()
    for b in range(4):
        sims = np.array([[float(torch.nn.functional.cosine_similarity(t[b], text[c], dim=0)) for c in range(3)]
                         for t in tokens])
        logits = 50.0 * sims.max(axis=0)
        want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(got[b], want, atol=1e-5)


def test_mix_is_the_convex_combination_and_alpha_is_checked():
    p_s, p_c = torch.tensor([[0.6, 0.4]]), torch.tensor([[0.1, 0.9]])
    np.testing.assert_allclose(mix_probabilities(p_s, p_c, 0.8).numpy(), [[0.2 * 0.6 + 0.8 * 0.1, 0.2 * 0.4 + 0.8 * 0.9]])
    with pytest.raises(SemnbInputError, match="alpha"):
        mix_probabilities(p_s, p_c, 1.5)


def test_the_head_reads_all_levels_or_the_last_one():
    head = ClassHead(DIMS, N_CLASSES, torch.Generator().manual_seed(0))
    assert (head.linear.in_features, head.linear.out_features) == (sum(DIMS), N_CLASSES)
    levels, labels = _levels()
    text = torch.randn(N_CLASSES, 5)
    full = SemClipClassifier().fit(levels, labels, N_CLASSES, text)
    last = SemClipClassifier(ClassificationConfig(last_level_only=True)).fit(levels, labels, N_CLASSES, text)
    assert full.head.linear.in_features == sum(DIMS) and last.head.linear.in_features == DIMS[-1]


def test_training_fits_the_support_and_generalises_on_separable_classes():
    levels, labels = _levels(seed=0)
    text = torch.randn(N_CLASSES, 5)
    model = SemClipClassifier(ClassificationConfig(alpha=1.0)).fit(levels, labels, N_CLASSES, text)
    assert model.loss_history[-1] < 0.1 * model.loss_history[0]
    queries, query_labels = _levels(n_per_class=10, seed=1)
    assert (model.predict(queries).predicted == query_labels).mean() > 0.9


def test_predict_mixes_the_parts_and_same_seed_same_numbers():
    levels, labels = _levels()
    text = torch.randn(N_CLASSES, 5, generator=torch.Generator().manual_seed(3))
    out = SemClipClassifier(ClassificationConfig(alpha=0.8)).fit(levels, labels, N_CLASSES, text, seed=2).predict(levels)
    np.testing.assert_allclose(out.proba, 0.2 * out.p_s + 0.8 * out.p_c, atol=1e-6)
    np.testing.assert_allclose(out.proba.sum(axis=1), 1.0, atol=1e-5)
    again = SemClipClassifier(ClassificationConfig(alpha=0.8)).fit(levels, labels, N_CLASSES, text, seed=2).predict(levels)
    np.testing.assert_array_equal(out.proba, again.proba)
    other = SemClipClassifier(ClassificationConfig(alpha=0.8)).fit(levels, labels, N_CLASSES, text, seed=3).predict(levels)
    assert np.abs(out.proba - other.proba).max() > 0
    text_only = SemClipClassifier(ClassificationConfig(alpha=0.0)).fit(levels, labels, N_CLASSES, text).predict(levels)
    assert text_only.p_c is None and text_only.p_s is not None


def test_without_text_p_s_is_the_prototype_similarity_of_the_embedding():
    levels, labels = _levels(text=False)
    queries, _ = _levels(n_per_class=2, seed=5, text=False)
    out = SemClipClassifier(ClassificationConfig(alpha=0.0)).fit(levels, labels, N_CLASSES).predict(queries)
    want = prototype_proba(levels.embedding, labels, queries.embedding, N_CLASSES)
    np.testing.assert_allclose(out.proba, want, atol=1e-5)


def test_missing_text_or_labels_are_refused():
    levels, labels = _levels()
    with pytest.raises(SemnbInputError, match="class_text"):
        SemClipClassifier().fit(levels, labels, N_CLASSES)
    with pytest.raises(SemnbInputError, match="labels"):
        SemClipClassifier().fit(levels, labels[:3], N_CLASSES, torch.randn(N_CLASSES, 5))

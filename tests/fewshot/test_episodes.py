"""Episode sampling: disjoint support and queries, per-class counts, seeds, nesting, clear errors."""
import numpy as np
import pytest

from semnb.errors import SemnbInputError
from semnb.fewshot.episodes import require_masks, sample_episode, subsample_per_class

LABELS = np.array([0] * 6 + [1] * 4 + [2] * 12 + [-1] * 3)
NAMES = ["bridge", "good", "scratch"]


@pytest.mark.parametrize("shots", [1, 2, 4])
def test_support_and_queries_partition_the_labelled_images(shots):
    episode = sample_episode(LABELS, shots, seed=3, class_names=NAMES)
    support, queries = set(episode.support.tolist()), set(episode.queries.tolist())
    assert not support & queries
    assert support | queries == set(np.flatnonzero(LABELS >= 0).tolist())  # unlabelled take no part
    assert np.bincount(episode.support_labels, minlength=3).tolist() == [shots] * 3
    assert (LABELS[episode.support] == episode.support_labels).all()
    assert episode.ways == 3 and len(episode.queries) == 22 - 3 * shots


def test_same_seed_same_episode_other_seed_other_episode_and_supports_nest():
    a, b = sample_episode(LABELS, 2, 7, NAMES), sample_episode(LABELS, 2, 7, NAMES)
    assert a.support.tolist() == b.support.tolist() and a.queries.tolist() == b.queries.tolist()
    others = [sample_episode(LABELS, 2, s, NAMES).support.tolist() for s in range(8, 14)]
    assert any(o != a.support.tolist() for o in others)
    one, five = sample_episode(LABELS, 1, 7, NAMES), sample_episode(LABELS, 4, 7, NAMES)
    assert set(one.support.tolist()) <= set(a.support.tolist()) <= set(five.support.tolist())


def test_more_shots_than_a_class_has_is_a_clear_error():
    with pytest.raises(SemnbInputError, match=r"--shots.*'good' has only 4"):
        sample_episode(LABELS, 5, 0, NAMES)


def test_class_without_images_is_a_clear_error():
    with pytest.raises(SemnbInputError, match=r"class 'crack'.*no images"):
        sample_episode(LABELS, 1, 0, [*NAMES, "crack"])


def test_bad_shots_and_no_query_left():
    with pytest.raises(SemnbInputError, match="--shots"):
        sample_episode(LABELS, 0, 0, NAMES)
    with pytest.raises(SemnbInputError, match="leaves no image"):
        sample_episode(np.array([0, 0, 1, 1]), 2, 0, ["a", "b"])


def test_a_class_with_exactly_k_images_has_no_queries_but_works():
    episode = sample_episode(LABELS, 4, 0, NAMES)
    assert not np.any(LABELS[episode.queries] == 1)


def test_subsample_per_class_is_fixed_and_capped():
    keep = subsample_per_class(LABELS, 5)
    assert np.bincount(LABELS[keep], minlength=3).tolist() == [5, 4, 5]
    assert keep.tolist() == subsample_per_class(LABELS, 5).tolist()
    assert subsample_per_class(LABELS, None).tolist() == np.flatnonzero(LABELS >= 0).tolist()
    with pytest.raises(SemnbInputError, match="--max-per-class"):
        subsample_per_class(LABELS, 0)


def test_missing_defect_mask_names_the_file():
    require_masks(["m0.png", None], np.array([False, True]), ["a.png", "b.png"])  # normal image: no mask needed
    with pytest.raises(SemnbInputError, match=r"c\.png: has no defect mask"):
        require_masks(["m0.png", None, None], np.array([False, True, False]), ["a.png", "b.png", "c.png"])

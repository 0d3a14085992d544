"""Bad checkpoint files, given as a user types them: one line naming the file and the fix, exit 2."""
from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from semnb.cli import main
from semnb.errors import SemnbInputError
from semnb.models import load_backbone

SIZE = 64


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Checkpoint files never need the hub; the user's own checkpoint variable must not leak in."""
    monkeypatch.setenv("SEMNB_OFFLINE", "1")
    monkeypatch.delenv("SEMNB_CLIP_CHECKPOINT", raising=False)


class RunsCode:
    """A pickle that would run a shell command when loaded without weights_only."""

    def __reduce__(self):
        return (os.system, ("echo ran > ran.txt",))


def _bench(backbone: str):
    return CliRunner().invoke(main, ["bench", "encoder", "--backbone", backbone, "--n-images", "1",
                                     "--image-size", str(SIZE)])


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("semnb: error: ") and "Fix: " in lines[0]
    assert "weights_only=False" not in lines[0] and "Traceback" not in result.output
    return lines[0]


def _bad_files(folder):
    """name -> (file, a fragment of its problem, a fragment of its fix)."""
    folder.mkdir()
    (folder / "random.pt").write_bytes(bytes(range(256)) * 16)
    (folder / "empty.pt").write_bytes(b"")
    (folder / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": not json")
    torch.save({"weights": RunsCode()}, folder / "code.pt")
    torch.save([1, 2, 3], folder / "list.pt")
    torch.save({}, folder / "nothing.pt")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), folder / "script.pt")
    (folder / "dir.pt").mkdir()
    torch.save({"x": torch.zeros(1)}, folder / "dir.pt" / "open_clip_pytorch_model.bin")
    return {
        "random": (folder / "random.pt", "not a readable PyTorch checkpoint", "copy it again"),
        "empty": (folder / "empty.pt", "is empty (0 bytes)", "copy"),
        "corrupt safetensors": (folder / "corrupt.safetensors", "not a readable safetensors file", "copy it again"),
        "code pickle": (folder / "code.pt", "not a plain weights file", "torch.save(model.state_dict()"),
        "TorchScript": (folder / "script.pt", "TorchScript archive", "torch.save(model.state_dict()"),
        "list": (folder / "list.pt", "holds no weights", "torch.save(model.state_dict()"),
        "empty dict": (folder / "nothing.pt", "holds no weights", "torch.save(model.state_dict()"),
        "directory": (folder / "dir.pt", "is a directory", "open_clip_pytorch_model.bin"),
        "missing": (folder / "missing.pt", "does not exist", "checkpoint file"),
    }


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # building the TorchScript file
@pytest.mark.parametrize("form", ["clip:{}", "semnb-tiny:{}"])
def test_bad_checkpoint_files_end_in_one_line_and_exit_2(tmp_path, monkeypatch, form):
    monkeypatch.chdir(tmp_path)
    bad = _bad_files(tmp_path / "bad")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for name, (path, problem, fix) in bad.items():
        line = _one_error_line(_bench(form.format(path)))
        assert str(path) in line, (name, line)
        problem_part, fix_part = line.split("Fix: ")
        assert problem in problem_part and fix in fix_part, (name, line)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, no code ran


def test_code_carrying_pickle_is_refused_in_python_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"weights": RunsCode()}, tmp_path / "code.pt")
    with pytest.raises(SemnbInputError, match="posix.system|os.system|nt.system"):
        load_backbone(f"semnb-tiny:{tmp_path / 'code.pt'}")
    assert not (tmp_path / "ran.txt").exists()


def test_checkpoint_variable_pointing_at_a_bad_file_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "empty.pt").write_bytes(b"")
    monkeypatch.setenv("SEMNB_CLIP_CHECKPOINT", str(tmp_path / "empty.pt"))
    line = _one_error_line(_bench("clip"))
    assert str(tmp_path / "empty.pt") in line and "is empty" in line


def test_checkpoint_of_another_architecture_names_the_right_model(tmp_path):
    tiny = load_backbone("semnb-tiny", image_size=SIZE).model.state_dict()
    torch.save(tiny, tmp_path / "tiny.pt")
    save_file({k: v.contiguous() for k, v in tiny.items()}, tmp_path / "tiny.safetensors")
    for path in (tmp_path / "tiny.pt", tmp_path / "tiny.safetensors"):
        line = _one_error_line(_bench(f"clip:{path}"))
        assert f"{path}" in line and "does not load into ViT-B-16-plus-240" in line
        assert f"--backbone semnb-tiny:{path}" in line.split("Fix: ")[1]


def test_good_checkpoints_in_every_format_still_load(tmp_path):
    source = load_backbone("semnb-tiny", image_size=SIZE, seed=5)
    state = source.model.state_dict()
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # read without mmap
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "training.pt")  # open_clip's training checkpoint
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "tiny.safetensors")
    for name in ("legacy.pt", "training.pt", "tiny.safetensors"):
        loaded = load_backbone(f"semnb-tiny:{tmp_path / name}", image_size=SIZE)
        assert loaded.weights == f"checkpoint {tmp_path / name}"
        assert torch.equal(loaded.visual.conv1.weight, source.visual.conv1.weight)


def test_a_failed_hub_download_is_one_line_with_the_copy_hint(monkeypatch):
    import open_clip

    from semnb.models import clip_loader

    monkeypatch.setattr(clip_loader, "cached_checkpoint", lambda model, tag: None)  # weights not on this machine
    monkeypatch.setattr(clip_loader, "_hub_reachable", lambda: True)

    def broken_download(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'laion400m_e32': connection reset\nmore detail")

    monkeypatch.setattr(open_clip, "create_model", broken_download)
    with pytest.raises(SemnbInputError, match="could not be fetched from the model hub") as err:
        load_backbone("ViT-B-16-plus-240:laion400m_e32")
    assert "\n" not in str(err.value) and "SEMNB_CLIP_CHECKPOINT" in str(err.value)

"""Load an open_clip model with real weights, or say in one sentence how to get them.

Weights come, in this order, from: an explicit checkpoint file; open_clip's own download
caches (nothing is fetched to look there); the file named by `SEMNB_CLIP_CHECKPOINT` (for
the default model); the model hub when the machine is online. If none has them, one
`SemnbInputError` says how to copy them from a connected machine. There is no silent
fallback to random weights: random weights only come from the explicit tag `random`,
and the returned label says so.

open_clip is imported inside the functions that use it: importing it costs seconds, and
most of semnb (and every `semnb --help`) never builds a CLIP model.

Taught in: 02_prompts (loading real weights is the `backbone` parameter).
"""
from __future__ import annotations

import os
import re
import socket
import warnings
import zipfile
from pathlib import Path

import torch

from semnb.errors import SemnbInputError
from semnb.models.tiny_clip import TINY_NAME, quiet_random_init_warning, register_tiny_config

DEFAULT_MODEL = "ViT-B-16-plus-240"
DEFAULT_TAG = "laion400m_e32"
CHECKPOINT_ENV = "SEMNB_CLIP_CHECKPOINT"
OFFLINE_ENVS = ("SEMNB_OFFLINE", "HF_HUB_OFFLINE")
RANDOM_TAG = "random"
_HF_FILENAMES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _download_hint(model: str, tag: str) -> str:
    """The fix for missing weights: fetch on a connected machine, copy, point semnb at the file."""
    return (f"on a machine with internet run `python -c \"import open_clip; "
            f"open_clip.create_model_and_transforms('{model}', pretrained='{tag}')\"`, copy the "
            f"checkpoint it saved (under ~/.cache/huggingface/hub or ~/.cache/clip) to this machine, "
            f"then use --backbone {model}:/path/to/checkpoint (or clip:/path/to/checkpoint for "
            f"{DEFAULT_MODEL}) or set {CHECKPOINT_ENV}=/path/to/checkpoint")


def _offline() -> bool:
    """True when the user asked semnb (or the Hugging Face hub client) never to go online."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes") for name in OFFLINE_ENVS)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the hub, so an offline machine fails in seconds, not after retries."""
    if _offline():
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def cached_checkpoint(model: str, tag: str) -> Path | None:
    """Where open_clip already saved the weights for `model`/`tag` on this machine, if anywhere.

    Looks only at local files (open_clip's URL cache and the Hugging Face cache); never downloads.

    Taught in: 02_prompts.
    """
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        return None
    url = cfg.get("url", "")
    if url:
        path = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if path.is_file():
            return path
    repo = cfg.get("hf_hub", "").rstrip("/")
    if repo:
        from huggingface_hub import try_to_load_from_cache

        parts = repo.split("/")
        repo_id = "/".join(parts[:2])
        names = [parts[2]] if len(parts) > 2 else list(_HF_FILENAMES)
        for filename in names:
            found = try_to_load_from_cache(repo_id, filename)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    return None


def env_checkpoint() -> Path | None:
    """The checkpoint named by SEMNB_CLIP_CHECKPOINT, checked to exist (None when unset).

    Taught in: 02_prompts.
    """
    value = os.environ.get(CHECKPOINT_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise SemnbInputError(CHECKPOINT_ENV, f"{path} is not a file",
                              f"set {CHECKPOINT_ENV} to a CLIP checkpoint file, or unset it")
    return path


def checkpoint_file(value: str, what: str) -> Path:
    """`value` as the path of a checkpoint file, or one line on why it is not one.

    A directory is the usual slip (a Hugging Face snapshot folder): name the weight files inside it.
    """
    path = Path(value).expanduser()
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        example = path / (inside[0] if inside else "open_clip_pytorch_model.bin")
        raise SemnbInputError(what, f"{path} is a directory, not a checkpoint file",
                              f"name the checkpoint file inside it, e.g. {example}")
    if not path.is_file():
        raise SemnbInputError(what, f"checkpoint {path} does not exist",
                              "give the path of a CLIP checkpoint file on this machine")
    return path


def _read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of a checkpoint, read the way open_clip reads it, or one line on what is wrong.

    Checked before a model is built, so a bad file fails in seconds. Zip checkpoints (torch.save
    since torch 1.6) are memory-mapped and safetensors files opened lazily: the check costs no
    second read. `weights_only=True` stays: a pickle that would run code is refused, never run.
    """
    what = f"checkpoint {path}"
    if path.stat().st_size == 0:
        raise SemnbInputError(what, "is empty (0 bytes)",
                              "copy or download it again: an interrupted copy leaves an empty file")
    state_dict_fix = ('save only its tensors, e.g. torch.save(model.state_dict(), "weights.pt"), '
                      "and give that file")
    try:
        if path.suffix == ".safetensors":  # open_clip chooses the reader by this suffix too
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        with warnings.catch_warnings():  # torch warns before refusing a TorchScript archive: one line, ours
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except OSError as err:
        raise SemnbInputError(what, f"cannot be read ({err.strerror or err})",
                              "check the file's permissions, or copy it again") from None
    except Exception as err:  # whatever a corrupt file makes the reader raise; its text is torch's, not ours
        code = re.search(r"GLOBAL ([\w.]+)", str(err))
        if code or "TorchScript" in str(err):
            calls = f"its pickle calls {code.group(1)}" if code else "it is a TorchScript archive"
            raise SemnbInputError(what, f"is not a plain weights file: {calls}, which semnb never runs",
                                  state_dict_fix) from None
        kind = "safetensors file" if path.suffix == ".safetensors" else "PyTorch checkpoint"
        raise SemnbInputError(what, f"is not a readable {kind} (corrupt, truncated or another format)",
                              "copy it again from its source, or convert it: " + state_dict_fix) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # a training checkpoint, as open_clip unwraps it
    shapes = {key: tuple(value.shape) for key, value in loaded.items() if isinstance(value, torch.Tensor)} \
        if isinstance(loaded, dict) else {}
    if not shapes:
        raise SemnbInputError(what, f"holds no weights (a {type(loaded).__name__} without tensors)", state_dict_fix)
    return shapes


def _architectures_like(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """open_clip model names whose image tower has the checkpoint's width, depth, patch and embedding size."""
    import open_clip

    register_tiny_config()
    shapes = {key.removeprefix("module."): shape for key, shape in shapes.items()}
    conv, proj = shapes.get("visual.conv1.weight"), shapes.get("visual.proj")
    if conv is None or proj is None or len(conv) != 4:
        return []
    layers = len({key.split(".")[3] for key in shapes if key.startswith("visual.transformer.resblocks.")})
    found = (conv[0], layers, conv[-1], proj[-1])
    names = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        vision = cfg.get("vision_cfg", {})
        if (vision.get("width"), vision.get("layers"), vision.get("patch_size"), cfg.get("embed_dim")) == found:
            names.append(name)
    return sorted(names, key=len)


def _create(model: str, pretrained: str | None, image_size: int | None) -> torch.nn.Module:
    import open_clip

    return open_clip.create_model(model, pretrained=pretrained, force_image_size=image_size).eval()


def _create_from_file(model: str, path: Path, image_size: int | None) -> torch.nn.Module:
    """`model` with the weights of a checkpoint file, or one line on why the file will not do."""
    shapes = _read_shapes(path)
    try:
        return _create(model, str(path), image_size)
    except (RuntimeError, AssertionError) as err:  # readable, but open_clip cannot fit it to the architecture
        like = [name for name in _architectures_like(shapes) if name != model][:3]
        looks = f"; it looks like {' or '.join(like)}" if like else ""
        fix = f"--backbone {like[0]}:{path}" if like else f"--backbone MODEL:{path}, MODEL from open_clip.list_models()"
        raise SemnbInputError(f"checkpoint {path}", f"does not load into {model}: its tensor names or shapes "
                              f"are not {model}'s{looks}",
                              f"name the architecture it was trained with: {fix} "
                              f"(clip:FILE and {CHECKPOINT_ENV} mean {DEFAULT_MODEL})") from err


def load_open_clip(model: str, pretrained: str, image_size: int | None = None,
                   seed: int = 0) -> tuple[torch.nn.Module, str]:
    """Return (model, weights label) for an open_clip name and a tag, a file path or `random`.

    The label is what every result records: e.g. "laion400m_e32 from /root/.cache/...",
    or "random-init (ViT-B-16-plus-240, seed 0): NOT CLIP, for timing only".

    Taught in: 02_prompts.
    """
    import open_clip

    if model == TINY_NAME:  # "semnb-tiny:random" names the tiny config through open_clip's own factory
        register_tiny_config()
    if model not in open_clip.list_models():
        raise SemnbInputError(f"backbone {model}:{pretrained}", f"{model} is not an open_clip model name",
                              f"use one of open_clip.list_models(), e.g. {DEFAULT_MODEL}")
    if pretrained == RANDOM_TAG:
        with torch.random.fork_rng(devices=[]), quiet_random_init_warning():
            torch.manual_seed(seed)
            clip = _create(model, None, image_size)
        return clip, f"random-init ({model}, seed {seed}): NOT CLIP, for timing only"

    path = Path(pretrained).expanduser()
    tags = open_clip.list_pretrained_tags_by_model(model)
    if path.is_file() or (pretrained not in tags and (path.exists() or os.sep in pretrained
                                                      or path.suffix in WEIGHT_SUFFIXES)):
        path = checkpoint_file(pretrained, f"backbone {model}:{pretrained}")
        return _create_from_file(model, path, image_size), f"checkpoint {path}"
    if pretrained not in tags:
        raise SemnbInputError(f"backbone {model}:{pretrained}",
                              "is neither an existing checkpoint file nor a pretrained tag of this model",
                              f"give a checkpoint path or one of the tags {tags}")

    cached = cached_checkpoint(model, pretrained)
    if cached is not None:
        return _create_from_file(model, cached, image_size), f"{pretrained} from {cached}"
    from_env = env_checkpoint() if (model, pretrained) == (DEFAULT_MODEL, DEFAULT_TAG) else None
    if from_env is not None:
        return _create_from_file(model, from_env, image_size), f"{pretrained} from {CHECKPOINT_ENV}={from_env}"
    if _hub_reachable():
        try:
            return _create(model, pretrained, image_size), f"{pretrained} from the model hub"
        except RuntimeError as err:  # the download failed or broke off
            raise SemnbInputError(f"backbone {model}:{pretrained}",
                                  f"the weights could not be fetched from the model hub ({str(err).splitlines()[0]})",
                                  _download_hint(model, pretrained)) from err
    raise SemnbInputError(f"backbone {model}:{pretrained}",
                          "the CLIP weights are not on this machine and the model hub cannot be reached",
                          _download_hint(model, pretrained))


def weights_status(model: str = DEFAULT_MODEL, tag: str = DEFAULT_TAG) -> str:
    """One line on whether `model`/`tag` would load offline, without loading or downloading.

    Taught in: every notebook's first cell (print_env).
    """
    cached = cached_checkpoint(model, tag)
    if cached is not None:
        return f"found at {cached}"
    if (model, tag) == (DEFAULT_MODEL, DEFAULT_TAG):
        try:
            from_env = env_checkpoint()
        except SemnbInputError as err:
            return f"missing: {err}"
        if from_env is not None:
            return f"found at {CHECKPOINT_ENV}={from_env}"
    return f"missing: not in the local caches. Fix: {_download_hint(model, tag)}"

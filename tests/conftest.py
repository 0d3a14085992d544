"""Shared test fixtures: the optional real data folder and small synthetic image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the repository; the test is skipped when it is absent."""
    path = (REPO_ROOT / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent")
    return path


def _write_gray_png(path: Path, array: np.ndarray) -> Path:
    """Write an 8-bit gray PNG (values in [0, 1] or uint8) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype != np.uint8:
        array = np.clip(np.round(array * 255), 0, 255).astype(np.uint8)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def write_png():
    """write_png(path, array): write an 8-bit gray PNG (values in [0, 1] or uint8), parents made."""
    return _write_gray_png


@pytest.fixture
def tmp_images(tmp_path):
    """Factory writing a small labelled image set as PNGs; returns the folder.

    make(layout="folders" | "mvtec", classes={"good": 3, "crack": 2}, size=24, seed=0):
    "folders" puts X.png and (for defect classes) X_mask.png in one folder per class;
    "mvtec" puts good images in train/good and test/good, defects in test/<class> with masks
    in ground_truth/<class>/X_mask.png. Each defect image has a bright square at a known
    place that its mask marks.
    """

    def make(
        layout: str = "folders", classes: dict | None = None, size: int = 24, seed: int = 0
    ) -> Path:
        classes = classes or {"good": 3, "crack": 2}
        rng = np.random.default_rng(seed)
        root = tmp_path / f"{layout}_set"
        for class_name, count in classes.items():
            for k in range(count):
                image = rng.uniform(0.2, 0.4, (size, size))
                mask = np.zeros((size, size), dtype=np.uint8)
                if class_name != "good":
                    mask[k + 2 : k + 8, 4:10] = 255
                    image[mask > 0] = 0.9
                if layout == "folders":
                    folder, mask_folder = root / class_name, root / class_name
                else:
                    folder = root / "test" / class_name
                    mask_folder = root / "ground_truth" / class_name
                _write_gray_png(folder / f"{k:03d}.png", image)
                if class_name != "good":
                    _write_gray_png(mask_folder / f"{k:03d}_mask.png", mask)
                elif layout == "mvtec":
                    _write_gray_png(root / "train" / "good" / f"{k:03d}.png", image)
        return root

    return make


@pytest.fixture
def one_torch_thread():
    """Tiny models on a shared 2-core CPU run several times faster on one torch thread than on two
    spinning ones (measured); tests of small networks use this."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_figure_left_open():
    """Fails a test whose code left a matplotlib figure open (explorers and figure helpers must close theirs)."""
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before, "a matplotlib figure was left open"


@pytest.fixture
def implicit_device_is_meta():
    """A context in which a tensor or module created without an explicit device lands on `meta`.

    Why: CI has no GPU, so "everything runs on the device asked for" cannot be checked by
    running on one. Inside this context any tensor a method creates without
    `device=compute.device` (or on the CPU on purpose, like seeded random draws) is a meta
    tensor, and the first operation mixing it with the real CPU tensors fails.
    """
    import torch

    return lambda: torch.device("meta")

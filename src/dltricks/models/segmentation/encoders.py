"""Encoders for segmentation models: a wrapper that turns any registered ResNet into an :class:`Encoder`.

``ResNetEncoder("resnet50", output_stride=16)`` builds the classification network without its classifier
and returns ``[stem, layer1, layer2, layer3, layer4]`` (strides ``[2, 4, 8, 16, 16]``, channels
``[64, 256, 512, 1024, 2048]`` for ResNet-50). The stride-for-dilation trade and the multi-grid rates are
implemented by :class:`dltricks.models.resnet.ResNet` (its ``output_stride`` / ``multi_grid`` arguments);
this wrapper only exposes the result under the contract of :mod:`dltricks.models.segmentation.base`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dltricks.models._registry import model_entrypoint
from dltricks.models.segmentation.base import Encoder, Features

__all__ = ["ResNetEncoder", "OUTPUT_STRIDES"]

OUTPUT_STRIDES = (8, 16, 32)


class ResNetEncoder(Encoder):
    """A registered ResNet (``resnet18`` ... ``resnet152``, ``resnext50_32x4d``...) as a segmentation encoder.

    Args:
        name: registry name of an ImageNet-stem ResNet.
        in_chans: input channels.
        output_stride: 8, 16 or 32; the stride of the last map (dilation replaces the stride beyond it).
        multi_grid: DeepLabV3's unit rates of the last stage's blocks, e.g. ``(1, 2, 4)``: block ``j`` uses
            dilation ``rate * multi_grid[j]`` (Chen et al. 2017, Sec. 3.2); one entry per block.
        **kwargs: forwarded to the ResNet constructor (``norm_layer``, ``drop_path_rate``...).
    """

    def __init__(self, name: str = "resnet50", *, in_chans: int = 3, output_stride: int = 32,
                 multi_grid: Sequence[int] | None = None, **kwargs: Any) -> None:
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        self.backbone = model_entrypoint(name)(num_classes=0, in_chans=in_chans, output_stride=output_stride,
                                               multi_grid=multi_grid, **kwargs)
        if not hasattr(self.backbone, "forward_features_list"):
            raise ValueError(f"model {name!r} has no forward_features_list(); it cannot serve as an encoder")
        self.name = name
        self.in_chans = in_chans
        self.feature_channels = list(self.backbone.feature_channels)
        self.feature_strides = list(self.backbone.feature_strides)

    def forward(self, x: torch.Tensor) -> Features:
        # [(B, 64, H/2, W/2), (B, C1, H/4, W/4), ..., (B, C4, H/os, W/os)]
        return Features(self.backbone.forward_features_list(x))

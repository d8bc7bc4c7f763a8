"""Xception (Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions", CVPR 2017).

The "extreme Inception" hypothesis: cross-channel and spatial correlations can be mapped completely
separately, so every Inception module becomes a **depthwise-separable convolution** (a 3x3 depthwise conv,
then a 1x1 pointwise conv; :class:`~dltricks.layers.conv.SeparableConv2d`), with *no* non-linearity
between the two (the paper's Fig. 10: the linear version converges faster and ends better than with ReLU
or ELU in between). 36 conv layers in 14 modules, all but the first and last with linear residual
connections (Fig. 5):

* entry flow: 3x3/2 conv 32, 3x3 conv 64, then three modules of two separable convs and a 3x3/2 max-pool
  (128, 256, 728 channels) with 1x1/2 conv + BN shortcuts;
* middle flow: 8 identical modules of three ReLU-SepConv-BN at 728 channels with identity shortcuts;
* exit flow: one module 728 -> 1024 with pooling, then SepConv 1536 and 2048, global average pooling,
  (optional dropout,) linear.

Parameters at 1000 classes: 22,855,952 - exactly the paper's Table 3 figure (convs without biases,
BN with scale and shift); tested. MACs at 299: 8.36 G (the paper reports no FLOPs; it states Xception has
"the same number of parameters as Inception V3" and trains at the same speed, 28 vs 31 steps/s).

Weight init: Kaiming normal (fan-out, ReLU) convs, BN 1/0, linear N(0, 0.01).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dltricks.layers.checks import check_image_input
from dltricks.layers.conv import SeparableConv2d
from dltricks.layers.init import init_cnn_
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

PAPER = "Chollet, Xception: Deep Learning with Depthwise Separable Convolutions, CVPR 2017"

__all__ = ["XceptionBlock", "Xception"]


class XceptionBlock(nn.Module):
    """[ReLU] SepConv-BN repeated, optional 3x3/2 max-pool, plus a (projected) residual.

    Args:
        in_chs: input channels.
        channels: output channels of each separable conv in order.
        stride: 2 adds the max-pool and a strided 1x1 conv + BN shortcut.
        start_with_relu: begin with ReLU (False only for the first entry module, which follows a ReLU).
    """

    def __init__(self, in_chs: int, channels: Sequence[int], *, stride: int = 1, start_with_relu: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chs
        for i, out in enumerate(channels):
            if i > 0 or start_with_relu:
                # Not in-place: the first ReLU's input is also the residual branch's input.
                layers.append(nn.ReLU(inplace=i > 0))
            layers += [SeparableConv2d(prev, out, 3), nn.BatchNorm2d(out)]
            prev = out
        if stride > 1:
            layers.append(nn.MaxPool2d(3, stride=stride, padding=1))
        self.main = nn.Sequential(*layers)
        if stride > 1 or in_chs != prev:
            self.shortcut: nn.Module = nn.Sequential(nn.Conv2d(in_chs, prev, 1, stride=stride, bias=False),
                                                     nn.BatchNorm2d(prev))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.shortcut(x)


class Xception(ClassifierMixin, nn.Module):
    """Xception classifier (entry, middle and exit flows of the paper's Fig. 5); ``get_classifier()`` is ``fc``."""

    head_attr = "fc"

    MIN_SIZE = 7  # the two unpadded 3x3 stem convs (the first with stride 2) need 7 pixels for a 1x1 map

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, middle_blocks: int = 8,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.in_chans, self.num_classes = in_chans, num_classes
        self.stem = nn.Sequential(
            # (B, 32, 149, 149)
            nn.Conv2d(in_chans, 32, 3, stride=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),  # (B, 64, 147, 147)
        )
        self.entry = nn.Sequential(
            XceptionBlock(64, (128, 128), stride=2, start_with_relu=False),  # (B, 128, 74, 74)
            XceptionBlock(128, (256, 256), stride=2),  # (B, 256, 37, 37)
            XceptionBlock(256, (728, 728), stride=2),  # (B, 728, 19, 19)
        )
        self.middle = nn.Sequential(*[XceptionBlock(728, (728, 728, 728)) for _ in range(middle_blocks)])
        self.exit = nn.Sequential(
            XceptionBlock(728, (728, 1024), stride=2),  # (B, 1024, 10, 10)
            SeparableConv2d(1024, 1536, 3), nn.BatchNorm2d(1536), nn.ReLU(inplace=True),
            SeparableConv2d(1536, 2048, 3), nn.BatchNorm2d(2048), nn.ReLU(inplace=True),
        )
        self.num_features = 2048
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(2048, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        init_cnn_(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=self.MIN_SIZE, model="Xception")
        return self.exit(self.middle(self.entry(self.stem(x))))  # (B, 2048, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.global_pool(x).flatten(1))  # (B, 2048)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(paper=PAPER, input_size=(3, 299, 299), test_input_size=(3, 32, 32), min_input_size=Xception.MIN_SIZE)
def xception(*, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> Xception:
    """Xception: 22,855,952 parameters (the paper's Table 3 figure, exactly)."""
    return Xception(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)

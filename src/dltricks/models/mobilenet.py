"""MobileNetV2 (Sandler, Howard, Zhu, Zhmoginov & Chen, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018).

A 3x3/2 conv stem, 17 inverted-residual blocks (:class:`~dltricks.layers.mbconv.MBConv`, ReLU6, linear
projections), a 1x1 conv to 1280 channels, global average pooling, dropout 0.2 and a linear classifier.
Each row ``(t, c, n, s)`` of the paper's Table 2 is ``n`` blocks of expansion ``t`` and ``c`` output
channels, the first with stride ``s``.

Numbers: 3,504,872 parameters at 1000 classes (tested exactly; the count of torchvision, timm and the
TF-slim reference). The paper's Table 3 says 3.4 M: 3 % below, apparently truncated, as even without the
34,112 BN parameters the network has 3,470,760. Forward cost 300.8 M MACs at 224x224 (paper: 300 M;
tested within 1 %).

Width multiplier ``width_mult`` scales every layer's channels (rounded to multiples of 8), except the
last 1x1 conv which never shrinks below 1280 (paper Sec. 5.1).

Weight init: Kaiming normal (fan-out) for convs, BN gamma 1 / beta 0, classifier N(0, 0.01), as the
reference implementations. ``zero_init_residual`` zeroes the projection BN of residual blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dltricks.layers.checks import check_image_input
from dltricks.layers.conv import ConvNormAct
from dltricks.layers.init import init_cnn_
from dltricks.layers.mbconv import MBConv
from dltricks.layers.se import make_divisible
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

PAPER = "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018"

__all__ = ["MobileNetV2"]

# (t expansion, c channels, n blocks, s stride of the first block): Table 2 of the paper.
MOBILENET_V2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(ClassifierMixin, nn.Module):
    """MobileNetV2 classifier; ``forward_features_list`` returns the maps at strides 2, 4, 8, 16, 32.

    The classifier is ``nn.Sequential(dropout, linear)`` (torchvision's layout); ``get_classifier()`` is
    its linear layer ``classifier.1`` and the pre-logit features are the pooled features after dropout.
    """

    head_attr = "classifier.1"

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0,
                 settings: Sequence[tuple[int, int, int, int]] = MOBILENET_V2_SETTINGS, stem_stride: int = 2,
                 drop_rate: float = 0.2, drop_path_rate: float = 0.0, zero_init_residual: bool = False,
                 norm_layer: str = "batch", act_layer: str = "relu6") -> None:
        super().__init__()
        self.in_chans, self.num_classes = in_chans, num_classes
        stem_chs = make_divisible(32 * width_mult, 8)
        self.num_features = make_divisible(1280 * max(1.0, width_mult), 8)
        blocks: list[nn.Module] = [ConvNormAct(in_chans, stem_chs, 3, stride=stem_stride, norm_layer=norm_layer,
                                               act_layer=act_layer)]
        # Feature taps: the last block before each stride-2 block, plus the final 1x1 conv.
        stride, taps, channels, strides = stem_stride, [], [], []
        total = sum(n for _, _, n, _ in settings)
        in_chs, idx = stem_chs, 0
        for t, c, n, s in settings:
            out_chs = make_divisible(c * width_mult, 8)
            for j in range(n):
                block_stride = s if j == 0 else 1
                if block_stride > 1:
                    taps.append(len(blocks) - 1)
                    channels.append(in_chs)
                    strides.append(stride)
                    stride *= block_stride
                blocks.append(MBConv(in_chs, out_chs, kernel_size=3, stride=block_stride, expand_ratio=t,
                                     norm_layer=norm_layer, act_layer=act_layer,
                                     drop_path=drop_path_rate * idx / max(total - 1, 1)))
                in_chs, idx = out_chs, idx + 1
        blocks.append(ConvNormAct(in_chs, self.num_features, 1, norm_layer=norm_layer, act_layer=act_layer))
        taps.append(len(blocks) - 1)
        channels.append(self.num_features)
        strides.append(stride)
        self.features = nn.Sequential(*blocks)
        self._taps = taps
        self.feature_channels: list[int] = channels
        self.feature_strides: list[int] = strides
        self.min_size = 1
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(self.num_features, num_classes)
                                        if num_classes > 0 else nn.Identity())
        self.init_weights(zero_init_residual=zero_init_residual)

    def init_weights(self, *, zero_init_residual: bool = False) -> None:
        init_cnn_(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, MBConv):
                    m.zero_init_last()

    def forward_features_list(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Maps at strides 2, 4, 8, 16, 32 (the last is the 1280-channel head conv), highest resolution first."""
        check_image_input(x, in_chans=self.in_chans, min_size=self.min_size, model="MobileNetV2")
        features = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self._taps:
                features.append(x)
        return features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=self.min_size, model="MobileNetV2")
        return self.features(x)  # (B, 1280, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.classifier[0](self.global_pool(x).flatten(1))  # pool, dropout: (B, 1280)
        return x if pre_logits else self.classifier[1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(paper=PAPER, input_size=(3, 224, 224), test_input_size=(3, 32, 32))
def mobilenet_v2(*, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, drop_rate: float = 0.2,
                 drop_path_rate: float = 0.0, zero_init_residual: bool = False) -> MobileNetV2:
    """MobileNetV2 1.0: 3,504,872 parameters, 300.8 M MACs at 224."""
    return MobileNetV2(num_classes=num_classes, in_chans=in_chans, width_mult=width_mult, drop_rate=drop_rate,
                       drop_path_rate=drop_path_rate, zero_init_residual=zero_init_residual)

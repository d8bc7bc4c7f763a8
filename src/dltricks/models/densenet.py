"""DenseNet (Huang, Liu, van der Maaten & Weinberger, "Densely Connected Convolutional Networks", CVPR 2017).

Inside a dense block, layer l receives the concatenation of *all* earlier maps of the block:

    x_l = H_l([x_0, x_1, ..., x_{l-1}])     H_l = BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k)   ("-B" bottleneck)

so every layer adds only ``k`` (the growth rate) new channels and reuses all earlier features; a block
with C_0 input channels and L layers outputs ``C_0 + L * k``. Transition layers between blocks
(BN-ReLU-Conv1x1-AvgPool2x2) halve the channels ("-C", compression 0.5) and the resolution.
Pre-activation ordering (BN-ReLU before each conv), a final BN-ReLU, then global average pooling.

Parameter counts at 1000 classes (tested exactly, identical to torchvision): densenet121 7,978,856,
densenet169 14,149,480 (the paper gives no exact ImageNet counts; its Fig. 3 plots about 8 M and 14 M).
MACs at 224: 2.83 G and 3.36 G.
``densenet_bc100_cifar`` (L = 100, k = 12, three blocks of 16 bottleneck layers, 3x3 stem with 2k
channels): 769,162 parameters at 10 classes; paper Table 2: "0.8 M" and 4.51 % CIFAR-10+ error. The
table's single significant digit covers 0.75-0.85 M, so the 3.9 % gap is the paper's rounding, not a
different network (same depth, growth rate, bottleneck width 4k and compression 0.5 as Sec. 3).

Weight init: Kaiming normal (fan-in, ReLU gain) for convs, BN 1/0, zero classifier bias, as the reference
code. There is no residual branch, so no zero-init option.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dltricks.layers.checks import check_image_input
from dltricks.layers.init import init_cnn_
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

PAPER = "Huang et al., Densely Connected Convolutional Networks, CVPR 2017"

__all__ = ["DenseLayer", "DenseBlock", "Transition", "DenseNet"]


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv to ``bn_size * k`` channels, BN-ReLU-3x3 conv to ``k`` new channels."""

    def __init__(self, in_chs: int, growth_rate: int, *, bn_size: int = 4, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_chs)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(drop_rate)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, dim=1)  # (B, C_0 + l*k, H, W): every earlier map of the block
        x = self.conv1(self.relu1(self.norm1(x)))  # (B, 4k, H, W)
        x = self.conv2(self.relu2(self.norm2(x)))  # (B, k, H, W)
        return self.dropout(x)


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; returns the concatenation of the input and every layer's output."""

    def __init__(self, num_layers: int, in_chs: int, growth_rate: int, *, bn_size: int = 4,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(in_chs + i * growth_rate, growth_rate, bn_size=bn_size,
                                                             drop_rate=drop_rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, dim=1)  # (B, C_0 + L*k, H, W)


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv (compression) and 2x2 average pooling."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_chs)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.pool = nn.AvgPool2d(2, stride=2)


class DenseNet(ClassifierMixin, nn.Module):
    """DenseNet-BC classifier.

    Args:
        growth_rate: k, channels each dense layer adds.
        block_config: dense layers per block.
        num_init_features: stem channels (64 for ImageNet, 2k for CIFAR).
        bn_size: bottleneck width factor (1x1 conv outputs ``bn_size * k``).
        compression: channel factor of transitions (0.5 = "-C").
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool) or ``"cifar"`` (one 3x3 conv).
        drop_rate: dropout after each dense layer (0.2 in the paper without augmentation).
    """

    head_attr = "classifier"

    def __init__(self, *, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, compression: float = 0.5, drop_rate: float = 0.0,
                 num_classes: int = 1000, in_chans: int = 3, stem: str = "imagenet") -> None:
        super().__init__()
        self.in_chans, self.num_classes = in_chans, num_classes
        if stem == "imagenet":
            self.features = nn.Sequential()
            self.features.add_module("conv0",
                                     nn.Conv2d(in_chans, num_init_features, 7, stride=2, padding=3, bias=False))
            self.features.add_module("norm0", nn.BatchNorm2d(num_init_features))
            self.features.add_module("relu0", nn.ReLU(inplace=True))
            self.features.add_module("pool0", nn.MaxPool2d(3, stride=2, padding=1))
            stride = 4
        elif stem == "cifar":
            self.features = nn.Sequential()
            self.features.add_module("conv0", nn.Conv2d(in_chans, num_init_features, 3, padding=1, bias=False))
            stride = 1
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        # Each transition floors H/2: the last block needs at least a 1x1 map.
        self.min_size = stride * 2 ** (len(block_config) - 1)
        channels = num_init_features
        self.feature_channels: list[int] = []
        self.feature_strides: list[int] = []
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(num_layers, channels, growth_rate,
                                                                      bn_size=bn_size, drop_rate=drop_rate))
            channels += num_layers * growth_rate
            self.feature_channels.append(channels)
            self.feature_strides.append(stride)
            if i != len(block_config) - 1:
                out_chs = int(channels * compression)
                self.features.add_module(f"transition{i + 1}", Transition(channels, out_chs))
                channels, stride = out_chs, stride * 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.features.add_module("relu5", nn.ReLU(inplace=True))
        self.num_features = channels
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier: nn.Module = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        init_cnn_(self, mode="fan_in", linear="zero_bias")

    def _check(self, x: torch.Tensor) -> None:
        check_image_input(x, in_chans=self.in_chans, min_size=self.min_size, model="DenseNet")

    def forward_features_list(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every dense block (before its transition), highest resolution first."""
        self._check(x)
        features = []
        for name, module in self.features.named_children():
            x = module(x)
            if name.startswith("denseblock"):
                features.append(x)
        return features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.features(x)  # (B, num_features, H/32, W/32) after the final BN-ReLU

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)  # (B, num_features)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(paper=PAPER, input_size=(3, 224, 224), test_input_size=(3, 32, 32), min_input_size=32)
def densenet121(*, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> DenseNet:
    """DenseNet-121 (k=32, blocks 6-12-24-16): 7,978,856 parameters, 2.83 G MACs at 224."""
    return DenseNet(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, drop_rate=drop_rate,
                    num_classes=num_classes, in_chans=in_chans)


@register_model(paper=PAPER, input_size=(3, 224, 224), test_input_size=(3, 32, 32), min_input_size=32)
def densenet169(*, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> DenseNet:
    """DenseNet-169 (k=32, blocks 6-12-32-32): 14,149,480 parameters."""
    return DenseNet(growth_rate=32, block_config=(6, 12, 32, 32), num_init_features=64, drop_rate=drop_rate,
                    num_classes=num_classes, in_chans=in_chans)


@register_model(paper=PAPER, input_size=(3, 32, 32), test_input_size=(3, 16, 16), min_input_size=4)
def densenet_bc100_cifar(*, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0) -> DenseNet:
    """DenseNet-BC for CIFAR (L=100, k=12): three blocks of 16 bottleneck layers, 769,162 parameters."""
    return DenseNet(growth_rate=12, block_config=(16, 16, 16), num_init_features=24, drop_rate=drop_rate,
                    num_classes=num_classes, in_chans=in_chans, stem="cifar")

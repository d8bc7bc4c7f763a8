"""VGG (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015).

Only 3x3 convolutions (stride 1, padding 1) and 2x2 max-pooling, in five stages with 64, 128, 256, 512
and 512 channels, then three fully connected layers (4096, 4096, classes) with dropout 0.5. The paper's
argument for small kernels (Sec. 2.3): two stacked 3x3 convs see a 5x5 window and three see 7x7, with an
extra non-linearity each and fewer weights: ``3 * 3^2 C^2 = 27 C^2`` against ``7^2 C^2 = 49 C^2``.

Configurations (paper Table 1): A = vgg11, B = vgg13, D = vgg16, E = vgg19; ``_bn`` adds batch norm after
each conv (not in the paper; Ioffe & Szegedy 2015, as torchvision). An adaptive average pool to 7x7 before
the classifier keeps the 224-px classifier shape for other input sizes (32 px and up).

Parameter counts at 1000 classes (vgg16 tested exactly; all four against the paper's Table 2 figures
133 / 133 / 138 / 144 M): vgg11 132,863,336; vgg13 133,047,848; vgg16 138,357,544; vgg19 143,667,240;
batch norm adds 2 per conv channel: vgg11_bn 132,868,840, vgg13_bn 133,053,736, vgg16_bn 138,365,992,
vgg19_bn 143,678,248. MACs at 224: vgg16 15.47 G. 89 % of vgg16's weights sit in the first FC layer
(25088 x 4096 = 102,764,544), which is why later nets replaced it by global average pooling.

``vgg16_bn_cifar``: the usual CIFAR adaptation (the 13 conv layers with BN, 1x1 after five poolings on
32x32 inputs, then one linear layer 512 -> classes): 14,728,266 parameters at 10 classes.

Weight init: Kaiming normal (fan-out, ReLU) for convs with zero bias, N(0, 0.01) for linear layers, BN
1/0. The paper instead trained the 11-layer net from N(0, 0.01) and initialised deeper nets from it;
He et al. 2015 (Kaiming init) showed the 19-layer net trains from scratch with their init, which is
why it is the default here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dltricks.layers.checks import check_image_input
from dltricks.layers.init import init_cnn_
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

PAPER = "Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, ICLR 2015"

__all__ = ["VGG", "VGG_CONFIGS", "make_vgg_features", "linear_no_init"]

# Numbers are 3x3 conv output channels, "M" is a 2x2 max-pool (paper Table 1).
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


def linear_no_init(in_features: int, out_features: int) -> nn.Linear:
    """An ``nn.Linear`` whose weights are allocated but not initialised (the caller initialises them).

    Skipping PyTorch's default uniform init halves the construction time of the 100 M-weight VGG/AlexNet
    classifiers, which are re-initialised with N(0, 0.01) anyway.
    """
    return nn.utils.skip_init(nn.Linear, in_features, out_features, device=torch.get_default_device())


def make_vgg_features(config: Sequence[int | str], *, in_chans: int = 3, batch_norm: bool = False) -> nn.Sequential:
    """Conv3x3(-BN)-ReLU layers and max-pools following a configuration list (torchvision layer order)."""
    layers: list[nn.Module] = []
    channels = in_chans
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2, stride=2))
            continue
        layers.append(nn.Conv2d(channels, int(item), 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(item)))
        layers.append(nn.ReLU(inplace=True))
        channels = int(item)
    return nn.Sequential(*layers)


class VGG(ClassifierMixin, nn.Module):
    """VGG classifier: ``features`` (convs and pools), 7x7 adaptive pool, three FC layers.

    ``classifier="cifar"`` replaces the FC stack by one linear layer on the 512 pooled features.
    ``get_classifier()`` is the last linear layer (``classifier.6``, or ``classifier.1`` for CIFAR) and the
    pre-logit features are its input: the 4096 outputs of the second FC layer after ReLU and dropout
    (the 512 pooled features after dropout for CIFAR).
    """

    def __init__(self, config: Sequence[int | str], *, num_classes: int = 1000, in_chans: int = 3,
                 batch_norm: bool = False, drop_rate: float = 0.5, classifier: str = "imagenet") -> None:
        super().__init__()
        self.in_chans, self.num_classes = in_chans, num_classes
        self.features = make_vgg_features(config, in_chans=in_chans, batch_norm=batch_norm)
        self.min_size = 2 ** sum(1 for item in config if item == "M")
        channels = [int(c) for c in config if c != "M"][-1]
        self.num_features = channels
        if classifier == "imagenet":
            self.avgpool: nn.Module = nn.AdaptiveAvgPool2d(7)
            self.classifier = nn.Sequential(
                linear_no_init(channels * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(drop_rate),
                linear_no_init(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(drop_rate),
                nn.Linear(4096, num_classes) if num_classes > 0 else nn.Identity(),
            )
            self.head_attr, self.head_hidden_size = "classifier.6", 4096
        elif classifier == "cifar":
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(channels, num_classes)
                                            if num_classes > 0 else nn.Identity())
            self.head_attr = "classifier.1"
        else:
            raise ValueError(f"classifier must be 'imagenet' or 'cifar', got {classifier!r}")
        self.init_weights()

    def init_weights(self) -> None:
        init_cnn_(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=self.min_size, model="VGG")
        return self.features(x)  # (B, 512, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.avgpool(x).flatten(1)  # (B, 512*7*7) or (B, 512)
        x = self.classifier[:-1](x)  # hidden FC layers (and dropout): (B, head_hidden_size)
        return x if pre_logits else self.classifier[-1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_REG = dict(paper=PAPER, input_size=(3, 224, 224), test_input_size=(3, 32, 32), min_input_size=32)


def _vgg(config: str, batch_norm: bool, num_classes: int, in_chans: int, drop_rate: float) -> VGG:
    return VGG(VGG_CONFIGS[config], num_classes=num_classes, in_chans=in_chans, batch_norm=batch_norm,
               drop_rate=drop_rate)


@register_model(**_REG)
def vgg11(*, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5) -> VGG:
    """VGG-11 (configuration A): 132,863,336 parameters."""
    return _vgg("A", False, num_classes, in_chans, drop_rate)


@register_model(**_REG)
def vgg13(*, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5) -> VGG:
    """VGG-13 (configuration B): 133,047,848 parameters."""
    return _vgg("B", False, num_classes, in_chans, drop_rate)


@register_model(**_REG)
def vgg16(*, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5) -> VGG:
    """VGG-16 (configuration D): 138,357,544 parameters, 15.47 G MACs at 224."""
    return _vgg("D", False, num_classes, in_chans, drop_rate)


@register_model(**_REG)
def vgg19(*, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5) -> VGG:
    """VGG-19 (configuration E): 143,667,240 parameters."""
    return _vgg("E", False, num_classes, in_chans, drop_rate)


@register_model(**_REG)
def vgg11_bn(*, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5) -> VGG:
    """VGG-11 with batch norm: 132,868,840 parameters."""
    return _vgg("A", True, num_classes, in_chans, drop_rate)


@register_model(**_REG)
def vgg13_bn(*, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5) -> VGG:
    """VGG-13 with batch norm: 133,053,736 parameters."""
    return _vgg("B", True, num_classes, in_chans, drop_rate)


@register_model(**_REG)
def vgg16_bn(*, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5) -> VGG:
    """VGG-16 with batch norm: 138,365,992 parameters."""
    return _vgg("D", True, num_classes, in_chans, drop_rate)


@register_model(**_REG)
def vgg19_bn(*, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5) -> VGG:
    """VGG-19 with batch norm: 143,678,248 parameters."""
    return _vgg("E", True, num_classes, in_chans, drop_rate)


@register_model(paper=PAPER, input_size=(3, 32, 32), test_input_size=(3, 32, 32), min_input_size=32)
def vgg16_bn_cifar(*, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0) -> VGG:
    """VGG-16 with batch norm and a single linear classifier for 32x32 inputs: 14,728,266 parameters."""
    return VGG(VGG_CONFIGS["D"], num_classes=num_classes, in_chans=in_chans, batch_norm=True, drop_rate=drop_rate,
               classifier="cifar")

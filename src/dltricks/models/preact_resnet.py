"""Pre-activation ResNet, "ResNet v2" (He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks",
ECCV 2016).

In the original ResNet the addition is followed by a ReLU, so the shortcut path is not a pure identity.
Moving BN and ReLU *before* each conv ("pre-activation") makes it one: for blocks l < L,

    x_{l+1} = x_l + F(x_l),    so    x_L = x_l + sum_{i=l}^{L-1} F(x_i)
    dLoss/dx_l = dLoss/dx_L * (1 + d/dx_l sum_i F(x_i))

and the gradient reaches any shallower block directly through the "1" term (paper Eq. 4-5). Each branch
is BN-ReLU-conv3x3-BN-ReLU-conv3x3 (basic) or BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1
(bottleneck); a projection shortcut (1x1 conv, when the shape changes) takes the pre-activated input,
and a final BN-ReLU follows the last block. The paper reports CIFAR-10 error 6.37 % for pre-act
ResNet-110 (vs 6.61 % original) and 5.46 % for ResNet-164 (vs 5.93 %), and it makes ResNet-1001 train
(4.92 %).

Registered models: ``preact_resnet18`` (ImageNet stem: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool),
``preact_resnet18_cifar`` (3x3 stem, no pooling), and the paper's CIFAR nets ``preact_resnet110``
(basic blocks, 3 x 18 at 16/32/64 channels) and ``preact_resnet164`` (bottlenecks, 3 x 18 at
64/128/256 output channels).

Parameter counts (tested): preact_resnet110 1,730,522 and preact_resnet164 1,703,258 at 10 classes (paper
Table 2: "1.7 M" for both; one printed decimal covers 1.65-1.75 M, so 1.73 M vs 1.7 is the paper's
rounding, the same as the original ResNet-110's 1,727,962); preact_resnet18 11,687,848 at 1000 classes
(no paper figure; v1 ResNet-18's 11,689,512 without the BNs after the three projection convs (-1,792),
with the first BN of stages 2-4 on the narrower block input (-896) and with the final BN (+1,024));
preact_resnet18_cifar 11,172,170 at 10 classes.

Weight init: Kaiming normal (fan-out, ReLU) convs, BN 1/0, PyTorch-default linear. ``zero_init_residual``
zeroes the last conv of every branch (there is no BN at the end of a pre-activation branch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from dltricks.layers.activations import get_act_layer
from dltricks.layers.checks import check_image_input
from dltricks.layers.drop import DropPath
from dltricks.layers.init import init_cnn_
from dltricks.layers.norm import get_norm_layer
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

PAPER = "He et al., Identity Mappings in Deep Residual Networks, ECCV 2016"

__all__ = ["PreActBasicBlock", "PreActBottleneck", "PreActResNet"]


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3 (stride), BN-ReLU-[dropout]-conv3x3; identity or 1x1 projection shortcut."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, *, stride: int = 1,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d, act_layer: Callable[[], nn.Module] = nn.ReLU,
                 drop_path: float = 0.0, block_dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = norm_layer(in_chs)
        self.act1 = act_layer()
        self.conv1 = nn.Conv2d(in_chs, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(planes)
        self.act2 = act_layer()
        self.dropout = nn.Dropout(block_dropout)  # between the convs, as in Wide ResNets
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_chs, planes, 1, stride=stride, bias=False)
                         if stride != 1 or in_chs != planes else None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(self.act2(self.bn2(out))))
        return self.drop_path(out) + shortcut


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3 (stride), BN-ReLU-conv1x1 (x4 channels)."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, *, stride: int = 1,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d, act_layer: Callable[[], nn.Module] = nn.ReLU,
                 drop_path: float = 0.0, block_dropout: float = 0.0) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.bn1 = norm_layer(in_chs)
        self.act1 = act_layer()
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=False)
        self.bn2 = norm_layer(planes)
        self.act2 = act_layer()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = norm_layer(planes)
        self.act3 = act_layer()
        self.dropout = nn.Dropout(block_dropout)
        self.conv3 = nn.Conv2d(planes, out_chs, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)
                         if stride != 1 or in_chs != out_chs else None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        out = self.conv3(self.dropout(self.act3(self.bn3(out))))
        return self.drop_path(out) + shortcut


class PreActResNet(ClassifierMixin, nn.Module):
    """Pre-activation ResNet: stem, stages of pre-activation blocks, final BN-ReLU, pooling, linear.

    Args:
        block: ``"basic"`` or ``"bottleneck"``.
        layers: blocks per stage; stage_widths: ``planes`` per stage (outputs ``planes * expansion``).
        stem: ``"imagenet"`` (7x7/2 conv-BN-ReLU + 3x3/2 max-pool) or ``"cifar"`` (one 3x3 conv).
        block_dropout: dropout between the convs of each block (Wide ResNets use 0.3).
        drop_rate: dropout before the classifier; drop_path_rate: stochastic depth (linear rule).
    """

    head_attr = "fc"

    def __init__(self, block: str = "basic", layers: Sequence[int] = (2, 2, 2, 2), *, num_classes: int = 1000,
                 in_chans: int = 3, stem: str = "imagenet", stem_width: int = 64,
                 stage_widths: Sequence[int] = (64, 128, 256, 512), zero_init_residual: bool = False,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, block_dropout: float = 0.0,
                 norm_layer: str | Callable[[int], nn.Module] = "batch",
                 act_layer: str | Callable[[], nn.Module] = "relu") -> None:
        super().__init__()
        block_cls = {"basic": PreActBasicBlock, "bottleneck": PreActBottleneck}[block]
        norm, act = get_norm_layer(norm_layer), get_act_layer(act_layer)
        self.in_chans, self.num_classes = in_chans, num_classes
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False),
                                      norm(stem_width), act(), nn.MaxPool2d(3, stride=2, padding=1))
            stride = 4
        elif stem == "cifar":
            # The first block's BN-ReLU pre-activates the stem conv's output.
            self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_width, 3, padding=1, bias=False))
            stride = 1
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        total, idx = sum(layers), 0
        in_chs = stem_width
        stages: list[nn.Module] = []
        self.feature_channels: list[int] = []
        self.feature_strides: list[int] = []
        for i, (num_blocks, planes) in enumerate(zip(layers, stage_widths)):
            stage_stride = 1 if i == 0 else 2
            blocks = []
            for j in range(num_blocks):
                blocks.append(block_cls(in_chs, planes, stride=stage_stride if j == 0 else 1, norm_layer=norm,
                                        act_layer=act, drop_path=drop_path_rate * idx / max(total - 1, 1),
                                        block_dropout=block_dropout))
                in_chs, idx = planes * block_cls.expansion, idx + 1
            stride *= stage_stride
            stages.append(nn.Sequential(*blocks))
            self.feature_channels.append(in_chs)
            self.feature_strides.append(stride)
        self.stages = nn.Sequential(*stages)
        self.norm = norm(in_chs)  # final pre-activation: the last block's output is not normalised yet
        self.act = act()
        self.num_features = in_chs
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights(zero_init_residual=zero_init_residual)

    def init_weights(self, *, zero_init_residual: bool = False) -> None:
        init_cnn_(self, linear="keep")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (PreActBasicBlock, PreActBottleneck)):
                    m.zero_init_last()

    def forward_features_list(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs (not yet normalised), highest resolution first; see ``feature_strides``."""
        check_image_input(x, in_chans=self.in_chans, min_size=1, model=type(self).__name__)
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=1, model=type(self).__name__)
        return self.act(self.norm(self.stages(self.stem(x))))  # (B, num_features, H/s, W/s)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.global_pool(x).flatten(1))  # (B, num_features)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(paper=PAPER, input_size=(3, 224, 224), test_input_size=(3, 32, 32))
def preact_resnet18(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> PreActResNet:
    """Pre-activation ResNet-18, ImageNet stem: 11,687,848 parameters."""
    return PreActResNet("basic", (2, 2, 2, 2), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, input_size=(3, 32, 32), test_input_size=(3, 16, 16))
def preact_resnet18_cifar(*, num_classes: int = 10, in_chans: int = 3, **kwargs) -> PreActResNet:
    """Pre-activation ResNet-18 with the CIFAR stem: 11,172,170 parameters at 10 classes."""
    return PreActResNet("basic", (2, 2, 2, 2), stem="cifar", num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, input_size=(3, 32, 32), test_input_size=(3, 16, 16))
def preact_resnet110(*, num_classes: int = 10, in_chans: int = 3, **kwargs) -> PreActResNet:
    """CIFAR pre-activation ResNet-110 (3 x 18 basic blocks, 16/32/64): 1,730,522 parameters."""
    return PreActResNet("basic", (18, 18, 18), stem="cifar", stem_width=16, stage_widths=(16, 32, 64),
                        num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, input_size=(3, 32, 32), test_input_size=(3, 16, 16))
def preact_resnet164(*, num_classes: int = 10, in_chans: int = 3, **kwargs) -> PreActResNet:
    """CIFAR pre-activation ResNet-164 (3 x 18 bottlenecks, 64/128/256 out): 1,703,258 parameters."""
    return PreActResNet("bottleneck", (18, 18, 18), stem="cifar", stem_width=16, stage_widths=(16, 32, 64),
                        num_classes=num_classes, in_chans=in_chans, **kwargs)

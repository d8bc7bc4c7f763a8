"""EfficientNet B0-B3 by compound scaling, and EfficientNetV2-S.

Papers: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019;
Tan & Le, "EfficientNetV2: Smaller Models and Faster Training", ICML 2021.

**Compound scaling** (EfficientNet Sec. 3.3). Scaling only depth, width or resolution saturates; scaling
all three together with one coefficient phi keeps them balanced:

    depth d = alpha^phi,  width w = beta^phi,  resolution r = gamma^phi
    subject to alpha * beta^2 * gamma^2 ~= 2   (FLOPs grow ~ d * w^2 * r^2, so ~2^phi)

with alpha = 1.2, beta = 1.1, gamma = 1.15 found by a small grid search on B0 (1.2 * 1.21 * 1.3225 = 1.92).
:func:`compound_scaling` computes them; :func:`scale_stages` applies (w, d) to the B0 stage table:
channels ``c -> make_divisible(c * w, 8)``, repeats ``n -> ceil(n * d)``. The released models use
rounded coefficients (``EFFICIENTNET_COEFFICIENTS``): B2 is phi = 1 exactly (w 1.1, d 1.2; resolution
260 vs 258) and B3 is phi = 2 (w 1.2 vs 1.21 and d 1.4 vs 1.44 give the same rounded channels and
repeats; resolution 300 vs 296); B1 (w 1.0, d 1.1, 240) sits near phi = 0.5 (w 1.05, d 1.10, 240).
``tests/test_cnn_efficientnet.py`` checks that phi = 1 and phi = 2 rebuild B2 and B3 exactly.

B0 itself (Table 1): a 3x3/2 stem with 32 channels, 16 MBConv blocks (SiLU, SE with 1/4 of the block's
input width) in 7 stages, a 1x1 conv to 1280 = 4 x 320 channels, dropout, linear. Stochastic depth
("drop connect") rises linearly to ``drop_path_rate`` = 0.2 over the blocks.

Parameter counts at 1000 classes (tested exactly; the same as torchvision's and timm's ports of the
released checkpoints): b0 5,288,548 (paper Table 2: 5.3 M); b1 7,794,184 (7.8 M); b2 9,109,994 (9.2 M:
0.98 % above ours; the paper gives no finer figure, and every port of the released B2 counts 9.11 M);
b3 12,233,232 (12 M). efficientnetv2_s 21,458,488 (the authors' release README: 21.5 M; the paper's
Table 7 rounds it to 22 M). MACs (convs + linears, ``torch.utils.flop_counter``): b0 0.39 G at 224,
b1 0.69 G at 240, b2 0.99 G at 260, b3 1.83 G at 300, v2_s 8.37 G at 384; the papers' "FLOPs" are
multiply-adds: 0.39, 0.70, 1.0, 1.8 B and 8.4 B (release README).

BatchNorm uses eps = 1e-3, momentum 0.01 as the TensorFlow reference. Weight init: Kaiming normal
(fan-out) convs, BN 1/0, classifier uniform(+-1/sqrt(fan_out)) as the reference code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from dltricks.layers.checks import check_image_input
from dltricks.layers.conv import ConvNormAct
from dltricks.layers.init import init_cnn_
from dltricks.layers.mbconv import FusedMBConv, MBConv
from dltricks.layers.se import make_divisible
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

PAPER = "Tan & Le, EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks, ICML 2019"
PAPER_V2 = "Tan & Le, EfficientNetV2: Smaller Models and Faster Training, ICML 2021"

__all__ = ["StageSpec", "EfficientNet", "compound_scaling", "scale_stages", "EFFICIENTNET_B0_STAGES",
           "EFFICIENTNETV2_S_STAGES", "EFFICIENTNET_COEFFICIENTS"]


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``repeats`` blocks of ``block`` type, the first with ``stride``."""

    block: str  # "mbconv" or "fused"
    expand_ratio: float
    kernel_size: int
    stride: int
    out_chs: int
    repeats: int
    se_ratio: float = 0.25


# EfficientNet-B0, Table 1 of the paper (stem 32 channels, head 1280).
EFFICIENTNET_B0_STAGES: tuple[StageSpec, ...] = (
    StageSpec("mbconv", 1, 3, 1, 16, 1),
    StageSpec("mbconv", 6, 3, 2, 24, 2),
    StageSpec("mbconv", 6, 5, 2, 40, 2),
    StageSpec("mbconv", 6, 3, 2, 80, 3),
    StageSpec("mbconv", 6, 5, 1, 112, 3),
    StageSpec("mbconv", 6, 5, 2, 192, 4),
    StageSpec("mbconv", 6, 3, 1, 320, 1),
)

# EfficientNetV2-S, Table 4 of the V2 paper (stem 24 channels, head 1280). Fused stages have no SE.
EFFICIENTNETV2_S_STAGES: tuple[StageSpec, ...] = (
    StageSpec("fused", 1, 3, 1, 24, 2, 0.0),
    StageSpec("fused", 4, 3, 2, 48, 4, 0.0),
    StageSpec("fused", 4, 3, 2, 64, 4, 0.0),
    StageSpec("mbconv", 4, 3, 2, 128, 6, 0.25),
    StageSpec("mbconv", 6, 3, 1, 160, 9, 0.25),
    StageSpec("mbconv", 6, 3, 2, 256, 15, 0.25),
)

# Released coefficients (width, depth, resolution, dropout), from the reference implementation.
EFFICIENTNET_COEFFICIENTS: dict[str, tuple[float, float, int, float]] = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
}


@dataclass(frozen=True)
class ScalingCoefficients:
    depth: float
    width: float
    resolution: int


def compound_scaling(phi: float, *, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15,
                     base_resolution: int = 224) -> ScalingCoefficients:
    """Depth ``alpha^phi``, width ``beta^phi`` and resolution ``base * gamma^phi`` (EfficientNet Eq. 3)."""
    return ScalingCoefficients(depth=alpha ** phi, width=beta ** phi,
                               resolution=int(round(base_resolution * gamma ** phi)))


def scale_stages(stages: Sequence[StageSpec], *, width_mult: float, depth_mult: float) -> list[StageSpec]:
    """Widths rounded to multiples of 8 (never below 90 % of the target), repeats rounded up."""
    return [StageSpec(s.block, s.expand_ratio, s.kernel_size, s.stride, make_divisible(s.out_chs * width_mult, 8),
                      int(math.ceil(s.repeats * depth_mult)), s.se_ratio) for s in stages]


class EfficientNet(ClassifierMixin, nn.Module):
    """Stem, MBConv / Fused-MBConv stages, 1x1 head conv, pooling, dropout, linear.

    Args:
        stages: the (already scaled) stage table.
        stem_chs: stem conv channels (scaled by the caller).
        num_features: head conv channels (4x the last stage's width for EfficientNet, 1280 for V2).
        drop_rate: dropout before the classifier; drop_path_rate: stochastic depth at the last block.
        act_layer: SiLU (swish) in both papers.
    """

    head_attr = "classifier"

    def __init__(self, stages: Sequence[StageSpec], *, stem_chs: int, num_features: int, num_classes: int = 1000,
                 in_chans: int = 3, drop_rate: float = 0.2, drop_path_rate: float = 0.2,
                 act_layer: str = "silu", norm_layer: Callable[[int], nn.Module] | str | None = None) -> None:
        super().__init__()
        self.in_chans, self.num_classes, self.num_features = in_chans, num_classes, num_features
        norm = norm_layer or partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)
        self.stem = ConvNormAct(in_chans, stem_chs, 3, stride=2, norm_layer=norm, act_layer=act_layer)
        total = sum(s.repeats for s in stages)
        in_chs, idx, stride = stem_chs, 0, 2
        stage_modules: list[nn.Module] = []
        # Feature taps: the input of every stride-2 block (the last map at the previous stride).
        self._tap_before: list[int] = []
        channels, strides = [], []
        for spec in stages:
            blocks: list[nn.Module] = []
            for j in range(spec.repeats):
                block_stride = spec.stride if j == 0 else 1
                if block_stride > 1:
                    self._tap_before.append(idx)
                    channels.append(in_chs)
                    strides.append(stride)
                rate = drop_path_rate * idx / total
                block_cls = MBConv if spec.block == "mbconv" else FusedMBConv
                blocks.append(block_cls(in_chs, spec.out_chs, kernel_size=spec.kernel_size, stride=block_stride,
                                        expand_ratio=spec.expand_ratio, se_ratio=spec.se_ratio, norm_layer=norm,
                                        act_layer=act_layer, drop_path=rate))
                in_chs, idx = spec.out_chs, idx + 1
                stride *= block_stride
            stage_modules.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stage_modules)
        self.conv_head = ConvNormAct(in_chs, num_features, 1, norm_layer=norm, act_layer=act_layer)
        channels.append(num_features)
        strides.append(stride)
        self.feature_channels: list[int] = channels
        self.feature_strides: list[int] = strides
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier: nn.Module = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        init_cnn_(self, linear="uniform_fan_out")

    def forward_features_list(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The last map at each stride (2, 4, 8, 16, 32; the last is the head conv), highest resolution first."""
        check_image_input(x, in_chans=self.in_chans, min_size=1, model=type(self).__name__)
        x = self.stem(x)  # (B, stem_chs, H/2, W/2)
        features, idx = [], 0
        for stage in self.blocks:
            for block in stage:
                if idx in self._tap_before:
                    features.append(x)
                x = block(x)
                idx += 1
        features.append(self.conv_head(x))  # (B, num_features, H/32, W/32)
        return features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=1, model=type(self).__name__)
        return self.conv_head(self.blocks(self.stem(x)))  # (B, num_features, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.global_pool(x).flatten(1))  # (B, num_features)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def efficientnet(*, width_mult: float = 1.0, depth_mult: float = 1.0, phi: float | None = None,
                 num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2, drop_path_rate: float = 0.2,
                 **kwargs) -> EfficientNet:
    """EfficientNet scaled from B0 by ``(width_mult, depth_mult)``, or by ``phi`` through :func:`compound_scaling`."""
    if phi is not None:
        coefficients = compound_scaling(phi)
        width_mult, depth_mult = coefficients.width, coefficients.depth
    stages = scale_stages(EFFICIENTNET_B0_STAGES, width_mult=width_mult, depth_mult=depth_mult)
    stem_chs = make_divisible(32 * width_mult, 8)
    return EfficientNet(stages, stem_chs=stem_chs, num_features=4 * stages[-1].out_chs, num_classes=num_classes,
                        in_chans=in_chans, drop_rate=drop_rate, drop_path_rate=drop_path_rate, **kwargs)


def _released(variant: str, **kwargs) -> EfficientNet:
    width, depth, _, dropout = EFFICIENTNET_COEFFICIENTS[variant]
    kwargs.setdefault("drop_rate", dropout)
    return efficientnet(width_mult=width, depth_mult=depth, **kwargs)


_TEST = dict(test_input_size=(3, 32, 32))


@register_model(paper=PAPER, input_size=(3, 224, 224), **_TEST)
def efficientnet_b0(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> EfficientNet:
    """EfficientNet-B0: 5,288,548 parameters, 0.39 G MACs at 224."""
    return _released("b0", num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, input_size=(3, 240, 240), **_TEST)
def efficientnet_b1(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> EfficientNet:
    """EfficientNet-B1 (width 1.0, depth 1.1, 240 px): 7,794,184 parameters."""
    return _released("b1", num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, input_size=(3, 260, 260), **_TEST)
def efficientnet_b2(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> EfficientNet:
    """EfficientNet-B2 (width 1.1, depth 1.2, 260 px; phi = 1): 9,109,994 parameters."""
    return _released("b2", num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, input_size=(3, 300, 300), **_TEST)
def efficientnet_b3(*, num_classes: int = 1000, in_chans: int = 3, **kwargs) -> EfficientNet:
    """EfficientNet-B3 (width 1.2, depth 1.4, 300 px; phi = 2): 12,233,232 parameters."""
    return _released("b3", num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER_V2, input_size=(3, 384, 384), **_TEST)
def efficientnetv2_s(*, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2,
                     drop_path_rate: float = 0.2, **kwargs) -> EfficientNet:
    """EfficientNetV2-S: Fused-MBConv in the first three stages; 21,458,488 parameters.

    Trained at 300 px and evaluated at 384 px in the paper (progressive resizing up to 384).
    """
    return EfficientNet(EFFICIENTNETV2_S_STAGES, stem_chs=24, num_features=1280, num_classes=num_classes,
                        in_chans=in_chans, drop_rate=drop_rate, drop_path_rate=drop_path_rate, **kwargs)

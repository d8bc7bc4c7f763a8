"""``nas_cnn``: a CNN written stage by stage, the architecture space of neural architecture search.

Every choice that the NAS literature searches in a chain-structured space (Zoph & Le 2017; Tan et al.,
"MnasNet", CVPR 2019, whose factorised hierarchical space picks the block, kernel, expansion, SE and depth
per stage) is a per-stage list option of one registered model, so a search space file names them
(``model.blocks.1: {choice: [plain, residual, mbconv]}``, see :mod:`dltricks.search.space`) and the
architecture a search finds is a set of constructor options that ``create_model("nas_cnn", **options)``
builds and ``dltricks train nas_cnn --model-opt ...`` trains:

    stem:     conv k=3 (in_chans -> stem_width) - BN - ReLU
    stage i:  depths[i] blocks of type blocks[i] with widths[i] channels, kernel kernel_sizes[i];
              the first block of every stage but the first halves H and W (stride 2)
    head:     global average pool - dropout - linear

Block types (all from ``dltricks.layers``):

* ``plain``: one conv-BN-ReLU (VGG-style);
* ``residual``: two k x k conv-BN with an identity shortcut (a 1x1 conv-BN projection when the stride or
  width changes), ReLU after the sum (He et al. 2016, the basic block);
* ``mbconv``: MobileNetV2's inverted residual (:class:`dltricks.layers.mbconv.MBConv`): 1x1 expansion by
  ``expand_ratios[i]``, depthwise k x k, linear 1x1 projection, identity shortcut when shapes allow.

``se[i]`` adds squeeze-and-excitation (Hu et al. 2018) to every block of stage ``i``: inside the MBConv on
the expanded map (bottleneck 1/4 of the block's input width, EfficientNet's placement) and after the last
conv of a plain or residual block (before the sum, SE-ResNet's placement), bottleneck 1/4 of the width.
``expand_ratios[i]`` is read only by ``mbconv`` stages.

The defaults (stem 16, widths 16-32-64, depths 1-2-2, a plain stage then two residual ones, 3x3 kernels) give
167,962 parameters at 10 classes: stem 176, stage 0 2,336, stage 1 14,528 + 18,560, stage 2 57,728 + 73,984,
head 650 (conv weights ``k^2 C_in C_out``, 2 C per BN, the 1x1 projections of the two strided blocks);
``tests/test_search_nas.py`` checks that sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from dltricks.errors import ModelError
from dltricks.layers.checks import check_image_input
from dltricks.layers.conv import ConvNormAct
from dltricks.layers.mbconv import MBConv
from dltricks.layers.se import SqueezeExcite
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

__all__ = ["NasCNN", "BLOCK_TYPES", "nas_cnn"]

BlockType = Literal["plain", "residual", "mbconv"]
BLOCK_TYPES: tuple[str, ...] = ("plain", "residual", "mbconv")


def _se(channels: int) -> nn.Module:
    return SqueezeExcite(channels, rd_channels=max(1, channels // 4))


class PlainBlock(nn.Module):
    """k x k conv-BN-ReLU, then SE when asked."""

    def __init__(self, in_chs: int, out_chs: int, *, kernel_size: int, stride: int, se: bool) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_chs, out_chs, kernel_size, stride=stride)
        self.se = _se(out_chs) if se else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.conv(x))  # (B, out_chs, H/s, W/s)


class ResidualBlock(nn.Module):
    """Two k x k conv-BN, SE on the residual branch when asked, shortcut, ReLU (the basic block, any k)."""

    def __init__(self, in_chs: int, out_chs: int, *, kernel_size: int, stride: int, se: bool) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_chs, out_chs, kernel_size, stride=stride)
        self.conv2 = ConvNormAct(out_chs, out_chs, kernel_size, act_layer=None)
        self.se = _se(out_chs) if se else nn.Identity()
        self.shortcut = (nn.Identity() if stride == 1 and in_chs == out_chs
                         else ConvNormAct(in_chs, out_chs, 1, stride=stride, act_layer=None))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.conv2(self.conv1(x)))  # (B, out_chs, H/s, W/s)
        return self.act(y + self.shortcut(x))


def make_block(kind: str, in_chs: int, out_chs: int, *, kernel_size: int, stride: int, expand_ratio: float,
               se: bool) -> nn.Module:
    """One block of type ``kind`` (see :data:`BLOCK_TYPES`)."""
    if kind == "plain":
        return PlainBlock(in_chs, out_chs, kernel_size=kernel_size, stride=stride, se=se)
    if kind == "residual":
        return ResidualBlock(in_chs, out_chs, kernel_size=kernel_size, stride=stride, se=se)
    if kind == "mbconv":
        return MBConv(in_chs, out_chs, kernel_size=kernel_size, stride=stride, expand_ratio=expand_ratio,
                      se_ratio=0.25 if se else 0.0)
    raise ValueError(f"block type {kind!r}: expected one of {', '.join(BLOCK_TYPES)}")


class NasCNN(ClassifierMixin, nn.Module):
    """Stem, one stage per entry of the per-stage lists, pooled linear head (see the module docstring).

    All per-stage lists (``depths``, ``widths``, ``kernel_sizes``, ``blocks``, ``expand_ratios``, ``se``)
    must have the same length, the number of stages; kernel sizes are odd.
    """

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1, stem_width: int = 16,
                 depths: Sequence[int] = (1, 2, 2), widths: Sequence[int] = (16, 32, 64),
                 kernel_sizes: Sequence[int] = (3, 3, 3), blocks: Sequence[str] = ("plain", "residual", "residual"),
                 expand_ratios: Sequence[float] = (4, 4, 4), se: Sequence[bool] = (False, False, False),
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        stage_lists = {"depths": depths, "widths": widths, "kernel_sizes": kernel_sizes, "blocks": blocks,
                       "expand_ratios": expand_ratios, "se": se}
        lengths = {name: len(value) for name, value in stage_lists.items()}
        if len(set(lengths.values())) != 1 or not depths:
            raise ModelError("nas_cnn: the per-stage lists must have one entry per stage, the same length; got "
                             + ", ".join(f"{k} {n}" for k, n in lengths.items()))
        if any(k % 2 == 0 or k < 1 for k in kernel_sizes):
            raise ModelError(f"nas_cnn: kernel_sizes must be odd (same padding), got {list(kernel_sizes)}")
        unknown = [b for b in blocks if b not in BLOCK_TYPES]
        if unknown:
            raise ModelError(f"nas_cnn: block type {unknown[0]!r}: expected one of {', '.join(BLOCK_TYPES)}")
        self.in_chans, self.num_classes = in_chans, num_classes
        self.min_size = 2 ** (len(depths) - 1)
        self.stem = ConvNormAct(in_chans, stem_width, 3)
        stages, c_in = [], stem_width
        for i, (depth, width, k, kind, t, use_se) in enumerate(zip(depths, widths, kernel_sizes, blocks,
                                                                   expand_ratios, se)):
            layers = [make_block(kind, c_in if j == 0 else width, width, kernel_size=k,
                                 stride=2 if (i > 0 and j == 0) else 1, expand_ratio=t, se=bool(use_se))
                      for j in range(depth)]
            stages.append(nn.Sequential(*layers))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.num_features = c_in
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(c_in, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=self.min_size, model="nas_cnn")
        return self.stages(self.stem(x))  # (B, widths[-1], H / 2^(stages-1), W / 2^(stages-1))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.pool(x).flatten(1))  # (B, widths[-1])
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(input_size=(1, 28, 28), test_input_size=(1, 28, 28), min_input_size=4,
                paper="Tan et al., MnasNet: Platform-Aware Neural Architecture Search for Mobile, CVPR 2019 "
                      "(the per-stage search space)")
def nas_cnn(*, num_classes: int = 10, in_chans: int = 1, stem_width: int = 16, depths: Sequence[int] = (1, 2, 2),
            widths: Sequence[int] = (16, 32, 64), kernel_sizes: Sequence[int] = (3, 3, 3),
            blocks: Sequence[BlockType] = ("plain", "residual", "residual"),
            expand_ratios: Sequence[float] = (4, 4, 4), se: Sequence[bool] = (False, False, False),
            drop_rate: float = 0.0) -> NasCNN:
    """Per-stage CNN for architecture search (block type, depth, width, kernel, expansion, SE per stage)."""
    return NasCNN(num_classes=num_classes, in_chans=in_chans, stem_width=stem_width, depths=depths, widths=widths,
                  kernel_sizes=kernel_sizes, blocks=blocks, expand_ratios=expand_ratios, se=se, drop_rate=drop_rate)

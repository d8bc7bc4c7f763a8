"""Atrous Spatial Pyramid Pooling (ASPP), as in DeepLabV3.

Paper: Chen, Papandreou, Schroff & Adam, "Rethinking Atrous Convolution for Semantic Image
Segmentation", arXiv:1706.05587, 2017 (DeepLabV3), Sec. 3.3.

An atrous (dilated) 3x3 convolution at rate ``r`` reads the taps ``x[i + r*a, j + r*b]`` for
``a, b in {-1, 0, 1}``:

    y[i, j] = sum_{a,b} w[a, b] * x[i + r*a, j + r*b]

so its field of view is ``2r + 1`` pixels with the same 9 weights. ASPP runs several rates in
parallel on the encoder's last map and concatenates the results, which probes the same pixel at
several scales. DeepLabV3's module has five branches, each with 256 filters, BN and ReLU:

1. a 1x1 convolution;
2. - 4. three 3x3 atrous convolutions at rates (6, 12, 18) when the output stride is 16, doubled to
   (12, 24, 36) at output stride 8 (the same field of view in input pixels);
5. image pooling: global average pool -> 1x1 conv -> BN -> ReLU -> bilinear upsample back to the
   map's size. DeepLabV3 adds it because large rates degenerate: on a 65x65 map a 3x3 filter at a rate
   close to the map size has only its centre tap inside the map (Fig. 4; reproduced by
   :func:`dltricks.experiments.segmentation.aspp_degeneration`), so the widest "context" branch is better
   computed explicitly as a global average.

The five 256-channel maps are concatenated (1280 channels) and projected by a 1x1 conv with 256
filters, BN and ReLU. DeepLabV3 reports 77.21 % mIOU on PASCAL VOC val at output stride 16 with this
module and image pooling vs 76.58 % without image pooling (Sec. 4.2, ResNet-101, multi-grid (1, 2, 4)).
``tests/test_aspp.py`` checks the structure branch by branch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.layers.conv import ConvNormAct, NormLayer, ActLayer

__all__ = ["ASPP", "ASPPPooling", "aspp_rates", "DEEPLABV3_RATES"]

# Atrous rates of the three 3x3 branches for each output stride (DeepLabV3 Sec. 3.3). Output stride 32 is
# not in the paper; halving the OS16 rates keeps the same field of view in input pixels.
DEEPLABV3_RATES: dict[int, tuple[int, int, int]] = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    """DeepLabV3's ASPP rates for an encoder ``output_stride``: (6, 12, 18) at 16, (12, 24, 36) at 8."""
    if output_stride not in DEEPLABV3_RATES:
        raise ValueError(f"no ASPP rates for output_stride {output_stride}; expected one of "
                         f"{sorted(DEEPLABV3_RATES)} or pass rates= explicitly")
    return DEEPLABV3_RATES[output_stride]


class ASPPPooling(nn.Module):
    """Image-level features: global average pool -> 1x1 conv -> norm -> act -> upsample to (H, W).

    With batch norm in training mode the pooled map has one value per channel and sample, so it needs
    a batch of at least 2 (as every BN after global pooling does).
    """

    def __init__(self, in_chs: int, out_chs: int, *, norm_layer: NormLayer = "batch",
                 act_layer: ActLayer = "relu") -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvNormAct(in_chs, out_chs, 1, norm_layer=norm_layer, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        y = self.conv(self.pool(x))  # (B, out_chs, 1, 1)
        # Bilinear upsampling of a 1x1 map is a broadcast: every pixel gets the image-level vector.
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)  # (B, out_chs, H, W)


class ASPP(nn.Module):
    """DeepLabV3 ASPP: a 1x1 branch, one 3x3 atrous branch per rate, image pooling, concat, 1x1 projection.

    Args:
        in_chs: channels of the encoder's last map (2048 for ResNet-50/101).
        out_chs: filters of every branch and of the projection (256 in the paper).
        rates: atrous rates of the 3x3 branches; default ``aspp_rates(output_stride)``.
        output_stride: the encoder's output stride, used when ``rates`` is not given (8, 16 or 32).
        image_pooling: include the image-pooling branch (the paper's default).
        separable: depthwise-separable 3x3 branches (DeepLabV3+ with Xception, Chen et al. 2018);
            ``False`` keeps the plain convolutions of DeepLabV3.
        drop_rate: dropout after the projection (not in the paper's text; torchvision uses 0.5).
        norm_layer, act_layer: BN + ReLU in the paper.

    Children: ``branches`` (``ModuleList``: 1x1, the atrous 3x3s, then pooling when enabled) and
    ``project`` (1x1 conv-norm-act), then ``dropout``.
    """

    def __init__(self, in_chs: int, out_chs: int = 256, *, rates: Sequence[int] | None = None,
                 output_stride: int = 16, image_pooling: bool = True, separable: bool = False,
                 drop_rate: float = 0.1, norm_layer: NormLayer = "batch", act_layer: ActLayer = "relu") -> None:
        super().__init__()
        self.rates = tuple(int(r) for r in (rates if rates is not None else aspp_rates(output_stride)))
        if not self.rates or any(r < 1 for r in self.rates):
            raise ValueError(f"ASPP rates must be positive integers, got {self.rates}")
        branches: list[nn.Module] = [ConvNormAct(in_chs, out_chs, 1, norm_layer=norm_layer, act_layer=act_layer)]
        for rate in self.rates:
            branches.append(_atrous_branch(in_chs, out_chs, rate, separable=separable, norm_layer=norm_layer,
                                           act_layer=act_layer))
        if image_pooling:
            branches.append(ASPPPooling(in_chs, out_chs, norm_layer=norm_layer, act_layer=act_layer))
        self.branches = nn.ModuleList(branches)
        self.project = ConvNormAct(len(branches) * out_chs, out_chs, 1, norm_layer=norm_layer, act_layer=act_layer)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.out_chs = out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Every branch keeps the spatial size: (B, out_chs, H, W) each.
        x = torch.cat([branch(x) for branch in self.branches], dim=1)  # (B, num_branches * out_chs, H, W)
        return self.dropout(self.project(x))  # (B, out_chs, H, W)


def _atrous_branch(in_chs: int, out_chs: int, rate: int, *, separable: bool, norm_layer: NormLayer,
                   act_layer: ActLayer) -> nn.Module:
    if not separable:
        # padding = rate keeps H x W for a 3x3 kernel at dilation `rate`.
        return ConvNormAct(in_chs, out_chs, 3, dilation=rate, norm_layer=norm_layer, act_layer=act_layer)
    return nn.Sequential(
        nn.Conv2d(in_chs, in_chs, 3, padding=rate, dilation=rate, groups=in_chs, bias=False),  # depthwise
        ConvNormAct(in_chs, out_chs, 1, norm_layer=norm_layer, act_layer=act_layer),  # pointwise
    )

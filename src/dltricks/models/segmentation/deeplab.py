"""DeepLabV3 and DeepLabV3+: a dilated ResNet encoder, ASPP, and (V3+) a light decoder at stride 4.

Papers:
    Chen, Papandreou, Schroff & Adam, "Rethinking Atrous Convolution for Semantic Image Segmentation",
    arXiv:1706.05587, 2017 (DeepLabV3).
    Chen, Zhu, Papandreou, Schroff & Adam, "Encoder-Decoder with Atrous Separable Convolution for Semantic
    Image Segmentation", ECCV 2018 (DeepLabV3+).

**DeepLabV3.** A ResNet whose last stages swap stride for dilation stops at output stride 16 (or 8): the
last map keeps 4x (16x) more positions than the classification network's stride 32 while every filter
still sees the context it was designed for. ASPP (:class:`dltricks.layers.aspp.ASPP`) probes that map at
rates (6, 12, 18) (doubled at OS 8) plus image pooling; a 1x1 conv gives logits at stride 16, which are
bilinearly upsampled to the input. The last stage uses multi-grid unit rates (1, 2, 4), the paper's best
setting (Sec. 3.2, 4.1): at OS 16 its three blocks have dilations 2, 4, 8.
DeepLabV3 reports, on PASCAL VOC 2012 val with ResNet-101: 77.21 % mIOU at OS 16 and 78.51 % when
evaluated at OS 8 (Sec. 4.2), and 79.77 % with multi-scale + flipped inputs.

**DeepLabV3+.** V3's logits at stride 16 are blurry at object boundaries. V3+ adds a decoder: upsample the
ASPP output 4x, concatenate the encoder's stride-4 map reduced to 48 channels by a 1x1 conv (few enough
that the low-level features do not outweigh the semantic ones, Sec. 4.1), refine with two 3x3 convs of
256 channels and predict at stride 4:

    y = Conv3x3(Conv3x3( concat( Up4(ASPP(f_16)), Conv1x1_48(f_4) ) ))

The paper reports 77.21 % (V3) -> 78.85 % (V3+ with this decoder) mIOU on VOC val with ResNet-101 at
train and eval output stride 16 (Table 3).

Both take every encoder of :mod:`dltricks.models.segmentation.encoders` (``encoder=`` a ResNet name).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.layers.aspp import ASPP, aspp_rates
from dltricks.layers.conv import ConvNormAct, NormLayer
from dltricks.models._registry import register_model
from dltricks.models.segmentation.base import SegmentationModel, init_decoder_weights
from dltricks.models.segmentation.encoders import ResNetEncoder

__all__ = ["DeepLabV3Decoder", "DeepLabV3PlusDecoder", "DeepLabV3", "DeepLabV3Plus", "deeplabv3_resnet50",
           "deeplabv3_resnet101", "deeplabv3plus_resnet50", "deeplabv3plus_resnet101"]

PAPER = "Chen et al., Rethinking Atrous Convolution for Semantic Image Segmentation, arXiv:1706.05587, 2017"
PAPER_PLUS = ("Chen et al., Encoder-Decoder with Atrous Separable Convolution for Semantic Image "
              "Segmentation, ECCV 2018")


class DeepLabV3Decoder(nn.Module):
    """ASPP on the encoder's last map: ``(B, C_last, H/os, W/os) -> (B, 256, H/os, W/os)``."""

    def __init__(self, in_chs: int, *, out_chs: int = 256, rates: Sequence[int] | None = None,
                 output_stride: int = 16, norm_layer: NormLayer = "batch", drop_rate: float = 0.1) -> None:
        super().__init__()
        self.aspp = ASPP(in_chs, out_chs, rates=rates or aspp_rates(output_stride), norm_layer=norm_layer,
                         drop_rate=drop_rate)
        self.out_chs = out_chs

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.aspp(features[-1])  # (B, 256, H/os, W/os)


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP, 4x upsampling, fusion with the stride-4 encoder map (48 channels), two 3x3 convs."""

    def __init__(self, encoder_channels: Sequence[int], encoder_strides: Sequence[int], *, out_chs: int = 256,
                 low_level_chs: int = 48, low_level_stride: int = 4, rates: Sequence[int] | None = None,
                 output_stride: int = 16, norm_layer: NormLayer = "batch", drop_rate: float = 0.1) -> None:
        super().__init__()
        if low_level_stride not in encoder_strides:
            raise ValueError(f"encoder has no map at stride {low_level_stride} (strides {list(encoder_strides)})")
        self.low_index = list(encoder_strides).index(low_level_stride)
        self.aspp = ASPP(encoder_channels[-1], out_chs, rates=rates or aspp_rates(output_stride),
                         norm_layer=norm_layer, drop_rate=drop_rate)
        self.reduce = ConvNormAct(encoder_channels[self.low_index], low_level_chs, 1, norm_layer=norm_layer)
        self.fuse = nn.Sequential(ConvNormAct(out_chs + low_level_chs, out_chs, 3, norm_layer=norm_layer),
                                  ConvNormAct(out_chs, out_chs, 3, norm_layer=norm_layer))
        self.out_chs = out_chs

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low = self.reduce(features[self.low_index])  # (B, 48, H/4, W/4)
        x = self.aspp(features[-1])  # (B, 256, H/os, W/os)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)  # (B, 256, H/4, W/4)
        x = torch.cat([x, low], dim=1)  # (B, 256 + 48, H/4, W/4)
        return self.fuse(x)  # (B, 256, H/4, W/4)


class DeepLabV3(SegmentationModel):
    """DeepLabV3: ``ResNetEncoder(encoder, output_stride, multi_grid)`` -> ASPP -> 1x1 classifier.

    Args:
        encoder: registry name of the ResNet (``resnet50``, ``resnet101``, ``resnet18``...).
        output_stride: 8, 16 (default, the paper's training setting) or 32.
        multi_grid: unit rates of the last stage's blocks; ``None`` for plain dilation.
        rates: ASPP rates; default (6, 12, 18) at OS 16, (12, 24, 36) at OS 8.
        aspp_drop_rate: dropout after the ASPP projection.
    """

    def __init__(self, *, encoder: str = "resnet50", num_classes: int = 21, in_chans: int = 3,
                 output_stride: int = 16, multi_grid: Sequence[int] | None = (1, 2, 4),
                 rates: Sequence[int] | None = None, norm_layer: NormLayer = "batch", aspp_drop_rate: float = 0.1,
                 drop_rate: float = 0.0, **encoder_kwargs) -> None:
        enc = ResNetEncoder(encoder, in_chans=in_chans, output_stride=output_stride, multi_grid=multi_grid,
                            **encoder_kwargs)
        dec = DeepLabV3Decoder(enc.feature_channels[-1], rates=rates, output_stride=output_stride,
                               norm_layer=norm_layer, drop_rate=aspp_drop_rate)
        init_decoder_weights(dec)
        super().__init__(enc, dec, num_classes=num_classes, drop_rate=drop_rate)


class DeepLabV3Plus(SegmentationModel):
    """DeepLabV3+: DeepLabV3's encoder and ASPP, plus the stride-4 decoder (same arguments as
    :class:`DeepLabV3`, and ``low_level_chs`` = 48)."""

    def __init__(self, *, encoder: str = "resnet50", num_classes: int = 21, in_chans: int = 3,
                 output_stride: int = 16, multi_grid: Sequence[int] | None = (1, 2, 4),
                 rates: Sequence[int] | None = None, low_level_chs: int = 48, norm_layer: NormLayer = "batch",
                 aspp_drop_rate: float = 0.1, drop_rate: float = 0.0, **encoder_kwargs) -> None:
        enc = ResNetEncoder(encoder, in_chans=in_chans, output_stride=output_stride, multi_grid=multi_grid,
                            **encoder_kwargs)
        dec = DeepLabV3PlusDecoder(enc.feature_channels, enc.feature_strides, rates=rates,
                                   output_stride=output_stride, low_level_chs=low_level_chs,
                                   norm_layer=norm_layer, drop_rate=aspp_drop_rate)
        init_decoder_weights(dec)
        super().__init__(enc, dec, num_classes=num_classes, drop_rate=drop_rate)


_DEEPLAB = dict(task="segmentation", input_size=(3, 513, 513), test_input_size=(3, 64, 64))


@register_model(paper=PAPER, **_DEEPLAB)
def deeplabv3_resnet50(*, num_classes: int = 21, in_chans: int = 3, output_stride: int = 16, **kwargs) -> DeepLabV3:
    """DeepLabV3, ResNet-50 encoder, output stride 16, multi-grid (1, 2, 4), ASPP (6, 12, 18)."""
    return DeepLabV3(encoder="resnet50", num_classes=num_classes, in_chans=in_chans, output_stride=output_stride,
                     **kwargs)


@register_model(paper=PAPER, **_DEEPLAB)
def deeplabv3_resnet101(*, num_classes: int = 21, in_chans: int = 3, output_stride: int = 16, **kwargs) -> DeepLabV3:
    """DeepLabV3, ResNet-101 encoder (the paper's network), output stride 16, multi-grid (1, 2, 4)."""
    return DeepLabV3(encoder="resnet101", num_classes=num_classes, in_chans=in_chans, output_stride=output_stride,
                     **kwargs)


@register_model(paper=PAPER_PLUS, **_DEEPLAB)
def deeplabv3plus_resnet50(*, num_classes: int = 21, in_chans: int = 3, output_stride: int = 16,
                           **kwargs) -> DeepLabV3Plus:
    """DeepLabV3+, ResNet-50 encoder at output stride 16, decoder fusing the stride-4 map."""
    return DeepLabV3Plus(encoder="resnet50", num_classes=num_classes, in_chans=in_chans,
                         output_stride=output_stride, **kwargs)


@register_model(paper=PAPER_PLUS, **_DEEPLAB)
def deeplabv3plus_resnet101(*, num_classes: int = 21, in_chans: int = 3, output_stride: int = 16,
                            **kwargs) -> DeepLabV3Plus:
    """DeepLabV3+, ResNet-101 encoder at output stride 16, decoder fusing the stride-4 map."""
    return DeepLabV3Plus(encoder="resnet101", num_classes=num_classes, in_chans=in_chans,
                         output_stride=output_stride, **kwargs)

"""Feature Pyramid Network for semantic segmentation (the Panoptic FPN semantic branch).

Papers:
    Lin, Dollar, Girshick, He, Hariharan & Belongie, "Feature Pyramid Networks for Object Detection",
    CVPR 2017 (FPN).
    Kirillov, Girshick, He & Dollar, "Panoptic Feature Pyramid Networks", CVPR 2019 (semantic branch).

**Pyramid.** The encoder's stages ``C_2 ... C_5`` (strides 4 to 32) are strong semantically at the top
and precise spatially at the bottom. FPN gives every level both: a 1x1 *lateral* conv brings each to
256 channels, a *top-down* pass adds the coarser level, upsampled 2x by nearest neighbour, and a 3x3 conv
smooths each merged map (it "reduces the aliasing effect of upsampling", Lin et al. Sec. 3):

    P_5 = L_5(C_5),     P_i = L_i(C_i) + Up(P_{i+1}),     P_i <- Conv3x3(P_i)

**Semantic head.** Each ``P_i`` goes to stride 4 through ``log2(s_i / 4)`` stages of (3x3 conv, 128
channels, GroupNorm, ReLU, 2x bilinear upsample) - one conv and no upsampling for ``P_2`` - the four maps
are summed, and a 1x1 conv predicts logits at stride 4 that are bilinearly upsampled to the input.
Kirillov et al. find this branch alone competitive with dilated-encoder models (DeepLab-style) for
semantic segmentation at a fraction of their memory and compute, since no stage runs at a reduced
stride with dilation.

Works with dilated encoders too (strides ``[4, 8, 16, 16]``): every upsampling targets the size of the next
finer pyramid level, which also handles odd input sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.layers.conv import ConvNormAct, NormLayer
from dltricks.models._registry import register_model
from dltricks.models.segmentation.base import SegmentationModel, init_decoder_weights
from dltricks.models.segmentation.encoders import ResNetEncoder

__all__ = ["FPNDecoder", "FPN", "fpn_resnet18", "fpn_resnet50"]

PAPER = "Kirillov et al., Panoptic Feature Pyramid Networks, CVPR 2019 (FPN: Lin et al., CVPR 2017)"


class FPNDecoder(nn.Module):
    """FPN top-down pyramid over the encoder maps at stride >= ``min_stride`` + Panoptic-FPN semantic head.

    Args:
        encoder_channels, encoder_strides: the encoder's ``feature_channels`` / ``feature_strides``.
        pyramid_chs: channels of every ``P_i`` (256 in both papers).
        segmentation_chs: channels of the semantic head's stages (128 in Kirillov et al.).
        min_stride: finest level used (4: ``C_2``, as in both papers).
        norm_layer: norm of the semantic head's convs (``"group"``, 32 groups, as in Kirillov et al.).
        merge: ``"sum"`` (the paper) or ``"cat"`` (concatenate the upsampled levels, 4x channels).
    """

    def __init__(self, encoder_channels: Sequence[int], encoder_strides: Sequence[int], *, pyramid_chs: int = 256,
                 segmentation_chs: int = 128, min_stride: int = 4, norm_layer: NormLayer = "group",
                 merge: str = "sum") -> None:
        super().__init__()
        if merge not in ("sum", "cat"):
            raise ValueError(f"merge must be 'sum' or 'cat', got {merge!r}")
        self.first = next((i for i, s in enumerate(encoder_strides) if s >= min_stride), None)
        if self.first is None:
            raise ValueError(f"encoder has no map at stride >= {min_stride} (strides {list(encoder_strides)})")
        channels = list(encoder_channels)[self.first:]
        strides = list(encoder_strides)[self.first:]
        self.lateral = nn.ModuleList(nn.Conv2d(c, pyramid_chs, 1) for c in channels)
        self.smooth = nn.ModuleList(nn.Conv2d(pyramid_chs, pyramid_chs, 3, padding=1) for _ in channels)
        # Level i reaches the finest stride through one stage per distinct finer stride (at least one conv).
        self.targets: list[list[int]] = []
        self.heads = nn.ModuleList()
        for i, s in enumerate(strides):
            finer = sorted({t for t in strides[:i] if t < s}, reverse=True)
            target_levels = [strides.index(t) for t in finer]
            self.targets.append(target_levels)
            stages = [ConvNormAct(pyramid_chs if j == 0 else segmentation_chs, segmentation_chs, 3,
                                  norm_layer=norm_layer) for j in range(max(1, len(target_levels)))]
            self.heads.append(nn.ModuleList(stages))
        self.merge = merge
        self.out_chs = segmentation_chs * (len(channels) if merge == "cat" else 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        feats = list(features)[self.first:]  # [(B, C_i, H / s_i, W / s_i)], finest first
        # Top-down pathway, coarsest first.
        pyramid: list[torch.Tensor] = [None] * len(feats)  # type: ignore[list-item]
        top = None
        for i in reversed(range(len(feats))):
            x = self.lateral[i](feats[i])  # (B, 256, H / s_i, W / s_i)
            if top is not None:
                x = x + F.interpolate(top, size=x.shape[-2:], mode="nearest")
            top = x
            pyramid[i] = self.smooth[i](x)  # P_i: (B, 256, H / s_i, W / s_i)
        # Semantic branch: every level to the finest resolution.
        outs = []
        for i, stages in enumerate(self.heads):
            y = pyramid[i]
            for j, stage in enumerate(stages):
                y = stage(y)  # (B, 128, ...)
                if j < len(self.targets[i]):
                    size = pyramid[self.targets[i][j]].shape[-2:]
                    y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            outs.append(y)  # (B, 128, H / s_0, W / s_0)
        if self.merge == "cat":
            return torch.cat(outs, dim=1)  # (B, 128 * levels, H / 4, W / 4)
        return torch.stack(outs, dim=0).sum(dim=0)  # (B, 128, H / 4, W / 4)


class FPN(SegmentationModel):
    """FPN segmentation model: ``ResNetEncoder(encoder, output_stride)`` -> :class:`FPNDecoder` -> 1x1 conv."""

    def __init__(self, *, encoder: str = "resnet50", num_classes: int = 21, in_chans: int = 3,
                 output_stride: int = 32, pyramid_chs: int = 256, segmentation_chs: int = 128,
                 norm_layer: NormLayer = "group", merge: str = "sum", drop_rate: float = 0.0,
                 **encoder_kwargs) -> None:
        enc = ResNetEncoder(encoder, in_chans=in_chans, output_stride=output_stride, **encoder_kwargs)
        dec = FPNDecoder(enc.feature_channels, enc.feature_strides, pyramid_chs=pyramid_chs,
                         segmentation_chs=segmentation_chs, norm_layer=norm_layer, merge=merge)
        init_decoder_weights(dec)
        super().__init__(enc, dec, num_classes=num_classes, drop_rate=drop_rate)


_FPN = dict(task="segmentation", input_size=(3, 512, 512), test_input_size=(3, 64, 64))


@register_model(paper=PAPER, **_FPN)
def fpn_resnet18(*, num_classes: int = 21, in_chans: int = 3, **kwargs) -> FPN:
    """FPN (Panoptic-FPN semantic branch) on ResNet-18: a light dense-prediction baseline."""
    return FPN(encoder="resnet18", num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(paper=PAPER, **_FPN)
def fpn_resnet50(*, num_classes: int = 21, in_chans: int = 3, **kwargs) -> FPN:
    """FPN (Panoptic-FPN semantic branch) on ResNet-50."""
    return FPN(encoder="resnet50", num_classes=num_classes, in_chans=in_chans, **kwargs)

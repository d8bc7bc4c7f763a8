"""U-Net: a contracting path, a symmetric expanding path and skip connections between them.

Paper: Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015.

Contracting path: ``depth`` times (double 3x3 conv -> 2x2 max-pool), doubling the channels after every
pooling (64, 128, 256, 512, 1024 in the paper). Expanding path: at each level, upsample 2x while halving
the channels, concatenate the encoder map of the same resolution (the skip connection), double 3x3 conv:

    d_i = DoubleConv( concat( e_i, Up(d_{i+1}) ) ),      i = depth - 1, ..., 0
    logits = Conv1x1(d_0)

The skips carry the high-resolution detail that pooling threw away; the deep path carries context.
Without them (``skip=False``) the decoder must re-invent boundaries from a 16x coarser map: experiment
(c) in :mod:`dltricks.experiments.segmentation` measures the loss on boundary pixels.

Differences from the paper, all standard in modern re-implementations: "same" padding instead of valid
convolutions (output size = input size, no overlap-tile cropping); batch norm after every convolution
(``norm_layer``), which the 2015 paper predates. Upsampling (``upsample=``) is the paper's 2x2 transposed
conv (``"transposed"``), bilinear or nearest resizing + 1x1 conv, or max-unpooling with the encoder's
pooling indices (``"unpool"``, SegNet style), built from :mod:`dltricks.layers.upsample`. Odd sizes: 2x2
pooling floors (65 -> 32), so the upsampled map can be one pixel short of its skip; transposed-conv
outputs are padded on the bottom/right (replicating the last row/column: exactly the pixels the pooling
dropped), resizing and unpooling target the skip's size directly.

Measured (``docs/segmentation.md``, ``docs/benchmarks.md``): ``unet(base_channels=16)`` trained on CPU on
25 ISBI-2012 slices reaches the membrane Dice reported there on the 5 held-out slices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.layers.conv import ConvNormAct, NormLayer
from dltricks.layers.upsample import UPSAMPLE_MODES, make_upsample
from dltricks.models._registry import register_model
from dltricks.models.segmentation.base import Encoder, Features, SegmentationModel, init_decoder_weights

__all__ = ["DoubleConv", "UNetEncoder", "UNetUpBlock", "UNetDecoder", "UNet", "pad_to", "unet",
           "unet_small"]

PAPER = "Ronneberger et al., U-Net: Convolutional Networks for Biomedical Image Segmentation, MICCAI 2015"


class DoubleConv(nn.Sequential):
    """Two 3x3 conv -> norm -> ReLU layers (the unit of every U-Net level)."""

    def __init__(self, in_chs: int, out_chs: int, *, mid_chs: int | None = None,
                 norm_layer: NormLayer = "batch") -> None:
        mid_chs = mid_chs or out_chs
        super().__init__(ConvNormAct(in_chs, mid_chs, 3, norm_layer=norm_layer),
                         ConvNormAct(mid_chs, out_chs, 3, norm_layer=norm_layer))


def pad_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Pad ``x`` on the bottom and right to ``size`` by replicating its last row/column (odd-size skips)."""
    dh, dw = int(size[0]) - x.shape[-2], int(size[1]) - x.shape[-1]
    if dh < 0 or dw < 0:
        raise ValueError(f"cannot pad a {tuple(x.shape[-2:])} map down to {tuple(size)}")
    if dh == 0 and dw == 0:
        return x
    return F.pad(x, (0, dw, 0, dh), mode="replicate")


class UNetEncoder(Encoder):
    """Contracting path: ``depth + 1`` maps at strides ``1, 2, ..., 2**depth`` with ``widths`` channels.

    ``return_indices=True`` keeps the argmax positions of every 2x2 max-pooling (``features.indices``,
    highest resolution first) for max-unpooling decoders.
    """

    def __init__(self, in_chans: int = 1, widths: Sequence[int] = (64, 128, 256, 512, 1024), *,
                 return_indices: bool = False, norm_layer: NormLayer = "batch") -> None:
        super().__init__()
        self.in_chans = in_chans
        self.return_indices = return_indices
        self.stages = nn.ModuleList()
        prev = in_chans
        for width in widths:
            self.stages.append(DoubleConv(prev, width, norm_layer=norm_layer))
            prev = width
        self.feature_channels = list(widths)
        self.feature_strides = [2 ** i for i in range(len(widths))]

    def forward(self, x: torch.Tensor) -> Features:
        features, indices = Features(), []
        for level, stage in enumerate(self.stages):
            if level > 0:
                if self.return_indices:
                    x, idx = F.max_pool2d(x, 2, return_indices=True)  # (B, C, H/2, W/2) twice
                    indices.append(idx)
                else:
                    x = F.max_pool2d(x, 2)  # (B, C, floor(H/2), floor(W/2))
            x = stage(x)  # (B, widths[level], H / 2**level, W / 2**level)
            features.append(x)
        features.indices = indices if self.return_indices else None
        return features


class UNetUpBlock(nn.Module):
    """Upsample the deeper map to the skip's size (halving channels), concatenate the skip, double conv.

    ``upsample``: ``"transposed"`` (2x2 stride-2 transposed conv, the paper's up-conv), ``"bilinear"`` /
    ``"nearest"`` (resize to the skip's size + 1x1 conv) or ``"unpool"`` (1x1 conv to the skip's channels,
    then max-unpooling at the encoder's argmax positions; the double conv fills the zeros in between).
    """

    def __init__(self, deep_chs: int, skip_chs: int, *, upsample: str, skip: bool, norm_layer: NormLayer) -> None:
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample {upsample!r}; expected one of {', '.join(UPSAMPLE_MODES)}")
        # Transposed: 2x2 stride 2 (kernel = stride, no overlap); resize: 1x1 conv; unpool: no conv after it.
        kernel_size = {"transposed": 2, "bilinear": 1, "nearest": 1, "unpool": 0}[upsample]
        self.up = make_upsample(upsample, deep_chs, skip_chs, 2, kernel_size=kernel_size)
        self.mode, self.skip = upsample, skip
        self.conv = DoubleConv(2 * skip_chs if skip else skip_chs, skip_chs, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        size = tuple(skip.shape[-2:])
        if self.mode == "transposed":
            # 2h can be one short of an odd skip: replicate the last row/column (the pixels pooling dropped)
            # rather than let the transposed conv invent a bias-only row with output_padding.
            x = pad_to(self.up(x), size)  # (B, C_skip, H_skip, W_skip)
        else:
            # Resizing and unpooling target the skip's size directly (unpooling is sparse: the double conv
            # below fills the zeros).
            x = self.up(x, indices=indices, output_size=size)  # (B, C_skip, H_skip, W_skip)
        if self.skip:
            x = torch.cat([skip, x], dim=1)  # (B, 2 * C_skip, H_skip, W_skip)
        return self.conv(x)  # (B, C_skip, H_skip, W_skip)


class UNetDecoder(nn.Module):
    """Expanding path over a U-Net encoder's maps; returns the stride-1 map with ``widths[0]`` channels."""

    def __init__(self, encoder_channels: Sequence[int], *, upsample: str = "transposed", skip: bool = True,
                 norm_layer: NormLayer = "batch") -> None:
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample {upsample!r}; expected one of {', '.join(UPSAMPLE_MODES)}")
        channels = list(encoder_channels)
        # blocks[i] produces level i from level i + 1 (deepest block last).
        self.blocks = nn.ModuleList(
            UNetUpBlock(channels[i + 1], channels[i], upsample=upsample, skip=skip, norm_layer=norm_layer)
            for i in range(len(channels) - 1))
        self.out_chs = channels[0]
        self.upsample = upsample

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        indices = getattr(features, "indices", None)
        if self.upsample == "unpool" and indices is None:
            raise ValueError("upsample='unpool' needs an encoder built with return_indices=True")
        x = features[-1]  # (B, C_depth, H / 2**depth, W / 2**depth)
        for level in reversed(range(len(self.blocks))):
            idx = indices[level] if indices is not None else None
            x = self.blocks[level](x, features[level], idx)  # (B, C_level, H / 2**level, W / 2**level)
        return x


class UNet(SegmentationModel):
    """U-Net of ``depth`` poolings with ``base_channels * 2**i`` channels at level ``i``.

    Args:
        num_classes: output logits per pixel (2 with softmax as in the paper, or 1 with a sigmoid).
        in_chans: input channels (1 for the grayscale EM slices of the paper).
        base_channels: channels of the first level (64 in the paper).
        depth: number of 2x poolings (4 in the paper); inputs must be at least ``2**depth`` pixels.
        upsample: ``"transposed"`` (paper), ``"bilinear"``, ``"nearest"`` or ``"unpool"``.
        skip: keep the skip connections (``False`` only for the ablation of experiment (c)).
        norm_layer: ``"batch"`` (default), ``"group"``, ``"none"`` (closest to the paper)...
        drop_rate: dropout before the 1x1 classifier (the paper puts dropout at the end of the
            contracting path).
    """

    def __init__(self, *, num_classes: int = 2, in_chans: int = 1, base_channels: int = 64, depth: int = 4,
                 upsample: str = "transposed", skip: bool = True, norm_layer: NormLayer = "batch",
                 drop_rate: float = 0.0) -> None:
        if depth < 1 or base_channels < 1:
            raise ValueError(f"depth and base_channels must be positive, got depth={depth}, "
                             f"base_channels={base_channels}")
        widths = [base_channels * 2 ** i for i in range(depth + 1)]
        encoder = UNetEncoder(in_chans, widths, return_indices=upsample == "unpool", norm_layer=norm_layer)
        decoder = UNetDecoder(widths, upsample=upsample, skip=skip, norm_layer=norm_layer)
        super().__init__(encoder, decoder, num_classes=num_classes, min_input_size=2 ** depth, drop_rate=drop_rate)
        init_decoder_weights(self.encoder)
        init_decoder_weights(self.decoder)
        self.depth, self.skip = depth, skip


@register_model(task="segmentation", input_size=(1, 512, 512), test_input_size=(1, 64, 64), min_input_size=16,
                paper=PAPER)
def unet(*, num_classes: int = 2, in_chans: int = 1, base_channels: int = 64, depth: int = 4,
         upsample: str = "transposed", skip: bool = True, norm_layer: NormLayer = "batch",
         drop_rate: float = 0.0) -> UNet:
    """U-Net as in the paper (64 base channels, 4 poolings, 2x2 up-convs) with same padding and BN: 31,036,546
    parameters at 1 input channel and 2 classes (31,030,658 with ``norm_layer="none"``: the paper's layers)."""
    return UNet(num_classes=num_classes, in_chans=in_chans, base_channels=base_channels, depth=depth,
                upsample=upsample, skip=skip, norm_layer=norm_layer, drop_rate=drop_rate)


@register_model(task="segmentation", input_size=(1, 512, 512), test_input_size=(1, 64, 64), min_input_size=16,
                paper=PAPER)
def unet_small(*, num_classes: int = 2, in_chans: int = 1, base_channels: int = 16, depth: int = 4,
               upsample: str = "transposed", skip: bool = True, norm_layer: NormLayer = "batch",
               drop_rate: float = 0.0) -> UNet:
    """U-Net with 16 base channels (1/16 of the paper's weights and MACs): the CPU recipe for ISBI 2012."""
    return UNet(num_classes=num_classes, in_chans=in_chans, base_channels=base_channels, depth=depth,
                upsample=upsample, skip=skip, norm_layer=norm_layer, drop_rate=drop_rate)

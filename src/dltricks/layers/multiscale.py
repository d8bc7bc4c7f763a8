"""Multi-scale two-pathway input block.

The tip: let the network see the image at two scales from its first layer on - a full-resolution
pathway for fine detail and a downsampled pathway for context - and fuse them. This is the two-pathway
design of DeepMedic (Kamnitsas et al., "Efficient Multi-Scale 3D CNN with Fully Connected CRF for Accurate
Brain Lesion Segmentation", Medical Image Analysis 2017: a normal-resolution and a 3x-subsampled pathway
whose larger context improved lesion segmentation over the single pathway) and of the multi-scale
ConvNets of Farabet et al. (TPAMI 2013: the same filters on a Laplacian pyramid).

    full = convs(x)                                        (B, C, H, W)
    low  = upsample(convs'(downsample_s(x)), to (H, W))    (B, C, H, W)
    y    = act(norm(conv1x1([full; low])))                  fuse="concat"
         = full + low                                      fuse="sum"

With ``depth`` 3x3 convs per pathway, the full-resolution pathway sees ``2 * depth + 1`` pixels and the
low-resolution pathway about ``s * (2 * depth + 1)`` at the same cost per output pixel divided by
``s^2``: the context for free that the tip promises (``tests/test_layers_conv_blocks.py`` checks the
receptive fields by gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.layers.conv import ActLayer, ConvNormAct, NormLayer

__all__ = ["TwoPathwayBlock"]


def _pathway(in_chs: int, out_chs: int, depth: int, kernel_size: int, norm_layer: NormLayer,
             act_layer: ActLayer) -> nn.Sequential:
    layers = [ConvNormAct(in_chs if i == 0 else out_chs, out_chs, kernel_size, norm_layer=norm_layer,
                          act_layer=act_layer) for i in range(depth)]
    return nn.Sequential(*layers)


class TwoPathwayBlock(nn.Module):
    """A full-resolution and a downsampled pathway on the same input, fused at full resolution.

    Args:
        in_chs, out_chs: channels in and out (each pathway has ``out_chs`` channels).
        scale_factor: downsampling of the low-resolution pathway (average pooling; ceil mode, so odd sizes
            keep their border).
        depth, kernel_size: conv-norm-act layers per pathway and their kernel.
        fuse: ``"concat"`` (concatenate, then a 1x1 conv-norm-act back to ``out_chs``) or ``"sum"``.
        upsample_mode: ``"nearest"`` or ``"bilinear"`` for bringing the low pathway back to H x W.
    """

    def __init__(self, in_chs: int, out_chs: int, *, scale_factor: int = 2, depth: int = 2, kernel_size: int = 3,
                 fuse: str = "concat", upsample_mode: str = "bilinear", norm_layer: NormLayer = "batch",
                 act_layer: ActLayer = "relu") -> None:
        super().__init__()
        if fuse not in ("concat", "sum"):
            raise ValueError(f"fuse must be 'concat' or 'sum', got {fuse!r}")
        if scale_factor < 2:
            raise ValueError(f"scale_factor must be at least 2, got {scale_factor}")
        self.scale_factor, self.fuse, self.upsample_mode = scale_factor, fuse, upsample_mode
        self.full = _pathway(in_chs, out_chs, depth, kernel_size, norm_layer, act_layer)
        self.low = _pathway(in_chs, out_chs, depth, kernel_size, norm_layer, act_layer)
        self.proj = (ConvNormAct(2 * out_chs, out_chs, 1, norm_layer=norm_layer, act_layer=act_layer)
                     if fuse == "concat" else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        full = self.full(x)  # (B, C_out, H, W)
        low = F.avg_pool2d(x, self.scale_factor, ceil_mode=True)  # (B, C_in, ceil(H/s), ceil(W/s))
        low = self.low(low)  # (B, C_out, H/s, W/s)
        align = False if self.upsample_mode == "bilinear" else None
        low = F.interpolate(low, size=size, mode=self.upsample_mode, align_corners=align)  # (B, C_out, H, W)
        if self.fuse == "sum":
            return full + low
        return self.proj(torch.cat([full, low], dim=1))  # (B, 2*C_out, H, W) -> (B, C_out, H, W)

"""Inverted residual blocks: MBConv (MobileNetV2 / EfficientNet) and Fused-MBConv (EfficientNetV2).

**MBConv** (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018;
Tan & Le, "EfficientNet", ICML 2019). The classic bottleneck is wide -> narrow -> wide; the inverted one
is narrow -> wide -> narrow with a cheap depthwise conv on the wide part:

    h = act(BN(W_expand x))            1x1, C_in -> t * C_in   (skipped when t = 1)
    h = act(BN(depthwise_kxk(h)))      k x k, one filter per channel, carries the stride
    h = SE(h)                          optional squeeze-and-excitation (EfficientNet)
    y = BN(W_project h)                1x1, t * C_in -> C_out, *linear*: no activation
    y = x + drop_path(y)               when stride = 1 and C_in = C_out

The projection is linear because a ReLU on a low-dimensional embedding destroys information (MobileNetV2
Sec. 3.2; their Fig. 6a shows the linear bottleneck training to a better top-1 than a ReLU6 one). Weights:
``C_in*t*C_in + k^2*t*C_in + t*C_in*C_out``; e.g. C_in = C_out = 64, t = 6, k = 3: 24,576 + 3,456 +
24,576 = 52,608 weights for a block that filters 384 channels, where one dense 3x3 conv at 384
channels would need 1,327,104.

**Fused-MBConv** (Tan & Le, "EfficientNetV2", ICML 2021): the 1x1 expansion and the depthwise k x k are
replaced by one dense k x k conv C_in -> t * C_in. More MACs, but dense convs use accelerators better than
depthwise ones, and EfficientNetV2 finds it faster in the early, high-resolution stages (their Table 3).
With t = 1 the block is a single k x k conv-BN-act (no projection).
"""

from __future__ import annotations

import torch
from torch import nn

from dltricks.layers.conv import ActLayer, ConvNormAct, NormLayer
from dltricks.layers.drop import DropPath
from dltricks.layers.se import SqueezeExcite

__all__ = ["MBConv", "FusedMBConv"]


class MBConv(nn.Module):
    """Inverted residual with depthwise conv, optional SE and a linear 1x1 projection.

    Args:
        in_chs, out_chs: block input and output channels.
        kernel_size, stride, dilation: of the depthwise conv.
        expand_ratio: t; the hidden width is ``round(in_chs * t)``.
        se_ratio: SE bottleneck width as a fraction of ``in_chs`` (EfficientNet: 0.25); 0 disables SE.
        norm_layer, act_layer: name or callable (MobileNetV2: ReLU6; EfficientNet: SiLU).
        drop_path: stochastic-depth probability of the residual branch.
    """

    def __init__(self, in_chs: int, out_chs: int, *, kernel_size: int = 3, stride: int = 1, dilation: int = 1,
                 expand_ratio: float = 6.0, se_ratio: float = 0.0, norm_layer: NormLayer = "batch",
                 act_layer: ActLayer = "relu6", drop_path: float = 0.0) -> None:
        super().__init__()
        mid_chs = int(round(in_chs * expand_ratio))
        self.has_residual = stride == 1 and in_chs == out_chs
        self.conv_pw = (ConvNormAct(in_chs, mid_chs, 1, norm_layer=norm_layer, act_layer=act_layer)
                        if expand_ratio != 1 else nn.Identity())
        self.conv_dw = ConvNormAct(mid_chs, mid_chs, kernel_size, stride=stride, dilation=dilation, groups=mid_chs,
                                   norm_layer=norm_layer, act_layer=act_layer)
        self.se = (SqueezeExcite(mid_chs, rd_channels=max(1, int(in_chs * se_ratio)), act_layer="silu")
                   if se_ratio > 0 else nn.Identity())
        self.conv_pwl = ConvNormAct(mid_chs, out_chs, 1, norm_layer=norm_layer, act_layer=None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.has_residual else nn.Identity()

    def zero_init_last(self) -> None:
        """Zero the projection's BN gamma so the block starts as the identity (residual blocks only)."""
        norm = getattr(self.conv_pwl, "norm", None)
        if self.has_residual and norm is not None and getattr(norm, "weight", None) is not None:
            nn.init.zeros_(norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_pw(x)  # (B, t*C_in, H, W)
        x = self.conv_dw(x)  # (B, t*C_in, H/s, W/s)
        x = self.se(x)
        x = self.conv_pwl(x)  # (B, C_out, H/s, W/s), linear bottleneck
        if self.has_residual:
            x = shortcut + self.drop_path(x)
        return x


class FusedMBConv(nn.Module):
    """Dense k x k expansion conv (carrying the stride), optional SE, linear 1x1 projection.

    With ``expand_ratio == 1`` it is one k x k conv-norm-act from ``in_chs`` to ``out_chs``, as in the
    first stage of EfficientNetV2. Arguments as :class:`MBConv`.
    """

    def __init__(self, in_chs: int, out_chs: int, *, kernel_size: int = 3, stride: int = 1,
                 expand_ratio: float = 4.0, se_ratio: float = 0.0, norm_layer: NormLayer = "batch",
                 act_layer: ActLayer = "silu", drop_path: float = 0.0) -> None:
        super().__init__()
        self.has_residual = stride == 1 and in_chs == out_chs
        if expand_ratio == 1:
            self.conv_exp = ConvNormAct(in_chs, out_chs, kernel_size, stride=stride, norm_layer=norm_layer,
                                        act_layer=act_layer)
            self.se: nn.Module = nn.Identity()
            self.conv_pwl: nn.Module = nn.Identity()
        else:
            mid_chs = int(round(in_chs * expand_ratio))
            self.conv_exp = ConvNormAct(in_chs, mid_chs, kernel_size, stride=stride, norm_layer=norm_layer,
                                        act_layer=act_layer)
            self.se = (SqueezeExcite(mid_chs, rd_channels=max(1, int(in_chs * se_ratio)), act_layer=act_layer)
                       if se_ratio > 0 else nn.Identity())
            self.conv_pwl = ConvNormAct(mid_chs, out_chs, 1, norm_layer=norm_layer, act_layer=None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.has_residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_exp(x)  # (B, t*C_in, H/s, W/s)
        x = self.conv_pwl(self.se(x))  # (B, C_out, H/s, W/s)
        if self.has_residual:
            x = shortcut + self.drop_path(x)
        return x

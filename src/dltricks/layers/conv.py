"""Convolution building blocks: conv-norm-act, dilated, depthwise-separable, factorized, grouped and
1x1-bottleneck convolutions.

Weights of a k x k convolution from C_in to C_out channels with ``groups`` groups (bias excluded):

    params = k_h * k_w * (C_in / groups) * C_out

Every cheaper block below rewrites that product:

* **Dilated (atrous) convolution** (Yu & Koltun, ICLR 2016; Chen et al., DeepLab 2017) spaces the k taps
  ``d`` pixels apart: same weights, effective kernel size ``d * (k - 1) + 1``, so the receptive field
  grows without pooling or striding and the map keeps its resolution. ``padding = d * (k - 1) / 2``
  keeps the size at stride 1.
* **Depthwise-separable convolution** (Sifre 2014; Chollet, Xception, CVPR 2017; Howard et al.,
  MobileNets 2017): one k x k filter per input channel (``groups = C_in``), then a 1x1 convolution that
  mixes channels: ``k^2 * C_in + C_in * C_out`` weights instead of ``k^2 * C_in * C_out``. It equals a
  full convolution whose kernel is rank-1 across (channel, space): ``W[o, i] = P[o, i] * D[i]``.
* **Factorized (spatially separable) convolution** (Szegedy et al., Inception v3, CVPR 2016): a 1 x k
  then a k x 1 convolution: ``k * C_in * C_mid + k * C_mid * C_out`` weights and the same k x k
  receptive field.
* **Group convolution** (Krizhevsky et al. 2012; Xie et al., ResNeXt 2017): channels split into ``g``
  groups convolved independently: ``1/g`` of the weights and MACs. :class:`ChannelShuffle` (Zhang et
  al., ShuffleNet 2018) lets information cross groups in the next grouped layer.
* **1x1 bottleneck** (Lin et al., Network in Network 2014; He et al., ResNet 2016): 1x1 reduce,
  k x k on the reduced width, 1x1 expand.

The lecture's worked numbers (all bias-free; ``tests/test_layers_conv.py`` checks them): on a 64-channel
input, two 3x3 convs 64->256->256 have 737,280 weights; the 1x1/3x3/1x1 stack 64->256->64->256 has
180,224; two depthwise-separable 3x3 convs 64->256->256 have 84,800; a 7x7 conv 64->256 has 802,816
against 573,440 for a 1x7 then 7x1 pair; ten depthwise-separable 3x3 filters on 3 channels have 57.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from dltricks.layers.activations import get_act_layer
from dltricks.layers.norm import get_norm_layer

__all__ = [
    "get_padding", "effective_kernel_size", "ConvNormAct", "SeparableConv2d", "FactorizedConv2d",
    "ConvBottleneck", "ChannelShuffle", "NormLayer", "ActLayer",
]

NormLayer = str | Callable[[int], nn.Module] | None
ActLayer = str | Callable[[], nn.Module] | None
IntPair = int | tuple[int, int]


def _pair(value: IntPair) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def get_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """Symmetric padding that keeps ``ceil(H / stride)`` outputs for an odd kernel.

    With effective size ``d * (k - 1) + 1`` the "same" padding at stride 1 is ``d * (k - 1) / 2``;
    ``(stride - 1 + d * (k - 1)) // 2`` gives the usual choice at stride 2 (3 for a 7x7 stem, 1 for 3x3).
    """
    return (stride - 1 + dilation * (kernel_size - 1)) // 2


def effective_kernel_size(kernel_size: int, dilation: int = 1) -> int:
    """Span in pixels of a dilated kernel: ``d * (k - 1) + 1`` (3x3 at rate 2 covers 5x5)."""
    return dilation * (kernel_size - 1) + 1


def _make_norm(norm_layer: NormLayer, channels: int) -> nn.Module | None:
    if norm_layer is None or norm_layer == "none":
        return None
    return get_norm_layer(norm_layer)(channels)


def _make_act(act_layer: ActLayer) -> nn.Module | None:
    if act_layer is None or act_layer == "none":
        return None
    return get_act_layer(act_layer)()


class ConvNormAct(nn.Sequential):
    """Convolution, normalisation and activation in a chosen order.

    ``order``: ``"cna"`` conv -> norm -> act (the usual post-activation layout, Ioffe & Szegedy 2015),
    ``"can"`` conv -> act -> norm (BN after the non-linearity), or ``"nac"`` norm -> act -> conv
    (pre-activation, He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016; the norm then
    has ``in_chs`` channels). ``padding=None`` picks :func:`get_padding` per dimension, which keeps the
    spatial size at stride 1 for odd kernels, dilated or not. ``bias=None`` adds a bias only when there
    is no norm or the activation sits between conv and norm: a norm's shift makes a conv bias redundant
    (in pre-activation nets the next block's norm follows the conv).

    Children are named ``conv``, ``norm``, ``act``; absent parts are left out of the state dict.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: IntPair = 3, *, stride: IntPair = 1,
                 padding: IntPair | None = None, dilation: IntPair = 1, groups: int = 1, bias: bool | None = None,
                 norm_layer: NormLayer = "batch", act_layer: ActLayer = "relu", order: str = "cna") -> None:
        if order not in ("cna", "can", "nac"):
            raise ValueError(f"order must be 'cna', 'can' or 'nac', got {order!r}")
        kh, kw = _pair(kernel_size)
        sh, sw = _pair(stride)
        dh, dw = _pair(dilation)
        if padding is None:
            padding = (get_padding(kh, sh, dh), get_padding(kw, sw, dw))
        norm = _make_norm(norm_layer, in_chs if order == "nac" else out_chs)
        act = _make_act(act_layer)
        if bias is None:
            bias = norm is None or order == "can"
        conv = nn.Conv2d(in_chs, out_chs, (kh, kw), stride=(sh, sw), padding=padding, dilation=(dh, dw),
                         groups=groups, bias=bias)
        parts = {"c": ("conv", conv), "n": ("norm", norm), "a": ("act", act)}
        super().__init__(OrderedDict(parts[key] for key in order if parts[key][1] is not None))
        self.in_chs, self.out_chs = in_chs, out_chs


class SeparableConv2d(nn.Module):
    """Depthwise k x k convolution (one filter per input channel) followed by a pointwise 1x1.

    ``channel_multiplier`` filters per input channel give the depthwise stage ``C_in * m`` outputs.
    ``dw_norm_act=True`` puts the norm and activation after the depthwise conv as well (MobileNet v1);
    Xception leaves it out (Chollet 2017, Fig. 10: no non-linearity in between converged faster and ended
    more accurate than ReLU or ELU there) and normalises only after the pointwise conv. ``norm_layer``
    and ``act_layer`` default to none, so the plain block is exactly the factorised linear operator.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, *, stride: int = 1, dilation: int = 1,
                 padding: int | None = None, channel_multiplier: int = 1, bias: bool = False,
                 norm_layer: NormLayer = None, act_layer: ActLayer = None, dw_norm_act: bool = False) -> None:
        super().__init__()
        mid_chs = in_chs * channel_multiplier
        if padding is None:
            padding = get_padding(kernel_size, stride, dilation)
        self.conv_dw = nn.Conv2d(in_chs, mid_chs, kernel_size, stride=stride, padding=padding, dilation=dilation,
                                 groups=in_chs, bias=bias)
        self.norm_dw = (_make_norm(norm_layer, mid_chs) if dw_norm_act else None) or nn.Identity()
        self.act_dw = (_make_act(act_layer) if dw_norm_act else None) or nn.Identity()
        self.conv_pw = nn.Conv2d(mid_chs, out_chs, 1, bias=bias)
        self.norm = _make_norm(norm_layer, out_chs) or nn.Identity()
        self.act = _make_act(act_layer) or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_dw(self.norm_dw(self.conv_dw(x)))  # (B, C_in * m, H', W'): spatial filtering only
        return self.act(self.norm(self.conv_pw(x)))  # (B, C_out, H', W'): channel mixing only


class FactorizedConv2d(nn.Module):
    """A k x k convolution factorised into 1 x k (C_in -> C_mid) then k x 1 (C_mid -> C_out).

    Same receptive field, ``k * (C_in * C_mid + C_mid * C_out)`` weights instead of ``k^2 * C_in * C_out``
    (Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016, Sec. 3.2). ``C_mid`` defaults to
    ``C_out``. With ``mid_norm_act=True`` the first conv is followed by the norm and activation too, as
    in Inception v3 where every conv is conv-BN-ReLU; without it the pair is a linear operator equal to
    a full k x k convolution of rank at most ``C_mid`` per output (tested against that reference).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 7, *, mid_chs: int | None = None,
                 stride: int = 1, bias: bool = False, norm_layer: NormLayer = None, act_layer: ActLayer = None,
                 mid_norm_act: bool = False) -> None:
        super().__init__()
        mid_chs = mid_chs or out_chs
        pad = kernel_size // 2
        self.conv_1xk = nn.Conv2d(in_chs, mid_chs, (1, kernel_size), stride=(1, stride), padding=(0, pad), bias=bias)
        self.norm_mid = (_make_norm(norm_layer, mid_chs) if mid_norm_act else None) or nn.Identity()
        self.act_mid = (_make_act(act_layer) if mid_norm_act else None) or nn.Identity()
        self.conv_kx1 = nn.Conv2d(mid_chs, out_chs, (kernel_size, 1), stride=(stride, 1), padding=(pad, 0), bias=bias)
        self.norm = _make_norm(norm_layer, out_chs) or nn.Identity()
        self.act = _make_act(act_layer) or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_mid(self.norm_mid(self.conv_1xk(x)))  # (B, C_mid, H, W'): mixes along width
        return self.act(self.norm(self.conv_kx1(x)))  # (B, C_out, H', W'): mixes along height


class ConvBottleneck(nn.Module):
    """1x1 conv C_in -> C_mid, k x k conv C_mid -> C_mid (optionally grouped, strided, dilated), 1x1 C_mid -> C_out.

    The plain (non-residual) bottleneck stack of Network-in-Network / ResNet / ResNeXt; the residual
    versions live in ``models/resnet.py``. With C_in = C_out = 256 and C_mid = 64 it has 69,632 weights
    where two 3x3 convs at 256 channels have 1,179,648 (He et al. 2016, Fig. 5).
    ``last_act=False`` leaves the output linear (as inside a residual branch before the addition).
    """

    def __init__(self, in_chs: int, out_chs: int, mid_chs: int, kernel_size: int = 3, *, stride: int = 1,
                 dilation: int = 1, groups: int = 1, norm_layer: NormLayer = "batch", act_layer: ActLayer = "relu",
                 last_act: bool = True) -> None:
        super().__init__()
        self.reduce = ConvNormAct(in_chs, mid_chs, 1, norm_layer=norm_layer, act_layer=act_layer)
        self.conv = ConvNormAct(mid_chs, mid_chs, kernel_size, stride=stride, dilation=dilation, groups=groups,
                                norm_layer=norm_layer, act_layer=act_layer)
        self.expand = ConvNormAct(mid_chs, out_chs, 1, norm_layer=norm_layer, act_layer=act_layer if last_act else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.conv(self.reduce(x)))


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` groups (ShuffleNet, Zhang et al. CVPR 2018, Sec. 3.1).

    Channel ``g * (C / groups) + j`` moves to position ``j * groups + g`` so that the next grouped conv
    sees channels from every group of the previous one.
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        if channels % self.groups:
            raise ValueError(f"ChannelShuffle: {channels} input channels are not divisible by groups={self.groups}")
        x = x.view(batch, self.groups, channels // self.groups, height, width)  # (B, g, C/g, H, W)
        x = x.transpose(1, 2).contiguous()  # (B, C/g, g, H, W)
        return x.view(batch, channels, height, width)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"

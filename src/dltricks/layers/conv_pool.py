"""The conv-pool-norm-act group of the fast CIFAR-10 networks (airbench, after Page's DAWNBench ResNet-9).

One group halves the resolution and changes the width::

    x -> conv3x3(c_in -> c_out) -> maxpool 2x2 -> norm -> act -> conv3x3(c_out -> c_out) -> norm -> act

Pooling right after the first convolution (instead of a strided convolution or pooling at the end) makes the
second convolution and both norms run at a quarter of the pixels; Jordan (arXiv 2404.00498) builds airbench94
from three such groups. The convolutions have no bias (each is followed by a norm) and, with ``dirac_init``,
the first ``min(c_in, c_out)`` output channels of each start as the identity (``nn.init.dirac_``) on top of the
default random init, as airbench does, so that the untrained group passes its input through.

:class:`FrozenScaleBatchNorm2d` is the norm airbench uses: batch norm whose scale ``gamma`` stays at 1
(``requires_grad=False``; only the shift ``beta`` trains), with a high momentum (the running statistics follow
the last few batches, which matters when a whole run is a few hundred steps).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["ConvPoolGroup", "FrozenScaleBatchNorm2d", "dirac_conv_"]


class FrozenScaleBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with ``weight`` fixed at 1 unless ``affine_scale=True``. ``momentum`` is PyTorch's
    (the weight of the new batch): airbench94's "batchnorm_momentum 0.6" is PyTorch momentum 0.4."""

    def __init__(self, num_features: int, *, momentum: float = 0.4, eps: float = 1e-5,
                 affine_scale: bool = False) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.weight.requires_grad_(affine_scale)


@torch.no_grad()
def dirac_conv_(conv: nn.Conv2d) -> nn.Conv2d:
    """Overwrite the first ``min(out, in)`` filters of ``conv`` with identity kernels (``nn.init.dirac_``)."""
    n = min(conv.out_channels, conv.in_channels)
    nn.init.dirac_(conv.weight[:n])
    return conv


class ConvPoolGroup(nn.Module):
    """conv -> maxpool(2) -> norm -> act -> conv -> norm -> act (module docstring); ``(B, c_in, H, W)`` ->
    ``(B, c_out, H // 2, W // 2)``."""

    def __init__(self, in_chs: int, out_chs: int, *, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 act_layer: Callable[[], nn.Module] = nn.GELU, kernel_size: int = 3, dirac_init: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, kernel_size, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = norm_layer(out_chs)
        self.act1 = act_layer()
        self.conv2 = nn.Conv2d(out_chs, out_chs, kernel_size, padding="same", bias=False)
        self.norm2 = norm_layer(out_chs)
        self.act2 = act_layer()
        if dirac_init:
            dirac_conv_(self.conv1)
            dirac_conv_(self.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.pool(self.conv1(x))))  # (B, out, H/2, W/2)
        return self.act2(self.norm2(self.conv2(x)))  # (B, out, H/2, W/2)

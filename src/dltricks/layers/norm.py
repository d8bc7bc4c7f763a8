"""Normalisation layers selectable by name.

All take the channel count as their only positional argument so blocks can accept any of them
through ``norm_layer=``:

* ``batch``: BatchNorm2d (Ioffe & Szegedy 2015): statistics over (B, H, W) per channel.
* ``layer``: LayerNorm over channels of a channels-first map (:class:`LayerNorm2d`, as in ConvNeXt);
  statistics over C per pixel.
* ``layer_cl``: plain ``nn.LayerNorm`` for channels-last tensors (B, ..., C) and token sequences.
* ``instance``: InstanceNorm2d with affine parameters (Ulyanov et al. 2016): over (H, W) per sample
  and channel.
* ``group``: GroupNorm (Wu & He 2018) with 32 groups, or fewer when C is not divisible by 32.
* ``none``: identity.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.errors import ConfigError, did_you_mean


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of a (B, C, H, W) tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


def group_norm(num_channels: int, num_groups: int = 32, eps: float = 1e-5) -> nn.GroupNorm:
    """GroupNorm with ``num_groups`` groups, falling back to the largest divisor of C that is smaller."""
    groups = math.gcd(num_channels, num_groups)
    return nn.GroupNorm(groups, num_channels, eps=eps)


class _Identity(nn.Identity):
    def __init__(self, num_channels: int = 0) -> None:
        super().__init__()


NORM_LAYERS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    "layer": LayerNorm2d,
    "layer_cl": nn.LayerNorm,
    "instance": lambda c: nn.InstanceNorm2d(c, affine=True),
    "group": group_norm,
    "none": _Identity,
}


def get_norm_layer(name: str | Callable[[int], nn.Module] | None) -> Callable[[int], nn.Module]:
    """A norm constructor from its name (see module docstring) or pass a callable through."""
    if name is None:
        return _Identity
    if callable(name):
        return name
    key = name.lower()
    if key not in NORM_LAYERS:
        raise ConfigError(f"unknown norm layer {name!r}.{did_you_mean(key, NORM_LAYERS)} "
                          f"Choose from: {', '.join(NORM_LAYERS)}")
    return NORM_LAYERS[key]

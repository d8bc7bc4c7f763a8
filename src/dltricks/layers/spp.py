"""Spatial pyramid pooling (He, Zhang, Ren & Sun, "Spatial Pyramid Pooling in Deep Convolutional Networks
for Visual Recognition", ECCV 2014 / TPAMI 2015).

A CNN's convolutions accept any input size, but its fully connected layers need a fixed-length vector.
SPP pools the last feature map (B, C, H, W) into ``n x n`` bins for every pyramid level n and
concatenates them:

    y = [pool_{1x1}(x), pool_{2x2}(x), pool_{4x4}(x), ...]     length C * sum(n^2), whatever H and W

so one network can be trained and tested on several image sizes and aspect ratios without cropping or
warping (the paper's multi-size training: -0.5 to -1 point top-1 error on four ImageNet networks,
Table 2). Bin ``i`` of ``n`` covers rows ``floor(i*H/n) .. ceil((i+1)*H/n) - 1`` (adaptive pooling). The
paper's window ``ceil(H/n)`` with stride ``floor(H/n)`` gives the same bins for its sizes but the wrong
count for some others (H = 7, n = 4: six windows), so the adaptive rule is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SpatialPyramidPooling"]


class SpatialPyramidPooling(nn.Module):
    """Max (or average) pooling into ``n x n`` bins per level, flattened and concatenated.

    Args:
        levels: bins per side at each pyramid level; the paper's ImageNet nets use (1, 2, 3, 6) or (1, 2, 4).
        pool: ``"max"`` (the paper) or ``"avg"``.
    """

    def __init__(self, levels: Sequence[int] = (1, 2, 4), pool: str = "max") -> None:
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        if not levels or any(n < 1 for n in levels):
            raise ValueError(f"levels must be positive bin counts, got {tuple(levels)}")
        self.levels, self.pool = tuple(int(n) for n in levels), pool

    def output_features(self, channels: int) -> int:
        """Length of the output vector for ``channels`` input channels: ``C * sum(n^2)``."""
        return channels * sum(n * n for n in self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.adaptive_max_pool2d if self.pool == "max" else F.adaptive_avg_pool2d
        pooled = [pool(x, n).flatten(1) for n in self.levels]  # each (B, C * n * n)
        return torch.cat(pooled, dim=1)  # (B, C * sum(n^2))

    def extra_repr(self) -> str:
        return f"levels={self.levels}, pool={self.pool!r}"

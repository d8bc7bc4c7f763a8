"""The Gated CNN block of MambaOut (Yu & Wang 2024, "MambaOut: Do We Really Need Mamba for Vision?",
Fig. 1 and Algorithm 1): Mamba's block with the state-space model taken out.

For channels-last x (B, H, W, C) and hidden width h = int(8/3 · C):

    [g, i, c] = fc1(LN(x))              split into h, h − C and C channels (conv_ratio = 1)
    c'        = DWConv_k×k(c)            7×7 depthwise token mixing, on C channels only
    y         = fc2(GELU(g) ⊙ [i, c'])   gate, then project back to C
    out       = x + DropPath(y)

A Mamba block is this with an SSM after the convolution (and SiLU instead of GELU); MambaOut's
hypothesis H1 is that for image classification the SSM is unnecessary, H2 that it matters for
long-sequence causal tasks. :class:`GatedCNN1d` is the causal one-dimensional form used as the
"Gated CNN" token mixer of the sequence experiments: the depthwise convolution sees only the current
and the k − 1 previous tokens, so a stack of n blocks has a receptive field of n(k − 1) + 1 tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.layers.drop import DropPath

__all__ = ["GatedCNNBlock", "GatedCNN1d"]


class GatedCNNBlock(nn.Module):
    """MambaOut's Gated CNN block on channels-last maps (B, H, W, C) -> (B, H, W, C) (module docstring)."""

    def __init__(self, dim: int, *, expansion_ratio: float = 8 / 3, kernel_size: int = 7, conv_ratio: float = 1.0,
                 norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
                 act_layer: Callable[[], nn.Module] = nn.GELU, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = norm_layer(dim)
        hidden = int(expansion_ratio * dim)
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.act = act_layer()
        conv_channels = int(conv_ratio * dim)
        self.split_sizes = (hidden, hidden - conv_channels, conv_channels)  # g, i, c
        self.conv = nn.Conv2d(conv_channels, conv_channels, kernel_size, padding=kernel_size // 2, groups=conv_channels)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x  # (B, H, W, C)
        g, i, c = torch.split(self.fc1(self.norm(x)), self.split_sizes, dim=-1)
        c = self.conv(c.permute(0, 3, 1, 2))  # (B, C, H, W): token mixing
        c = c.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = self.fc2(self.act(g) * torch.cat((i, c), dim=-1))
        return shortcut + self.drop_path(x)


class GatedCNN1d(nn.Module):
    """Causal Gated CNN token mixer for sequences (B, L, d) -> (B, L, d), without norm or residual (wrap
    it in :class:`~dltricks.layers.ssm.mamba.MambaBlock` for those)."""

    def __init__(self, dim: int, *, expansion_ratio: float = 8 / 3, kernel_size: int = 4, conv_ratio: float = 1.0,
                 act_layer: Callable[[], nn.Module] = nn.GELU) -> None:
        super().__init__()
        hidden = int(expansion_ratio * dim)
        self.dim, self.kernel_size = dim, kernel_size
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.act = act_layer()
        conv_channels = int(conv_ratio * dim)
        self.split_sizes = (hidden, hidden - conv_channels, conv_channels)
        self.conv = nn.Conv1d(conv_channels, conv_channels, kernel_size, groups=conv_channels)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"GatedCNN1d expects input (B, L, {self.dim}), got {tuple(x.shape)}")
        g, i, c = torch.split(self.fc1(x), self.split_sizes, dim=-1)
        c = c.transpose(1, 2)  # (B, C, L)
        c = self.conv(F.pad(c, (self.kernel_size - 1, 0)))  # left padding only: causal
        c = c.transpose(1, 2)  # (B, L, C)
        return self.fc2(self.act(g) * torch.cat((i, c), dim=-1))

"""Feed-forward blocks: the Transformer MLP and its gated variant.

``Mlp``: Linear(D -> hidden) -> act -> dropout -> Linear(hidden -> D) -> dropout, applied over the
last dimension (Vaswani et al. 2017; ViT; MLP-Mixer's token- and channel-mixing MLPs).
``GluMlp``: the gated form fc2(act(g) * v) with [g, v] = fc1(x) (Dauphin et al. 2017; Shazeer 2020).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None, *,
                 act_layer: Callable[[], nn.Module] = nn.GELU, drop: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class GluMlp(nn.Module):
    """Gated MLP: ``fc2(act(g) * v)`` where ``fc1(x)`` is split into gate ``g`` and value ``v``."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None, *,
                 act_layer: Callable[[], nn.Module] = nn.GELU, drop: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, 2 * hidden_features, bias=bias)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)  # (..., hidden) each
        return self.drop(self.fc2(self.drop(self.act(gate) * value)))

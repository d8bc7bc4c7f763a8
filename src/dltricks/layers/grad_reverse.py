"""Gradient reversal (Ganin & Lempitsky, "Unsupervised domain adaptation by backpropagation", ICML 2015;
Ganin et al., "Domain-adversarial training of neural networks", JMLR 2016).

The layer is the identity in the forward pass and multiplies the gradient by ``-lambda`` in the backward
pass::

    R(x) = x,        dR/dx = -lambda * I

Put between a feature extractor and a domain classifier, one backward pass trains the classifier to tell
source from target features while it pushes the extractor to make them indistinguishable (DANN). The
standard schedule raises ``lambda`` from 0 to 1 as training progresses (``p`` in ``[0, 1]``), so that the
noisy early domain signal does not wreck the features::

    lambda(p) = 2 / (1 + exp(-gamma * p)) - 1,     gamma = 10
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["grad_reverse", "GradientReversal", "dann_lambda"]


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """``x`` unchanged; its gradient multiplied by ``-lambd``."""
    return _GradReverse.apply(x, float(lambd))


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse`; set ``lambd`` from :func:`dann_lambda` as training goes."""

    def __init__(self, lambd: float = 1.0) -> None:
        super().__init__()
        self.lambd = float(lambd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.lambd)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}"


def dann_lambda(progress: float, *, gamma: float = 10.0) -> float:
    """The DANN schedule ``2 / (1 + exp(-gamma p)) - 1`` for training progress ``p`` in ``[0, 1]``."""
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0

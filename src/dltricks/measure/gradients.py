"""Gradients as measurements: how much of the output an input pixel reaches, how the gradient norm changes
with depth. The training loop (``dltricks.train``) is the only other place in dltricks that calls
``backward``; these functions never step an optimizer and leave ``model`` as they found it (its ``.grad``
fields are cleared again).

* :func:`input_gradient`: ``d(sum of outputs) / d input``. For a network with positive weights and no
  nonlinearity this counts, per input pixel, the weighted paths to every output unit (Luo et al. 2016 use
  the same gradient for the effective receptive field).
* :func:`layer_gradient_norms`: the norm of ``dL/dW`` of every ``nn.Linear`` of a network for one batch,
  first layer first (Glorot & Bengio 2010 show it shrinking towards the input with saturating activations).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["input_gradient", "layer_gradient_norms"]


def input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``d sum(model(x)) / d x``, the shape of ``x``; ``model``'s parameters get no gradient."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return grad


def layer_gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy) -> list[float]:
    """``||dL/dW||_2`` of each ``nn.Linear`` weight in ``model.modules()`` order, for ``L = loss(model(x), y)``."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    grads = torch.autograd.grad(loss(model(x), y), weights)
    return [g.norm().item() for g in grads]

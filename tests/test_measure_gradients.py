"""Gradient measurements against references: autograd on a hand-written graph, and closed forms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.measure.gradients import input_gradient, layer_gradient_norms


def test_input_gradient_of_a_ones_conv_counts_the_paths():
    """A 3x3 all-ones convolution without padding: d(sum out)/dx_ij is the number of output windows that
    contain pixel (i, j), a product of per-axis counts (1, 2, 3, 3, ..., 3, 2, 1)."""
    conv = nn.Conv2d(1, 1, 3, bias=False)
    nn.init.ones_(conv.weight)
    grad = input_gradient(conv, torch.randn(1, 1, 7, 7))
    per_axis = torch.tensor([1.0, 2.0, 3.0, 3.0, 3.0, 2.0, 1.0])
    assert torch.equal(grad[0, 0], per_axis[:, None] * per_axis[None, :])
    assert conv.weight.grad is None  # nothing accumulates on the model


def test_layer_gradient_norms_match_backward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 3))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    norms = layer_gradient_norms(model, x, y)
    F.cross_entropy(model(x), y).backward()
    expected = [m.weight.grad.norm().item() for m in model if isinstance(m, nn.Linear)]
    assert norms == expected

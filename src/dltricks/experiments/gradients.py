"""Gradient flow through deep networks: per-layer gradient norms at initialisation.

A sigmoid's derivative is at most 1/4, so backpropagating through L sigmoid layers multiplies the
gradient by up to 4^-L (Hochreiter 1991; Glorot & Bengio 2010); ReLU's derivative is 0 or 1, and with
He initialisation (He et al. 2015) the gradient norm stays of the same order from the last layer to
the first. The experiment measures ``log10(||dL/dW_1|| / ||dL/dW_L||)`` for each activation, each with
the initialisation recommended for it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dltricks.evidence import LECTURE, README, AllOf, Context, Effect, Evidence, plots, tip
from dltricks.measure.gradients import layer_gradient_norms

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.01), "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def _init(linear: nn.Linear, act: str) -> None:
    if act == "relu":
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
    elif act == "leaky_relu":
        nn.init.kaiming_normal_(linear.weight, a=0.01, nonlinearity="leaky_relu")
    else:  # Glorot/Xavier with PyTorch's recommended gain (5/3 for tanh, 1 for sigmoid)
        nn.init.xavier_normal_(linear.weight, gain=nn.init.calculate_gain(act))
    nn.init.zeros_(linear.bias)


def deep_mlp(act: str, *, depth: int, width: int, in_features: int, num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    features = in_features
    for _ in range(depth - 1):
        linear = nn.Linear(features, width)
        _init(linear, act)
        layers += [linear, ACTIVATIONS[act]()]
        features = width
    head = nn.Linear(features, num_classes)
    _init(head, act)
    return nn.Sequential(*layers, head)


@tip(id="optim.activations", title="ReLU keeps gradients alive, sigmoid kills them",
     claim="In a 20-layer network at initialisation, ReLU and LeakyReLU keep the per-layer gradient norm of the "
           "first layer within an order of magnitude of the last layer's, while sigmoid's shrinks by many orders.",
     cite=(README.at(116, topic="ReLU and Leaky ReLU against vanishing gradients"),
           LECTURE.at(534, 540, "vanishing gradients in deep networks")),
     source="Glorot & Bengio 2010; He et al. 2015", section="Normalisation and optimisation",
     exercises=(nn.ReLU, nn.Sigmoid, nn.init.kaiming_normal_, layer_gradient_norms),
     quick={"depth": 20, "width": 256}, full={"depth": 20, "width": 256}, seeds={"quick": 3, "full": 5}, budget_s=2,
     metrics={"log10_grad_ratio": "log10(||grad W_1|| / ||grad W_L||)"},
     rule=AllOf((Effect("log10_grad_ratio", "relu", "sigmoid", min_effect=1.0),
                 Effect("log10_grad_ratio", "leaky_relu", "sigmoid", min_effect=1.0))))
def activation_gradient_flow(ctx: Context) -> Evidence:
    depth, width, batch = ctx.get("depth", 20), ctx.get("width", 256), ctx.get("batch", 128)
    in_features, num_classes = ctx.get("in_features", 784), 10
    arms = ctx.get("arms", list(ACTIVATIONS))
    ev = Evidence(setup=f"{depth}-layer MLP (width {width}) at initialisation, He init for (leaky) ReLU and Glorot "
                        f"for tanh/sigmoid; one cross-entropy backward on a standard-normal batch of {batch} "
                        f"{in_features}-d inputs with random labels; metric log10(||grad W_1|| / ||grad W_L||).")
    curves: dict[str, list[list[float]]] = {}
    for seed in ctx.seeds:
        gen = torch.Generator().manual_seed(1000 + seed)
        x = torch.randn(batch, in_features, generator=gen)
        y = torch.randint(0, num_classes, (batch,), generator=gen)
        for act in arms:
            torch.manual_seed(seed)
            norms = layer_gradient_norms(deep_mlp(act, depth=depth, width=width, in_features=in_features,
                                                  num_classes=num_classes), x, y)
            ratio = math.log10(max(norms[0], 1e-300) / norms[-1])
            ev.add(act, log10_grad_ratio=ratio)
            curves.setdefault(act, []).append([max(n, 1e-30) for n in norms])
    ev.curves = {a: {"grad_norm": c} for a, c in curves.items()}
    ev.plots.append(plots.curve_plot(ctx.path("grad_norms.png"), curves, xlabel="layer (1 = input side)",
                                     ylabel="||dL/dW||", title=f"per-layer gradient norm, {depth}-layer MLP", log=True))
    return ev

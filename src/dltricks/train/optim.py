"""Optimizers from a recipe, with weight decay optionally kept off normalisation weights and biases.

Weight decay shrinks weights towards zero, which regularises the *direction* of the weights of a
layer followed by batch norm (its output does not depend on the weights' scale) but simply fights the
learnable scale ``gamma`` and shift ``beta`` of the normalisation layers and every bias, which carry no
such redundancy. Goyal et al. 2017 ("Accurate, large minibatch SGD", section 5.1) and Jia et al. 2018
therefore apply it to conv/linear weights only; timm exposes the same choice as
``filter_bias_and_bn``. With ``optim.skip_norm_bias: true`` every parameter with fewer than two
dimensions (biases, norm weights and biases, layer scales) goes into a second parameter group with
``weight_decay = 0``.
"""

from __future__ import annotations

import torch
from torch import nn

from dltricks.train.recipe import OptimConfig

__all__ = ["param_groups", "build_optimizer"]


def param_groups(model: nn.Module, *, weight_decay: float, skip_norm_bias: bool) -> list[dict]:
    """Parameter groups: one with ``weight_decay`` and, with ``skip_norm_bias``, one without for every
    parameter of fewer than two dimensions (biases, normalisation weights). Frozen parameters are left
    out. Empty groups are dropped."""
    decay, no_decay = [], []
    for _name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if skip_norm_bias and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer the recipe names, at the recipe's peak learning rate."""
    groups = param_groups(model, weight_decay=config.weight_decay, skip_norm_bias=config.skip_norm_bias)
    if not groups:
        from dltricks.errors import ConfigError

        raise ConfigError("the model has no trainable parameters")
    name, lr = config.name, config.lr
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=config.nesterov)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=config.betas, eps=config.eps)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=config.betas, eps=config.eps)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=config.alpha, eps=config.eps, momentum=config.momentum)
    if name == "adadelta":
        return torch.optim.Adadelta(groups, lr=lr, rho=config.rho, eps=config.eps)
    raise ValueError(f"unknown optimizer {name!r}")  # unreachable: the recipe's Literal type checks it

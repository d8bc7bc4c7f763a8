"""Optimizers from a recipe, with weight decay optionally kept off normalisation weights and biases.

Weight decay shrinks weights towards zero, which regularises the *direction* of the weights of a
layer followed by batch norm (its output does not depend on the weights' scale) but simply fights the
learnable scale ``gamma`` and shift ``beta`` of the normalisation layers and every bias, which carry no
such redundancy. Goyal et al. 2017 ("Accurate, large minibatch SGD", section 5.1) and Jia et al. 2018
therefore apply it to conv/linear weights only; timm exposes the same choice as
``filter_bias_and_bn``. With ``optim.skip_norm_bias: true`` the parameters of :func:`no_weight_decay` go
into a second parameter group with ``weight_decay = 0``. This is the project's one no-decay rule:

* every parameter with fewer than two dimensions (biases, norm weights and biases, layer scales);
* every parameter a layer marks with ``param._no_weight_decay = True`` (the SSM's ``A_log`` and ``D``,
  as in the reference Mamba code: decaying ``A_log`` towards 0 would pull every state's decay rate to 1);
* every parameter named by the model's ``no_weight_decay()`` (timm's convention for position embeddings
  and class tokens).
"""

from __future__ import annotations

import torch
from torch import nn

from dltricks.train.finetune import is_active, layer_groups, lr_multipliers
from dltricks.train.lookahead import Lookahead
from dltricks.train.recipe import FinetuneConfig, OptimConfig

__all__ = ["param_groups", "build_optimizer", "no_weight_decay"]


def no_weight_decay(model: nn.Module) -> set[str]:
    """Names of the parameters that take no weight decay under ``optim.skip_norm_bias`` (module docstring)."""
    named = getattr(model, "no_weight_decay", None)
    listed = set(named()) if callable(named) else set()
    return {name for name, p in model.named_parameters()
            if p.ndim <= 1 or getattr(p, "_no_weight_decay", False) or name in listed}


def param_groups(model: nn.Module, *, weight_decay: float, skip_norm_bias: bool,
                 finetune: FinetuneConfig | None = None, no_decay_lr_mult: float = 1.0) -> list[dict]:
    """Parameter groups: one with ``weight_decay`` and, with ``skip_norm_bias``, one without for the
    parameters of :func:`no_weight_decay`. Frozen parameters are left out. Empty groups are dropped.

    With a ``finetune`` section that asks for anything (:mod:`dltricks.train.finetune`), each of those is split
    by layer group, every group carrying its ``lr_mult``, and the parameters of the groups it freezes stay in
    (frozen by ``requires_grad`` at each epoch, so gradual unfreezing can thaw them). ``no_decay_lr_mult``
    multiplies the ``lr_mult`` of the no-decay groups (``optim.no_decay_lr_mult``)."""
    skip = no_weight_decay(model) if skip_norm_bias else set()
    layer_of: dict[str, str] = {}
    mult = {"all": 1.0}
    if finetune is not None and is_active(finetune):
        layers = layer_groups(model)
        layer_of = {n: g for g, names in layers.items() for n in names}
        mult = lr_multipliers(finetune, layers)
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad and not layer_of:
            continue
        buckets.setdefault((layer_of.get(name, "all"), name in skip), []).append(p)
    layer_order = list(dict.fromkeys(layer for layer, _ in buckets))
    groups = []  # decay before no-decay within a layer group, as before layer groups existed (checkpoint order)
    for (layer, no_decay), params in sorted(buckets.items(), key=lambda kv: (layer_order.index(kv[0][0]), kv[0][1])):
        group = {"params": params, "weight_decay": 0.0 if no_decay else weight_decay}
        if layer_of:
            group |= {"layer_group": layer, "lr_mult": mult[layer]}
        if no_decay and no_decay_lr_mult != 1.0:
            group["lr_mult"] = group.get("lr_mult", 1.0) * no_decay_lr_mult
        groups.append(group)
    return groups


def build_optimizer(model: nn.Module, config: OptimConfig, *,
                    finetune: FinetuneConfig | None = None) -> torch.optim.Optimizer:
    """The optimizer the recipe names, at the recipe's peak learning rate (times each group's ``lr_mult``), wrapped
    in :class:`~dltricks.train.lookahead.Lookahead` when ``optim.lookahead_steps`` is on."""
    groups = param_groups(model, weight_decay=config.weight_decay, skip_norm_bias=config.skip_norm_bias,
                          finetune=finetune, no_decay_lr_mult=config.no_decay_lr_mult)
    for group in groups:
        group["lr"] = config.lr * group.get("lr_mult", 1.0)
    if not groups:
        from dltricks.errors import ConfigError

        raise ConfigError("the model has no trainable parameters")
    inner = _inner_optimizer(groups, config)
    if config.lookahead_steps:
        return Lookahead(inner, k=config.lookahead_steps, alpha=config.lookahead_alpha)
    return inner


def _inner_optimizer(groups: list[dict], config: OptimConfig) -> torch.optim.Optimizer:
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

"""Magnitude pruning: unstructured (zeros inside dense tensors) and structured (whole channels removed).

* **Unstructured** (:func:`prune_unstructured`, Han et al. 2015): the fraction ``amount`` of Conv/Linear
  weights with the smallest ``|w|`` is set to zero, either over all layers at once (``scope="global"``, one
  threshold) or in every layer separately (``"layer"``), with :mod:`torch.nn.utils.prune`. The tensors keep
  their shape, so dense kernels do the same work: the model is as slow as before (and as large on disk,
  unless stored sparse).
* **Structured** (:func:`prune_channels`, Li et al., "Pruning Filters for Efficient ConvNets", 2017): in
  every prunable conv, the fraction ``amount`` of output channels whose filters have the smallest L1 norm
  ``sum |W[c]|`` is removed, with the matching batch-norm channels and the matching input channels of the
  layer that consumes them; the result is a smaller *dense* model, so the speed-up is real.

Which channels may go depends on who reads them. A conv whose output is added to a residual shortcut
cannot lose channels alone (the sum needs both operands the same width), so inside a residual block only
the inner channels are pruned (``conv1 -> bn1 -> conv2`` of a basic block, and ``conv2`` too in a
bottleneck); in a plain ``nn.Sequential`` conv stack a conv (with its BN and any activation, pooling or
dropout in between) feeds the next conv; the last conv of a classifier's ``features`` feeds the linear
head through global pooling (one input per channel). Everything else is left as it is.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import prune

from dltricks.errors import ConfigError, ModelError

__all__ = ["prune_unstructured", "prune_channels", "count_nonzero", "PRUNABLE"]

PRUNABLE: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Modules that act on each channel separately: a channel removed before them is simply absent after them.
_CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Hardswish, nn.MaxPool2d, nn.AvgPool2d,
                nn.Dropout, nn.Dropout2d, nn.Identity)


def _check_amount(amount: float) -> None:
    if not 0.0 <= amount < 1.0:
        raise ConfigError(f"pruning amount: got {amount}, expected a fraction in [0, 1)")


def count_nonzero(model: nn.Module) -> int:
    """Non-zero entries of all parameters."""
    return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))


def prune_unstructured(model: nn.Module, amount: float, *, scope: Literal["global", "layer"] = "global") -> nn.Module:
    """A copy of ``model`` with the ``amount`` smallest-magnitude Conv/Linear weights set to zero (made permanent:
    plain tensors, no masks)."""
    _check_amount(amount)
    pruned = copy.deepcopy(model)
    params = [(m, "weight") for m in pruned.modules() if isinstance(m, PRUNABLE)]
    if not params:
        raise ModelError(f"cannot prune {type(model).__name__}: it has no Conv or Linear layer")
    if scope == "global":
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    elif scope == "layer":
        for m, name in params:
            prune.l1_unstructured(m, name, amount=amount)
    else:
        raise ConfigError(f"pruning scope: got {scope!r}, expected 'global' or 'layer'")
    for m, name in params:
        prune.remove(m, name)
    return pruned


# --- structured --------------------------------------------------------------------------------------------

def _keep(conv: nn.Conv2d, amount: float) -> torch.Tensor:
    """Indices (sorted) of the output channels with the largest filter L1 norms; at least one is kept."""
    norms = conv.weight.detach().abs().flatten(1).sum(1)  # (C_out,)
    n_keep = max(1, round(conv.out_channels * (1.0 - amount)))
    return norms.topk(n_keep).indices.sort().values


def _conv_out(conv: nn.Conv2d, keep: torch.Tensor) -> nn.Conv2d:
    new = nn.Conv2d(conv.in_channels, len(keep), conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode)
    new.weight.data = conv.weight.data[keep].clone()
    if conv.bias is not None:
        new.bias.data = conv.bias.data[keep].clone()
    return new


def _conv_in(conv: nn.Conv2d, keep: torch.Tensor) -> nn.Conv2d:
    new = nn.Conv2d(len(keep), conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    new.weight.data = conv.weight.data[:, keep].clone()
    if conv.bias is not None:
        new.bias.data = conv.bias.data.clone()
    return new


def _bn(bn: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(keep), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats)
    if bn.affine:
        new.weight.data, new.bias.data = bn.weight.data[keep].clone(), bn.bias.data[keep].clone()
    if bn.track_running_stats:
        new.running_mean, new.running_var = bn.running_mean[keep].clone(), bn.running_var[keep].clone()
        new.num_batches_tracked = bn.num_batches_tracked.clone()
    return new


def _linear_in(linear: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(keep), linear.out_features, bias=linear.bias is not None)
    new.weight.data = linear.weight.data[:, keep].clone()
    if linear.bias is not None:
        new.bias.data = linear.bias.data.clone()
    return new


def _plain_conv(m: object) -> bool:
    return type(m) is nn.Conv2d and m.groups == 1


def _prune_pair(owner: nn.Module, conv: str, bn: str | None, consumer: str, amount: float) -> None:
    """Remove output channels of ``owner.<conv>`` (and ``owner.<bn>``) and the inputs of ``owner.<consumer>``."""
    keep = _keep(getattr(owner, conv), amount)
    setattr(owner, conv, _conv_out(getattr(owner, conv), keep))
    if bn is not None:
        setattr(owner, bn, _bn(getattr(owner, bn), keep))
    nxt = getattr(owner, consumer)
    setattr(owner, consumer, _linear_in(nxt, keep) if isinstance(nxt, nn.Linear) else _conv_in(nxt, keep))


def _prune_block(block: nn.Module, amount: float) -> int:
    """The inner channels of a residual block (``conv1 -> bn1 -> conv2 [-> bn2 -> conv3]``); returns pairs pruned."""
    done = 0
    chain = [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", None)]
    for (conv, bn), (consumer, _) in zip(chain, chain[1:]):
        last = not hasattr(block, "conv3") and consumer == "conv2" or consumer == "conv3"
        if not (_plain_conv(getattr(block, conv, None)) and _plain_conv(getattr(block, consumer, None))
                and type(getattr(block, bn, None)) is nn.BatchNorm2d):
            break
        _prune_pair(block, conv, bn, consumer, amount)
        done += 1
        if last:
            break
    return done


def _prune_sequential(seq: nn.Sequential, amount: float, *, head: tuple[nn.Module, str] | None) -> int:
    """Conv [-> BN] [-> channel-wise modules] -> conv pairs in ``seq``; with ``head`` = (owner, attribute of a
    Linear fed by global pooling), the last conv of ``seq`` too. Returns the pairs pruned."""
    names = list(seq._modules)
    done = 0
    for i, name in enumerate(names):
        if not _plain_conv(seq._modules[name]):
            continue
        j = i + 1
        bn = names[j] if j < len(names) and type(seq._modules[names[j]]) is nn.BatchNorm2d else None
        j += bn is not None
        while j < len(names) and isinstance(seq._modules[names[j]], _CHANNELWISE):
            j += 1
        if j < len(names) and _plain_conv(seq._modules[names[j]]):
            _prune_pair(seq, name, bn, names[j], amount)
            done += 1
        elif j == len(names) and head is not None:
            owner, attr = head
            linear = getattr(owner, attr)
            if isinstance(linear, nn.Linear) and linear.in_features == seq._modules[name].out_channels:
                keep = _keep(seq._modules[name], amount)
                seq._modules[name] = _conv_out(seq._modules[name], keep)
                if bn is not None:
                    seq._modules[bn] = _bn(seq._modules[bn], keep)
                setattr(owner, attr, _linear_in(linear, keep))
                owner.num_features = len(keep)
                done += 1
    return done


def prune_channels(model: nn.Module, amount: float) -> nn.Module:
    """A smaller dense copy of ``model`` with the fraction ``amount`` of the output channels of every prunable conv
    removed (see the module docstring for which convs are prunable); a model with none is a :class:`ModelError`."""
    _check_amount(amount)
    pruned = copy.deepcopy(model)
    done = 0
    head_attr = getattr(pruned, "head_attr", "head")
    for m in list(pruned.modules()):
        if hasattr(m, "conv1") and hasattr(m, "conv2") and not isinstance(m, nn.Sequential):
            done += _prune_block(m, amount)
        elif isinstance(m, nn.Sequential):
            tail = (pruned, head_attr) if m is getattr(pruned, "features", None) and getattr(
                pruned, "num_features", None) is not None and hasattr(pruned, head_attr) else None
            done += _prune_sequential(m, amount, head=tail)
    if not done:
        raise ModelError(f"cannot prune channels of {getattr(model, 'model_name', type(model).__name__)}: no conv "
                         "whose outputs feed only one conv or the classifier (plain conv stacks and residual blocks "
                         "are supported)")
    return pruned.train(model.training)  # the new modules start in training mode; follow the original

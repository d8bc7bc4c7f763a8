"""Magnitude pruning: unstructured (zeros inside dense tensors) and structured (whole channels removed).

* **Unstructured** (:func:`prune_unstructured`, Han et al. 2015): the fraction ``amount`` of Conv/Linear
  weights with the smallest ``|w|`` is set to zero, either over all layers at once (``scope="global"``, one
  threshold) or in every layer separately (``"layer"``), with :mod:`torch.nn.utils.prune`. The tensors keep
  their shape, so dense kernels do the same work: the model is as slow as before (and as large on disk,
  unless stored sparse).
* **Iterative prune -> fine-tune** (:func:`prune_finetune`, Han et al. 2015 Sec. 3.3): the sparsity is
  raised in steps ``s_1 < s_2 < ...``, each followed by fine-tuning with the masks on. It is an option of the
  training loop, the recipe's ``compress.prune_amounts`` (:mod:`dltricks.train.compression`, where the mask
  arithmetic lives); :func:`prune_finetune` is that option called as a function.
* **Structured** (:func:`prune_channels`, Li et al., "Pruning Filters for Efficient ConvNets", 2017): in
  every prunable conv, the fraction ``amount`` of output channels whose filters have the smallest L1 norm
  ``sum |W[c]|`` is removed, with the matching batch-norm channels and the matching input channels of the
  layer that consumes them; the result is a smaller *dense* model, so the speed-up is real.

Which channels may go depends on who reads them. A conv whose output is added to a residual shortcut
cannot lose channels alone (the sum needs both operands the same width). Inside a residual block the inner
channels are pruned (``conv1 -> bn1 -> conv2`` of a basic block, and ``conv2`` too in a bottleneck). In a
ResNet the residual stream is pruned too, as groups: every tensor added into one stream (the stem's output,
each block's last BN, a projection shortcut's BN) keeps the same channels, those with the largest summed L1
filter norm, and every reader (each block's first conv, the projection conv, the classifier) loses the same
input channels; a zero-padding shortcut (option A) becomes a :class:`ChannelShortcut` that maps the kept
channels of the previous stream onto the kept channels of the next. In a plain ``nn.Sequential`` conv stack
a conv (with its BN and any activation, pooling or dropout in between) feeds the next conv; the last conv of
a classifier's ``features`` feeds the linear head through global pooling (one input per channel). Everything
else is left as it is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.nn.utils import prune

from dltricks.errors import ConfigError, ModelError
from dltricks.train.compression import PRUNABLE, check_amount

if TYPE_CHECKING:
    from dltricks.tasks import Task
    from dltricks.train.recipe import Recipe

__all__ = ["prune_unstructured", "prune_finetune", "prune_channels", "ChannelShortcut", "count_nonzero",
           "PRUNABLE"]

# Modules that act on each channel separately: a channel removed before them is simply absent after them.
_CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Hardswish, nn.MaxPool2d, nn.AvgPool2d,
                nn.Dropout, nn.Dropout2d, nn.Identity)


def count_nonzero(model: nn.Module) -> int:
    """Non-zero entries of all parameters."""
    return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))


def prune_unstructured(model: nn.Module, amount: float, *, scope: Literal["global", "layer"] = "global") -> nn.Module:
    """A copy of ``model`` with the ``amount`` smallest-magnitude Conv/Linear weights set to zero (made permanent:
    plain tensors, no masks)."""
    check_amount(amount)
    # fit may leave conv weights channels-last, and prune flattens them with view(): make them contiguous.
    pruned = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
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


def prune_finetune(model: nn.Module, task: Task, recipe: Recipe | Mapping[str, Any] | str | None,
                   amounts: Sequence[float], *,
                   scope: Literal["global", "layer"] = "global",
                   log: Callable[[str], None] | None = None) -> tuple[nn.Module, list[dict[str, float]]]:
    """Iterative magnitude pruning with fine-tuning (module docstring): one ``fit`` of a copy of ``model`` with
    ``compress.prune_amounts=amounts``, ``compress.prune_scope=scope`` and the recipe's ``train.epochs`` of
    fine-tuning after each step (one optimizer and one learning-rate schedule over the whole run). Returns the
    pruned, fine-tuned model (masks made permanent) and one record per step: ``amount``, ``sparsity``, the
    validation metrics right after pruning (``before_*``) and after its fine-tuning (``after_*``)."""
    from dltricks.train import fit, load_recipe

    recipe = load_recipe(recipe)
    if recipe.train.steps:
        raise ConfigError("train.steps: prune_finetune gives each step train.epochs epochs of fine-tuning; for a "
                          "step-based run set compress.prune_amounts in the recipe instead")
    epochs = recipe.train.epochs
    recipe = load_recipe(recipe, [("compress.prune_amounts", [float(a) for a in amounts]),
                                  ("compress.prune_scope", scope), ("compress.prune_epochs", epochs),
                                  ("train.epochs", epochs * max(1, len(amounts)))])
    result = fit(copy.deepcopy(model), task, recipe, progress=False, log=log)
    records: list[dict[str, float]] = []
    for k, amount in enumerate(recipe.compress.prune_amounts):
        if (k + 1) * epochs > len(result.history):  # the run stopped early (train.max_steps, early_stop)
            break
        pruned_at, last = result.history[k * epochs], result.history[(k + 1) * epochs - 1]
        record = {"amount": amount, "sparsity": pruned_at["sparsity"]}
        record.update({f"before_{m}": pruned_at[f"pruned_val_{m}"] for m in ("loss", "accuracy")
                       if f"pruned_val_{m}" in pruned_at})
        record.update({f"after_{m}": last[f"val_{m}"] for m in ("loss", "accuracy") if f"val_{m}" in last})
        records.append(record)
    return result.model, records


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


def _bn_between(block: nn.Module, conv: str, consumer: str) -> str | None:
    """The batch norm registered between ``conv`` and ``consumer`` in ``block`` (``bn1`` after ``conv1`` in a
    post-activation block, ``bn2`` in a pre-activation one); ``""`` when something that is not channel-wise sits
    between them, ``None`` when nothing does."""
    names = list(block._modules)
    between = names[names.index(conv) + 1:names.index(consumer)] if names.index(conv) < names.index(consumer) else []
    bns = [n for n in between if type(block._modules[n]) is nn.BatchNorm2d]
    if len(bns) > 1 or any(not isinstance(block._modules[n], (*_CHANNELWISE, nn.BatchNorm2d)) for n in between):
        return ""
    return bns[0] if bns else None


def _prune_block(block: nn.Module, amount: float) -> int:
    """The inner channels of a residual block (``conv1 -> BN -> conv2 [-> BN -> conv3]``, the BN found by
    registration order, so pre-activation blocks work too); returns the pairs pruned."""
    done = 0
    convs = [c for c in ("conv1", "conv2", "conv3") if c in block._modules]
    for conv, consumer in zip(convs, convs[1:]):
        if not (_plain_conv(getattr(block, conv, None)) and _plain_conv(getattr(block, consumer, None))):
            break
        bn = _bn_between(block, conv, consumer)
        if bn == "":
            break
        _prune_pair(block, conv, bn, consumer, amount)
        done += 1
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


class ChannelShortcut(nn.Module):
    """An option-A shortcut (subsample, zero-pad the new channels) after the residual streams on both sides were
    pruned: output channel ``j`` is input channel ``index[j]``, or zero where the stream channel it stands for
    was zero-padded or pruned before the shortcut (``index[j] == C_in``, the appended zero channel)."""

    def __init__(self, index: torch.Tensor, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.register_buffer("index", index.long())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]  # (B, C_in, H/s, W/s)
        x = nn.functional.pad(x, (0, 0, 0, 0, 0, 1))  # (B, C_in + 1, H/s, W/s): channel C_in is zero
        return x.index_select(1, self.index)  # (B, len(index), H/s, W/s)


def _last_conv_bn(block: nn.Module) -> tuple[str, str]:
    return ("conv3", "bn3") if hasattr(block, "conv3") else ("conv2", "bn2")


def _stream_blocks(model: nn.Module) -> list[nn.Module] | None:
    """The residual blocks of a ResNet-like ``model`` whose residual streams can be pruned (a plain conv + BN stem,
    ``stages`` of blocks without attention, shortcuts that are identities, zero-padding or [pool ->] conv -> BN,
    a linear classifier), else ``None``."""
    from dltricks.models.resnet import PadShortcut

    stages, head = getattr(model, "stages", None), getattr(model, "head_attr", None)
    if not (_plain_conv(getattr(model, "conv1", None)) and type(getattr(model, "bn1", None)) is nn.BatchNorm2d
            and isinstance(stages, (list, tuple, nn.Sequential, nn.ModuleList)) and head
            and isinstance(getattr(model, head, None), nn.Linear)):
        return None
    blocks = [b for stage in stages for b in stage.children()]
    for b in blocks:
        conv, bn = _last_conv_bn(b)
        ds = getattr(b, "downsample", None)
        ok_ds = ds is None or isinstance(ds, PadShortcut) or (
            isinstance(ds, nn.Sequential) and len(ds) >= 2 and _plain_conv(ds[-2]) and type(ds[-1]) is nn.BatchNorm2d
            and all(isinstance(m, _CHANNELWISE) for m in list(ds)[:-2]))
        if not (ok_ds and _plain_conv(getattr(b, "conv1", None)) and _plain_conv(getattr(b, conv, None))
                and type(getattr(b, bn, None)) is nn.BatchNorm2d and isinstance(getattr(b, "attn", nn.Identity()),
                                                                                 nn.Identity)):
            return None
    return blocks or None


def _choose_stream_channels(groups: list[dict], amount: float) -> None:
    """Set ``group["keep"]`` (sorted channel indices) for every stream group.

    A zero-padding shortcut carries the previous stream's channels into the first ``C_in`` channels of the next
    one, so those are the same channels (one identity path) and must be kept or removed together; only the
    padded channels are new. Each channel is identified along the identity path, its score is the L1 norm of
    every filter that writes it in any stage, and in each set of channels created together (the stem's, each
    projection's, each padding's) the fraction ``amount`` with the lowest scores goes."""
    from dltricks.models.resnet import PadShortcut

    score: list[torch.Tensor] = []  # by channel id
    origin: list[int] = []  # the group that created the channel
    for i, g in enumerate(groups):
        width = getattr(g["writers"][0][0], g["writers"][0][1]).out_channels
        inherited = g["previous"]["ids"] if g["entry"] is not None and isinstance(g["entry"].downsample,
                                                                                   PadShortcut) else []
        g["ids"] = list(inherited) + list(range(len(score), len(score) + width - len(inherited)))
        score += [torch.zeros(())] * (width - len(inherited))
        origin += [i] * (width - len(inherited))
        norms = sum(getattr(o, c).weight.detach().abs().flatten(1).sum(1) for o, c, _ in g["writers"])  # (C,)
        for position, channel in enumerate(g["ids"]):
            score[channel] = score[channel] + norms[position]
    kept: set[int] = set()
    for i in range(len(groups)):
        ids = [c for c, o in enumerate(origin) if o == i]
        if ids:
            values = torch.stack([score[c] for c in ids])
            top = values.topk(max(1, round(len(ids) * (1.0 - amount)))).indices
            kept |= {ids[int(j)] for j in top}
    for g in groups:
        g["keep"] = torch.tensor([p for p, c in enumerate(g["ids"]) if c in kept], dtype=torch.long)


def _prune_streams(model: nn.Module, amount: float) -> int:
    """Prune the residual streams of a ResNet-like model (module docstring); returns the groups pruned.

    The tensors added into one stream (the stem's output, every block's last BN, a projection shortcut's BN) form
    one group that keeps the same channels (:func:`_choose_stream_channels`); a new group starts at every block
    with a downsampling shortcut."""
    from dltricks.models.resnet import PadShortcut

    blocks = _stream_blocks(model)
    if blocks is None:
        return 0
    group: dict = {"writers": [(model, "conv1", "bn1")], "readers": [], "entry": None}
    groups = [group]
    for b in blocks:
        group["readers"].append(b)
        if b.downsample is not None:
            group = {"writers": [], "readers": [], "entry": b, "previous": group}
            groups.append(group)
            if isinstance(b.downsample, nn.Sequential):
                names = list(b.downsample._modules)
                group["writers"].append((b.downsample, names[-2], names[-1]))
        group["writers"].append((b, *_last_conv_bn(b)))
    _choose_stream_channels(groups, amount)
    for g in groups:
        keep = g["keep"]
        for owner, conv, bn in g["writers"]:
            setattr(owner, conv, _conv_out(getattr(owner, conv), keep))
            setattr(owner, bn, _bn(getattr(owner, bn), keep))
        for b in g["readers"]:
            b.conv1 = _conv_in(b.conv1, keep)
        entry = g["entry"]
        if entry is None:
            continue
        before = g["previous"]["keep"]
        if isinstance(entry.downsample, PadShortcut):
            # Stream channel c of this stage is channel c of the previous stream (c < C_in, kept in both streams
            # or in neither) or a padded zero.
            position = {int(c): i for i, c in enumerate(before)}
            index = torch.tensor([position.get(int(c), len(before)) for c in keep])
            entry.downsample = ChannelShortcut(index, entry.downsample.stride)
        else:
            names = list(entry.downsample._modules)
            entry.downsample._modules[names[-2]] = _conv_in(entry.downsample._modules[names[-2]], before)
    head = model.head_attr
    setattr(model, head, _linear_in(getattr(model, head), groups[-1]["keep"]))
    model.num_features = len(groups[-1]["keep"])
    return len(groups)


def prune_channels(model: nn.Module, amount: float) -> nn.Module:
    """A smaller dense copy of ``model`` with the fraction ``amount`` of the output channels of every prunable conv
    removed (see the module docstring for which convs are prunable); a model with none is a :class:`ModelError`."""
    check_amount(amount)
    pruned = copy.deepcopy(model)
    done = _prune_streams(pruned, amount)
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

"""Fine-tuning by layer groups: freezing, gradual unfreezing, discriminative learning rates, frozen BN statistics.

A classifier splits into **layer groups**, in forward order:

* ``stem``: every parameter before the first stage;
* ``stages.0`` ... ``stages.K``: the stages (ResNet's ``layer1..4``; the children of a ``stages``, ``blocks``,
  ``layers`` or ``features`` container: ConvNeXt's and Swin's stages, ViT's and EfficientNet's blocks);
* ``head``: everything after the last stage (final norm, head conv, classifier; the module at ``head_attr``).

A recipe names groups in ``finetune`` (:class:`~dltricks.train.recipe.FinetuneConfig`); ``stages`` names them
all. The practices, as the transfer-learning literature uses them:

* **linear probing** trains the head only on frozen features (Kornblith et al. 2019, "Do better ImageNet
  models transfer better?");
* **discriminative learning rates**: group g trains at ``lr x lr_mult[g]``, lower near the input where
  features are generic (Howard & Ruder 2018, ULMFiT; Yosinski et al. 2014 for why lower layers transfer);
* **gradual unfreezing**: the frozen groups thaw from the head down, one every ``unfreeze_every`` epochs
  (ULMFiT), so the random head does not wreck the pretrained features with large early gradients;
* **frozen BatchNorm statistics**: BN layers stay in eval mode, which keeps the running statistics of the
  pretraining data and avoids noisy batch statistics with small fine-tuning batches.

The optimizer builder gives every layer group its own parameter group carrying ``lr_mult`` (the trainer sets
``lr = schedule lr x lr_mult``). A frozen parameter stays in the optimizer with ``requires_grad = False``:
it gets no gradient, so no optimizer touches it (weight decay included), and thawing it is flipping the flag.
:func:`apply_finetune` does that at the start of every epoch. Not for DistributedDataParallel runs (DDP
fixes the set of parameters that need gradients when it wraps the model).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import nn

from dltricks.errors import ConfigError
from dltricks.train.recipe import FinetuneConfig

__all__ = ["layer_groups", "group_of", "frozen_groups", "apply_finetune", "lr_multipliers"]

_STAGE_LIST = re.compile(r"^(layer\d+|stage\d+)$")  # ResNet-style stages, one top-level child each
_STAGE_CONTAINERS = ("stages", "blocks", "layers", "features")  # a container whose children are the stages


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """Parameter names per layer group, ``{"stem": [...], "stages.0": [...], ..., "head": [...]}`` in forward
    order (module docstring); parameters registered on the model itself (ViT's ``cls_token``) go to ``stem``."""
    groups: dict[str, list[str]] = {"stem": []}
    stage = 0
    after_stages = False
    for child_name, child in model.named_children():
        names = [f"{child_name}.{n}" for n, _ in child.named_parameters()]
        if child_name in _STAGE_CONTAINERS and len(list(child.children())) > 1 and not after_stages:
            for sub_name, sub in child.named_children():
                sub_params = [f"{child_name}.{sub_name}.{n}" for n, _ in sub.named_parameters()]
                if sub_params:
                    groups[f"stages.{stage}"] = sub_params
                    stage += 1
        elif _STAGE_LIST.match(child_name) and not after_stages:
            groups[f"stages.{stage}"] = names
            stage += 1
        elif stage == 0:
            groups["stem"].extend(names)
        else:
            after_stages = True
            groups.setdefault("head", []).extend(names)
    groups.setdefault("head", [])
    groups["stem"].extend(n for n, _ in model.named_parameters(recurse=False))
    head_attr = getattr(model, "head_attr", None)
    if stage == 0 and head_attr:  # no recognised stages: everything but the classifier is one stage
        head = {n for n, _ in model.named_parameters() if n.startswith(head_attr + ".")}
        body = [n for n, _ in model.named_parameters() if n not in head]
        groups = {"stem": [], "stages.0": body, "head": sorted(head)}
    return groups


def group_of(name: str, groups: Mapping[str, list[str]]) -> str:
    """The layer group of parameter ``name``."""
    for group, names in groups.items():
        if name in names:
            return group
    raise KeyError(name)


def _select(patterns: tuple[str, ...] | list[str], groups: Mapping[str, list[str]], key: str) -> list[str]:
    chosen = []
    for pattern in patterns:
        hits = [g for g in groups if g == pattern or g.startswith(pattern + ".")]
        if not hits:
            raise ConfigError(f"{key}: no layer group {pattern!r} in this model; its groups: {', '.join(groups)}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def frozen_groups(config: FinetuneConfig, groups: Mapping[str, list[str]], epoch: int) -> set[str]:
    """The groups frozen during ``epoch`` (0-based): the configured ones minus those thawed by then, thawing
    from the head down one group every ``unfreeze_every`` epochs."""
    patterns = list(config.freeze) + (["stem", "stages"] if config.linear_probe else [])
    frozen = _select(patterns, groups, "finetune.freeze")
    if config.unfreeze_every > 0:
        thawed = int(epoch // config.unfreeze_every)
        order = [g for g in reversed(list(groups)) if g in frozen]  # head first, stem last
        frozen = order[thawed:]
    return set(frozen)


def lr_multipliers(config: FinetuneConfig, groups: Mapping[str, list[str]]) -> dict[str, float]:
    """Learning-rate multiplier of every layer group (1 unless ``finetune.lr_mult`` names it)."""
    mult = dict.fromkeys(groups, 1.0)
    for pattern, value in config.lr_mult.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"finetune.lr_mult.{pattern}: expected a number >= 0, got {value!r}")
        for group in _select([pattern], groups, "finetune.lr_mult"):
            mult[group] = float(value)
    return mult


def apply_finetune(model: nn.Module, config: FinetuneConfig, epoch: int) -> set[str]:
    """Set ``requires_grad`` for ``epoch`` and put BatchNorm layers in eval mode when asked; returns the frozen
    groups. Call after ``model.train()``."""
    groups = layer_groups(model)
    frozen = frozen_groups(config, groups, epoch)
    frozen_names = {n for g in frozen for n in groups[g]}
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen_names)
    if config.freeze_bn_stats:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return frozen


def is_active(config: FinetuneConfig) -> bool:
    """Whether the recipe asks for anything beyond plain training."""
    return bool(config.freeze or config.linear_probe or config.unfreeze_every or config.lr_mult
                or config.freeze_bn_stats)

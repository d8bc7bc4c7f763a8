"""Fine-tuning by layer groups (dltricks.train.finetune): groups, freezing, gradual unfreezing, discriminative
learning rates and frozen BatchNorm statistics, through the optimizer builder and fit."""

from __future__ import annotations

import pytest
import torch

from dltricks.errors import ConfigError
from dltricks.models import create_model
from dltricks.train import fit, load_recipe
from dltricks.train.finetune import frozen_groups, layer_groups
from dltricks.train.optim import build_optimizer
from train_helpers import TOY, tiny_cnn, toy_task

BASE = ["train.epochs=2", "optim.lr=0.05", *TOY]


def _recipe(*overrides):
    return load_recipe(None, [*BASE, *overrides])


def test_resnet_layer_groups_cover_every_parameter_once():
    model = create_model("resnet18", num_classes=10)
    groups = layer_groups(model)
    assert list(groups) == ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"]
    assert groups["stem"] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert groups["head"] == ["fc.weight", "fc.bias"]
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())


def test_gradual_unfreezing_thaws_from_the_head_down():
    groups = layer_groups(create_model("resnet18"))
    config = _recipe("finetune.freeze=[stem, stages, head]", "finetune.unfreeze_every=1").finetune
    assert frozen_groups(config, groups, 0) == set(groups)
    assert frozen_groups(config, groups, 1) == set(groups) - {"head"}
    assert frozen_groups(config, groups, 2) == {"stem", "stages.0", "stages.1", "stages.2"}
    assert frozen_groups(config, groups, 6) == set()
    probe = _recipe("finetune.linear_probe=true").finetune
    assert frozen_groups(probe, groups, 5) == set(groups) - {"head"}
    with pytest.raises(ConfigError, match="no layer group 'body'.*stem, stages.0"):
        frozen_groups(_recipe("finetune.freeze=[body]").finetune, groups, 0)


def test_discriminative_learning_rates_in_the_optimizer():
    model = create_model("resnet18", num_classes=10)
    recipe = _recipe("finetune.lr_mult={stem: 0.01, stages: 0.1}", "optim.skip_norm_bias=true",
                     "optim.weight_decay=1e-4")
    optimizer = build_optimizer(model, recipe.optim, finetune=recipe.finetune)
    lr = {(g["layer_group"], g["weight_decay"] == 0): g["lr"] for g in optimizer.param_groups}
    assert lr[("stem", False)] == pytest.approx(0.05 * 0.01) and lr[("stem", True)] == pytest.approx(0.05 * 0.01)
    assert lr[("stages.2", False)] == pytest.approx(0.05 * 0.1) and lr[("head", False)] == pytest.approx(0.05)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    plain = build_optimizer(model, recipe.optim)  # no finetune section: the two groups as before
    assert [g["weight_decay"] for g in plain.param_groups] == [1e-4, 0.0] and "lr_mult" not in plain.param_groups[0]


def test_linear_probe_with_frozen_bn_trains_only_the_head():
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(model, toy_task(), _recipe("finetune.linear_probe=true", "finetune.freeze_bn_stats=true"),
                 progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias"}  # BN running statistics and counters included
    assert result.history[-1]["epoch"] == 2


def test_gradual_unfreezing_in_fit_changes_lower_groups_later():
    model = tiny_cnn()
    first = [n for n in layer_groups(model)["stages.0"] if n.endswith("weight")][0]
    start = model.state_dict()[first].clone()
    seen = []

    def watch(record):
        seen.append(torch.equal(model.state_dict()[first], start))

    fit(model, toy_task(), _recipe("train.epochs=3", "finetune.linear_probe=true", "finetune.unfreeze_every=2"),
        progress=False, on_epoch=watch)
    # 6 stage groups + head thaw one per 2 epochs: stages.0 is still frozen after 3 epochs, the head trained.
    assert seen == [True, True, True]
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("head."))

"""BatchNorm recalibration (``train.bn_recalibrate``) against its reference, ``torch.optim.swa_utils.update_bn``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from dltricks.train import fit, load_recipe
from dltricks.train.batchnorm import batchnorm_layers, recalibrate_batchnorm
from train_helpers import TOY, tiny_cnn, toy_task


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4),
                         nn.BatchNorm1d(4, track_running_stats=False))


def _stats(model: nn.Module) -> list[torch.Tensor]:
    return [t for m in batchnorm_layers(model) for t in (m.running_mean, m.running_var, m.num_batches_tracked)]


def test_recalibration_matches_update_bn():
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(5 + i, 3, 6, 6, generator=g) * (1 + i) + i for i in range(4)]  # unequal batch sizes
    ours, reference = _net(), _net()
    for model in (ours, reference):  # stale statistics, as after a short run
        model.train()
        model(torch.randn(7, 3, 6, 6) * 5)
        model.eval()
    assert recalibrate_batchnorm(ours, batches) == 4
    update_bn(batches, reference)
    for a, b in zip(_stats(ours), _stats(reference)):
        torch.testing.assert_close(a, b)
    assert not ours.training  # mode restored
    assert all(m.momentum == 0.1 for m in batchnorm_layers(ours))  # momenta restored


def test_without_batchnorm_nothing_happens():
    mlp = nn.Sequential(nn.Linear(4, 4))
    assert recalibrate_batchnorm(mlp, [torch.randn(2, 4)]) == 0


def test_fit_option_recomputes_statistics_over_training_batches():
    task = toy_task()
    recipe = load_recipe(None, ["train.epochs=1", "optim.lr=0.05", *TOY, "train.bn_recalibrate=3"])
    result = fit(tiny_cnn(), task, recipe, progress=False)
    model = result.model
    # The same statistics from update_bn over the first 3 batches of the next pass of the training loader.
    reference = copy.deepcopy(model)
    batches = [x for b, (x, _) in enumerate(task.train_loader.iter_epoch(1)) if b < 3]
    update_bn(batches, reference)
    for a, b in zip(_stats(model), _stats(reference)):
        torch.testing.assert_close(a, b)
    assert all(int(m.num_batches_tracked) == 3 for m in batchnorm_layers(model))


def test_recipe_rejects_a_negative_count():
    from dltricks.errors import ConfigError

    with pytest.raises(ConfigError, match="train.bn_recalibrate"):
        load_recipe(None, ["train.bn_recalibrate=-1"])

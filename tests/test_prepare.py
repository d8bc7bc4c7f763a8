"""The recipe is honoured by the library: ``prepare`` builds what the recipe says, ``fit`` refuses a task
that contradicts it (issue 13: a recipe asking for batch 32 and flips never trains silently otherwise)."""

from __future__ import annotations

import pytest
import torch

from dltricks.errors import ConfigError
from dltricks.train import fit, prepare
from dltricks.train.recipe import given_keys, load_recipe
from train_helpers import tiny_cnn, toy_task

ASKS = {"train": {"batch_size": 32, "epochs": 1, "steps": 2, "device": "cpu"}, "augment": {"hflip": True},
        "optim": {"lr": 0.01}}


def test_fit_refuses_a_task_built_with_another_batch_size():
    with pytest.raises(ConfigError, match=r"^train\.batch_size: the recipe asks for 32 but task toy was built with "
                                          r"batch 16"):
        fit(tiny_cnn(), toy_task(batch_size=16), ASKS, progress=False)


def test_fit_refuses_a_task_without_the_recipes_augmentation():
    with pytest.raises(ConfigError, match=r"^augment: the recipe asks for .*hflip"):
        fit(tiny_cnn(), toy_task(batch_size=32), ASKS, progress=False)


def test_fit_refuses_a_task_with_other_seed_or_data_options():
    recipe = {"train": {"batch_size": 16, "epochs": 1, "seed": 5}}
    with pytest.raises(ConfigError, match=r"^train\.seed: the recipe's seed 5"):
        fit(tiny_cnn(), toy_task(seed=0), recipe, progress=False)
    task = toy_task()
    task.options = {**task.options, "elastic": False}
    with pytest.raises(ConfigError, match=r"^data\.elastic: the recipe sets True but task toy was built with False"):
        fit(tiny_cnn(), task, {"train": {"epochs": 1}, "data": {"elastic": True}}, progress=False)


def test_prepare_trains_with_the_recipes_batch_and_flips():
    model, task = prepare("lenet5", "mnist-embedded", ASKS, subset=256, val_subset=64)
    assert task.train_loader.batch_size == 32 and task.options["batch_size"] == 32
    assert task.options["augment"].hflip and task.options["seed"] == 0
    # The loader flips: with the same seed, the augmented batch differs from the plain one only by mirroring.
    assert task.train_loader.augment is not None and task.train_loader.augment.hflip
    x, y = next(iter(task.train_loader))
    assert x.shape[0] == 32
    result = fit(model, task, ASKS, progress=False)
    assert result.stop_reason == "completed" and result.history[-1]["step"] == 2


def test_prepare_sizes_the_model_for_the_task():
    model, task = prepare("lenet5", "mnist-embedded", {"train": {"batch_size": 8}}, subset=16, val_subset=16)
    assert task.num_classes == 10 and model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ConfigError, match="model_kwargs are for a model given by name"):
        prepare(tiny_cnn(), task, {"train": {"batch_size": 8}}, model_kwargs={"drop_rate": 0.1})


def test_a_recipe_that_leaves_the_batch_size_alone_trains_the_task_as_built():
    result = fit(tiny_cnn(), toy_task(batch_size=16), {"train": {"epochs": 1}}, progress=False)
    assert result.history[-1]["step"] == 12  # 192 samples / 16


def test_given_keys_are_what_the_source_sets_or_changes():
    assert given_keys(load_recipe({"train": {"batch_size": 128}})) == {"train.batch_size"}
    assert "optim.lr" in given_keys(load_recipe(None, ["optim.lr=0.5"]))
    assert given_keys(load_recipe(None)) == set()

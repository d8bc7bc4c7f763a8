"""Does a task match its recipe? The check ``fit`` runs before training (see :mod:`dltricks.train.prepare`).

A recipe's batch size, evaluation batch size, seed, augmentation and data options decide how a task is built;
:func:`check_task_recipe` compares what the recipe asks for with what the task records (``Task.options``,
filled in by ``build_task``) or shows (``loader.batch_size``) and raises a :class:`ConfigError` naming the key
at the first contradiction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from dltricks.errors import ConfigError
from dltricks.tasks import Task
from dltricks.train.recipe import Recipe, given_keys

__all__ = ["check_task_recipe", "recipe_augment"]


def recipe_augment(recipe: Recipe, for_training: bool) -> Any:
    """The augmentation a task built from ``recipe`` applies: ``recipe.augment`` when active for training
    (off in ``overfit_batch`` mode), else ``None``."""
    active = for_training and recipe.augment.active and not recipe.train.overfit_batch
    return recipe.augment if active else None


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return dict(value) if isinstance(value, Mapping) else value


def check_task_recipe(task: Task, recipe: Recipe) -> None:
    """Raise :class:`ConfigError` when ``task`` was built with settings other than ``recipe``'s."""
    cfg, built, asked = recipe.train, task.options, given_keys(recipe)
    how = ("build it with dltricks.train.prepare(model, data, recipe) (or build_task with the recipe's "
           "settings)")
    batch = getattr(task.train_loader, "batch_size", None) if not built else built.get("batch_size")
    if "train.batch_size" in asked and batch is not None and batch != cfg.batch_size and not cfg.overfit_batch:
        raise ConfigError(f"train.batch_size: the recipe asks for {cfg.batch_size} but task {task.name} was built "
                          f"with batch {batch}; {how}")
    if built and cfg.eval_batch_size is not None and built.get("eval_batch_size") not in (None, cfg.eval_batch_size):
        raise ConfigError(f"train.eval_batch_size: the recipe asks for {cfg.eval_batch_size} but task {task.name} "
                          f"was built with {built.get('eval_batch_size')}; {how}")
    if "train.seed" in asked and built and "seed" in built and built["seed"] != cfg.seed:
        raise ConfigError(f"train.seed: the recipe's seed {cfg.seed} orders and augments the data, but task "
                          f"{task.name} was built with seed {built['seed']}; {how}")
    wanted = recipe_augment(recipe, True)
    if wanted is not None:
        if not built:
            raise ConfigError(f"augment: the recipe asks for augmentation ({wanted.describe()}) but task {task.name} "
                              f"was not built by build_task, so it cannot show it applies it; {how}")
        if _plain(built.get("augment")) != _plain(wanted):
            raise ConfigError(f"augment: the recipe asks for {wanted.describe()} but task {task.name} was built with "
                              f"{_describe(built.get('augment'))}; {how}")
    if recipe.data and not built:
        raise ConfigError(f"data.{next(iter(recipe.data))}: the recipe sets data options but task {task.name} was not "
                          f"built by build_task, so it cannot show it uses them; {how}")
    for key, value in recipe.data.items():
        if built.get(key) != value:
            raise ConfigError(f"data.{key}: the recipe sets {value!r} but task {task.name} was built with "
                              f"{built.get(key)!r}; {how}")


def _describe(augment: Any) -> str:
    if augment is None:
        return "no augmentation"
    return augment.describe() if hasattr(augment, "describe") else repr(_plain(augment))

"""The recipe, honoured by the library: build the task and the model for a recipe, once.

:func:`prepare` is what ``dltricks train`` does before training, as a library function, so that
``fit(*prepare("resnet18", "cifar10", recipe), recipe)`` trains exactly what the recipe says:

1. the task is built from the recipe: ``train.batch_size``, ``train.eval_batch_size`` (default twice the
   batch size), ``train.seed`` (data order and augmentation), ``augment`` (off in ``overfit_batch`` mode)
   and the ``data`` section (the data set's own options; ``data_options`` given here win), sharded for the
   current distributed rank;
2. a model given by name is created for the task (``num_classes``, ``in_chans`` and any option the task
   knows the model needs, after the caller's ``model_kwargs``) with the recipe's seed set first;
3. model and data are checked to fit together (:func:`~dltricks.train.trainer.check_compatible`).

:func:`check_task_recipe` is the other half: ``fit`` calls it and refuses a task whose recorded
settings (``Task.options``, filled in by ``build_task``) or loaders contradict the recipe, with one line
that names the key. A task made by hand, without ``build_task``, is checked on what its loaders show
(``batch_size``), and one that cannot show the recipe's augmentation is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dltricks.errors import ConfigError
from dltricks.tasks import Task, build_task, check_task_options
from dltricks.train.recipe import Recipe, load_recipe

__all__ = ["prepare", "task_for_recipe", "model_for_task", "check_task_recipe", "recipe_data_options"]


def recipe_data_options(recipe: Recipe, data: str, data_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The data set's own options: the recipe's ``data`` section, then ``data_options`` on top, checked
    against the data set's typed options (unknown keys and wrong types name the key)."""
    return check_task_options(data, {**recipe.data, **dict(data_options or {})})


def _augment(recipe: Recipe, for_training: bool) -> Any:
    active = for_training and recipe.augment.active and not recipe.train.overfit_batch
    return recipe.augment if active else None


def task_for_recipe(data: str, recipe: Recipe, *, data_dir: str | Path | None = None,
                    data_options: Mapping[str, Any] | None = None, subset: int | None = None,
                    val_subset: int | None = None, device: torch.device | str = "cpu", for_training: bool = True,
                    batch_size: int | None = None) -> Task:
    """Build data set ``data`` with the recipe's batch sizes, seed, augmentation and data options.

    ``batch_size`` overrides the recipe's (evaluation-only uses, e.g. ``dltricks eval``); a task built so
    is not for :func:`fit` with that recipe.
    """
    from dltricks.train.distributed import DistInfo

    if data_dir is not None and not Path(data_dir).exists():
        raise ConfigError(f"data_dir {data_dir}: no such file or folder; expected the folder (or file) holding the "
                          f"{data} data")
    for name, value in (("subset", subset), ("val_subset", val_subset)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{name}: got {value!r}, expected a positive number of samples")
    cfg = recipe.train
    dist = DistInfo.current()
    bs = batch_size or cfg.batch_size
    options = recipe_data_options(recipe, data, data_options)
    counts = {k: v for k, v in (("subset", subset), ("val_subset", val_subset)) if v is not None}
    return build_task(data, batch_size=bs, eval_batch_size=cfg.eval_batch_size or 2 * bs, data_dir=data_dir,
                      seed=cfg.seed, augment=_augment(recipe, for_training), rank=dist.rank,
                      world_size=dist.world_size, device=str(device), **counts, **options)


def model_for_task(name: str, task: Task, *, model_kwargs: Mapping[str, Any] | None = None,
                   seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """Create registered model ``name`` sized for ``task``; returns the model and the options it was built
    with (the caller's first, then what the task knows the model needs, then ``num_classes``/``in_chans``)."""
    from dltricks.models import create_model
    from dltricks.train.runtime import seed_everything

    kwargs = dict(model_kwargs or {})
    for key, value in (task.extra.get("model_kwargs") or {}).items():
        kwargs.setdefault(key, value)
    kwargs.setdefault("num_classes", task.num_classes)
    if task.in_chans is not None:
        kwargs.setdefault("in_chans", task.in_chans)
    seed_everything(seed)
    return create_model(name, **kwargs), kwargs


def prepare(model: str | nn.Module, data: str | Task, recipe: Recipe | Mapping[str, Any] | str | Path | None = None,
            *, model_kwargs: Mapping[str, Any] | None = None, data_dir: str | Path | None = None,
            data_options: Mapping[str, Any] | None = None, subset: int | None = None,
            val_subset: int | None = None, device: torch.device | str | None = None) -> tuple[nn.Module, Task]:
    """``(model, task)`` ready for ``fit(model, task, recipe)`` (see the module docstring).

    ``model``: a registered name (created for the task with the recipe's seed) or a module; ``data``: a
    registered data set name (built from the recipe) or a task already built for this recipe (checked).
    ``device`` defaults to the recipe's ``train.device``; data live on the CPU unless it is a GPU.
    """
    from dltricks.models._registry import model_entrypoint
    from dltricks.train.runtime import resolve_device
    from dltricks.train.trainer import check_compatible

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if isinstance(model, str):
        model_entrypoint(model)  # an unknown name fails before any data is read
    device = torch.device(device) if device is not None else resolve_device(recipe.train.device)
    if isinstance(data, Task):
        task = data
        check_task_recipe(task, recipe)
    else:
        task = task_for_recipe(data, recipe, data_dir=data_dir, data_options=data_options, subset=subset,
                               val_subset=val_subset, device=device)
    if isinstance(model, str):
        model, _ = model_for_task(model, task, model_kwargs=model_kwargs, seed=recipe.train.seed)
    elif model_kwargs:
        raise ConfigError("model_kwargs are for a model given by name; this model is already built")
    check_compatible(model, task)
    return model, task


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return dict(value) if isinstance(value, Mapping) else value


def check_task_recipe(task: Task, recipe: Recipe) -> None:
    """Raise :class:`ConfigError` when ``task`` was built with settings other than ``recipe``'s."""
    cfg, built = recipe.train, task.options
    how = ("build it with dltricks.train.prepare(model, data, recipe) (or build_task with the recipe's "
           "settings)")
    batch = getattr(task.train_loader, "batch_size", None) if not built else built.get("batch_size")
    if batch is not None and batch != cfg.batch_size and not cfg.overfit_batch:
        raise ConfigError(f"train.batch_size: the recipe asks for {cfg.batch_size} but task {task.name} was built "
                          f"with batch {batch}; {how}")
    if built and cfg.eval_batch_size is not None and built.get("eval_batch_size") not in (None, cfg.eval_batch_size):
        raise ConfigError(f"train.eval_batch_size: the recipe asks for {cfg.eval_batch_size} but task {task.name} "
                          f"was built with {built.get('eval_batch_size')}; {how}")
    if built and "seed" in built and built["seed"] != cfg.seed:
        raise ConfigError(f"train.seed: the recipe's seed {cfg.seed} orders and augments the data, but task "
                          f"{task.name} was built with seed {built['seed']}; {how}")
    wanted = _augment(recipe, True)
    if wanted is not None:
        if not built:
            raise ConfigError(f"augment: the recipe asks for augmentation ({wanted.describe()}) but task {task.name} "
                              f"was not built by build_task, so it cannot show it applies it; {how}")
        if _plain(built.get("augment")) != _plain(wanted):
            raise ConfigError(f"augment: the recipe asks for {wanted.describe()} but task {task.name} was built with "
                              f"{_describe(built.get('augment'))}; {how}")
    for key, value in recipe.data.items():
        if built and built.get(key) != value:
            raise ConfigError(f"data.{key}: the recipe sets {value!r} but task {task.name} was built with "
                              f"{built.get(key)!r}; {how}")


def _describe(augment: Any) -> str:
    if augment is None:
        return "no augmentation"
    return augment.describe() if hasattr(augment, "describe") else repr(_plain(augment))

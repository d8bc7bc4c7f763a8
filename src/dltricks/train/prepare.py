"""The recipe, honoured by the library: build the task and the model for a recipe, once.

:func:`prepare` is what ``dltricks train`` does before training, as a library function, so that
``fit(*prepare("resnet18", "cifar10", recipe), recipe)`` trains exactly what the recipe says:

1. the task is built from the recipe: ``train.batch_size``, ``train.eval_batch_size`` (default twice the
   batch size), ``train.seed`` (data order and augmentation), ``augment`` (off in ``overfit_batch`` mode)
   and the ``data`` section (the data set's own options; ``data_options`` given here win), sharded for the
   current distributed rank;
2. a model given by name is created for the task (``num_classes``, ``in_chans`` and any option the task
   knows the model needs, after the caller's ``model_kwargs``, which are checked against the type hints
   of the model's constructor) with the recipe's seed set first;
3. model and data are checked to fit together (:func:`~dltricks.train.trainer.check_compatible`).

:func:`~dltricks.train.checks.check_task_recipe` is the other half: ``fit`` calls it and refuses a task whose recorded
settings (``Task.options``, filled in by ``build_task``) or loaders contradict what the recipe asks for,
with one line that names the key. Batch size and seed are checked when the recipe sets them (a value that
its source gives, or one other than the default): a recipe that leaves them alone trains the task as built.
A task made by hand, without ``build_task``, is checked on what its loaders show (``batch_size``), and one
that cannot show the recipe's augmentation is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

import torch
from torch import nn

from dltricks.config import coerce
from dltricks.errors import ConfigError, DltricksError, ModelError
from dltricks.tasks import Task, build_task, check_task_options
from dltricks.train.checks import check_task_recipe, recipe_augment
from dltricks.train.recipe import Recipe, load_recipe

__all__ = ["prepare", "task_for_recipe", "model_for_task", "model_kwargs_for_task", "check_task_recipe",
           "recipe_data_options", "check_model_kind", "task_kind"]


def recipe_data_options(recipe: Recipe, data: str, data_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The data set's own options: the recipe's ``data`` section and ``data_options``, checked against the
    data set's typed options (unknown keys and wrong types name the key).

    ``data_options`` add keys the recipe leaves alone; one that contradicts the recipe is an error, since
    ``fit`` would then refuse the task (change the recipe instead: ``load_recipe(r, ["data.KEY=VALUE"])``,
    which is what ``--data-opt`` does)."""
    extra = dict(data_options or {})
    for key, value in extra.items():
        if key in recipe.data and recipe.data[key] != value:
            raise ConfigError(f"data.{key}: the recipe sets {recipe.data[key]!r} and data_options {value!r}; set it "
                              f"in the recipe (e.g. --data-opt / --set data.{key}=...) so that fit trains what it says")
    return check_task_options(data, {**recipe.data, **extra})


def task_for_recipe(data: str, recipe: Recipe, *, data_dir: str | Path | None = None,
                    data_options: Mapping[str, Any] | None = None, subset: int | None = None,
                    val_subset: int | None = None, subset_seed: int | None = None, device: torch.device | str = "cpu",
                    for_training: bool = True, batch_size: int | None = None) -> Task:
    """Build data set ``data`` with the recipe's batch sizes, seed, augmentation and data options.

    ``subset`` / ``val_subset``: sample counts of a class-stratified random draw seeded with ``subset_seed``
    (the data set's default, 0, when ``None``; see :mod:`dltricks.tasks.classification`).

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
    counts = {k: v for k, v in (("subset", subset), ("val_subset", val_subset), ("subset_seed", subset_seed))
              if v is not None}
    return build_task(data, batch_size=bs, eval_batch_size=cfg.eval_batch_size or 2 * bs, data_dir=data_dir,
                      seed=cfg.seed, augment=recipe_augment(recipe, for_training), rank=dist.rank,
                      world_size=dist.world_size, device=str(device), **counts, **options)


def _checked_model_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` checked against the type hints of model ``name``'s constructor, so that a wrong type is
    one clear error instead of a failure deep inside the model; unknown names are left to ``create_model``."""
    from dltricks.models._registry import model_entrypoint

    try:
        hints = get_type_hints(model_entrypoint(name))
    except (NameError, TypeError):  # hints that do not resolve outside the model's module stay unchecked
        hints = {}
    # Plain data (what a command line or a YAML file gives) is checked; a layer class or a function passed
    # by a Python caller is the constructor's to judge.
    plain = (str, int, float, bool, list, tuple, dict, type(None))
    return {key: coerce(value, hints[key], key=f"model {name} option {key}")
            if key in hints and isinstance(value, plain) else value for key, value in options.items()}


def model_kwargs_for_task(name: str, task: Task, model_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options registered model ``name`` is built with for ``task``: the caller's first (type-checked),
    then what the task knows the model needs, then ``num_classes``/``in_chans``. Pure, so a caller can
    record them (``dltricks eval`` rebuilds the model from them)."""
    kwargs = _checked_model_options(name, model_kwargs or {})
    for key, value in (task.extra.get("model_kwargs") or {}).items():
        kwargs.setdefault(key, value)
    kwargs.setdefault("num_classes", task.num_classes)
    if task.in_chans is not None:
        kwargs.setdefault("in_chans", task.in_chans)
    return kwargs


def task_kind(task: Task) -> str:
    """``segmentation``, ``seq2seq`` or ``other`` (classification and token tasks, which share models)."""
    extra = task.extra or {}
    if extra.get("task_type") == "segmentation":
        return "segmentation"
    return "seq2seq" if "source_vocab" in extra else "other"


def check_model_kind(name: str, task: Task) -> None:
    """Refuse registered model ``name`` for ``task`` when their kinds differ (a segmentation model on
    classification data, a classifier on a segmentation data set, a seq2seq model elsewhere), before any
    model is built or any run directory is created."""
    from dltricks.models import model_info

    model_kind = model_info(name).task
    kind = task_kind(task)
    wanted = model_kind if model_kind in ("segmentation", "seq2seq") else "other"
    if wanted == kind:
        return
    what = {"segmentation": "a segmentation data set (per-pixel labels, e.g. isbi2012-membrane)",
            "seq2seq": "a sequence-to-sequence data set (e.g. dates)",
            "other": "a classification or token data set (one label per input or per token)"}
    suggestion = {"segmentation": "a segmentation model such as unet_small", "seq2seq": "a seq2seq model such as "
                  "transformer_tiny", "other": "a classification model such as small_cnn or resnet18"}[kind]
    raise ModelError(f"model {name} is a {model_kind} model and needs {what[wanted]}, but data set {task.name} is "
                     f"{what[kind]}; choose {suggestion} (`dltricks models` lists them)")


def model_for_task(name: str, task: Task, *, model_kwargs: Mapping[str, Any] | None = None,
                   seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """Create registered model ``name`` sized for ``task`` with ``seed`` set first; returns the model and
    the options it was built with (:func:`model_kwargs_for_task`).

    A value the constructor rejects (``ValueError``, e.g. a dropout rate of 5) among the caller's options
    is a :class:`ModelError` naming them.
    """
    from dltricks.models import check_model_size, create_model
    from dltricks.train.runtime import seed_everything

    check_model_kind(name, task)
    kwargs = model_kwargs_for_task(name, task, model_kwargs)
    if model_kwargs:  # options from a command line or a checkpoint: sized before anything is allocated
        check_model_size(name, kwargs)
    seed_everything(seed)
    try:
        return create_model(name, **kwargs), kwargs
    except ValueError as err:
        if isinstance(err, DltricksError) or not model_kwargs:
            raise
        given = ", ".join(f"{k}={v!r}" for k, v in model_kwargs.items())
        problem = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"model {name} cannot be built with {given}: {problem}") from err


def prepare(model: str | nn.Module, data: str | Task, recipe: Recipe | Mapping[str, Any] | str | Path | None = None,
            *, model_kwargs: Mapping[str, Any] | None = None, data_dir: str | Path | None = None,
            data_options: Mapping[str, Any] | None = None, subset: int | None = None,
            val_subset: int | None = None, subset_seed: int | None = None,
            device: torch.device | str | None = None) -> tuple[nn.Module, Task]:
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
                               val_subset=val_subset, subset_seed=subset_seed, device=device)
    if isinstance(model, str):
        model, _ = model_for_task(model, task, model_kwargs=model_kwargs, seed=recipe.train.seed)
    elif model_kwargs:
        raise ConfigError("model_kwargs are for a model given by name; this model is already built")
    check_compatible(model, task)
    return model, task

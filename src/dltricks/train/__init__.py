"""The trainer: ``fit(model, task, recipe) -> FitResult``.

* :mod:`dltricks.train.recipe`: the typed :class:`Recipe` (every training trick is one option);
* :mod:`dltricks.train.prepare`: :func:`prepare`, the model and the task built from a recipe, and the
  check that ``fit`` makes of a task against its recipe;
* :mod:`dltricks.train.trainer`: :func:`fit` (the one training loop of dltricks), :func:`evaluate`,
  :class:`FitResult`;
* :mod:`dltricks.train.checkpoint`: exact, atomic, pickle-free checkpoints (:func:`load_weights`);
* :mod:`dltricks.tasks`: the :class:`Task` a model is trained on and the loader protocol;
* :mod:`dltricks.train.distill`, :mod:`~dltricks.train.compression`: distillation, quantization-aware training
  and prune -> fine-tune schedules, options of ``fit``;
* :mod:`dltricks.train.schedule`, :mod:`~dltricks.train.optim`, :mod:`~dltricks.train.ema`,
  :mod:`~dltricks.train.runtime`, :mod:`~dltricks.train.distributed`: the parts.
"""

from dltricks.train.checkpoint import load_weights, read_metadata, save_weights
from dltricks.train.checks import check_task_recipe
from dltricks.train.prepare import model_for_task, prepare, task_for_recipe
from dltricks.train.recipe import Recipe, describe_recipe, list_recipes, load_recipe
from dltricks.train.runtime import resolve_device, seed_everything
from dltricks.tasks.base import Task, build_task, list_tasks, register_task
from dltricks.train.trainer import FitResult, check_compatible, evaluate, fit
from dltricks.train.unlabelled import Unlabelled, UnlabelledConfig

__all__ = ["fit", "prepare", "task_for_recipe", "model_for_task", "check_task_recipe", "FitResult", "evaluate",
           "check_compatible", "Recipe", "load_recipe", "list_recipes", "describe_recipe", "Task", "build_task",
           "list_tasks", "register_task", "load_weights", "save_weights", "read_metadata", "resolve_device",
           "seed_everything", "Unlabelled", "UnlabelledConfig"]

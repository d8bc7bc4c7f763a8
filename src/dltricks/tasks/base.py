"""What the trainer needs to know about a problem besides the model: a :class:`Task`.

A task bundles the training and evaluation loaders with the loss and the per-batch metrics, so one
trainer serves classification, segmentation and sequence problems. The modules of
:mod:`dltricks.tasks` register task builders by name (``@register_task("mnist")``); importing the package
registers them all, and the CLI's ``--data NAME`` finds them with :func:`build_task`.

Loader protocol (what ``train_loader`` and ``val_loader`` must provide):

* ``len(loader)``: batches per epoch on this rank;
* ``loader.iter_epoch(epoch, start_batch=0)``: yields ``(inputs, targets)``; ``inputs`` is a tensor or
  a tuple of tensors (the model is called as ``model(*inputs)``); the batch order and any random
  augmentation must be a pure function of ``(seed, epoch, batch index)`` so that a resumed run sees
  exactly the batches an uninterrupted one would.
* ``loader.num_samples``: samples per epoch on this rank (for images/s);
* ``loader.batch_size`` (optional): samples per batch, checked against the recipe by ``fit``;
* ``loader.stream`` (optional, default ``False``): ``True`` for a stream of fresh batches with no natural
  epoch (the synthetic sequence tasks). ``len(loader)`` is then only the evaluation period, and the run
  is measured in optimizer steps: ``fit`` needs ``train.steps`` for such a task.

A task may also bring its own evaluation (``Task.evaluate``): sliding windows and flips for ISBI, greedy
decoding for dates, accuracy at several lengths for induction heads. ``fit`` then calls it after each
evaluation period instead of averaging ``batch_metrics`` over ``val_loader``; see :class:`EvalContext`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from dltricks.errors import ArgumentError, ConfigError, DataError, did_you_mean

__all__ = ["Loader", "Task", "EvalContext", "TaskEvaluate", "register_task", "build_task", "check_task_options",
           "list_tasks", "classification_loss", "classification_metrics"]

Batch = tuple[Any, torch.Tensor]


@dataclass(frozen=True)
class EvalContext:
    """What a task-defined evaluation gets besides the model (already in eval mode on ``device``).

    ``precision`` is the trainer's autocast policy (an object with ``autocast()``, or ``None``);
    ``channels_last`` says whether 4-D inputs should be NHWC; ``epoch`` is the evaluation period; ``last`` is
    true for the evaluation of the trained model at the end of the run (after the last step, or when early
    stopping, a reached target or a callback ends it), where a task may measure more than it does every
    period (induction heads: the accuracy at every test length).
    """

    device: torch.device
    precision: Any = None
    channels_last: bool = False
    epoch: int = 0
    last: bool = False

    def autocast(self) -> Any:
        import contextlib

        return self.precision.autocast() if self.precision is not None else contextlib.nullcontext()

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


TaskEvaluate = Callable[[torch.nn.Module, EvalContext], dict[str, float]]


class Loader(Protocol):
    num_samples: int

    def __len__(self) -> int: ...

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]: ...


def _logits(output: Any) -> torch.Tensor:
    """Main logits of a model output: models with auxiliary heads return (logits, aux...)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return _logits(output[0])
    if isinstance(output, dict):
        return output["logits"]
    raise TypeError(f"cannot find logits in model output of type {type(output).__name__}")


def classification_loss(output: Any, target: torch.Tensor, *, label_smoothing: float = 0.0,
                        aux_weight: float = 0.3) -> torch.Tensor:
    """Cross-entropy with optional label smoothing; ``target`` is class indices ``(B,)`` or
    probabilities ``(B, K)`` (after mixup/cutmix). Auxiliary heads (GoogLeNet, Inception v3) add
    ``aux_weight`` times their own loss, as in Szegedy et al. 2015."""
    loss = F.cross_entropy(_logits(output).float(), target, label_smoothing=label_smoothing)
    if isinstance(output, (tuple, list)) and len(output) > 1:
        for aux in output[1:]:
            if isinstance(aux, torch.Tensor):
                loss = loss + aux_weight * F.cross_entropy(aux.float(), target, label_smoothing=label_smoothing)
    return loss


def classification_metrics(output: Any, target: torch.Tensor) -> dict[str, float]:
    """Per-batch sums: ``loss`` (summed cross-entropy), ``correct`` and ``count``."""
    logits = _logits(output).float()
    hard = target.argmax(dim=1) if target.dim() == 2 else target
    return {
        "loss": F.cross_entropy(logits, target, reduction="sum").item(),
        "correct": (logits.argmax(dim=1) == hard).sum().item(),
        "count": float(target.shape[0]),
    }


@dataclass
class Task:
    """A problem the trainer can fit: loaders, loss and metrics.

    Attributes:
        name: data set / task name (shown in logs and reports).
        train_loader, val_loader: objects following the loader protocol above (``val_loader`` may be
            ``None``).
        num_classes: size of the model output the task expects.
        in_chans: channels of image inputs (``None`` for token inputs).
        loss: ``fn(output, target, *, label_smoothing) -> scalar``; defaults to cross-entropy.
        batch_metrics: ``fn(output, target) -> dict of sums`` including ``count``; the trainer sums
            them over batches (and ranks) and divides by ``count``; ``correct`` is reported as
            ``accuracy``. Defaults to :func:`classification_metrics`.
        classes: class names, when known (for per-class reports).
        input_shape: shape of one input sample, e.g. ``(1, 28, 28)``.
        extra: anything task-specific (normalisation statistics, vocabularies...).
        evaluate: the task's own evaluation, ``fn(model, ctx: EvalContext) -> {metric: float}`` (means over
            the validation data), or ``None`` to average ``batch_metrics`` over ``val_loader``. ``fit``
            reports each metric as ``val_<metric>``; ``accuracy`` and ``loss`` keep their usual meaning.
        options: how the task was built (``build_task`` records its keyword arguments: ``batch_size``,
            ``eval_batch_size``, ``seed``, ``augment`` and the data options); ``fit`` checks them against
            the recipe and refuses a task that contradicts it. Empty for a hand-made task.
    """

    name: str
    train_loader: Loader
    val_loader: Loader | None
    num_classes: int
    in_chans: int | None = None
    loss: Callable[..., torch.Tensor] = classification_loss
    batch_metrics: Callable[[Any, torch.Tensor], dict[str, float]] = classification_metrics
    classes: tuple[str, ...] = ()
    input_shape: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    evaluate: TaskEvaluate | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def stream(self) -> bool:
        """True when the training loader streams fresh batches (runs are measured in steps)."""
        return bool(getattr(self.train_loader, "stream", False))


TaskBuilder = Callable[..., Task]
_task_builders: dict[str, TaskBuilder] = {}
_task_help: dict[str, str] = {}
_task_options: dict[str, type] = {}


def register_task(name: str, *, help: str = "", options: type | None = None) -> Callable[[TaskBuilder], TaskBuilder]:
    """Register ``builder(*, batch_size, data_dir=None, seed=0, augment=None, rank=0, world_size=1,
    device='cpu', **options) -> Task`` under ``name``.

    ``options``: the typed dataclass of the task's own options (its fields may be passed as keyword
    arguments, and on the command line as ``--data-opt KEY=VALUE``; see :func:`check_task_options`).
    """

    def decorator(builder: TaskBuilder) -> TaskBuilder:
        _task_builders[name] = builder
        if options is not None:
            _task_options[name] = options
        _task_help[name] = help or (builder.__doc__ or "").strip().splitlines()[0] if (help or builder.__doc__) else ""
        return builder

    return decorator


def list_tasks() -> dict[str, str]:
    """Registered task names with a one-line description."""
    return dict(sorted(_task_help.items()))


def _split_name(name: str) -> tuple[str, str | None]:
    """``"imagefolder:/path/to/folder_or.zip"`` -> ``("imagefolder", "/path/...")`` (shorthand for
    ``data_dir=/path/...``); any other name -> ``(name, None)``."""
    if ":" in name and name not in _task_builders:
        prefix, path = name.split(":", 1)
        if prefix in _task_builders and path:
            return prefix, path
    return name, None


def check_task_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check ``--data-opt`` style options against the task's option dataclass; returns them unchanged.

    Unknown keys and wrong types raise :class:`ConfigError` naming what was expected; a task without
    declared options accepts none.
    """
    from dltricks.config import from_dict

    if not options:
        return options
    resolved, _ = _split_name(name)
    cls = _task_options.get(resolved)
    if cls is None:
        raise ConfigError(f"data set {resolved!r} takes no data options (got {', '.join(sorted(options))}); "
                          f"data sets with options: {', '.join(sorted(_task_options)) or '(none)'}")
    from_dict(cls, options, prefix=f"{resolved}.")
    return options


def build_task(name: str, **options: Any) -> Task:
    """Build a registered task; an unknown name lists the closest ones."""
    if not isinstance(name, str):
        raise ArgumentError(f"build_task: name must be a data set name such as 'mnist-embedded', got "
                            f"{type(name).__name__}; list_tasks() gives them all")
    resolved, path = _split_name(name)
    if path is not None:
        if options.get("data_dir") not in (None, path):
            raise DataError(f"data set {name!r} names a path and data_dir={options['data_dir']!r} names another")
        options["data_dir"] = path
        name = resolved
    if name not in _task_builders:
        raise DataError(f"unknown data set {name!r}.{did_you_mean(name, _task_builders)} "
                        f"Known: {', '.join(sorted(_task_builders)) or '(none)'}")
    task = _task_builders[name](**options)
    task.options = {**options, "data": name}
    return task

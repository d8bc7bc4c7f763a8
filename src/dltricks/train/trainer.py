"""The training loop: ``fit(model, task, recipe) -> FitResult``.

One readable loop in which every trick of the recipe is one option (see :mod:`dltricks.train.recipe`).
An optimizer step, in order:

1. for each of the ``accum_steps`` micro-batches of the step: forward under autocast (``train.amp``),
   loss with label smoothing, a NaN/Inf check of the loss, ``backward`` of ``loss / micro-batches``
   (scaled by the GradScaler for float16; under DDP the gradient all-reduce happens only on the last
   micro-batch);
2. unscale and clip the gradients (``train.grad_clip``, by global norm or by value);
3. set the learning rate of the schedule for this step (:class:`~dltricks.train.schedule.LRSchedule`)
   and step the optimizer (through the GradScaler, which skips steps with Inf gradients in float16);
4. update the EMA of the weights (``ema.decay``).

After each epoch the model (the EMA weights when EMA is on) is evaluated on the validation loader, a line
goes to ``metrics.jsonl``/``metrics.csv`` and the full state to ``checkpoints/last.safetensors`` (rank 0
only); early stopping looks at the chosen validation metric. With ``train.log: tensorboard`` the step and epoch
numbers, the hyper-parameters and a few images also go to TensorBoard (:mod:`dltricks.train.tracking`).

Compression while training (``compress``, :mod:`dltricks.train.compression`): with ``compress.qat`` the model is
replaced by a fake-quantized copy before the first step and converted to int8 after the last; with
``compress.prune_amounts`` the weights are pruned at the scheduled epoch boundaries (the epoch's record says
``sparsity`` and the validation metrics right after pruning, ``pruned_val_*``) and the masks made permanent at
the end.

``fit`` is a library function first: the CLI, the evidence engine and the hyper-parameter search call it
in-process. It keeps no state between calls; the only global things it touches are the RNG seeds
(``train.seed``) and, inside the call only, the deterministic-algorithm flags.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dltricks.config import to_dict
from dltricks.errors import ArgumentError, CheckpointError, ConfigError, ModelError, TrainingError
from dltricks.train.checkpoint import (CHECKPOINT_FORMAT, WEIGHTS_FORMAT, optimizer_from_flat, optimizer_to_flat,
                                       read_tensors, restore_rng_state, rng_state_to_flat, save_weights, unwrap,
                                       write_tensors)
from dltricks.train.batchnorm import recalibrate_batchnorm
from dltricks.train.checkpoint import check_checkpoint_meta, check_tensors
from dltricks.train.distill import FeatureHint, TeacherCache, distillation_loss, load_teacher
from dltricks.train.distributed import DistInfo, all_reduce_sum
from dltricks.train.ema import ModelEma
from dltricks.train.finetune import apply_finetune, is_active
from dltricks.train.optim import build_optimizer
from dltricks.train.recipe import Recipe, load_recipe
from dltricks.train.runtime import (Precision, deterministic_mode, resolve_channels_last, resolve_device,
                                    resolve_precision, seed_everything)
from dltricks.train.checks import check_task_recipe
from dltricks.train.compression import PruneSchedule, convert_qat, prepare_qat
from dltricks.train.schedule import LRSchedule
from dltricks.train.unlabelled import Unlabelled, UnlabelledObjective
from dltricks.train.tracking import RunTracker, inference_meta, write_status
from dltricks.tasks.base import EvalContext, Task, _logits, classification_metrics
from dltricks.utils.io import atomic_write_json, atomic_write_text, check_free_space, check_writable_dir
from dltricks.utils.lock import run_dir_lock
from dltricks.utils.progress import ProgressBar

__all__ = ["fit", "FitResult", "evaluate", "check_compatible", "RESUMABLE_KEYS"]

# Recipe keys that may differ between a checkpoint and the run resuming it (they do not change the
# trajectory of the weights). Any other difference is refused: the result would not be the run the
# checkpoint belongs to.
RESUMABLE_KEYS = ("train.max_steps", "train.device", "train.log", "checkpoint.")
# Keys that may differ too, because they only say how long the run is: resuming with a new value extends (or
# shortens) it, and the learning-rate schedule is recomputed over the new length (a finished run resumed with
# more epochs goes on training; the steps already taken keep the rates they had).
EXTENDABLE_KEYS = ("train.epochs", "train.steps")


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: one record per epoch: ``epoch`` (1-based), ``step`` (optimizer steps so far), ``lr`` (of
            the epoch's last step), ``train_loss`` (the optimised objective, label smoothing included),
            ``train_accuracy``, ``val_loss``, ``val_accuracy`` (when evaluated), ``images_per_s`` (training
            throughput of this rank), ``train_time_s``, ``epoch_time_s`` (training + evaluation) and
            ``time_s`` (cumulative). In ``overfit_batch`` mode one record per step instead.
        final: the last record plus ``best_<metric>``, ``best_epoch``, ``epochs``, ``steps``,
            ``stop_reason`` and ``time_s``.
        model: the evaluated model: the EMA copy when ``ema.decay > 0``, else the trained model itself
            (without DDP wrapper).
        run_dir: where logs and checkpoints went (``None`` when not written).
        stop_reason: ``completed``, ``early_stop``, ``target_reached``, ``max_steps``, ``callback``,
            ``overfit_reached`` or ``overfit_not_reached``.
        float_model: with ``compress.qat``, the trained fake-quantized model ``model`` (int8) was converted
            from; else ``None``.
    """

    history: list[dict[str, Any]]
    final: dict[str, Any]
    model: nn.Module
    run_dir: Path | None = None
    stop_reason: str = "completed"
    float_model: nn.Module | None = None

    @property
    def val_accuracy(self) -> float | None:
        return self.final.get("val_accuracy")

    @property
    def val_loss(self) -> float | None:
        return self.final.get("val_loss")

    @property
    def train_loss(self) -> float | None:
        return self.final.get("train_loss")


def _to_device(x: Any, device: torch.device, channels_last: bool) -> Any:
    if isinstance(x, torch.Tensor):
        if x.device != device:
            x = x.to(device, non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
    if isinstance(x, (tuple, list)):
        return tuple(_to_device(t, device, channels_last) for t in x)
    return x


def _call(model: nn.Module, x: Any) -> Any:
    return model(*x) if isinstance(x, tuple) else model(x)


def _model_name(model: nn.Module) -> str:
    return getattr(unwrap(model), "model_name", type(unwrap(model)).__name__)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, task: Task | None = None, *, epoch: int = 0,
             device: torch.device | str | None = None, precision: Precision | None = None,
             channels_last: bool = False, confusion: bool = False, tta_flip: bool = False) -> dict[str, Any]:
    """Mean metrics of ``model`` over one pass of ``loader`` (sums added across DDP ranks).

    ``tta_flip`` (test-time augmentation, ``train.tta_flip``): the logits of a 4-D image batch are the mean of
    the model's logits for the images and for their mirror images (``x.flip(-1)``).

    Returns ``loss``, ``accuracy`` (when the task reports ``correct``), any other metric of
    ``task.batch_metrics`` divided by ``count``, and ``count``. With ``confusion=True`` (classification)
    also ``confusion``: a ``(K, K)`` int64 tensor, rows = true class, columns = prediction, and
    ``per_class_accuracy``: a list of K recalls (``nan`` for a class absent from the data).
    """
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"evaluate: model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(getattr(loader, "iter_epoch", None)):
        raise ArgumentError(f"evaluate: loader must be a loader with iter_epoch(epoch) (e.g. task.val_loader), got "
                            f"{type(loader).__name__}")
    if task is not None and not isinstance(task, Task):
        raise ArgumentError(f"evaluate: task must be a dltricks.tasks.Task or None, got {type(task).__name__}")
    metrics_fn = task.batch_metrics if task is not None else classification_metrics
    model_device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device) if device is not None else model_device
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    matrix = None
    try:
        for x, y in loader.iter_epoch(epoch):
            x = _to_device(x, device, channels_last)
            y = _to_device(y, device, False)
            with (precision.autocast() if precision is not None else contextlib.nullcontext()):
                out = _call(model, x)
                if tta_flip and isinstance(x, torch.Tensor) and x.dim() == 4 and isinstance(out, torch.Tensor):
                    out = 0.5 * (out + model(x.flip(-1)))
            for k, v in metrics_fn(out, y).items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if confusion:
                logits = _logits(out)
                K = logits.shape[1]
                hard = y.argmax(dim=1) if y.dim() == 2 else y
                pairs = hard.flatten().long() * K + logits.argmax(dim=1).flatten()  # (B,) true*K + pred
                counts = torch.bincount(pairs, minlength=K * K).cpu()
                matrix = counts if matrix is None else matrix + counts
    finally:
        model.train(was_training)
    sums = all_reduce_sum(sums, device=device)
    count = sums.pop("count", 0.0)
    if count == 0:
        raise TrainingError("evaluation data is empty (0 samples)")
    result: dict[str, Any] = {}
    for k, v in sums.items():
        result["accuracy" if k == "correct" else k] = v / count
    result["count"] = int(count)
    if confusion and matrix is not None:
        K = int(math.isqrt(matrix.numel()))
        if DistInfo.current().enabled:
            import torch.distributed as dist

            t = matrix.to(device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(t)
            matrix = t.cpu()
        matrix = matrix.view(K, K)  # (true, predicted)
        totals = matrix.sum(dim=1)
        result["confusion"] = matrix
        result["per_class_accuracy"] = [float(matrix[i, i] / totals[i]) if totals[i] > 0 else float("nan")
                                        for i in range(K)]
    return result


def check_compatible(model: nn.Module, task: Task, *, device: torch.device | str | None = None) -> None:
    """Run the model on two samples of the task's data (eval mode, no gradients) and raise a
    :class:`~dltricks.errors.ModelError` that names the model and the data when they do not fit: input
    channels, too small images, a classifier of the wrong width, an output the task's loss cannot take (a
    segmentation model on classification data). Touches no RNG and no BN statistics."""
    loader = task.val_loader if task.val_loader is not None else task.train_loader
    name = _model_name(model)
    try:
        x, y = next(iter(loader.iter_epoch(0)))
    except StopIteration as err:
        raise ModelError(f"data set {task.name} yields no batches") from err
    device = torch.device(device) if device is not None else next((p.device for p in model.parameters()),
                                                                   torch.device("cpu"))
    x = _to_device(x[:2] if isinstance(x, torch.Tensor) else tuple(t[:2] for t in x), device, False)
    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else tuple(tuple(t.shape) for t in x)
    in_chans = getattr(unwrap(model), "in_chans", None)
    if isinstance(x, torch.Tensor) and x.dim() == 4 and isinstance(in_chans, int) and in_chans != x.shape[1]:
        raise ModelError(f"model {name} takes {in_chans}-channel input but data set {task.name} has "
                         f"{x.shape[1]} channels (input {shape}); build the model with in_chans={x.shape[1]}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = _call(model, x)
    except (ValueError, RuntimeError, TypeError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"model {name} cannot take inputs of data set {task.name} (shape {shape}): {message}") from err
    finally:
        model.train(was_training)
    logits = _logits(out)
    if task.extra.get("output") == "embedding":  # e.g. few-shot episodes: the loss compares embeddings
        return
    # Classifiers/segmenters put classes on dim 1 ((B, K) or (B, K, H, W)); sequence models on the last dim.
    if logits.dim() >= 2 and task.num_classes not in (logits.shape[1], logits.shape[-1]):
        raise ModelError(f"model {name} outputs {logits.shape[1]} classes but data set {task.name} has "
                         f"{task.num_classes}; build it with num_classes={task.num_classes}")
    y = _to_device(y[:2] if isinstance(y, torch.Tensor) else tuple(t[:2] for t in y), device, False)
    try:
        with torch.no_grad():
            task.loss(out, y, label_smoothing=0.0)
    except (ValueError, RuntimeError, TypeError, IndexError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        out_shape = tuple(logits.shape)
        raise ModelError(f"model {name} gives outputs of shape {out_shape} that the loss of data set {task.name} "
                         f"cannot take ({message}); is it a model of the right kind for this data?") from err


def _recipe_differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k), current.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys += _recipe_differences(a, b, prefix + k + ".")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def _same_record(saved: Any, now: Any, *, partial: bool = False) -> bool:
    """Whether a checkpoint's record (model, options, data) is the current run's. With ``partial`` (the data
    record) only the keys both have are compared, so that a run written before a key was recorded still resumes,
    and folders are compared as resolved paths."""
    now = json.loads(json.dumps(now))
    if not (partial and isinstance(saved, dict) and isinstance(now, dict)):
        return saved == now
    for key in saved.keys() & now.keys():
        a, b = saved[key], now[key]
        if key == "data_dir" and isinstance(a, str) and isinstance(b, str):
            a, b = str(Path(a).resolve()), str(Path(b).resolve())
        if a != b:
            return False
    return True


class _Trainer:
    """The state of one :func:`fit` call (see the module docstring for the loop)."""

    def __init__(self, model: nn.Module, task: Task, recipe: Recipe, *, run_dir: Path | None,
                 progress: bool | None, log: Callable[[str], None] | None,
                 on_epoch: Callable[[dict[str, Any]], bool | None] | None, meta: Mapping[str, Any] | None,
                 teacher: nn.Module | None = None, unlabelled: Unlabelled | None = None) -> None:
        self.recipe, self.task = recipe, task
        cfg = recipe.train
        self.dist = DistInfo.current()
        self.device = resolve_device(cfg.device, local_rank=self.dist.local_rank)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress, self.log, self.on_epoch = progress, log, on_epoch
        self.meta = dict(meta or {})
        self.meta.setdefault("model", _model_name(model))
        self.meta.setdefault("data", task.name)

        if len(task.train_loader) == 0:
            raise ConfigError(f"data set {task.name}: the training loader yields no batches")
        if (recipe.early_stop.patience or recipe.early_stop.target is not None) and not (
                task.val_loader is not None or task.evaluate is not None):
            raise ConfigError("early_stop.patience: early stopping needs a validation split, and this task has none")

        self.raw_model = unwrap(model).to(self.device)
        self.qat_example: torch.Tensor | None = None  # compress.qat: the batch the int8 conversion is checked on
        if recipe.compress.qat:
            self.raw_model = self._prepare_qat(task)
        self.channels_last = resolve_channels_last(cfg.channels_last, self.raw_model)
        if self.channels_last:
            self.raw_model.to(memory_format=torch.channels_last)
        self.precision = resolve_precision(cfg.amp, cfg.amp_dtype, self.device)
        self.scaler = self.precision.scaler() if self.precision.needs_scaler else None
        self.optimizer = build_optimizer(self.raw_model, recipe.optim, finetune=recipe.finetune)
        self.model: nn.Module = self.raw_model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.raw_model, device_ids=ids)
        self.ema = (ModelEma(self.raw_model, decay=recipe.ema.decay, warmup=recipe.ema.warmup)
                    if recipe.ema.decay > 0 else None)

        self.batches_per_epoch = len(task.train_loader)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.accum_steps)
        if task.stream and not cfg.steps and not cfg.overfit_batch:
            raise ConfigError(f"train.steps: data set {task.name} streams fresh batches and has no epochs; give the "
                              "length of the run in optimizer steps, e.g. --set train.steps=2000")
        # A step-based run (train.steps) is cut into evaluation periods of one loader length each.
        self.num_epochs = math.ceil(cfg.steps / self.steps_per_epoch) if cfg.steps else cfg.epochs
        if cfg.overfit_batch:
            self.schedule = LRSchedule(recipe.schedule, cfg.overfit_steps, 1)
        else:
            self.schedule = LRSchedule(recipe.schedule, self.steps_per_epoch, self.num_epochs, total=cfg.steps)
        self.label_smoothing = 0.0 if cfg.overfit_batch else cfg.label_smoothing
        # compress.prune_amounts: magnitude pruning at epoch boundaries, masks kept while training.
        self.pruning = (PruneSchedule(self.raw_model, recipe.compress, self.num_epochs)
                        if recipe.compress.prune_amounts and not cfg.overfit_batch else None)
        self._prune_record: dict[str, Any] = {}
        # Knowledge distillation (recipe.distill, or fit(teacher=...)): a frozen teacher sees the same inputs.
        self.teacher: nn.Module | None = None
        if teacher is not None or recipe.distill.teacher:
            self.teacher = load_teacher(teacher if teacher is not None else recipe.distill.teacher, self.device)
        self.hint, self.teacher_cache = self._distill_options(recipe, task)
        # Unlabelled images (fit(unlabelled=...)): one more loss term per step (:mod:`dltricks.train.unlabelled`).
        self.unlabelled: UnlabelledObjective | None = None
        if unlabelled is not None and not cfg.overfit_batch:
            self.unlabelled = UnlabelledObjective(unlabelled, self.raw_model, task, batch_size=cfg.batch_size,
                                                  total_steps=cfg.steps or self.steps_per_epoch * self.num_epochs,
                                                  device=self.device)
            if self.unlabelled.parameters():  # DANN's domain classifier trains with the model
                self.optimizer.add_param_group({"params": self.unlabelled.parameters()})

        # Loop position and bookkeeping (everything here goes into checkpoints).
        self.epoch = 0  # current epoch (0-based)
        self.batch = 0  # next batch index within the epoch
        self.step = 0  # optimizer steps taken
        self.sums: dict[str, float] = {}
        self._pending_correct: torch.Tensor | None = None
        self.history: list[dict[str, Any]] = []
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self._evaluated_last = False  # whether the latest evaluation was the end-of-run one (EvalContext.last)
        self.elapsed = 0.0  # seconds of training + evaluation in earlier sessions of this run
        self.lr = recipe.optim.lr * self.schedule(0)
        self.last_checkpoint: str | None = None
        self.extended: dict[str, Any] = {}  # EXTENDABLE_KEYS whose value a resumed checkpoint had otherwise
        self.partial: dict[str, Any] = {}  # validation metrics of a run stopped inside an epoch (max_steps)
        self.tracker = RunTracker(None)  # TensorBoard (train.log), opened by run() on rank 0
        self.writing = False  # whether this call has written into run_dir (after the checks of a resume)

    # ------------------------------------------------------------------------------------------
    # Files

    @property
    def writes(self) -> bool:
        return self.run_dir is not None and self.dist.is_main

    @property
    def checkpoint_path(self) -> Path | None:
        return self.run_dir / "checkpoints" / "last.safetensors" if self.run_dir is not None else None

    def _write_run_config(self) -> None:
        if not self.writes:
            return
        from dltricks import __version__

        config = {"meta": self.meta, "recipe": to_dict(self.recipe), "dltricks": __version__,
                  "torch": torch.__version__, "python": platform.python_version(), "device": str(self.device),
                  "world_size": self.dist.world_size}
        atomic_write_json(self.run_dir / "config.json", config)
        import yaml

        atomic_write_text(self.run_dir / "recipe.yaml", yaml.safe_dump(to_dict(self.recipe), sort_keys=False))

    def _write_metrics(self) -> None:
        if not self.writes:
            return
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        columns: list[str] = []
        for record in self.history:
            columns += [k for k in record if k not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.run_dir / "metrics.csv", buffer.getvalue())

    def _state_meta(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step, "sums": self.sums,
                "history": self.history, "best": self.best, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "elapsed": self.elapsed + self._session_time(),
                "ema_updates": self.ema.num_updates if self.ema else 0}

    def _session_time(self) -> float:
        return time.perf_counter() - self.t_start

    def save_checkpoint(self) -> None:
        """Write the full state to ``checkpoints/last.safetensors`` (all ranks call; rank 0 writes)."""
        if self.run_dir is None:
            return
        self._flush_metrics()
        rng_tensors, rng_meta = rng_state_to_flat(self.device)  # a collective under DDP
        if not self.dist.is_main:
            return
        tensors = {f"model/{k}": v for k, v in self.raw_model.state_dict().items()}
        optim_tensors, optim_meta = optimizer_to_flat(self.optimizer)
        tensors.update(optim_tensors)
        tensors.update(rng_tensors)
        if self.ema is not None:
            tensors.update({f"ema/{k}": v for k, v in self.ema.state_dict().items()})
        meta = {"format": CHECKPOINT_FORMAT, "run": self.meta, "recipe": to_dict(self.recipe),
                "state": self._state_meta(), "optimizer": optim_meta, "rng": rng_meta,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "world_size": self.dist.world_size, "torch": torch.__version__}
        write_tensors(self.checkpoint_path, tensors, meta)
        self.last_checkpoint = f"epoch {self.epoch + (1 if self.batch else 0)}, step {self.step}"

    def load_checkpoint(self, path: Path) -> None:
        tensors, meta = read_tensors(path)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not a dltricks training checkpoint "
                                  f"(format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r})")
        check_checkpoint_meta(meta, path)  # types and ranges of every section, before any of it is used
        differences = [k for k in _recipe_differences(meta.get("recipe", {}), to_dict(self.recipe))
                       if not any(k == a or (a.endswith(".") and k.startswith(a)) for a in RESUMABLE_KEYS)]
        saved_recipe = meta.get("recipe", {})
        self.extended = {k: saved_recipe.get(k.split(".")[0], {}).get(k.split(".")[1])
                         for k in differences if k in EXTENDABLE_KEYS}
        differences = [k for k in differences if k not in EXTENDABLE_KEYS]
        if differences:
            raise CheckpointError(f"cannot resume {path}: the recipe differs from the checkpoint's in "
                                  f"{', '.join(differences[:5])}; resume with the same recipe (see "
                                  f"{path.parent.parent / 'recipe.yaml'}) or start a new run")
        saved_run = meta.get("run", {})
        for key, what in (("model", "model"), ("model_kwargs", "model options"), ("data", "data")):
            if key in saved_run and key in self.meta and not _same_record(saved_run[key], self.meta[key],
                                                                          partial=key == "data"):
                raise CheckpointError(f"cannot resume {path}: it was trained with {what} {saved_run[key]!r}, not "
                                      f"{self.meta[key]!r}")
        if meta.get("world_size", 1) != self.dist.world_size:
            raise CheckpointError(f"cannot resume {path}: written by {meta.get('world_size')} process(es), "
                                  f"resumed with {self.dist.world_size}; the data shards would differ")
        groups: dict[str, dict[str, torch.Tensor]] = {"model/": {}, "ema/": {}, "optim/": {}}
        for key, value in tensors.items():
            for prefix, bucket in groups.items():
                if key.startswith(prefix):
                    bucket[key[len(prefix):]] = value
        state = meta["state"]
        self._check_resume_state(path, tensors, groups, state)
        try:
            self.raw_model.load_state_dict(groups["model/"])
        except RuntimeError as err:
            raise CheckpointError(f"cannot resume {path}: its weights do not fit this model "
                                  f"({str(err).splitlines()[0]})") from err
        optimizer_from_flat(self.optimizer, groups["optim/"], meta["optimizer"])
        if self.ema is not None:
            if not groups["ema/"]:
                raise CheckpointError(f"cannot resume {path}: it has no EMA weights")
            self.ema.load_state_dict(groups["ema/"], state.get("ema_updates", 0))
        if self.scaler is not None and meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        restore_rng_state(tensors, meta.get("rng", {}), rank=self.dist.rank, device=self.device)
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.sums = {k: float(v) for k, v in state["sums"].items()}
        self.history = list(state["history"])
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self.elapsed = float(state.get("elapsed", 0.0))
        self.last_checkpoint = f"epoch {self.epoch + (1 if self.batch else 0)}, step {self.step}"

    def _check_resume_state(self, path: Path, tensors: Mapping[str, torch.Tensor],
                            groups: Mapping[str, Mapping[str, torch.Tensor]], state: Mapping[str, Any]) -> None:
        """Refuse a checkpoint whose tensors or loop position do not belong to this run, before any of it is
        loaded: weights (and EMA weights) of exactly this model's dtypes and shapes, optimizer and RNG
        tensors of the expected kinds, a position inside this run's epochs."""
        reference = self.raw_model.state_dict()
        check_tensors(groups["model/"], reference, path, "its weights")
        if groups["ema/"]:
            check_tensors(groups["ema/"], reference, path, "its EMA weights")
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for key, value in groups["optim/"].items():
            index, _, name = key.partition("/")
            param = params[int(index)] if index.isdigit() and int(index) < len(params) else None
            if param is None or not name or not value.is_floating_point() or (
                    value.shape != param.shape and value.numel() != 1) or (
                    value.shape == param.shape and value.dtype != param.dtype):
                raise CheckpointError(f"cannot resume {path}: optimizer tensor {key!r} ({str(value.dtype)}, "
                                      f"{list(value.shape)}) does not belong to this model's parameters")
        rng_length = torch.get_rng_state().numel()
        for key, value in tensors.items():
            if key.startswith("rng/torch/") and (value.dtype != torch.uint8 or value.shape != (rng_length,)):
                raise CheckpointError(f"cannot resume {path}: {key} is not a torch generator state")
            if key.startswith("rng/cuda/") and (value.dtype != torch.uint8 or value.dim() != 1):
                raise CheckpointError(f"cannot resume {path}: {key} is not a CUDA generator state")
            if key == "rng/numpy" and (value.dtype != torch.int64 or value.shape != (624,)):
                raise CheckpointError(f"cannot resume {path}: {key} is not a NumPy generator state")
        accum = self.recipe.train.accum_steps
        epoch, batch, step = state["epoch"], state["batch"], state["step"]
        problems = [f"batch {batch} of an epoch of {self.batches_per_epoch}" if batch > self.batches_per_epoch else "",
                    f"step {step} after epoch {epoch}, batch {batch}"
                    if step > epoch * self.steps_per_epoch + math.ceil(batch / accum) else "",
                    f"best epoch {state['best_epoch']} after epoch {epoch}" if state["best_epoch"] > epoch else "",
                    f"{len(state['history'])} epochs of history after {epoch}" if len(state["history"]) > epoch else ""]
        if any(problems):
            raise CheckpointError(f"cannot resume {path}: its loop state is inconsistent with this run "
                                  f"({'; '.join(p for p in problems if p)}); the file was changed or belongs to "
                                  "another run")

    # ------------------------------------------------------------------------------------------
    # One optimizer step

    def _check_loss(self, loss: torch.Tensor, where: str) -> float:
        value = loss.detach().float()
        if self.dist.enabled:
            import torch.distributed as dist

            value = value.clone()
            dist.all_reduce(value)  # every rank sees a NaN on any rank and stops at the same step
            value = value / self.dist.world_size
        number = value.item()
        if not math.isfinite(number):
            if self.last_checkpoint is not None:
                kept = f"the last good checkpoint ({self.last_checkpoint}) is kept at {self.checkpoint_path}"
            elif self.run_dir is not None:
                kept = "no checkpoint had been written yet"
            else:
                kept = "no checkpoints are written without a run directory"
            raise TrainingError(f"loss is {number} at {where}; training stopped before this step was applied, {kept}. "
                                "Usual causes: learning rate too high, float16 overflow, bad inputs; try a lower "
                                "optim.lr, train.grad_clip, or train.amp=false")
        return number

    def _optimizer_step(self) -> None:
        cfg = self.recipe.train
        if cfg.grad_clip > 0 or self.tracker.enabled:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for p in self.raw_model.parameters() if p.grad is not None]
            self.tracker.record_grad_norm(params)  # before clipping
            if cfg.grad_clip > 0 and cfg.grad_clip_mode == "norm":
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            elif cfg.grad_clip > 0:
                nn.utils.clip_grad_value_(params, cfg.grad_clip)
        self.lr = self.recipe.optim.lr * self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * group.get("lr_mult", 1.0)  # finetune.lr_mult (discriminative learning rates)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None and self.step % self.recipe.ema.every == 0:
            self.ema.update(self.raw_model)
        if self.unlabelled is not None:
            self.unlabelled.after_step(self.raw_model)

    def _forward_backward(self, x: Any, y: torch.Tensor, scale: float, where: str,
                          sync: bool, position: tuple[int, int] | None = None) -> tuple[float, Any]:
        context = self.model.no_sync() if (self.dist.enabled and not sync) else contextlib.nullcontext()
        with context:
            with self.precision.autocast():
                # A model that samples its training inputs from the targets (sliding-window detection) gets them.
                out = (self.model(x, targets=y) if getattr(self.raw_model, "takes_targets", False)
                       else _call(self.model, x))
                loss = self.task.loss(out, y, label_smoothing=self.label_smoothing)
                if self.teacher is not None:
                    loss = self._distill(x, out, loss, position)
                if self.unlabelled is not None:
                    loss = loss + self.unlabelled.loss(self.model, self.step)
            value = self._check_loss(loss, where)
            loss = loss * scale if scale != 1.0 else loss
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return value, out

    def _distill(self, x: Any, out: Any, hard_loss: torch.Tensor, position: tuple[int, int] | None) -> torch.Tensor:
        """The distillation objective (:mod:`dltricks.train.distill`) from the task's hard-label loss: soft targets,
        plus the FitNets hint when ``distill.hint_weight > 0``. ``position`` (epoch, batch) lets the teacher cache
        (``distill.cache_teacher``) find the batch's examples."""
        if self.teacher_cache is not None and position is not None:
            teacher_logits = self.teacher_cache(x, *position)
        else:
            with torch.no_grad():
                teacher_logits = _logits(_call(self.teacher, x))
        cfg = self.recipe.distill
        loss = distillation_loss(_logits(out), teacher_logits, hard_loss, temperature=cfg.temperature, alpha=cfg.alpha)
        if self.hint is not None:  # both forward passes above have filled the hint's hooks
            loss = loss + self.hint.loss()
        return loss

    def _distill_options(self, recipe: Recipe, task: Task) -> tuple[FeatureHint | None, TeacherCache | None]:
        """The FitNets hint (its regressor joins the optimizer) and the teacher-logit cache, when the recipe asks."""
        cfg = recipe.distill
        if self.teacher is None:  # cache_teacher, like temperature and alpha, does nothing without a teacher
            if cfg.hint_weight > 0:
                raise ConfigError("distill.hint_weight: there is no teacher; give distill.teacher or fit(teacher=...)")
            return None, None
        cache = TeacherCache(self.teacher, task.train_loader, data=task.name) if cfg.cache_teacher else None
        if cfg.hint_weight == 0:
            return None, cache
        if self.dist.enabled:
            raise ConfigError("distill.hint_weight: the hint's regressor is not synchronised across processes; train "
                              "with hints on one process")
        for model in (self.raw_model, self.teacher):  # a clear error before the hint's own forward passes
            check_compatible(model, task, device=self.device)
        x, _ = next(iter(task.train_loader.iter_epoch(0)))
        example = _to_device(x[:2] if isinstance(x, torch.Tensor) else tuple(t[:2] for t in x), self.device, False)
        # The regressor's initial weights come from the run's seed, not from whatever the global RNG holds now.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.train.seed)
            hint = FeatureHint(self.raw_model, self.teacher, guided_layer=cfg.guided_layer, hint_layer=cfg.hint_layer,
                               weight=cfg.hint_weight, example=example)
        self.optimizer.add_param_group({"params": list(hint.parameters())})  # trained with the student
        return hint, None

    # ------------------------------------------------------------------------------------------
    # Compression while training (recipe.compress)

    def _prepare_qat(self, task: Task) -> nn.Module:
        """``compress.qat``: the fake-quantized copy of the model that is trained instead of it (checked on the
        task's data first, so that a model that does not fit the data is not reported as a quantizer error)."""
        check_compatible(self.raw_model, task, device=self.device)
        x, _ = next(iter(task.train_loader.iter_epoch(0)))
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"compress.qat: data set {task.name} gives {len(x)} inputs per example; QAT traces "
                              "models of one input tensor")
        self.qat_example = x[:2].to(self.device)
        return prepare_qat(self.raw_model, self.qat_example, backend=self.recipe.compress.qat_backend)

    def _prune(self, epoch: int) -> dict[str, Any]:
        """``compress.prune_amounts``: prune before ``epoch`` when the schedule says so; the record of it."""
        amount = self.pruning.amount_at(epoch) if self.pruning is not None else None
        if amount is None:
            return {}
        record: dict[str, Any] = {"prune_amount": amount, "sparsity": self.pruning.prune_to(amount)}
        if self.channels_last:  # pruning made the weights (and masks) contiguous: back to the run's layout
            self.raw_model.to(memory_format=torch.channels_last)
        if self._can_evaluate:
            record.update({f"pruned_val_{k}": v for k, v in self._validate(epoch).items() if k != "count"})
        shown = (f", val loss {record['pruned_val_loss']:.4f} after pruning" if "pruned_val_loss" in record else "")
        self._emit(f"pruned to sparsity {record['sparsity']:.3f} before epoch {epoch + 1}{shown}")
        return record

    # ------------------------------------------------------------------------------------------
    # Epochs

    def _train_epoch(self, epoch: int) -> str | None:
        """Train from ``self.batch`` to the end of ``epoch``; returns a stop reason or ``None``."""
        cfg, ckpt = self.recipe.train, self.recipe.checkpoint
        loader, n, accum = self.task.train_loader, self.batches_per_epoch, cfg.accum_steps
        self.model.train()
        if is_active(self.recipe.finetune):  # frozen / thawing layer groups, frozen BN statistics
            apply_finetune(self.raw_model, self.recipe.finetune, epoch)
        t0 = time.perf_counter()
        last_shown = 0.0
        pending = 0
        stop = None
        with ProgressBar(n - self.batch, f"epoch {epoch + 1}/{self.num_epochs}",
                         enabled=self.progress if self.dist.is_main else False) as bar:
            for b, (x, y) in enumerate(loader.iter_epoch(epoch, self.batch), self.batch):
                x = _to_device(x, self.device, self.channels_last)
                y = _to_device(y, self.device, False)
                group_start = b - b % accum
                group_size = min(accum, n - group_start)
                last_in_group = b == group_start + group_size - 1
                where = f"epoch {epoch + 1}, batch {b + 1}/{n} (optimizer step {self.step + 1})"
                value, out = self._forward_backward(x, y, 1.0 / group_size, where, sync=last_in_group,
                                                    position=(epoch, b))
                self._accumulate(out, y, value)
                self.tracker.add_loss(value)
                if last_in_group:
                    self._optimizer_step()
                    self.tracker.step(self.step, lr=self.lr)
                    self.batch = b + 1
                    if cfg.steps and self.step >= cfg.steps:
                        stop = "steps_done"  # the end of a step-based run: this epoch is its last
                    elif cfg.max_steps and self.step >= cfg.max_steps:
                        stop = "max_steps"
                    elif ckpt.every_steps and self.step % ckpt.every_steps == 0 and self.batch < n:
                        self.sums["time"] = self.sums.get("time", 0.0) + time.perf_counter() - t0
                        t0 = time.perf_counter()
                        self.save_checkpoint()
                pending += 1
                if bar.enabled:
                    now = time.perf_counter()
                    if now - last_shown > 0.2 or b == n - 1 or stop:
                        self._flush_metrics()
                        s = self.sums
                        seconds = s.get("time", 0.0) + now - t0
                        shown = {"loss": s["loss"] / s["count"]}
                        if "correct" in s:
                            shown["acc"] = s["correct"] / s["count"]
                        shown["img/s"] = f"{s['count'] / max(seconds, 1e-9):,.0f}"
                        bar.advance(pending, **shown)
                        pending, last_shown = 0, now
                if stop:
                    break
        self._flush_metrics()
        self.sums["time"] = self.sums.get("time", 0.0) + time.perf_counter() - t0
        return stop

    def _accumulate(self, out: Any, y: torch.Tensor, loss_value: float) -> None:
        """Add one batch to the epoch's running sums (the objective's loss, then the task's metrics).

        For the default classification metrics the number of correct predictions stays on the device until
        it is needed (:meth:`_flush_metrics`): no extra cross-entropy and no extra device sync per step."""
        if self.task.batch_metrics is classification_metrics:
            logits = _logits(out).detach()
            hard = y.argmax(dim=1) if y.dim() == 2 else y
            correct = (logits.argmax(dim=1) == hard).sum()
            self._pending_correct = correct if self._pending_correct is None else self._pending_correct + correct
            count = float(y.shape[0])
            self.sums["count"] = self.sums.get("count", 0.0) + count
        else:
            metrics = self.task.batch_metrics(out.detach() if isinstance(out, torch.Tensor) else out, y)
            count = float(metrics["count"])
            for k, v in metrics.items():
                if k != "loss":
                    self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.sums["loss"] = self.sums.get("loss", 0.0) + loss_value * count

    def _flush_metrics(self) -> None:
        if self._pending_correct is not None:
            self.sums["correct"] = self.sums.get("correct", 0.0) + float(self._pending_correct.item())
            self._pending_correct = None

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.recipe.train
        sums = all_reduce_sum({k: v for k, v in self.sums.items() if k != "time"}, device=self.device)
        count = max(sums.get("count", 0.0), 1.0)
        train_time = self.sums.get("time", 0.0)
        record: dict[str, Any] = {"epoch": epoch + 1, "step": self.step, "lr": self.lr,
                                  "train_loss": sums.get("loss", float("nan")) / count}
        for k, v in sums.items():
            if k not in ("loss", "count"):
                record["train_accuracy" if k == "correct" else f"train_{k}"] = v / count
        if self.hint is not None:  # the FitNets term alone (train_loss includes it)
            record["train_hint_loss"] = self.hint.epoch_mean()
        t_eval = time.perf_counter()
        last = epoch + 1 >= self.num_epochs or (cfg.steps and self.step >= cfg.steps)
        self._evaluated_last = bool(last)
        if last and cfg.bn_recalibrate:
            self._recalibrate_batchnorm(epoch)
        # A run stopped by train.max_steps at an epoch's end is evaluated too, whatever eval_every says: its
        # metrics are printed and returned like those of a run stopped inside an epoch.
        at_max_steps = bool(cfg.max_steps and self.step >= cfg.max_steps)
        if self._can_evaluate and ((epoch + 1) % cfg.eval_every == 0 or last or at_max_steps):
            for k, v in self._validate(epoch, last=bool(last)).items():
                if k != "count":
                    record[f"val_{k}"] = v
        eval_time = time.perf_counter() - t_eval
        # Samples this rank trained on per second of training (data loading included, evaluation not).
        record["images_per_s"] = self.sums.get("count", 0.0) / train_time if train_time > 0 else float("nan")
        record["train_time_s"] = train_time
        record["epoch_time_s"] = train_time + eval_time
        record["time_s"] = self.elapsed + self._session_time()
        return record

    def _recalibrate_batchnorm(self, epoch: int) -> None:
        """``train.bn_recalibrate``: recompute the BatchNorm statistics of the evaluated model (the EMA copy when
        on) over the first batches of a fresh pass of the training loader (:mod:`dltricks.train.batchnorm`)."""
        model = self.ema.module if self.ema is not None else self.raw_model
        limit = self.recipe.train.bn_recalibrate

        def inputs() -> Any:
            for b, (x, _) in enumerate(self.task.train_loader.iter_epoch(epoch + 1)):
                if b >= limit:
                    return
                yield _to_device(x, self.device, self.channels_last)

        with self.precision.autocast():
            recalibrate_batchnorm(model, inputs(), forward=lambda x: _call(model, x))

    @property
    def _can_evaluate(self) -> bool:
        return self.task.val_loader is not None or self.task.evaluate is not None

    def _validate(self, epoch: int, last: bool = False) -> dict[str, Any]:
        """Validation metrics of the evaluated model (the EMA copy when on): the task's own evaluation when it
        has one, else ``batch_metrics`` averaged over ``val_loader``."""
        model = self.ema.module if self.ema is not None else self.raw_model
        if self.task.evaluate is None:
            return evaluate(model, self.task.val_loader, self.task, epoch=epoch, device=self.device,
                            precision=self.precision, channels_last=self.channels_last,
                            tta_flip=self.recipe.train.tta_flip)
        ctx = EvalContext(device=self.device, precision=self.precision, channels_last=self.channels_last, epoch=epoch,
                          last=last)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                metrics = self.task.evaluate(model, ctx)
        finally:
            model.train(was_training)
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.dist.enabled:  # each rank evaluated its shard: the mean over ranks
            summed = all_reduce_sum(metrics, device=self.device)
            metrics = {k: v / self.dist.world_size for k, v in summed.items()}
        return metrics

    def _improved(self, record: dict[str, Any]) -> bool | None:
        metric = self.recipe.early_stop.metric
        if metric not in record:
            return None
        value = record[metric]
        delta = self.recipe.early_stop.min_delta
        if self.best is None:
            better = True
        elif self.recipe.early_stop.lower_is_better:
            better = value < self.best - delta
        else:
            better = value > self.best + delta
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, record["epoch"], 0
        else:
            self.bad_epochs += 1
        return better

    def _format(self, record: dict[str, Any]) -> str:
        parts = [f"epoch {record['epoch']}/{self.num_epochs}", f"train loss {record['train_loss']:.4f}"]
        if "train_accuracy" in record:
            parts[-1] += f" acc {100 * record['train_accuracy']:.2f}%"
        if "val_loss" in record:
            parts.append(f"val loss {record['val_loss']:.4f}" +
                         (f" acc {100 * record['val_accuracy']:.2f}%" if "val_accuracy" in record else "") +
                         (f" dice {record['val_dice']:.4f}" if "val_dice" in record else ""))
        parts += [f"lr {record['lr']:.3g}", f"{record['images_per_s']:,.0f} img/s", f"{record['epoch_time_s']:.1f} s"]
        return "  ".join(parts)

    def _emit(self, text: str) -> None:
        if self.log is not None and self.dist.is_main:
            try:
                self.log(text)
            except (BrokenPipeError, ValueError):  # a closed pipe or stream: keep training, stop logging
                self.log = None

    # ------------------------------------------------------------------------------------------
    # Whole runs

    def _start(self, resume: bool) -> None:
        """Load the checkpoint of a resumed run (checked in full before anything is written into the run
        directory), or seed a new one; then open the run directory's records."""
        cfg = self.recipe.train
        checkpoint = self.checkpoint_path
        resumed = resume and checkpoint is not None and checkpoint.exists()
        if resumed:
            self.load_checkpoint(checkpoint)
        if self.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.writing = True
            write_status(self.run_dir, None)  # a failure record of an earlier session no longer holds
            self.tracker = RunTracker(self.run_dir, cfg.log)
        if resumed:
            self._write_metrics()  # drop epochs logged after the checkpoint was taken
            self._emit(f"resumed from {checkpoint} at epoch {self.epoch + 1}, batch {self.batch}, step {self.step}")
            self._extend()
        else:
            if resume and checkpoint is not None:
                self._emit(f"no checkpoint in {self.run_dir}; starting from scratch")
            seed_everything(cfg.seed + self.dist.rank)
            if cfg.data_init:
                self._data_init()
            self._write_run_config()

    def _data_init(self) -> None:
        """``train.data_init``: the model's ``init_from_data(x)`` on the first N images of the training loader's
        first epoch (a new run only; a resumed one loads its weights). Under DDP every rank takes rank 0's result;
        the EMA copy restarts from it."""
        init = getattr(self.raw_model, "init_from_data", None)
        if not callable(init):
            raise ConfigError(f"train.data_init: model {_model_name(self.raw_model)} has no init_from_data(x) method; "
                              "set train.data_init=0 (models with one: airbench_cifar)")
        wanted, images, count = self.recipe.train.data_init, [], 0
        for x, _ in self.task.train_loader.iter_epoch(0):
            images.append(x)
            count += x.shape[0]
            if count >= wanted:
                break
        init(_to_device(torch.cat(images)[:wanted], self.device, False))
        if self.dist.enabled:  # each rank saw its own shard: every rank takes rank 0's result
            import torch.distributed as dist

            for tensor in self.raw_model.state_dict().values():
                dist.broadcast(tensor, 0)
        if self.ema is not None:
            self.ema.module.load_state_dict(self.raw_model.state_dict())

    def run(self, resume: bool) -> FitResult:
        cfg = self.recipe.train
        self.t_start = time.perf_counter()
        self._start(resume)
        if cfg.overfit_batch:
            return self._overfit()

        stop = None
        while self.epoch < self.num_epochs and stop is None:
            epoch = self.epoch
            if self.pruning is not None and self.batch == 0:
                self._prune_record = self._prune(epoch)
            if self.batch < self.batches_per_epoch:
                stop = self._train_epoch(epoch)
            if stop == "max_steps" and self.batch < self.batches_per_epoch:
                break  # interrupted inside the epoch: the checkpoint below keeps the position
            record = self._end_epoch(epoch)
            record.update(self._prune_record)
            self._prune_record = {}
            self.history.append(record)
            self.tracker.epoch(record)
            self.epoch, self.batch, self.sums = epoch + 1, 0, {}
            improved = self._improved(record)
            self._emit(self._format(record))
            if improved and self.recipe.checkpoint.keep_best and self.writes:
                save_weights(self.run_dir / "checkpoints" / "best.safetensors",
                             self.ema.module if self.ema is not None else self.raw_model,
                             self._weights_meta(record))
            patience = self.recipe.early_stop.patience
            if stop is None and patience and improved is False and self.bad_epochs >= patience:
                stop = "early_stop"
                self._emit(f"early stop: {self.recipe.early_stop.metric} has not improved for {patience} "
                           f"evaluation(s); best {self.best:.4f} at epoch {self.best_epoch}")
            if stop is None and self._target_reached(record):
                stop = "target_reached"
                self._emit(f"early stop: {self.recipe.early_stop.metric} reached the target "
                           f"{self.recipe.early_stop.target:g} at epoch {record['epoch']}")
            if stop is None and self.on_epoch is not None and self.on_epoch(dict(record)):
                stop = "callback"
            if stop in ("early_stop", "target_reached", "callback") and self.task.evaluate is not None \
                    and not self._evaluated_last:
                # The run ends here: the task's end-of-run evaluation (EvalContext.last) of the final model.
                record.update({f"val_{k}": v for k, v in self._validate(epoch, last=True).items() if k != "count"})
            self._write_metrics()
            every = self.recipe.checkpoint.every_epochs
            if (every and self.epoch % every == 0) or self.epoch == self.num_epochs or stop is not None:
                self.save_checkpoint()
        if stop == "max_steps" and self.batch:
            self.save_checkpoint()
            self._evaluate_partial()
        return self._finish("completed" if stop in (None, "steps_done") else stop)

    def _extend(self) -> None:
        """Say that a resumed run got a new length (``EXTENDABLE_KEYS``) and record it in the run directory."""
        if not self.extended:
            return
        cfg = self.recipe.train
        new = {"train.epochs": cfg.epochs, "train.steps": cfg.steps}
        length = f"{cfg.steps} steps" if cfg.steps else f"{cfg.epochs} epochs"
        self._emit("extending the run: " + ", ".join(f"{k} {v} -> {new[k]}" for k, v in self.extended.items())
                   + f"; the learning-rate schedule is recomputed over {length} (the {self.step} steps taken keep "
                     "the rates they had)")
        self._write_run_config()  # config.json and recipe.yaml say the new length

    def _evaluate_partial(self) -> None:
        """Validation metrics of a run stopped inside an epoch by ``train.max_steps`` (after its checkpoint, which
        evaluation leaves alone), for the result and the summary line."""
        if not self._can_evaluate:
            return
        self.partial = {f"val_{k}": v for k, v in self._validate(self.epoch).items() if k != "count"}
        shown = "  ".join(f"{k} {v:.4f}" for k, v in self.partial.items() if isinstance(v, float))
        self._emit(f"stopped by train.max_steps at step {self.step} (epoch {self.epoch + 1}, batch "
                   f"{self.batch}/{self.batches_per_epoch}): {shown}")

    def _target_reached(self, record: Mapping[str, Any]) -> bool:
        cfg = self.recipe.early_stop
        if cfg.target is None or cfg.metric not in record:
            return False
        value = record[cfg.metric]
        return value <= cfg.target if cfg.lower_is_better else value >= cfg.target

    def _weights_meta(self, record: Mapping[str, Any] | None) -> dict[str, Any]:
        task = self.task
        return {**self.meta, "num_classes": task.num_classes, "in_chans": task.in_chans, "classes": list(task.classes),
                "input_shape": list(task.input_shape), "ema": self.ema is not None, **inference_meta(task),
                "metrics": dict(record) if record else {}, "format": WEIGHTS_FORMAT,
                **({"qat_backend": self.recipe.compress.qat_backend} if self.qat_example is not None else {})}

    def _finish(self, stop_reason: str) -> FitResult:
        final: dict[str, Any] = dict(self.history[-1]) if self.history else {"step": self.step}
        final.update(self.partial)
        metric = self.recipe.early_stop.metric
        if self.best is not None:
            final[f"best_{metric}"] = self.best
            final["best_epoch"] = self.best_epoch
        final.update({"epochs": self.epoch, "steps": self.step, "stop_reason": stop_reason,
                      "time_s": self.elapsed + self._session_time()})
        if self.pruning is not None:
            self.pruning.finish()  # the masks made permanent
            final["sparsity"] = self.pruning.pruned / self.pruning.total
        model = self.ema.module if self.ema is not None else self.raw_model
        self.tracker.finish(model, self.task, to_dict(self.recipe), final, device=self.device)
        if self.writes:  # with compress.qat: the trained fake-quantized model's state (see docs/compression.md)
            save_weights(self.run_dir / "model.safetensors", model, self._weights_meta(final))
            atomic_write_json(self.run_dir / "result.json", final)
        if self.qat_example is not None:
            int8 = convert_qat(copy.deepcopy(model).cpu(), self.qat_example.cpu())
            return FitResult(self.history, final, int8, self.run_dir, stop_reason, float_model=model)
        return FitResult(self.history, final, model, self.run_dir, stop_reason)

    def _overfit(self) -> FitResult:
        """Train on the first batch only until its loss is below ``overfit_loss``: a model, loss and
        optimizer that cannot drive one batch to ~0 have a bug (Karpathy 2019, "A recipe for training
        neural networks")."""
        cfg = self.recipe.train
        x, y = next(iter(self.task.train_loader.iter_epoch(0)))
        x = _to_device(x, self.device, self.channels_last)
        y = _to_device(y, self.device, False)
        self.model.train()
        stop = "overfit_not_reached"
        t0 = time.perf_counter()
        with ProgressBar(cfg.overfit_steps, "overfit one batch",
                         enabled=self.progress if self.dist.is_main else False) as bar:
            for step in range(cfg.overfit_steps):
                value, out = self._forward_backward(x, y, 1.0, f"overfit step {step + 1}", sync=True)
                metrics = self.task.batch_metrics(out.detach() if isinstance(out, torch.Tensor) else out, y)
                record = {"step": step + 1, "lr": self.lr, "loss": value,
                          "time_s": time.perf_counter() - t0}
                if "correct" in metrics:
                    record["accuracy"] = metrics["correct"] / metrics["count"]
                self.history.append(record)
                bar.advance(1, loss=value, **({"acc": record["accuracy"]} if "accuracy" in record else {}))
                if value < cfg.overfit_loss:
                    stop = "overfit_reached"
                    break
                self._optimizer_step()
        last = self.history[-1]
        self._emit(f"overfit one batch of {int(metrics['count'])}: loss {last['loss']:.4g} "
                   f"after {last['step']} step(s) "
                   f"({'reached' if stop == 'overfit_reached' else 'did not reach'} {cfg.overfit_loss:g})")
        self._write_metrics()
        final = dict(last)
        final.update({"steps": self.step, "stop_reason": stop, "time_s": self._session_time(),
                      "overfit_loss": cfg.overfit_loss})
        if self.writes:
            atomic_write_json(self.run_dir / "result.json", final)
        return FitResult(self.history, final, self.raw_model, self.run_dir, stop)


def fit(model: nn.Module, task: Task, recipe: Recipe | Mapping[str, Any] | str | Path | None = None, *,
        run_dir: str | Path | None = None, resume: bool = False, progress: bool | None = None,
        log: Callable[[str], None] | None = None, on_epoch: Callable[[dict[str, Any]], bool | None] | None = None,
        meta: Mapping[str, Any] | None = None, teacher: nn.Module | None = None,
        unlabelled: Unlabelled | None = None) -> FitResult:
    """Train ``model`` on ``task`` following ``recipe``.

    Args:
        model: any ``nn.Module`` whose output the task's loss accepts; moved to the recipe's device and
            trained in place.
        task: loaders, loss and metrics (:class:`~dltricks.tasks.base.Task`), built for this recipe:
            :func:`dltricks.train.prepare` builds it (and the model) from the recipe's batch sizes, seed,
            augmentation and data options. A task built with other settings is refused
            (:func:`check_task_recipe`), so a recipe is never half-applied.
        recipe: a :class:`Recipe`, a mapping of its sections, a YAML path or a shipped recipe name
            (``None``: defaults).
        run_dir: where metrics, checkpoints and final weights go (rank 0 only); ``None`` writes nothing.
        resume: continue from ``run_dir/checkpoints/last.safetensors`` when it exists (exactly where it
            stopped); starts from scratch when there is none.
        progress: show a progress bar (``None``: only when stderr is a terminal, see
            :class:`~dltricks.utils.progress.ProgressBar`).
        log: called with one summary line per epoch (and a few notes); ``None`` prints nothing.
        on_epoch: called with each epoch's record; returning ``True`` stops training (pruning in a
            hyper-parameter search).
        meta: stored in ``config.json``, checkpoints and weight files, e.g. ``{"model": "resnet18",
            "model_kwargs": {...}, "data": {...}}`` (``dltricks eval`` rebuilds the model from it).
        teacher: a trained model to distill from (instead of the recipe's ``distill.teacher`` path); the
            recipe's ``distill.temperature`` and ``distill.alpha`` apply (:mod:`dltricks.train.distill`), and its
            ``distill.hint_weight`` / ``hint_layer`` / ``guided_layer`` (FitNets hints) and ``cache_teacher``.
        unlabelled: unlabelled images and the method that uses them (semi-supervised learning, domain
            adaptation; :class:`~dltricks.train.unlabelled.Unlabelled`): each step adds their loss term to the
            task's. Not with ``resume`` (the term's state is not checkpointed); off in ``overfit_batch`` mode.

    Raises:
        TrainingError: the loss became NaN/Inf (the message names the step; no update is applied and the
            last checkpoint stays as it was).
        CheckpointError: ``resume`` with a checkpoint that does not belong to this model/recipe.
        ConfigError, ModelError: a recipe or a model that cannot work with this task.
    """
    _check_fit_arguments(model, task, recipe, run_dir=run_dir, log=log, on_epoch=on_epoch, meta=meta,
                         teacher=teacher)
    if unlabelled is not None and not isinstance(unlabelled, Unlabelled):
        raise ArgumentError(f"fit: unlabelled must be a dltricks.train.unlabelled.Unlabelled or None, got "
                            f"{type(unlabelled).__name__}")
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    check_task_recipe(task, recipe)
    if resume and run_dir is None:
        raise ConfigError("resume=True needs the run_dir whose checkpoint to continue")
    if resume and recipe.distill.hint_weight > 0:
        raise ConfigError("distill.hint_weight: a run with a FitNets hint cannot be resumed (the hint's regressor is "
                          "not checkpointed); start a new run")
    if resume and (recipe.compress.qat or recipe.compress.prune_amounts):
        key = "compress.qat" if recipe.compress.qat else "compress.prune_amounts"
        raise ConfigError(f"{key}: a run that compresses while training cannot be resumed (the fake-quant "
                          "graph and the pruning masks are not rebuilt from a checkpoint); start a new run")
    if resume and unlabelled is not None:
        raise ConfigError("resume: a run with unlabelled images cannot be resumed (the mean teacher, the domain "
                          "classifier and the unlabelled order are not checkpointed); start a new run")
    with deterministic_mode(recipe.train.deterministic):
        trainer = _Trainer(model, task, recipe, run_dir=Path(run_dir) if run_dir is not None else None,
                           progress=progress, log=log, on_epoch=on_epoch, meta=meta, teacher=teacher,
                           unlabelled=unlabelled)
        check_compatible(trainer.raw_model, task, device=trainer.device)
        if trainer.teacher is not None:
            check_compatible(trainer.teacher, task, device=trainer.device)
        with _exclusive_run_dir(trainer):
            try:
                return trainer.run(resume)
            except BaseException as err:  # Ctrl-C included: `dltricks runs` shows how the run ended
                if trainer.writing and trainer.run_dir.is_dir():
                    with contextlib.suppress(OSError):  # a full disk: the error that stopped the run is the news
                        write_status(trainer.run_dir, err)
                raise
            finally:
                trainer.tracker.close()
                if trainer.hint is not None:  # the student leaves without the hint's hooks
                    trainer.hint.close()
                if trainer.unlabelled is not None:
                    trainer.unlabelled.close()


def _check_fit_arguments(model: Any, task: Any, recipe: Any, *, run_dir: Any, log: Any, on_epoch: Any, meta: Any,
                         teacher: Any) -> None:
    """The types :func:`fit` takes, each refused with what was expected (before anything is built)."""
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"fit: model must be a torch.nn.Module, got {type(model).__name__}; build one with "
                            "dltricks.create_model(name) or dltricks.train.prepare(name, data)")
    if not isinstance(task, Task):
        hint = (f"; build it with dltricks.train.prepare(model_name, {task!r}) or dltricks.tasks.build_task"
                if isinstance(task, str) else "")
        raise ArgumentError(f"fit: task must be a dltricks.tasks.Task, got {type(task).__name__}{hint}")
    if recipe is not None and not isinstance(recipe, (Recipe, Mapping, str, Path)):
        raise ArgumentError(f"fit: recipe must be a Recipe, a mapping, a YAML path or a recipe name, got "
                            f"{type(recipe).__name__}")
    if run_dir is not None and not isinstance(run_dir, (str, Path)):
        raise ArgumentError(f"fit: run_dir must be a path (str or pathlib.Path) or None, got {type(run_dir).__name__}")
    for name, value in (("log", log), ("on_epoch", on_epoch)):
        if value is not None and not callable(value):
            raise ArgumentError(f"fit: {name} must be a function or None, got {type(value).__name__}")
    if meta is not None and not isinstance(meta, Mapping):
        raise ArgumentError(f"fit: meta must be a mapping or None, got {type(meta).__name__}")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise ArgumentError(f"fit: teacher must be a torch.nn.Module or None, got {type(teacher).__name__}")


def _checkpoint_bytes(trainer: _Trainer) -> int:
    """About how many bytes a checkpoint of this run takes: the weights, the EMA copy and up to two optimizer
    slots per parameter (Adam's moments), plus a MiB of metadata."""
    weights = sum(t.numel() * t.element_size() for t in trainer.raw_model.state_dict().values())
    return weights * (3 + (1 if trainer.ema is not None else 0)) + 2**20


@contextlib.contextmanager
def _exclusive_run_dir(trainer: _Trainer) -> Any:
    """Hold ``trainer.run_dir`` for the whole run (see :mod:`dltricks.utils.lock`) after checking that it can
    be written and has room for a checkpoint being written beside the last one and the weight files."""
    if not trainer.writes:
        yield
        return
    check_writable_dir(trainer.run_dir)
    check_free_space(trainer.run_dir, 2 * _checkpoint_bytes(trainer), "this run's checkpoints")
    with run_dir_lock(trainer.run_dir) as lock:
        if lock.stale_holder is not None:
            trainer._emit(f"took over the lock of {trainer.run_dir} left by process {lock.stale_holder.get('pid')}, "
                          "which has ended")
        if lock.removed:
            trainer._emit(f"removed {len(lock.removed)} temporary file(s) of unfinished writes from {trainer.run_dir}")
        yield


def _stderr_log(text: str) -> None:  # pragma: no cover - convenience for interactive use
    print(text, file=sys.stderr, flush=True)

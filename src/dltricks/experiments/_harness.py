"""Training harness for tips: one call trains a model on the embedded MNIST split (or another testbed's data set,
``TrainSpec.dataset``, e.g. CIFAR-10) with the project's trainer (:func:`dltricks.train.fit`) and evaluates it.

:class:`TrainSpec` names the few recipe options tips vary (optimizer, LR, schedule, weight decay,
label smoothing, clipping, bf16 autocast, augmentation, subset size, epochs); :func:`train` turns it
into the trainer's recipe, builds the task from that recipe with :func:`dltricks.train.prepare` (batch
sizes, seed and augmentation come from the recipe, so the task cannot disagree with it), fits, and then
evaluates the trained model in eval mode on the validation split and on the training subset itself
(loss, accuracy, expected calibration error).

Short runs get their BatchNorm statistics recomputed after training (``bn_recalibrate`` batches, the
trainer's ``train.bn_recalibrate``): after 15-30 steps the running averages lag behind the weights and
evaluate a different model than the one trained.

Every run gets a health check (:func:`health`): a diverged run (non-finite loss) has NaN metrics, never a
stand-in value; a run at chance on the validation split or whose training loss stayed near that of a
uniform guess is flagged too. The evidence engine turns a flagged arm into the verdict ``invalid setup``
unless the tip declares that arm allowed to fail.

ECE (Guo et al. 2017, computed by :mod:`dltricks.measure.calibration`): split predictions into 15
equal-width confidence bins and average ``|accuracy(bin) - confidence(bin)|`` weighted by the fraction
of samples in each bin.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.errors import TrainingError
from dltricks.measure.calibration import expected_calibration_error as _ece
from dltricks.train import Recipe, fit, load_recipe, prepare
from dltricks.train.prepare import task_for_recipe

__all__ = ["TrainSpec", "TrainOutcome", "train", "evaluate", "health", "expected_calibration_error", "DATASET"]

DATASET = "mnist-embedded"


@dataclass
class TrainSpec:
    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"  # sgd | momentum | nesterov | adam | adamw | rmsprop
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine | onecycle | step
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    clip_norm: float | None = None
    amp: bool = False  # bf16 autocast on CPU
    augment: dict[str, Any] = field(default_factory=dict)
    subset: int | None = 2000
    seed: int = 0
    bn_recalibrate: int = 100  # training batches for recomputing BatchNorm statistics after training; 0 = off
    dataset: str = DATASET  # a registered data set: the testbeds of dltricks.experiments.training.TESTBEDS
    val_subset: int | None = None  # validation images (stratified draw); None = the whole split
    data_init: int = 0  # images for the model's data-dependent init (train.data_init: patch whitening)


@dataclass
class TrainOutcome:
    train_loss: float  # trainer's mean training loss of the last epoch
    train_loss_auc: float  # mean training loss over all epochs (area under the loss curve)
    epoch_train_loss: list[float]
    val_loss: float
    val_acc: float
    val_ece: float
    train_eval_loss: float  # the trained model in eval mode on the training subset
    train_eval_acc: float
    diverged: bool
    seconds: float
    steps: int = 0  # optimizer steps taken
    images: int = 0  # training images seen (steps x batch size)
    problem: str = ""  # "" when the run trained, else why not (see health())


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE of softmax probabilities ``(N, K)`` against integer labels ``(N,)`` (:mod:`dltricks.measure.calibration`)."""
    return float(_ece(probs, labels, n_bins=bins, from_logits=False))


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any) -> tuple[float, float, float]:
    """(mean cross-entropy, accuracy, ECE) of ``model`` in eval mode over one pass of ``loader``."""
    model.eval()
    losses, probs, labels = [], [], []
    for x, y in loader.iter_epoch(0):
        logits = model(x).float()
        if y.dim() == 2:
            y = y.argmax(1)
        losses.append(F.cross_entropy(logits, y, reduction="sum"))
        probs.append(logits.softmax(1))
        labels.append(y)
    p, t = torch.cat(probs), torch.cat(labels)
    loss = float(torch.stack(losses).sum() / len(t))
    acc = float((p.argmax(1) == t).float().mean())
    return loss, acc, expected_calibration_error(p, t)


_OPTIMIZERS = {"sgd": {"name": "sgd", "momentum": 0.0}, "momentum": {"name": "sgd"},
               "nesterov": {"name": "sgd", "nesterov": True}, "adam": {"name": "adam"}, "adamw": {"name": "adamw"},
               "rmsprop": {"name": "rmsprop", "momentum": 0.0}}


def recipe(spec: TrainSpec) -> Recipe:
    """The trainer's :class:`~dltricks.train.recipe.Recipe` for ``spec`` (CPU, no checkpoints, one final evaluation)."""
    optim = {"momentum": spec.momentum, **_OPTIMIZERS[spec.optimizer], "lr": spec.lr, "weight_decay": spec.weight_decay}
    return load_recipe({
        "optim": optim,
        "schedule": {"name": spec.schedule, "warmup_epochs": spec.warmup_epochs},
        "train": {"epochs": spec.epochs, "batch_size": spec.batch_size, "eval_batch_size": 1000,
                  "label_smoothing": spec.label_smoothing, "grad_clip": spec.clip_norm or 0.0, "amp": spec.amp,
                  "seed": spec.seed, "device": "cpu", "eval_every": spec.epochs,
                  "bn_recalibrate": spec.bn_recalibrate, "data_init": spec.data_init},
        "augment": dict(spec.augment),
        "checkpoint": {"every_epochs": 0, "keep_best": False},
    })


def _chance_ceiling(num_classes: int, size: int) -> float:
    """Chance accuracy plus 3 binomial standard errors over ``size`` samples."""
    chance = 1.0 / num_classes
    return chance + 3.0 * math.sqrt(chance * (1.0 - chance) / max(size, 1))


def health(*, val_acc: float, num_classes: int, val_size: int, train_acc: float | None = None,
           train_size: int = 0) -> str:
    """Why a finished, finite run does not count as trained ("" when it does).

    * at chance: validation accuracy within 3 binomial standard errors of chance, ``1 / num_classes``;
    * not converged: even on its own training images (eval mode) the accuracy is within 3 standard errors of
      chance: the optimiser did not get anywhere. (A high training *loss* alone is not the test: a run at a
      large learning rate can be over-confident and still well above chance.)
    """
    ceiling = _chance_ceiling(num_classes, val_size)
    if val_acc <= ceiling:
        return f"at chance (validation accuracy {val_acc:.3f} <= {ceiling:.3f}, chance {1 / num_classes:.3f} + 3 SE)"
    if train_acc is not None and train_acc <= _chance_ceiling(num_classes, train_size):
        return (f"not converged (training accuracy {train_acc:.3f} <= {_chance_ceiling(num_classes, train_size):.3f}, "
                f"chance + 3 SE on its {train_size} training images)")
    return ""


def train(model: nn.Module, spec: TrainSpec) -> TrainOutcome:
    """Fit ``model`` with :func:`dltricks.train.fit` per ``spec``; a NaN/Inf loss counts as divergence and gives
    NaN metrics (no stand-in values)."""
    torch.manual_seed(spec.seed)
    rec = recipe(spec)
    model, task = prepare(model, spec.dataset, rec, subset=spec.subset, val_subset=spec.val_subset)
    start = time.perf_counter()
    why = ""
    epoch_losses: list[float] = []
    steps = 0
    try:
        result = fit(model, task, rec, run_dir=None, progress=False)
        epoch_losses = [float(e["train_loss"]) for e in result.history]
        steps = int(result.final.get("steps", 0))
    except TrainingError as err:
        why = str(err).split(";")[0]
    seconds = time.perf_counter() - start
    nan = float("nan")
    if why or not epoch_losses or not all(math.isfinite(v) for v in epoch_losses):
        return TrainOutcome(train_loss=nan, train_loss_auc=nan, epoch_train_loss=[v for v in epoch_losses
                                                                                  if math.isfinite(v)],
                            val_loss=nan, val_acc=nan, val_ece=nan, train_eval_loss=nan, train_eval_acc=nan,
                            diverged=True, seconds=seconds, steps=steps, images=steps * spec.batch_size,
                            problem=f"diverged ({why or 'non-finite training loss'})")
    val_loss, val_acc, val_ece = evaluate(model, task.val_loader)
    # The training subset without augmentation, for the generalisation gap.
    plain = task_for_recipe(spec.dataset, rec, subset=spec.subset, for_training=False)
    tr_loss, tr_acc, _ = evaluate(model, plain.train_loader)
    outcome = TrainOutcome(train_loss=epoch_losses[-1], train_loss_auc=sum(epoch_losses) / len(epoch_losses),
                           epoch_train_loss=epoch_losses, val_loss=val_loss, val_acc=val_acc, val_ece=val_ece,
                           train_eval_loss=tr_loss, train_eval_acc=tr_acc, diverged=False, seconds=seconds,
                           steps=steps, images=steps * spec.batch_size)
    if not (math.isfinite(val_loss) and math.isfinite(tr_loss)):
        outcome.diverged, outcome.problem = True, "diverged (non-finite evaluation loss)"
    else:
        outcome.problem = health(val_acc=val_acc, num_classes=task.num_classes, val_size=_size(task.val_loader),
                                 train_acc=tr_acc, train_size=_size(plain.train_loader))
    return outcome


def _size(loader: Any) -> int:
    """Samples in one pass of ``loader``."""
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    return sum(len(y) for _, y in loader.iter_epoch(0))

"""Training harness for tips: one call trains a model on the embedded MNIST split with the project's
trainer (:func:`dltricks.train.fit`) and evaluates it.

:class:`TrainSpec` names the few recipe options tips vary (optimizer, LR, schedule, weight decay,
label smoothing, clipping, bf16 autocast, augmentation, subset size, epochs); :func:`train` turns it
into the trainer's recipe, builds the task from that recipe with :func:`dltricks.train.prepare` (batch
sizes, seed and augmentation come from the recipe, so the task cannot disagree with it), fits, and then
evaluates the trained model in eval mode on the validation split and on the training subset itself
(loss, accuracy, expected calibration error).

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

__all__ = ["TrainSpec", "TrainOutcome", "train", "evaluate", "expected_calibration_error", "DATASET"]

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
                  "seed": spec.seed, "device": "cpu", "eval_every": spec.epochs},
        "augment": dict(spec.augment),
        "checkpoint": {"every_epochs": 0, "keep_best": False},
    })


def train(model: nn.Module, spec: TrainSpec) -> TrainOutcome:
    """Fit ``model`` with :func:`dltricks.train.fit` per ``spec``; a NaN/Inf loss counts as divergence."""
    torch.manual_seed(spec.seed)
    rec = recipe(spec)
    model, task = prepare(model, DATASET, rec, subset=spec.subset)
    start = time.perf_counter()
    diverged = False
    epoch_losses: list[float] = []
    try:
        result = fit(model, task, rec, run_dir=None, progress=False)
        epoch_losses = [float(e["train_loss"]) for e in result.history]
    except TrainingError:
        diverged = True
    seconds = time.perf_counter() - start
    if diverged or not epoch_losses or not all(math.isfinite(v) for v in epoch_losses):
        diverged = True
        bad = math.log(task.num_classes) * 10  # a finite stand-in far above chance-level loss
        epoch_losses = [v if math.isfinite(v) else bad for v in epoch_losses] or [bad]
        return TrainOutcome(train_loss=epoch_losses[-1], train_loss_auc=sum(epoch_losses) / len(epoch_losses),
                            epoch_train_loss=epoch_losses, val_loss=bad, val_acc=0.0, val_ece=1.0, train_eval_loss=bad,
                            train_eval_acc=0.0, diverged=True, seconds=seconds)
    val_loss, val_acc, val_ece = evaluate(model, task.val_loader)
    # The training subset without augmentation, for the generalisation gap.
    plain = task_for_recipe(DATASET, rec, subset=spec.subset, for_training=False)
    tr_loss, tr_acc, _ = evaluate(model, plain.train_loader)
    if not math.isfinite(val_loss):
        val_loss, diverged = math.log(task.num_classes) * 10, True
    return TrainOutcome(train_loss=epoch_losses[-1], train_loss_auc=sum(epoch_losses) / len(epoch_losses),
                        epoch_train_loss=epoch_losses, val_loss=val_loss, val_acc=val_acc, val_ece=val_ece,
                        train_eval_loss=tr_loss, train_eval_acc=tr_acc, diverged=diverged, seconds=seconds)

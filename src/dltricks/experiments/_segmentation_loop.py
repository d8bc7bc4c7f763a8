"""A small, self-contained training and evaluation loop for segmentation experiments.

The general trainer (:mod:`dltricks.train`, ``dltricks train``) runs any registered task; the experiments
of :mod:`dltricks.experiments.segmentation` need something leaner that they control fully: a fixed
number of optimizer steps, Adam with a cosine schedule after a linear warm-up, optional bf16 autocast,
and evaluation with sliding windows and test-time flips. :func:`fit_segmentation` is that loop;
:func:`evaluate_segmentation` evaluates any model on a loader of whole images.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dltricks.errors import TrainingError
from dltricks.tasks.segmentation.inference import predict_sliding_window
from dltricks.tasks.segmentation.losses import segmentation_logits
from dltricks.tasks.segmentation.metrics import (ISBIPixelError, boundary_band, boundary_f1, dice_score, iou_score,
                                           pixel_accuracy, tolerant_dice)
from dltricks.tasks.base import Task

__all__ = ["fit_segmentation", "cosine_lr"]


def cosine_lr(step: int, total: int, *, warmup: int = 0, min_factor: float = 0.01) -> float:
    """Multiplier of the peak learning rate: linear warm-up over ``warmup`` steps, then cosine to ``min_factor``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def fit_segmentation(model: nn.Module, task: Task, *, steps: int, lr: float = 1e-3, weight_decay: float = 0.0,
                     warmup_steps: int = 0, amp: bool = False, channels_last: bool = False, eval_every: int = 0,
                     eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
                     log: Callable[[str], None] | None = None, time_budget_s: float | None = None) -> dict[str, Any]:
    """Train ``model`` on ``task.train_loader`` for ``steps`` Adam(W) steps (epochs repeat as needed).

    Args:
        lr: peak learning rate of the cosine schedule; ``warmup_steps`` of linear warm-up before it.
        weight_decay: decoupled weight decay (AdamW); 0 gives plain Adam.
        amp: bf16 autocast for the forward pass (the loss is computed in float32).
        channels_last: NHWC memory format for the model and the inputs (with ``amp``, about 2x faster for
            a 16-channel U-Net on an AVX-512-BF16 CPU, see ``docs/benchmarks.md``).
        eval_every: call ``eval_fn(model)`` every this many steps (0: only at the end, if given).
        time_budget_s: stop early (after the current step) once this much training time has passed.

    Returns ``{"steps", "train_seconds", "losses" (per step), "evals" [(step, metrics)...]}``; the time
    excludes evaluation.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay) if weight_decay else \
        torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    evals: list[tuple[int, dict[str, float]]] = []
    train_seconds, step, epoch = 0.0, 0, 0
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    while step < steps:
        for x, y in task.train_loader.iter_epoch(epoch):
            start = time.perf_counter()
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = lr * cosine_lr(step, steps, warmup=warmup_steps)
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
            with autocast:
                out = model(x)
            loss = task.loss(segmentation_logits(out).float(), y)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at step {step}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            train_seconds += time.perf_counter() - start
            losses.append(loss.item())
            step += 1
            if log is not None and (step % 50 == 0 or step == steps):
                log(f"step {step}/{steps} loss {sum(losses[-50:]) / len(losses[-50:]):.4f} "
                    f"time {train_seconds:.0f}s")
            if eval_fn is not None and eval_every and step % eval_every == 0 and step < steps:
                evals.append((step, eval_fn(model)))
                model.train()
            if step >= steps or (time_budget_s is not None and train_seconds >= time_budget_s):
                break
        epoch += 1
        if time_budget_s is not None and train_seconds >= time_budget_s:
            break
    if eval_fn is not None:
        evals.append((step, eval_fn(model)))
    model.eval()
    return {"steps": step, "train_seconds": train_seconds, "losses": losses, "evals": evals}

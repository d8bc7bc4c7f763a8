"""Knowledge distillation: a student trained on a teacher's softened predictions (Hinton, Vinyals & Dean,
"Distilling the Knowledge in a Neural Network", 2015).

With student logits ``z_s``, teacher logits ``z_t``, temperature ``T`` and mixing weight ``alpha``::

    L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * L_hard(z_s, y)

The soft term's gradient with respect to ``z_s`` is ``(softmax(z_s/T) - softmax(z_t/T)) / T``; the factor
``T^2`` restores its scale so that changing ``T`` does not change how much the soft term weighs against the
hard one (Hinton et al. Sec. 2). ``L_hard`` is the task's own loss (cross-entropy, with label smoothing
when the recipe asks for it). The teacher runs in eval mode under ``torch.no_grad``: its batch-norm
statistics and dropout are frozen and no gradient flows into it.

It is an option of :func:`dltricks.train.fit` (the recipe's ``distill`` section, or ``fit(..., teacher=)``);
``dltricks.experiments.compression`` measures what it buys (``docs/compression.md``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.errors import ConfigError

__all__ = ["soft_target_loss", "distillation_loss", "load_teacher"]


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``, averaged over the batch; logits ``(B, K)``."""
    T = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / T, dim=-1)  # (B, K)
    log_p_teacher = F.log_softmax(teacher_logits.float() / T, dim=-1)  # (B, K)
    # KL(p_t || p_s) = sum_k p_t,k (log p_t,k - log p_s,k); "batchmean" divides the sum by B.
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * T * T


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, hard_loss: torch.Tensor, *,
                      temperature: float, alpha: float) -> torch.Tensor:
    """``alpha * soft_target_loss + (1 - alpha) * hard_loss`` (the module docstring's equation)."""
    soft = soft_target_loss(student_logits, teacher_logits, temperature)
    return alpha * soft + (1.0 - alpha) * hard_loss


def load_teacher(source: str | Path | nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """The teacher, frozen: a module as given, or the model of a run directory / weights file
    (:func:`dltricks.train.runs.load_model`); in eval mode with ``requires_grad`` off, on ``device``."""
    if isinstance(source, nn.Module):
        teacher = source
    else:
        if not str(source):
            raise ConfigError("distill.teacher: empty; give a run directory or a weights file of the teacher")
        from dltricks.train.runs import load_model

        teacher, _ = load_model(source)
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher

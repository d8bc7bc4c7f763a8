"""Knowledge distillation: a student trained on a teacher's softened predictions (Hinton, Vinyals & Dean,
"Distilling the Knowledge in a Neural Network", 2015).

With student logits ``z_s``, teacher logits ``z_t``, temperature ``T`` and mixing weight ``alpha``::

    L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * L_hard(z_s, y)

The soft term's gradient with respect to ``z_s`` is ``(softmax(z_s/T) - softmax(z_t/T)) / T``; the factor
``T^2`` restores its scale so that changing ``T`` does not change how much the soft term weighs against the
hard one (Hinton et al. Sec. 2). ``L_hard`` is the task's own loss (cross-entropy, with label smoothing
when the recipe asks for it). The teacher runs in eval mode under ``torch.no_grad``: its batch-norm
statistics and dropout are frozen and no gradient flows into it.

**Hints** (FitNets, Romero et al. 2015, Sec. 2.2): the output ``u_s`` of a middle layer of the student (the
*guided* layer) passes through a learned regressor ``r`` to the shape of the output ``u_t`` of a middle layer of
the teacher (the *hint* layer), and the objective gains::

    L_hint = w * mean((r(u_s) - u_t)^2)

(the paper's ``1/2 ||u_t - r(u_s)||^2``, averaged over elements instead of summed). ``r`` is a convolution for
feature maps ``(B, C, H, W)``: 1x1 when the spatial sizes agree, else of kernel ``(H_s - H_t + 1, W_s - W_t + 1)``
without padding, the paper's fully convolutional regressor; a linear layer for vectors ``(B, D)`` and tokens
``(B, T, D)``. Both outputs are captured by forward hooks (:class:`FeatureHint`). The regressor trains with the
student (``fit`` adds it to the optimizer) and is thrown away afterwards: it is not part of the student's weights.
The paper trains the hint first and the soft targets afterwards; here the two terms are summed from the start.

**Cached teacher logits** (:class:`TeacherCache`, ``distill.cache_teacher``): without augmentation the teacher
sees every training example unchanged in every epoch, so its logits are computed in the first epoch, stored by
example index (the loader's ``order(epoch)``) and reused; the objective is the same as without the cache (tested).
With augmentation the recipe is refused, not silently uncached.

It is an option of :func:`dltricks.train.fit` (the recipe's ``distill`` section, or ``fit(..., teacher=)``);
``dltricks.experiments.compression_tips`` measures what it buys (``docs/compression.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.errors import ConfigError, TrainingError, did_you_mean
from dltricks.tasks.base import _logits

__all__ = ["soft_target_loss", "distillation_loss", "load_teacher", "FeatureHint", "hint_regressor", "TeacherCache"]


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


def named_module(model: nn.Module, name: str, *, key: str, owner: str) -> nn.Module:
    """The submodule ``name`` of ``model`` (as in ``named_modules()``); an unknown name is a
    :class:`ConfigError` naming ``key`` and the closest names."""
    modules = {n: m for n, m in model.named_modules() if n}
    if name not in modules:
        shown = ", ".join(list(modules)[:12]) + (", ..." if len(modules) > 12 else "")
        raise ConfigError(f"{key}: {name!r} is not a module of the {owner} ({type(model).__name__})."
                          f"{did_you_mean(name, modules)} Its modules: {shown}")
    return modules[name]


def hint_regressor(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """The FitNets regressor from a student feature of ``student_shape`` to a teacher feature of ``teacher_shape``
    (both without the batch dimension): a convolution for ``(C, H, W)`` maps, a linear layer on the last
    dimension for vectors ``(D,)`` and tokens ``(T, D)``."""
    s, t = tuple(student_shape), tuple(teacher_shape)
    if len(s) == 3 and len(t) == 3:
        (c_s, h_s, w_s), (c_t, h_t, w_t) = s, t
        if h_s < h_t or w_s < w_t:
            raise ConfigError(f"distill.guided_layer: the student's map {s} is smaller than the teacher's hint "
                              f"{t}; choose an earlier student layer or a later teacher layer")
        # A valid convolution of kernel (H_s - H_t + 1, W_s - W_t + 1) maps H_s x W_s to H_t x W_t (1x1 if equal).
        return nn.Conv2d(c_s, c_t, kernel_size=(h_s - h_t + 1, w_s - w_t + 1))
    if len(s) == len(t) and len(s) in (1, 2) and s[:-1] == t[:-1]:
        return nn.Linear(s[-1], t[-1])
    raise ConfigError(f"distill.guided_layer: cannot regress the student's feature of shape {s} onto the "
                      f"teacher's hint of shape {t} (per example); expected two (C, H, W) maps, two vectors, or "
                      "token sequences of the same length")


class _Capture:
    """A forward hook that keeps the latest output of one module."""

    def __init__(self, module: nn.Module, key: str) -> None:
        self.key = key
        self.output: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            output = output[0]
        if not isinstance(output, torch.Tensor):
            raise ConfigError(f"{self.key}: the module's output is a {type(output).__name__}, not a tensor")
        # A copy: an in-place module that follows (ReLU(inplace=True) after a BN) would otherwise change it.
        self.output = output.clone()


class FeatureHint(nn.Module):
    """The FitNets hint term (module docstring): hooks on the student's ``guided_layer`` and the teacher's
    ``hint_layer``, and the regressor between them, built from the shapes the two layers give for ``example``
    (one forward pass of each model in eval mode, without gradients). Its only parameters are the
    regressor's; :meth:`loss` reads the features captured by the latest forward passes of both models."""

    def __init__(self, student: nn.Module, teacher: nn.Module, *, guided_layer: str, hint_layer: str, weight: float,
                 example: Any) -> None:
        super().__init__()
        self.hint_weight = float(weight)
        # The captures are plain attributes, not submodules: the student and the teacher stay outside this module.
        self._student = _Capture(named_module(student, guided_layer, key="distill.guided_layer", owner="student"),
                                 "distill.guided_layer")
        self._teacher = _Capture(named_module(teacher, hint_layer, key="distill.hint_layer", owner="teacher"),
                                 "distill.hint_layer")
        try:
            shapes = [self._feature_shape(model, capture, example)
                      for model, capture in ((student, self._student), (teacher, self._teacher))]
            self.regressor = hint_regressor(*shapes)
        except BaseException:
            self.close()
            raise
        device = next((p.device for p in student.parameters()), torch.device("cpu"))
        self.regressor.to(device)
        # The hint loss summed over this epoch's batches (for the history), on the device: no sync per step.
        self.total: torch.Tensor | float = 0.0
        self.batches = 0

    @staticmethod
    def _feature_shape(model: nn.Module, capture: _Capture, example: Any) -> tuple[int, ...]:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(*example) if isinstance(example, tuple) else model(example)
        finally:
            model.train(was_training)
        if capture.output is None:
            raise ConfigError(f"{capture.key}: the module was not called in the model's forward pass")
        shape = tuple(capture.output.shape[1:])
        capture.output = None
        return shape

    def loss(self) -> torch.Tensor:
        """``w * mean((r(u_s) - u_t)^2)`` of the latest forward passes; the captured features are then dropped."""
        u_s, u_t = self._student.output, self._teacher.output
        if u_s is None or u_t is None:
            raise TrainingError("distill hint: both the student and the teacher must run before the hint loss")
        self._student.output = self._teacher.output = None
        predicted = self.regressor(u_s.to(self.regressor_dtype))  # the teacher's shape, (B, C_t, H_t, W_t) or (B, D_t)
        value = self.hint_weight * F.mse_loss(predicted.float(), u_t.detach().float())
        self.total = self.total + value.detach()
        self.batches += 1
        return value

    @property
    def regressor_dtype(self) -> torch.dtype:
        return next(self.regressor.parameters()).dtype

    def epoch_mean(self) -> float:
        """The mean hint loss over the batches since the last call (one epoch in ``fit``)."""
        mean = float(self.total) / self.batches if self.batches else float("nan")
        self.total, self.batches = 0.0, 0
        return mean

    def close(self) -> None:
        """Remove both hooks (the student leaves ``fit`` without them)."""
        self._student.handle.remove()
        self._teacher.handle.remove()


class TeacherCache:
    """The teacher's logits per training example, filled the first time each example is seen and reused after.

    Needs a loader that tells which examples batch ``b`` of epoch ``e`` holds: ``loader.order(e)`` (indices, in
    the order visited) and an integer ``loader.batch_size``, as :class:`~dltricks.data.loader.TensorLoader` has;
    and no augmentation, so that an example is the same input every epoch."""

    def __init__(self, teacher: nn.Module, loader: Any, *, data: str = "this data set") -> None:
        if not callable(getattr(loader, "order", None)) or not isinstance(getattr(loader, "batch_size", None), int):
            raise ConfigError(f"distill.cache_teacher: the training loader of {data} ({type(loader).__name__}) "
                              "does not say which examples each batch holds; the cache needs an in-memory data set")
        augment = getattr(loader, "augment", None)
        if augment is not None and augment.active:
            raise ConfigError(f"distill.cache_teacher: the training loader of {data} augments its images "
                              f"({augment.describe()}); the teacher's logits change every epoch")
        self.teacher, self.loader = teacher, loader
        self.size = len(loader.dataset)
        self.logits: torch.Tensor | None = None  # (N, K) once the first batch has been seen
        self.filled: torch.Tensor | None = None  # (N,) bool
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)
        self.hits = self.misses = 0  # batches served from the cache / computed by the teacher

    def __call__(self, x: Any, epoch: int, batch: int) -> torch.Tensor:
        """The teacher's logits for batch ``batch`` of ``epoch``, whose inputs are ``x``."""
        if epoch != self._epoch:
            self._epoch, self._order = epoch, self.loader.order(epoch)
        bs = self.loader.batch_size
        index = self._order[batch * bs:(batch + 1) * bs]  # (B,) example indices of this batch
        n = x.shape[0] if isinstance(x, torch.Tensor) else x[0].shape[0]
        if index.numel() != n:
            raise TrainingError(f"distill.cache_teacher: batch {batch} of epoch {epoch} has {n} examples but the "
                                f"loader's order gives {index.numel()}; turn the cache off")
        if self.filled is not None:
            index = index.to(self.filled.device)
            if bool(self.filled[index].all()):
                self.hits += 1
                return self.logits[index]
        with torch.no_grad():
            out = self.teacher(*x) if isinstance(x, tuple) else self.teacher(x)
        logits = _logits(out).detach()
        if self.logits is None:
            self.logits = logits.new_zeros((self.size, *logits.shape[1:]))
            self.filled = torch.zeros(self.size, dtype=torch.bool, device=logits.device)
        index = index.to(logits.device)
        self.logits[index] = logits
        self.filled[index] = True
        self.misses += 1
        return logits

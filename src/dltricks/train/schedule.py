"""Learning-rate schedules as pure functions of the optimizer step.

A schedule here is ``lr(step) = lr_peak * warmup(step) * f(t)``, evaluated before every optimizer step,
where ``t`` is the training progress in epochs (``step / steps_per_epoch``, or its integer part with
``interval: epoch``). Being a pure function of the step, the schedule needs no state of its own in a
checkpoint: a resumed run recomputes exactly the learning rate an uninterrupted one would use.

Shapes of ``f`` (``T`` = total steps, ``E`` = epochs):

* constant: ``f = 1``;
* step: ``f = gamma ** floor(t / step_epochs)`` (torch ``StepLR``);
* multistep: ``f = gamma ** (number of milestones <= t)`` (``MultiStepLR``; Goyal et al. 2017 use
  ``[30, 60, 80]`` on ImageNet);
* exponential: ``f = gamma ** t`` (``ExponentialLR``);
* cosine: ``f = m + (1 - m) (1 + cos(pi t / E)) / 2`` with ``m = min_lr_factor`` (SGDR without restarts,
  Loshchilov & Hutter 2017; ``CosineAnnealingLR``);
* onecycle (Smith & Topin 2019, "Super-convergence"): a cosine rise from ``1 / div_factor`` to 1 over the
  first ``pct_start`` of the steps, then a cosine fall to ``1 / (div_factor * final_div_factor)``;
  the same curve as torch's ``OneCycleLR`` (two phases, cosine annealing, no momentum cycling).

A step-based run (``train.steps``) passes its length as ``total``: ``T = total`` and ``E = T /
steps_per_epoch`` (fractional), so the schedule ends exactly at the run's last step.

Warm-up (Goyal et al. 2017, "Accurate, large minibatch SGD"): over the first ``W`` steps the factor is
multiplied by ``s + (1 - s) (step + 1) / W`` (``s = warmup_start_factor``), so the first step already
takes a small non-zero step and step ``W - 1`` reaches the full rate. ``W`` is ``warmup_steps``, or
``warmup_epochs`` times the steps per epoch. The warm-up multiplies the
schedule instead of replacing its beginning, so the curve is continuous where the warm-up ends.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from dltricks.train.recipe import ScheduleConfig

__all__ = ["LRSchedule"]


@dataclass(frozen=True)
class LRSchedule:
    """``LRSchedule(config, steps_per_epoch, epochs, total=0)(step) -> factor`` multiplying the peak lr
    (``total``: the length of a step-based run, else ``steps_per_epoch * epochs``)."""

    config: ScheduleConfig
    steps_per_epoch: int
    epochs: int
    total: int = 0

    @property
    def total_steps(self) -> int:
        return self.total or self.steps_per_epoch * self.epochs

    @property
    def run_epochs(self) -> float:
        """Length of the run in epochs (fractional for a step-based run)."""
        return self.total / self.steps_per_epoch if self.total else float(self.epochs)

    @property
    def warmup_steps(self) -> int:
        return self.config.warmup_steps or round(self.config.warmup_epochs * self.steps_per_epoch)

    def progress(self, step: int) -> float:
        """Training progress in epochs at ``step`` (integer epochs with ``interval: epoch``)."""
        t = step / self.steps_per_epoch
        return float(math.floor(t + 1e-9)) if self.config.interval == "epoch" else t

    def main_factor(self, step: int) -> float:
        c = self.config
        t = self.progress(step)
        if c.name == "constant":
            return 1.0
        if c.name == "step":
            return c.gamma ** math.floor(t / c.step_epochs + 1e-9)
        if c.name == "multistep":
            return c.gamma ** bisect.bisect_right(list(c.milestones), t + 1e-9)
        if c.name == "exponential":
            return c.gamma ** t
        if c.name == "cosine":
            frac = min(t / self.run_epochs, 1.0)
            return c.min_lr_factor + (1.0 - c.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * frac))
        if c.name == "onecycle":
            return self._onecycle(step)
        raise ValueError(f"unknown schedule {c.name!r}")  # unreachable: the recipe's Literal type checks it

    def _onecycle(self, step: int) -> float:
        c = self.config
        total = self.total_steps
        if c.interval == "epoch":  # one point per epoch
            step, total = int(self.progress(step)), math.ceil(self.run_epochs)
        start = 1.0 / c.div_factor
        end = start / c.final_div_factor
        # Same phase boundaries as torch.optim.lr_scheduler.OneCycleLR: the peak is at step
        # pct_start * total - 1 and the last step (total - 1) reaches the final value.
        peak_step = float(c.pct_start * total) - 1.0
        last_step = float(total - 1)
        if step <= peak_step:
            frac = step / peak_step if peak_step > 0 else 1.0
            lo, hi = start, 1.0
        else:
            frac = min((step - peak_step) / max(last_step - peak_step, 1e-12), 1.0)
            lo, hi = 1.0, end
        # Cosine interpolation from lo (frac = 0) to hi (frac = 1).
        return hi + (lo - hi) * 0.5 * (1.0 + math.cos(math.pi * frac))

    def warmup_factor(self, step: int) -> float:
        W = self.warmup_steps
        if W <= 0 or step >= W:
            return 1.0
        s = self.config.warmup_start_factor
        return s + (1.0 - s) * (step + 1) / W

    def __call__(self, step: int) -> float:
        return self.main_factor(step) * self.warmup_factor(step)

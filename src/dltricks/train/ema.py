"""Exponential moving average (EMA) of the weights.

Polyak & Juditsky 1992 showed that averaging the SGD iterates reduces the variance of the estimate;
the exponential form used in practice (Inception v3/v4, EfficientNet, timm's ``ModelEmaV2``) keeps

    theta_ema <- d * theta_ema + (1 - d) * theta            (after every ``every``-th optimizer step)

for every floating-point parameter *and* buffer (so the batch-norm running statistics match the
averaged weights); integer buffers such as ``num_batches_tracked`` are copied. With ``warmup`` the decay
after ``n`` updates is ``min(d, (1 + n) / (10 + n))`` (the schedule of TensorFlow's
``ExponentialMovingAverage(num_updates=...)``), so the first averages are not dominated by the random
initialisation; without it the update equals ``torch.optim.swa_utils.AveragedModel`` with
``get_ema_multi_avg_fn(d)`` and ``use_buffers=True``, which ``tests/test_train_parts.py`` checks.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEma"]


class ModelEma:
    """An averaged copy of ``model`` (in eval mode, without gradients)."""

    def __init__(self, model: nn.Module, *, decay: float, warmup: bool = True) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self._pairs: tuple[int, list[torch.Tensor], list[torch.Tensor],
                           list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def _tensor_pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                                       list[tuple[torch.Tensor, torch.Tensor]]]:
        # state_dict() tensors share storage with the live parameters and buffers, so the pairing is
        # computed once per model (load_state_dict copies in place and keeps it valid).
        if self._pairs is None or self._pairs[0] != id(model):
            ema_float, new_float, others = [], [], []
            for ema_t, t in zip(self.module.state_dict().values(), model.state_dict().values()):
                if ema_t.dtype.is_floating_point:
                    ema_float.append(ema_t)
                    new_float.append(t)
                else:
                    others.append((ema_t, t))
            self._pairs = (id(model), ema_float, new_float, others)
        return self._pairs[1], self._pairs[2], self._pairs[3]

    def current_decay(self) -> float:
        if self.warmup:
            return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_float, new_float, others = self._tensor_pairs(model)
        for ema_t, t in others:
            ema_t.copy_(t)
        if ema_float:
            # lerp: ema + (1 - d) * (new - ema) = d * ema + (1 - d) * new
            torch._foreach_lerp_(ema_float, new_float, 1.0 - d)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        self.module.load_state_dict(state)
        self._pairs = None
        self.num_updates = num_updates

"""Lookahead (Zhang, Lucas, Hinton & Ba 2019, "Lookahead Optimizer: k steps forward, 1 step back").

Any inner optimizer moves the *fast* weights ``theta``; every ``k`` of its steps, the *slow* weights ``phi``
move a fraction ``alpha`` of the way towards them and the fast weights restart from there:

    phi <- phi + alpha (theta - phi)        (every k-th step; phi starts as the initial theta)
    theta <- phi

(Algorithm 1 of the paper, which argues that the slow weights average out the fast weights' oscillation across
a valley and make the inner optimizer less sensitive to its learning rate). airbench94 (Jordan 2024) runs the
same update every 5 steps with an ``alpha`` that falls over the run; here ``alpha`` is fixed. Measured so far
(docs/benchmarks.md): only a 14-step, one-seed ablation of the speedrun, where alpha 0.5 from the first step
cost 1.8 points (within seed noise there).

:class:`Lookahead` wraps the inner optimizer without copying anything: it shares its ``param_groups`` (so the
trainer's learning-rate schedule, ``lr_mult`` and GradScaler work unchanged) and keeps ``phi`` in the inner
optimizer's per-parameter state under ``"lookahead_slow"``, and the step count in each parameter group
(``"lookahead_step"``), so a checkpoint of ``state_dict()`` restores a run exactly.
``tests/test_airbench.py`` checks an update against a hand-computed one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["Lookahead"]


class Lookahead(torch.optim.Optimizer):
    """``inner`` with Lookahead on top: ``k`` inner steps, then ``phi += alpha (theta - phi); theta = phi``."""

    def __init__(self, inner: torch.optim.Optimizer, *, k: int = 5, alpha: float = 0.5) -> None:
        if k < 1:
            raise ValueError(f"Lookahead: k must be >= 1, got {k}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead: alpha must be in (0, 1], got {alpha}")
        self.inner, self.k, self.alpha = inner, k, alpha
        # Shared with the inner optimizer, not copied (see the module docstring).
        self.param_groups = inner.param_groups
        self.state = inner.state
        self.defaults = inner.defaults
        for group in self.param_groups:
            group.setdefault("lookahead_step", 0)

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, inner={self.inner!r})"

    @torch.no_grad()
    def _sync(self, group: dict[str, Any]) -> None:
        for p in group["params"]:
            slow = self.state[p]["lookahead_slow"]
            slow.add_(p.detach() - slow, alpha=self.alpha)
            p.copy_(slow)

    @torch.no_grad()
    def _remember_start(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if "lookahead_slow" not in self.state[p]:
                    self.state[p]["lookahead_slow"] = p.detach().clone()

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        self._remember_start()
        loss = self.inner.step(closure)
        for group in self.param_groups:
            group["lookahead_step"] += 1
            if group["lookahead_step"] % self.k == 0:
                self._sync(group)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict)
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state

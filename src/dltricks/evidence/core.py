"""What an experiment gets and what it gives back: :class:`Context`, :class:`Evidence`, :class:`Verdict`.

An experiment is a plain function ``fn(ctx: Context) -> Evidence``. It only measures; it never decides.
It returns :class:`Evidence`: per-arm, per-seed numbers (``arms``), exact checks (``checks``, each a
boolean computed by comparing measured numbers), other measured facts (``values``), a setup description
and plot files. The tip's rule (:mod:`dltricks.evidence.rules`) turns that evidence into a :class:`Verdict`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

__all__ = ["Verdict", "Evidence", "Context", "Mode", "MODES", "seed_list", "as_list"]

Mode = Literal["quick", "full"]
MODES: tuple[str, ...] = ("quick", "full")


class Verdict(str, Enum):
    """What the engine concludes about a claim.

    ``confirmed`` / ``refuted`` need full mode (>= 5 seeds and an interval clear of the claim's bound) unless
    the tip is an exact check, which decides in any mode. Quick mode says at most ``consistent with`` /
    ``not consistent with``. ``invalid setup``: an arm that had to train did not (diverged, at chance or not
    converged), so nothing was compared; such a tip is shown and never counted as evidence.
    """

    CONFIRMED = "confirmed"
    REFUTED = "refuted"
    CONSISTENT = "consistent with"
    NOT_CONSISTENT = "not consistent with"
    INCONCLUSIVE = "inconclusive"
    INVALID_SETUP = "invalid setup"  # an arm that had to train did not (diverged, at chance, not converged)
    NOT_TESTED = "not yet tested"  # a planned tip: the catalog lists the topic, no experiment exists yet
    NOT_IMPLEMENTED = "not yet tested"  # the older name of NOT_TESTED (an alias)
    DOC_CHECK = "documentation check"  # a claim about a document, compared with the other sources; no experiment
    SKIPPED = "skipped"
    ERROR = "error"

    @property
    def supports(self) -> bool | None:
        """True when the evidence supports the claim, False when it goes against it, else None."""
        if self in (Verdict.CONFIRMED, Verdict.CONSISTENT):
            return True
        if self in (Verdict.REFUTED, Verdict.NOT_CONSISTENT):
            return False
        return None


@dataclass
class Evidence:
    """What an experiment measured. Every number here must come from running code.

    Attributes:
        arms: ``{arm: {metric: [value per seed]}}``; the i-th value of every arm comes from seed i,
            so effects are paired by seed.
        checks: exact checks, ``{name: passed}``; each is a comparison of measured numbers
            (e.g. ``measured_rf == 5``), never a literal ``True``.
        values: other measured numbers worth reporting (parameter counts, ratios...).
        setup: what was run (model, data, subset, epochs, recipe) in one or two sentences.
        plots: PNG file names written into ``ctx.workdir``.
        curves: optional ``{arm: {metric: [[per-step values] per seed]}}`` for the report.
        notes: caveats worth printing next to the numbers.
        headline: one line with the key measured numbers for the summary table (built from the
            measurements, e.g. ``f"RF {rf_s} vs {rf_b}"``).
        health: ``{arm: [problem per seed]}``, ``""`` for a run that trained; a problem (diverged, at chance,
            not converged) in an arm the tip does not allow to fail makes the verdict ``invalid setup``.
        budget: what one run of an arm costs, e.g. ``{"steps": 32, "images": 2000, "epochs": 1}`` (the report
            shows it with the number of runs).
        tuning: learning-rate grids run per arm before the seeds, ``{arm: {"grid": [...], "scores": [...],
            "chosen": lr, "metric": name}}`` (the report says which rate won).
    """

    arms: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    setup: str = ""
    plots: list[str] = field(default_factory=list)
    curves: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    notes: str = ""
    headline: str = ""
    health: dict[str, list[str]] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, arm: str, **metrics: float) -> None:
        """Append one seed's numbers for ``arm``: ``ev.add("ls=0.1", acc=0.97, ece=0.02)``."""
        slot = self.arms.setdefault(arm, {})
        for name, value in metrics.items():
            slot.setdefault(name, []).append(float(value))

    def record_health(self, arm: str, problem: str = "") -> None:
        """Append one seed's training health for ``arm``: ``""`` when the run trained, else what went wrong."""
        self.health.setdefault(arm, []).append(problem)

    def check(self, name: str, passed: bool) -> bool:
        self.checks[name] = bool(passed)
        return bool(passed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evidence:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Context:
    """What an experiment gets: the mode, its settings, the seeds and a folder for plots.

    ``report(note)`` lets a long experiment move the progress bar's text.
    """

    tip_id: str
    mode: str
    settings: dict[str, Any]
    seeds: list[int]
    workdir: Path
    report: Callable[[str], None] = lambda note: None
    device: str = "cpu"  # `verify --device cuda`: where the experiments that support it train

    def __getitem__(self, key: str) -> Any:
        return self.settings[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    def path(self, name: str) -> Path:
        return self.workdir / name


def seed_list(n: int, start: int = 0) -> list[int]:
    """Seeds used for ``n`` runs: start, ..., start + n - 1 (from 0, so quick results are a prefix of full ones;
    another ``start`` gives a disjoint seed set, for checking that verdicts are stable)."""
    return list(range(start, start + n))


def as_list(values: Sequence[float] | float) -> list[float]:
    return [float(v) for v in values] if isinstance(values, Sequence) else [float(values)]

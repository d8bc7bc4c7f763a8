"""The data model of the evidence engine: tips, experiment contexts, evidence and verdicts.

A :class:`Tip` is a claim from the seed material (lecture, README, paper) together with

* the code it exercises (module paths; their source is part of the cache key),
* an experiment ``fn(ctx: Context) -> Evidence`` with a ``quick`` and a ``full`` setting,
* a verdict rule (:mod:`dltricks.tips.rules`) written down in the catalog *before* anything runs.

The experiment only measures; it never decides. It returns :class:`Evidence`: per-arm, per-seed
numbers (``arms``), exact checks (``checks``, each a boolean computed by comparing measured numbers),
other measured facts (``values``), a setup description and plot files. The rule turns that evidence
into a :class:`Verdict`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    from dltricks.tips.rules import Rule

__all__ = ["Verdict", "Evidence", "Context", "Tip", "Mode", "MODES"]

Mode = Literal["quick", "full"]
MODES: tuple[str, ...] = ("quick", "full")


class Verdict(str, Enum):
    """What the engine concludes about a claim.

    ``confirmed`` / ``refuted`` need full mode (several seeds and a significance rule) unless the
    tip is an exact check, which decides in any mode. Quick mode says at most ``consistent with`` /
    ``not consistent with``.
    """

    CONFIRMED = "confirmed"
    REFUTED = "refuted"
    CONSISTENT = "consistent with"
    NOT_CONSISTENT = "not consistent with"
    INCONCLUSIVE = "inconclusive"
    NOT_IMPLEMENTED = "not implemented yet"
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
    """

    arms: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    setup: str = ""
    plots: list[str] = field(default_factory=list)
    curves: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    notes: str = ""
    headline: str = ""

    def add(self, arm: str, **metrics: float) -> None:
        """Append one seed's numbers for ``arm``: ``ev.add("ls=0.1", acc=0.97, ece=0.02)``."""
        slot = self.arms.setdefault(arm, {})
        for name, value in metrics.items():
            slot.setdefault(name, []).append(float(value))

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

    ``report(fraction, note)`` lets a long experiment move the progress bar's text.
    """

    tip_id: str
    mode: str
    settings: dict[str, Any]
    seeds: list[int]
    workdir: Path
    report: Callable[[str], None] = lambda note: None

    def __getitem__(self, key: str) -> Any:
        return self.settings[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    def path(self, name: str) -> Path:
        return self.workdir / name


def _resolve(ref: str) -> Any:
    """``"pkg.module:attr"`` -> the attribute (``"pkg.module"`` -> the module)."""
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


@dataclass
class Tip:
    """One claim of the catalog.

    Attributes:
        id: stable identifier, ``section.short-name`` (e.g. ``conv.stacked-3x3``).
        title: a few words for tables.
        claim: the claim, in our words.
        source: where it comes from (lecture, README section, paper).
        section: catalog section (Convolutions, Normalisation and optimisation, ...).
        experiment: ``"module:function"`` of the experiment, or ``None`` when nobody has written one.
        exercises: module paths the experiment exercises; their source files are hashed into the cache
            key, so editing them re-runs the tip.
        requires: ``"module"`` or ``"module:attr"`` references that must import for the tip to run;
            a missing one makes the tip "not implemented yet" and names what is missing.
        quick, full: settings passed to the experiment (``ctx.settings``); ``quick=None`` marks a tip that
            needs more compute than quick mode allows (it is reported as skipped there).
        seeds: default number of seeds per mode.
        metrics: metric names the experiment reports, with a one-line meaning each.
        rule: the verdict rule (fixed here, before running).
        budget_s: planned wall time of the quick setting on 2 cores (documentation; the report shows
            the measured time next to it).
    """

    id: str
    title: str
    claim: str
    source: str
    section: str
    rule: Rule
    experiment: str | None = None
    exercises: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    quick: dict[str, Any] | None = field(default_factory=dict)
    full: dict[str, Any] = field(default_factory=dict)
    seeds: Mapping[str, int] = field(default_factory=lambda: {"quick": 1, "full": 3})
    metrics: Mapping[str, str] = field(default_factory=dict)
    budget_s: float = 5.0

    def settings(self, mode: str) -> dict[str, Any] | None:
        """The settings of ``mode``; ``None`` when the tip has no meaningful setting there (full-mode only)."""
        chosen = self.quick if mode == "quick" else self.full
        return None if chosen is None else dict(chosen)

    def default_seeds(self, mode: str) -> int:
        return int(self.seeds.get(mode, 1 if mode == "quick" else 3))

    def missing(self) -> list[str]:
        """What keeps this tip from running: no experiment, or required modules that do not import."""
        if self.experiment is None:
            return ["no experiment written yet"]
        problems = []
        for ref in (*self.requires, self.experiment):
            try:
                _resolve(ref)
            except (ImportError, AttributeError) as err:
                problems.append(f"{ref} ({type(err).__name__}: {err})")
        return problems

    @property
    def implemented(self) -> bool:
        return not self.missing()

    def function(self) -> Callable[[Context], Evidence]:
        assert self.experiment is not None
        return _resolve(self.experiment)


def seed_list(n: int) -> list[int]:
    """Seeds used for ``n`` runs: 0, 1, ..., n-1 (so quick results are a prefix of full ones)."""
    return list(range(n))


def as_list(values: Sequence[float] | float) -> list[float]:
    return [float(v) for v in values] if isinstance(values, Sequence) else [float(values)]

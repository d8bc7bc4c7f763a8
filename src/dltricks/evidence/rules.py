"""Verdict rules: how measured evidence becomes a verdict.

Rules are fixed in a tip's declaration before its experiment runs and are plain frozen dataclasses, so
their ``repr`` (which is part of the cache key) says exactly what was decided in advance. ``describe()``
states a rule in a sentence (the report); ``brief()`` in a few words (the catalog table of the docs);
``arms()`` names the (arm, metric) pairs it reads (the setup check looks at them first).

The statistics are those of :mod:`dltricks.evidence.stats`: the paired effect of seed i is
``d_i = treatment_i - control_i`` (negated when lower is better, so a positive ``d`` always favours the
treatment), summarised by its two-sided 95 % Student-t interval with n - 1 degrees of freedom.

* **Effect** (treatment beats control by at least ``min_effect``): the interval above ``min_effect`` supports
  the claim, below it contradicts it, across it leaves it open.
* **NonInferior** (treatment no worse than control by more than ``margin``): the same test with the bound
  ``-margin``.
* **Equivalent** ("little or no difference", within ``margin`` either way): TOST, the interval inside
  ``(-margin, margin)`` supports, wholly outside contradicts.

Full mode turns supported / contradicted into **confirmed** / **refuted**, and needs ``min_seeds`` (5)
seeds for either; quick mode says at most **consistent with** / **not consistent with**. One seed gives
no interval: inconclusive. Across the catalog, full-mode verdicts are then corrected for multiplicity
(Holm, :func:`dltricks.tips.engine.family_control`).

**Exact** (deterministic checks such as parameter counts or receptive fields): every named check
must be present; **confirmed** when all pass and **refuted** when any fails, in any mode, because
the numbers do not depend on a seed.

**AllOf** combines rules (:func:`combine`): refuted if any part is refuted, not consistent if any part is
not consistent, confirmed if every part is confirmed, consistent with if every part supports the claim,
otherwise inconclusive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dltricks.evidence import stats
from dltricks.evidence.core import Evidence, Verdict

__all__ = ["Decision", "Rule", "RuleError", "Effect", "NonInferior", "Equivalent", "Exact", "AllOf", "summarize",
           "combine", "part_verdict", "setup_problems"]


class RuleError(RuntimeError):
    """The evidence does not contain what the rule needs (an experiment bug, reported as 'error')."""


@dataclass
class Decision:
    verdict: Verdict
    reason: str
    stats: list[dict[str, Any]] = field(default_factory=list)


class Rule(Protocol):
    def decide(self, evidence: Evidence, mode: str) -> Decision: ...

    def describe(self) -> str: ...

    def brief(self) -> str: ...

    def arms(self) -> list[tuple[str, str]]: ...


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample std (ddof=1; 0 for one value), standard error and n."""
    n = len(values)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "se": math.nan, "n": 0}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "se": std / math.sqrt(n), "n": n}


def _arm(evidence: Evidence, arm: str, metric: str) -> list[float]:
    try:
        values = evidence.arms[arm][metric]
    except KeyError as err:
        raise RuleError(f"the experiment reported no {metric!r} for arm {arm!r} "
                        f"(arms: {', '.join(evidence.arms) or 'none'})") from err
    if not values:
        raise RuleError(f"arm {arm!r} has no {metric!r} values")
    if any(not math.isfinite(v) for v in values):
        raise RuleError(f"arm {arm!r} has non-finite {metric!r} values {values}")
    return list(values)


def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.4g}"


def setup_problems(evidence: Evidence, rule: Any, *, may_fail: Sequence[str] = (),
                   seeds: Sequence[int] | None = None) -> list[str]:
    """What keeps ``evidence`` from being compared: the setup check run before any verdict.

    A run whose health (``evidence.health``) names a problem (diverged, at chance, not converged) in an arm
    not listed in ``may_fail``, and any non-finite value of a metric the rule reads, is a problem; a tip
    with problems gets the verdict ``invalid setup`` and its numbers are not counted.
    """
    found = []
    for arm, runs in evidence.health.items():
        if arm in may_fail:
            continue
        for i, problem in enumerate(runs):
            if problem:
                seed = seeds[i] if seeds is not None and i < len(seeds) else i
                found.append(f"{arm}, seed {seed}: {problem}")
    arms = getattr(rule, "arms", None)
    for arm, metric in (arms() if callable(arms) else []):
        values = evidence.arms.get(arm, {}).get(metric, [])
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            found.append(f"{arm}: {metric} is not finite in {len(bad)} of {len(values)} runs")
    return list(dict.fromkeys(found))


def part_verdict(outcome: str, mode: str, n: int, min_seeds: int) -> Verdict:
    """The verdict of one statistical part from its interval test's outcome (see the module docstring)."""
    if outcome == stats.OPEN or (mode == "full" and n < min_seeds):
        return Verdict.INCONCLUSIVE
    if mode == "full":
        return Verdict.CONFIRMED if outcome == stats.SUPPORTED else Verdict.REFUTED
    return Verdict.CONSISTENT if outcome == stats.SUPPORTED else Verdict.NOT_CONSISTENT


def combine(verdicts: Sequence[Verdict]) -> Verdict:
    """The verdict of a compound claim from its parts' verdicts (AllOf)."""
    if Verdict.REFUTED in verdicts:
        return Verdict.REFUTED
    if Verdict.NOT_CONSISTENT in verdicts:
        return Verdict.NOT_CONSISTENT
    if all(v is Verdict.CONFIRMED for v in verdicts):
        return Verdict.CONFIRMED
    if all(v.supports for v in verdicts):
        return Verdict.CONSISTENT
    return Verdict.INCONCLUSIVE


@dataclass(frozen=True)
class _Paired:
    """What the statistical rules share: a paired comparison of two arms on one metric."""

    metric: str
    treatment: str
    control: str
    higher_is_better: bool = True
    min_seeds: int = 5

    kind = "effect"

    def arms(self) -> list[tuple[str, str]]:
        return [(self.treatment, self.metric), (self.control, self.metric)]

    def effects(self, evidence: Evidence) -> list[float]:
        t = _arm(evidence, self.treatment, self.metric)
        c = _arm(evidence, self.control, self.metric)
        if len(t) != len(c):
            raise RuleError(f"{self.metric}: {len(t)} values for {self.treatment!r} but {len(c)} for {self.control!r}")
        sign = 1.0 if self.higher_is_better else -1.0
        return [sign * (a - b) for a, b in zip(t, c)]

    def _test(self, iv: stats.Interval) -> tuple[str, float, float]:
        raise NotImplementedError

    def _bound(self) -> float:
        """The value the interval is compared with (for the minimum detectable effect)."""
        raise NotImplementedError

    def _wanted(self) -> str:
        raise NotImplementedError

    def _declared(self) -> dict[str, float]:
        """The tip's declared bound by its name (``min_effect`` or ``margin``), for results.json."""
        return {"margin": getattr(self, "margin")} if hasattr(self, "margin") else {"min_effect": self._bound()}

    def decide(self, evidence: Evidence, mode: str) -> Decision:
        d = self.effects(evidence)
        iv = stats.paired_interval(d)
        outcome, p_support, p_contradict = self._test(iv)
        verdict = part_verdict(outcome, mode, iv.n, self.min_seeds)
        t, c = _arm(evidence, self.treatment, self.metric), _arm(evidence, self.control, self.metric)
        bound = self._bound()
        part = {"kind": self.kind, "metric": self.metric, "better": "higher" if self.higher_is_better else "lower",
                "treatment": self.treatment, "control": self.control,
                "treatment_stats": summarize(t), "control_stats": summarize(c),
                "treatment_values": t, "control_values": c, "differences": d,
                "effect": {**iv.to_dict(), "std": iv.sd}, "bound": bound, "wanted": self._wanted(),
                "outcome": outcome, "p_support": p_support, "p_contradict": p_contradict,
                "p": min(1.0, 2.0 * min(p_support, p_contradict)), "verdict": verdict.value, "mode": mode,
                "min_seeds": self.min_seeds, "mde": stats.mde(iv.sd, iv.n),
                "seeds_to_decide": stats.seeds_to_decide(iv.mean, iv.sd, bound) if iv.n >= 2 else None}
        part.update(self._declared())
        what = (f"{self.metric}: {self.treatment} vs {self.control}, effect {_fmt(iv.mean)}, "
                f"{round(100 * iv.confidence)}% CI [{_fmt(iv.lo)}, {_fmt(iv.hi)}] (n={iv.n}, df={iv.df})")
        if not iv.defined:
            why = "one seed gives no interval"
        elif mode == "full" and iv.n < self.min_seeds and outcome != stats.OPEN:
            why = f"the interval is decisive but full mode needs >= {self.min_seeds} seeds"
        else:
            why = {stats.SUPPORTED: f"{self._wanted()}: yes", stats.CONTRADICTED: f"{self._wanted()}: no, the "
                   f"interval lies on the other side", stats.OPEN: f"{self._wanted()}: the interval straddles "
                   f"the bound"}[outcome]
        return Decision(verdict, f"{what}; {why}", [part])


@dataclass(frozen=True)
class Effect(_Paired):
    """Claim: ``treatment`` beats ``control`` on ``metric`` by at least ``min_effect`` (paired by seed)."""

    min_effect: float = 0.0

    kind = "effect"

    def _bound(self) -> float:
        return self.min_effect

    def _test(self, iv: stats.Interval) -> tuple[str, float, float]:
        return stats.bound_test(iv, self.min_effect)

    def _wanted(self) -> str:
        return f"interval above {self.min_effect:g}"

    def describe(self) -> str:
        better = "higher" if self.higher_is_better else "lower"
        return (f"{self.treatment} vs {self.control} on {self.metric} ({better} is better), paired by seed; the "
                f"claim needs an effect of at least {self.min_effect:g}. 95% Student-t interval of the mean paired "
                f"effect: wholly above {self.min_effect:g} = confirmed (full mode, >= {self.min_seeds} seeds) or "
                f"consistent with (quick); wholly below = refuted / not consistent with; across it = inconclusive.")

    def brief(self) -> str:
        better = "higher" if self.higher_is_better else "lower"
        return f"Effect({self.metric}: {self.treatment} vs {self.control}, {better} better, min {self.min_effect:g})"


@dataclass(frozen=True)
class NonInferior(_Paired):
    """Claim: ``treatment`` is no worse than ``control`` on ``metric`` by more than ``margin``."""

    margin: float = 0.01

    kind = "non-inferiority"

    def _bound(self) -> float:
        return -self.margin

    def _test(self, iv: stats.Interval) -> tuple[str, float, float]:
        return stats.bound_test(iv, -self.margin)

    def _wanted(self) -> str:
        return f"interval above -{self.margin:g}"

    def describe(self) -> str:
        better = "higher" if self.higher_is_better else "lower"
        return (f"{self.treatment} no worse than {self.control} on {self.metric} ({better} is better) by more than "
                f"{self.margin:g}, paired by seed. 95% Student-t interval of the mean paired effect: wholly above "
                f"-{self.margin:g} = confirmed (full mode, >= {self.min_seeds} seeds) or consistent with (quick); "
                f"wholly below = refuted / not consistent with; across it = inconclusive.")

    def brief(self) -> str:
        return f"NonInferior({self.metric}: {self.treatment} vs {self.control}, margin {self.margin:g})"


@dataclass(frozen=True)
class Equivalent(_Paired):
    """Claim: ``treatment`` and ``control`` differ on ``metric`` by less than ``margin`` either way (TOST)."""

    margin: float = 0.01

    kind = "equivalence"

    def _bound(self) -> float:
        return self.margin

    def _test(self, iv: stats.Interval) -> tuple[str, float, float]:
        return stats.equivalence_test(iv, self.margin)

    def _wanted(self) -> str:
        return f"interval inside +-{self.margin:g}"

    def decide(self, evidence: Evidence, mode: str) -> Decision:
        decision = super().decide(evidence, mode)
        part = decision.stats[0]
        iv = part["effect"]
        if iv["n"] >= 2:  # distance to the nearer edge of the equivalence region
            part["seeds_to_decide"] = min(
                (n for n in (stats.seeds_to_decide(iv["mean"], iv["sd"], b) for b in (-self.margin, self.margin))
                 if n is not None), default=None)
        return decision

    def describe(self) -> str:
        better = "higher" if self.higher_is_better else "lower"
        return (f"{self.treatment} and {self.control} within {self.margin:g} of each other on {self.metric} "
                f"({better} is better), paired by seed; equivalence test (TOST): the 95% Student-t interval of the "
                f"mean paired difference wholly inside (-{self.margin:g}, {self.margin:g}) = confirmed (full mode, "
                f">= {self.min_seeds} seeds) or consistent with (quick); wholly outside = refuted / not consistent "
                f"with; otherwise inconclusive.")

    def brief(self) -> str:
        return f"Equivalent({self.metric}: {self.treatment} vs {self.control}, margin {self.margin:g}, TOST)"


@dataclass(frozen=True)
class Exact:
    """Deterministic checks: confirmed iff every named check passed, refuted otherwise, in any mode."""

    checks: tuple[str, ...]
    meaning: str = ""

    def arms(self) -> list[tuple[str, str]]:
        return []

    def decide(self, evidence: Evidence, mode: str) -> Decision:
        missing = [c for c in self.checks if c not in evidence.checks]
        if missing:
            raise RuleError(f"the experiment did not report check(s) {', '.join(missing)}")
        failed = [c for c in self.checks if not evidence.checks[c]]
        verdict = Verdict.REFUTED if failed else Verdict.CONFIRMED
        part = {"kind": "exact", "checks": {c: bool(evidence.checks[c]) for c in self.checks},
                "verdict": verdict.value}
        if failed:
            return Decision(verdict, f"failed: {', '.join(failed)}", [part])
        return Decision(verdict, f"all {len(self.checks)} exact checks hold", [part])

    def describe(self) -> str:
        return (f"exact (deterministic, any mode): confirmed iff all of {', '.join(self.checks)} hold; refuted if any "
                f"fails. {self.meaning}").strip()

    def brief(self) -> str:
        return f"Exact ({len(self.checks)} checks)"


@dataclass(frozen=True)
class AllOf:
    """Every part of a compound claim must hold."""

    rules: tuple[Any, ...]

    def arms(self) -> list[tuple[str, str]]:
        return [pair for rule in self.rules for pair in rule.arms()]

    def decide(self, evidence: Evidence, mode: str) -> Decision:
        parts = [rule.decide(evidence, mode) for rule in self.rules]
        verdict = combine([p.verdict for p in parts])
        reason = "; ".join(f"[{p.verdict.value}] {p.reason}" for p in parts)
        return Decision(verdict, reason, [s for p in parts for s in p.stats])

    def describe(self) -> str:
        return "all of: " + " AND ".join(f"({rule.describe()})" for rule in self.rules)

    def brief(self) -> str:
        return " AND ".join(rule.brief() for rule in self.rules)

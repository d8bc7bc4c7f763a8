"""Verdict rules: how measured evidence becomes confirmed / refuted / inconclusive.

Rules are fixed in a tip's declaration before its experiment runs and are plain frozen dataclasses, so
their ``repr`` (which is part of the cache key) says exactly what was decided in advance. ``describe()``
states a rule in a sentence (the report); ``brief()`` in a few words (the catalog table of the docs).

**Effect** (a claimed improvement). The experiment runs a *treatment* arm and a *control* arm with
the same seeds; the paired effect of seed i is ``d_i = treatment_i - control_i`` (negated when lower
is better, so a positive ``d`` always supports the claim). With n seeds, mean ``m``, sample standard
deviation ``s`` and standard error ``se = s / sqrt(n)``:

* full mode needs ``n >= min_seeds`` (3). **confirmed** when ``m - z*se > 0`` (``z = 2``: the effect
  exceeds two standard errors) *and* ``m >= min_effect``; **refuted** when ``m + z*se < 0`` (the
  effect is significantly in the other direction); otherwise **inconclusive**.
* quick mode never confirms: **consistent with** when ``m > max(min_effect, quick_z*se)``, **not
  consistent with** when ``m < -max(min_effect, quick_z*se)``, else **inconclusive**. With one seed,
  ``se = 0`` and ``min_effect`` is the noise floor below which nothing is claimed.

**NonInferior** (a claimed "keeps accuracy"): ``d_i`` as above; full mode **confirmed** when the
lower bound ``m - z*se > -margin``, **refuted** when the upper bound ``m + z*se < -margin``; quick mode
says consistent with when ``m > -margin``.

**Exact** (deterministic checks such as parameter counts or receptive fields): every named check
must be present; **confirmed** when all pass and **refuted** when any fails, in any mode, because
the numbers do not depend on a seed.

**AllOf** combines rules: refuted if any part is refuted, not consistent if any part is not
consistent, confirmed if every part is confirmed, consistent with if every part supports the claim,
otherwise inconclusive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dltricks.evidence.core import Evidence, Verdict

__all__ = ["Decision", "Rule", "RuleError", "Effect", "NonInferior", "Exact", "AllOf", "summarize"]


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


def _fmt(x: float) -> str:
    return f"{x:.4g}"


@dataclass(frozen=True)
class Effect:
    """Claim: ``treatment`` beats ``control`` on ``metric`` (paired by seed)."""

    metric: str
    treatment: str
    control: str
    higher_is_better: bool = True
    min_effect: float = 0.0
    z: float = 2.0
    quick_z: float = 1.0
    min_seeds: int = 3

    def effects(self, evidence: Evidence) -> list[float]:
        t = _arm(evidence, self.treatment, self.metric)
        c = _arm(evidence, self.control, self.metric)
        if len(t) != len(c):
            raise RuleError(f"{self.metric}: {len(t)} values for {self.treatment!r} but {len(c)} for {self.control!r}")
        sign = 1.0 if self.higher_is_better else -1.0
        return [sign * (a - b) for a, b in zip(t, c)]

    def _stats(self, evidence: Evidence, effects: list[float]) -> dict[str, Any]:
        e = summarize(effects)
        e["lo"], e["hi"] = e["mean"] - self.z * e["se"], e["mean"] + self.z * e["se"]
        return {"kind": "effect", "metric": self.metric, "better": "higher" if self.higher_is_better else "lower",
                "treatment": self.treatment, "control": self.control,
                "treatment_stats": summarize(_arm(evidence, self.treatment, self.metric)),
                "control_stats": summarize(_arm(evidence, self.control, self.metric)),
                "effect": e, "min_effect": self.min_effect}

    def decide(self, evidence: Evidence, mode: str) -> Decision:
        d = self.effects(evidence)
        stats = self._stats(evidence, d)
        e = stats["effect"]
        m, se, n = e["mean"], e["se"], e["n"]
        what = f"{self.metric}: {self.treatment} vs {self.control}, effect {_fmt(m)} (SE {_fmt(se)}, n={n})"
        if mode == "full":
            if n < self.min_seeds:
                return Decision(Verdict.INCONCLUSIVE, f"{what}; full mode needs >= {self.min_seeds} seeds", [stats])
            if m - self.z * se > 0 and m >= self.min_effect:
                return Decision(Verdict.CONFIRMED, f"{what} > {self.z:g} SE and >= {_fmt(self.min_effect)}", [stats])
            if m + self.z * se < 0:
                return Decision(Verdict.REFUTED, f"{what}: significantly in the other direction", [stats])
            return Decision(Verdict.INCONCLUSIVE, f"{what}: not significant at {self.z:g} SE "
                                                  f"or below {_fmt(self.min_effect)}", [stats])
        floor = max(self.min_effect, self.quick_z * se)
        if m > floor:
            return Decision(Verdict.CONSISTENT, f"{what} > {_fmt(floor)}", [stats])
        if m < -floor:
            return Decision(Verdict.NOT_CONSISTENT, f"{what} < -{_fmt(floor)}", [stats])
        return Decision(Verdict.INCONCLUSIVE, f"{what}: within +-{_fmt(floor)}", [stats])

    def describe(self) -> str:
        better = "higher" if self.higher_is_better else "lower"
        return (f"{self.treatment} vs {self.control} on {self.metric} ({better} is better), paired by seed. "
                f"Full: confirmed if mean effect > {self.z:g} SE and >= {self.min_effect:g} with >= {self.min_seeds} "
                f"seeds; refuted if < -{self.z:g} SE. Quick: consistent with if effect > max({self.min_effect:g}, "
                f"{self.quick_z:g} SE).")

    def brief(self) -> str:
        better = "higher" if self.higher_is_better else "lower"
        return f"Effect({self.metric}: {self.treatment} vs {self.control}, {better} better, min {self.min_effect:g})"


@dataclass(frozen=True)
class NonInferior:
    """Claim: ``treatment`` is no worse than ``control`` on ``metric`` by more than ``margin``."""

    metric: str
    treatment: str
    control: str
    margin: float
    higher_is_better: bool = True
    z: float = 2.0
    min_seeds: int = 3

    def decide(self, evidence: Evidence, mode: str) -> Decision:
        effect = Effect(self.metric, self.treatment, self.control, self.higher_is_better, z=self.z)
        d = effect.effects(evidence)
        stats = effect._stats(evidence, d)
        stats["kind"], stats["margin"] = "non-inferiority", self.margin
        e = stats["effect"]
        m, se, n = e["mean"], e["se"], e["n"]
        what = (f"{self.metric}: {self.treatment} - {self.control} = {_fmt(m)} (SE {_fmt(se)}, n={n}), "
                f"margin {_fmt(self.margin)}")
        if mode == "full":
            if n < self.min_seeds:
                return Decision(Verdict.INCONCLUSIVE, f"{what}; full mode needs >= {self.min_seeds} seeds", [stats])
            if m - self.z * se > -self.margin:
                return Decision(Verdict.CONFIRMED, f"{what}: lower bound above -margin", [stats])
            if m + self.z * se < -self.margin:
                return Decision(Verdict.REFUTED, f"{what}: upper bound below -margin", [stats])
            return Decision(Verdict.INCONCLUSIVE, f"{what}: interval straddles -margin", [stats])
        if m > -self.margin:
            return Decision(Verdict.CONSISTENT, f"{what}: within the margin", [stats])
        return Decision(Verdict.NOT_CONSISTENT, f"{what}: worse than the margin", [stats])

    def describe(self) -> str:
        better = "higher" if self.higher_is_better else "lower"
        return (f"{self.treatment} no worse than {self.control} on {self.metric} ({better} is better) by more than "
                f"{self.margin:g}. Full: confirmed if mean - {self.z:g} SE > -{self.margin:g} (>= {self.min_seeds} "
                f"seeds), refuted if mean + {self.z:g} SE < -{self.margin:g}. "
                f"Quick: consistent with if mean > -{self.margin:g}.")

    def brief(self) -> str:
        return f"NonInferior({self.metric}: {self.treatment} vs {self.control}, margin {self.margin:g})"


@dataclass(frozen=True)
class Exact:
    """Deterministic checks: confirmed iff every named check passed, refuted otherwise, in any mode."""

    checks: tuple[str, ...]
    meaning: str = ""

    def decide(self, evidence: Evidence, mode: str) -> Decision:
        missing = [c for c in self.checks if c not in evidence.checks]
        if missing:
            raise RuleError(f"the experiment did not report check(s) {', '.join(missing)}")
        failed = [c for c in self.checks if not evidence.checks[c]]
        stats = [{"kind": "exact", "checks": {c: bool(evidence.checks[c]) for c in self.checks}}]
        if failed:
            return Decision(Verdict.REFUTED, f"failed: {', '.join(failed)}", stats)
        return Decision(Verdict.CONFIRMED, f"all {len(self.checks)} exact checks hold", stats)

    def describe(self) -> str:
        return (f"exact (deterministic, any mode): confirmed iff all of {', '.join(self.checks)} hold; refuted if any "
                f"fails. {self.meaning}").strip()

    def brief(self) -> str:
        return f"Exact ({len(self.checks)} checks)"


@dataclass(frozen=True)
class AllOf:
    """Every part of a compound claim must hold."""

    rules: tuple[Any, ...]

    def decide(self, evidence: Evidence, mode: str) -> Decision:
        parts = [rule.decide(evidence, mode) for rule in self.rules]
        verdicts = [p.verdict for p in parts]
        if Verdict.REFUTED in verdicts:
            verdict = Verdict.REFUTED
        elif Verdict.NOT_CONSISTENT in verdicts:
            verdict = Verdict.NOT_CONSISTENT
        elif all(v is Verdict.CONFIRMED for v in verdicts):
            verdict = Verdict.CONFIRMED
        elif all(v.supports for v in verdicts):
            verdict = Verdict.CONSISTENT
        else:
            verdict = Verdict.INCONCLUSIVE
        reason = "; ".join(f"[{p.verdict.value}] {p.reason}" for p in parts)
        return Decision(verdict, reason, [s for p in parts for s in p.stats])

    def describe(self) -> str:
        return "all of: " + " AND ".join(f"({rule.describe()})" for rule in self.rules)

    def brief(self) -> str:
        return " AND ".join(rule.brief() for rule in self.rules)

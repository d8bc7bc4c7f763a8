"""The statistics behind every verdict, in one place: Student-t intervals of paired effects, the interval
tests of the rules, the minimum detectable effect and the Holm correction across the catalog.

**Paired effects.** Arm values come per seed, seed i of every arm from the same seed, so the effect of
seed i is ``d_i = sign * (treatment_i - control_i)`` (``sign = -1`` when lower is better: a positive ``d``
always favours the treatment). With n seeds, mean ``m``, sample standard deviation ``s`` and
``se = s / sqrt(n)``, the two-sided ``1 - alpha`` Student-t interval is::

    m -+ t(1 - alpha/2, n - 1) * se

with ``alpha = 0.05`` (a 95 % interval). Each one-sided test read off it has level ``alpha / 2 = 2.5 %``.

**Interval tests** (:func:`bound_test`, :func:`equivalence_test`). A directional claim says the effect is at
least a bound ``b`` (``b = min_effect > 0`` for "treatment beats control", ``b = -margin`` for "treatment is
no worse than control by more than margin"): *supported* when the whole interval lies above ``b``,
*contradicted* when it lies below, *open* when it contains ``b``. A "little or no difference" claim is
tested by TOST (Schuirmann 1987): supported when the interval lies inside ``(-margin, margin)``,
contradicted when it lies wholly outside, open otherwise. The rules (:mod:`dltricks.evidence.rules`) turn
supported / contradicted into confirmed / refuted (full mode, ``n >= 5``) or consistent with / not
consistent with (quick mode).

**p-values.** ``p_support`` is the one-sided p-value of the test that would support the claim (e.g.
``P(T >= (m - b) / se)`` for ``H0: effect <= b``), ``p_contradict`` that of the test that would contradict
it; a part is decided at level 2.5 % exactly when its interval excludes the bound. Across the catalog, full
mode applies Holm's step-down procedure (Holm 1979) to ``p = 2 * min(p_support, p_contradict)`` of every
statistical part (doubled because either direction can decide), keeping the family-wise error rate of all
confirmed and refuted verdicts of one run at 5 %.

**Minimum detectable effect** (:func:`mde`): with spread ``s`` and n seeds, an effect of
``(t(1 - alpha/2, n-1) + t(power, n-1)) * s / sqrt(n)`` beyond the bound is detected with probability
``power`` (80 %); :func:`seeds_to_decide` is the number of seeds at which the interval, at the observed mean
and spread, would clear the bound.

The t distribution is computed here (scipy is not a dependency): the CDF from the regularized incomplete
beta function (continued fraction, modified Lentz), the quantile by bisection on the CDF.
``tests/test_stats.py`` checks both against published table values and against a numerical integral of
``torch.distributions.StudentT``'s density.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ALPHA", "POWER", "t_cdf", "t_quantile", "Interval", "paired_interval", "bound_test", "equivalence_test",
           "mde", "seeds_to_decide", "holm"]

ALPHA = 0.05  # two-sided level of every interval: 95 % intervals, one-sided tests at 2.5 %
POWER = 0.8  # power of the minimum detectable effect


# ------------------------------------------------------------------------------------------------ t distribution
def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        # even step: d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m))
        num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        # odd step: d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1))
        num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the continued fraction converges fast here; else use the symmetry
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom.

    With ``x = df / (df + t^2)``: ``P(|T| > |t|) = I_x(df/2, 1/2)``.
    """
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _regularized_beta(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


@functools.lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The t with ``P(T <= t) = p`` (0 < p < 1), by bisection on :func:`t_cdf` to ~1e-12 (memoised)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _t_sf(t: float, df: float) -> float:
    """P(T >= t)."""
    return 1.0 - t_cdf(t, df) if t <= 0 else t_cdf(-t, df)


# ------------------------------------------------------------------------------------------------ intervals
@dataclass(frozen=True)
class Interval:
    """The Student-t interval of a mean of paired differences.

    ``lo``/``hi`` are ``None`` when undefined (fewer than two values); ``t_crit`` is the t quantile used.
    """

    n: int
    mean: float
    sd: float
    se: float
    df: int
    t_crit: float | None
    lo: float | None
    hi: float | None
    confidence: float

    @property
    def defined(self) -> bool:
        return self.lo is not None and self.hi is not None

    def p_above(self, bound: float) -> float:
        """One-sided p-value of ``H0: effect <= bound`` (small when the effect is clearly above)."""
        return self._p(self.mean - bound)

    def p_below(self, bound: float) -> float:
        """One-sided p-value of ``H0: effect >= bound``."""
        return self._p(bound - self.mean)

    def _p(self, excess: float) -> float:
        if self.n < 2:
            return 1.0
        if self.se == 0.0:  # identical differences: the sign of the excess is certain
            return 0.0 if excess > 0 else 1.0
        return _t_sf(excess / self.se, self.df)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_interval(effects: Sequence[float], *, alpha: float = ALPHA) -> Interval:
    """The two-sided ``1 - alpha`` Student-t interval of the mean of ``effects``."""
    n = len(effects)
    if n == 0:
        raise ValueError("no effects to summarise")
    mean = math.fsum(effects) / n
    if n < 2:
        return Interval(n, mean, 0.0, 0.0, 0, None, None, None, 1 - alpha)
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in effects) / (n - 1))
    se = sd / math.sqrt(n)
    t_crit = t_quantile(1 - alpha / 2, n - 1)
    return Interval(n, mean, sd, se, n - 1, t_crit, mean - t_crit * se, mean + t_crit * se, 1 - alpha)


# ------------------------------------------------------------------------------------------------ interval tests
SUPPORTED, CONTRADICTED, OPEN = "supported", "contradicted", "open"


def bound_test(iv: Interval, bound: float) -> tuple[str, float, float]:
    """Claim "effect > bound": (outcome, p_support, p_contradict); outcome by where the interval lies."""
    p_support, p_contradict = iv.p_above(bound), iv.p_below(bound)
    if not iv.defined:
        return OPEN, p_support, p_contradict
    if iv.lo > bound:
        return SUPPORTED, p_support, p_contradict
    if iv.hi < bound:
        return CONTRADICTED, p_support, p_contradict
    return OPEN, p_support, p_contradict


def equivalence_test(iv: Interval, margin: float) -> tuple[str, float, float]:
    """Claim "|effect| < margin" by TOST: (outcome, p_support, p_contradict).

    ``p_support`` is the larger of the two one-sided p-values (``H0: effect <= -margin`` and ``H0: effect >=
    margin``); ``p_contradict`` the smaller of those of ``H0: effect >= -margin`` and ``H0: effect <= margin``.
    """
    p_support = max(iv.p_above(-margin), iv.p_below(margin))
    p_contradict = min(iv.p_below(-margin), iv.p_above(margin))
    if not iv.defined:
        return OPEN, p_support, p_contradict
    if -margin < iv.lo and iv.hi < margin:
        return SUPPORTED, p_support, p_contradict
    if iv.lo > margin or iv.hi < -margin:
        return CONTRADICTED, p_support, p_contradict
    return OPEN, p_support, p_contradict


# ------------------------------------------------------------------------------------------------ power
def mde(sd: float, n: int, *, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """Smallest true distance from the bound that n seeds with spread ``sd`` detect with probability ``power``."""
    if n < 2:
        return None
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def seeds_to_decide(mean: float, sd: float, bound: float, *, alpha: float = ALPHA, limit: int = 1000) -> int | None:
    """Seeds at which the interval would clear ``bound`` if the mean and spread stayed as measured (None if
    the mean sits on the bound or more than ``limit`` seeds would be needed)."""
    gap = abs(mean - bound)
    if gap == 0.0:
        return None
    if sd == 0.0:
        return 2

    def clears(n: int) -> bool:  # the half-width t * sd / sqrt(n) falls with n
        return t_quantile(1 - alpha / 2, n - 1) * sd / math.sqrt(n) < gap

    if not clears(limit):
        return None
    lo, hi = 1, limit  # clears(hi) holds; find the smallest such n by bisection
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid >= 2 and clears(mid):
            hi = mid
        else:
            lo = mid
    return hi


# ------------------------------------------------------------------------------------------------ multiplicity
def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down): ``p_adj(k) = max_{j <= k} min(1, (m - j + 1) p_(j))`` in sorted order.

    A hypothesis is rejected at family-wise level alpha when its adjusted p-value is <= alpha.
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted

"""The statistics of the verdicts (dltricks.evidence.stats) and their calibration.

* the Student-t quantile and CDF against published table values and a numerical integral of torch's density;
* Holm's correction against a hand-computed example;
* the interval tests at their boundaries (both bounds beyond, straddling, exactly at the bound or margin);
* calibration through the engine: a null tip (two identical noisy arms) over 20 seed sets is called confirmed /
  consistent with in at most 5 % of them; a planted effect (a learning rate 30x too small) is found;
* the setup check: a baseline that stays at chance makes the tip "invalid setup", with the real harness too;
* family_control: Holm turns a borderline confirmation into inconclusive.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import torch

from dltricks.evidence import Effect, Equivalent, Evidence, NonInferior, Tip, Verdict, setup_problems
from dltricks.evidence import stats
from dltricks.evidence.rules import part_verdict
from dltricks.tips.engine import TipResult, family_control, run_tip
from train_helpers import paired_evidence

# Two-sided critical values t(1 - alpha/2, df) and one-sided ones, as printed in standard tables
# (e.g. NIST/SEMATECH e-Handbook of Statistical Methods, Table 1.4.2.7.3.4), 3 decimals.
TABLE = {(0.975, 1): 12.706, (0.975, 2): 4.303, (0.975, 3): 3.182, (0.975, 4): 2.776, (0.975, 5): 2.571,
         (0.975, 9): 2.262, (0.975, 10): 2.228, (0.975, 20): 2.086, (0.975, 30): 2.042, (0.975, 100): 1.984,
         (0.95, 1): 6.314, (0.95, 4): 2.132, (0.95, 10): 1.812, (0.995, 4): 4.604, (0.995, 10): 3.169,
         (0.90, 5): 1.476, (0.80, 4): 0.941}


@pytest.mark.parametrize(("p", "df"), list(TABLE))
def test_t_quantile_matches_the_table(p, df):
    assert stats.t_quantile(p, df) == pytest.approx(TABLE[p, df], abs=5e-4)
    assert stats.t_quantile(1 - p, df) == pytest.approx(-TABLE[p, df], abs=5e-4)


def test_t_quantile_tends_to_the_normal_one():
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.975, dtype=torch.float64)))
    assert stats.t_quantile(0.975, 1e7) == pytest.approx(z, abs=1e-5)


@pytest.mark.parametrize("df", [1, 3, 10])
def test_t_cdf_matches_torch_density_integrated(df):
    dist = torch.distributions.StudentT(torch.tensor(float(df), dtype=torch.float64))
    for t in (0.3, 1.0, 2.5, 6.0):
        x = torch.linspace(0.0, t, 20001, dtype=torch.float64)
        area = torch.trapezoid(dist.log_prob(x).exp(), x).item()  # P(0 < T < t)
        assert stats.t_cdf(t, df) == pytest.approx(0.5 + area, abs=1e-7)
        assert stats.t_cdf(-t, df) == pytest.approx(0.5 - area, abs=1e-7)
        assert stats.t_quantile(stats.t_cdf(t, df), df) == pytest.approx(t, rel=1e-8)


def test_paired_interval():
    iv = stats.paired_interval([0.1, 0.12, 0.09, 0.11, 0.1])
    assert (iv.n, iv.df) == (5, 4) and iv.mean == pytest.approx(0.104)
    assert iv.sd == pytest.approx(0.0114018, rel=1e-5) and iv.t_crit == pytest.approx(2.776445, rel=1e-6)
    assert iv.lo == pytest.approx(0.104 - 2.776445 * 0.0114018 / 5 ** 0.5, rel=1e-5)
    one = stats.paired_interval([0.3])
    assert one.lo is None and one.hi is None and one.p_above(0.0) == 1.0


def test_holm_against_a_hand_computed_example():
    # sorted p: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1, but at least 0.06)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([]) == []


def _iv(lo: float, hi: float, n: int = 5) -> stats.Interval:
    mean = (lo + hi) / 2
    t_crit = stats.t_quantile(0.975, n - 1)
    se = (hi - lo) / (2 * t_crit)
    return stats.Interval(n, mean, se * n ** 0.5, se, n - 1, t_crit, lo, hi, 0.95)


@pytest.mark.parametrize(("lo", "hi", "outcome"), [
    (0.02, 0.05, stats.SUPPORTED),  # both bounds beyond the minimum effect
    (-0.05, -0.02, stats.CONTRADICTED),  # both on the other side
    (0.005, 0.05, stats.OPEN),  # straddles the minimum effect
    (0.01, 0.05, stats.OPEN),  # lower bound exactly at the minimum effect: not beyond it
    (-0.05, 0.01, stats.OPEN),  # upper bound exactly at it
    (0.0, 0.009, stats.CONTRADICTED),  # significantly positive, but below the minimum effect
])
def test_bound_test_boundaries(lo, hi, outcome):
    got, p_support, p_contradict = stats.bound_test(_iv(lo, hi), 0.01)
    assert got == outcome
    # a part is decided exactly when its one-sided p-value is below 2.5 % (up to rounding at the boundary)
    if outcome == stats.SUPPORTED:
        assert p_support < 0.025
    if outcome == stats.CONTRADICTED:
        assert p_contradict < 0.025


@pytest.mark.parametrize(("lo", "hi", "outcome"), [
    (-0.005, 0.008, stats.SUPPORTED),  # inside the margin
    (-0.01, 0.005, stats.OPEN),  # exactly at the lower margin
    (-0.005, 0.01, stats.OPEN),  # exactly at the upper margin
    (-0.02, 0.02, stats.OPEN),  # wider than the margin on both sides
    (0.011, 0.03, stats.CONTRADICTED),  # wholly above the margin
    (-0.03, -0.012, stats.CONTRADICTED),  # wholly below it
    (0.01, 0.03, stats.OPEN),  # above, but its lower bound exactly at the margin: not beyond it
    (-0.03, -0.01, stats.OPEN),  # below, its upper bound exactly at minus the margin
])
def test_equivalence_test_boundaries(lo, hi, outcome):
    assert stats.equivalence_test(_iv(lo, hi), 0.01)[0] == outcome


def test_part_verdicts_by_mode_and_seeds():
    assert part_verdict(stats.SUPPORTED, "full", 5, 5) is Verdict.CONFIRMED
    assert part_verdict(stats.CONTRADICTED, "full", 5, 5) is Verdict.REFUTED
    assert part_verdict(stats.SUPPORTED, "full", 4, 5) is Verdict.INCONCLUSIVE
    assert part_verdict(stats.SUPPORTED, "quick", 3, 5) is Verdict.CONSISTENT
    assert part_verdict(stats.CONTRADICTED, "quick", 3, 5) is Verdict.NOT_CONSISTENT
    assert part_verdict(stats.OPEN, "quick", 3, 5) is Verdict.INCONCLUSIVE


def test_mde_and_seeds_to_decide():
    assert stats.mde(0.02, 1) is None
    # (t(0.975, 4) + t(0.8, 4)) * sd / sqrt(5)
    assert stats.mde(0.02, 5) == pytest.approx((2.776445 + 0.940965) * 0.02 / 5 ** 0.5, rel=1e-5)
    n = stats.seeds_to_decide(0.02, 0.02, 0.0)
    assert stats.t_quantile(0.975, n - 1) * 0.02 / n ** 0.5 < 0.02 <= stats.t_quantile(0.975, n - 2) * 0.02 / (
        n - 1) ** 0.5


# -------------------------------------------------------------------------------- calibration through the engine
EXPERIMENTS = '''
import math
import torch
from dltricks.evidence import Evidence


def noisy_arms(ctx):
    """Two arms whose values are 0.9 + noise of sd 0.02 (shift added to the treatment); the noise is drawn per arm
    and seed, plus a seed effect shared by both arms (what pairing removes)."""
    ev = Evidence(setup="synthetic")
    for seed in ctx.seeds:
        g = torch.Generator().manual_seed(seed)
        shared = 0.03 * float(torch.randn((), generator=g))
        t, c = (0.02 * float(v) for v in torch.randn(2, generator=g))
        ev.add("treatment", acc=0.9 + shared + t + ctx.get("shift", 0.0))
        ev.add("control", acc=0.9 + shared + c)
    return ev


def learning_rates(ctx):
    """Logistic regression on two Gaussian blobs, full-batch gradient descent: treatment at lr, control at lr/30."""
    ev = Evidence(setup="synthetic logistic regression")
    for seed in ctx.seeds:
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 2, (256,), generator=g)
        x = torch.randn(256, 2, generator=g) + 1.5 * (2 * y[:, None].float() - 1)
        for arm, lr in (("treatment", ctx["lr"]), ("control", ctx["lr"] / 30)):
            w = (0.1 * torch.randn(2, 2, generator=torch.Generator().manual_seed(seed))).requires_grad_()
            for _ in range(ctx.get("steps", 40)):
                loss = torch.nn.functional.cross_entropy(x @ w, y)
                (grad,) = torch.autograd.grad(loss, w)
                w = (w - lr * grad).detach().requires_grad_()
            ev.add(arm, loss=float(torch.nn.functional.cross_entropy(x @ w.detach(), y)))
    return ev


def chance_baseline(ctx):
    """A treatment that trains and a baseline stuck at chance (as the harness reports it)."""
    ev = Evidence(setup="synthetic")
    for seed in ctx.seeds:
        ev.add("treatment", acc=0.9 + 0.01 * seed)
        ev.add("baseline", acc=0.1)
        ev.record_health("treatment")
        ev.record_health("baseline", "at chance (validation accuracy 0.100 <= 0.120)")
    return ev
'''


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    import importlib
    import sys

    folder = tmp_path_factory.mktemp("stats_experiments")
    (folder / "stats_experiments.py").write_text(textwrap.dedent(EXPERIMENTS))
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("stats_experiments")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("stats_experiments", None)


def _tip(fn, rule, **settings) -> Tip:
    return Tip(id="test.stats", title="t", claim="c", source="s", section="Tests", experiment=fn, rule=rule,
               quick=dict(settings), full=dict(settings))


def _verdict(fn, rule, *, mode: str, seeds: list[int], workdir: Path, **settings) -> str:
    """What the engine decides (setup check, then the rule), without its cache: fast enough for many seed sets."""
    from dltricks.evidence import Context

    ev = fn(Context(tip_id="test", mode=mode, settings=settings, seeds=seeds, workdir=workdir))
    assert not setup_problems(ev, rule)
    return rule.decide(ev, mode).verdict.value


@pytest.mark.parametrize(("mode", "n"), [("quick", 3), ("full", 5)])
def test_a_null_tip_is_rarely_called_supported(experiments, tmp_path, mode, n):
    """Two identical arms, 20 disjoint seed sets: confirmed / consistent with in at most 1 of 20 (5 %), with the
    claim's minimum effect at 0.01 and even at 0."""
    for rule in (Effect("acc", "treatment", "control", min_effect=0.01),
                 Effect("acc", "treatment", "control", min_effect=0.0)):
        verdicts = [_verdict(experiments.noisy_arms, rule, mode=mode, seeds=list(range(100 + n * k, 100 + n * k + n)),
                             workdir=tmp_path) for k in range(20)]
        supported = sum(v in ("confirmed", "consistent with") for v in verdicts)
        assert supported <= 1, verdicts


def test_a_planted_shift_is_found(experiments, tmp_path):
    tip = _tip(experiments.noisy_arms, Effect("acc", "treatment", "control", min_effect=0.01), shift=0.08)
    assert run_tip(tip, mode="full", seeds=5, cache_dir=tmp_path, use_cache=False)[0].verdict == "confirmed"


def test_a_learning_rate_30x_too_small_is_found(experiments, tmp_path):
    tip = _tip(experiments.learning_rates, Effect("loss", "treatment", "control", higher_is_better=False,
                                                  min_effect=0.05), lr=1.0)
    quick, _ = run_tip(tip, mode="quick", cache_dir=tmp_path, use_cache=False)
    full, _ = run_tip(tip, mode="full", cache_dir=tmp_path, use_cache=False)
    assert quick.verdict == "consistent with" and full.verdict == "confirmed", (quick.reason, full.reason)
    part = full.stats[0]
    assert part["effect"]["n"] == 5 and len(part["treatment_values"]) == 5 and part["effect"]["lo"] > 0.05


def test_a_baseline_at_chance_is_invalid_setup(experiments, tmp_path):
    tip = _tip(experiments.chance_baseline, Effect("acc", "treatment", "baseline", min_effect=0.01))
    result, _ = run_tip(tip, mode="full", cache_dir=tmp_path, use_cache=False)
    assert result.verdict == "invalid setup" and not result.stats
    assert "baseline, seed 0: at chance" in result.reason and len(result.setup_problems) == 5
    assert Verdict(result.verdict).supports is None  # never counted for or against the claim
    # the same arm declared as allowed to fail (the claim predicts it): compared as usual
    tip.may_fail = ("baseline",)
    assert run_tip(tip, mode="full", cache_dir=tmp_path, use_cache=False)[0].verdict == "confirmed"


def test_setup_problems_flags_non_finite_values():
    ev = Evidence()
    for v in (0.5, float("nan")):
        ev.add("t", acc=v)
        ev.add("c", acc=0.4)
    assert setup_problems(ev, Effect("acc", "t", "c")) == ["t: acc is not finite in 1 of 2 runs"]
    assert setup_problems(ev, Effect("acc", "c", "c")) == []


def _result(tip_id: str, parts: list[dict]) -> TipResult:
    return TipResult(id=tip_id, title="t", claim="c", source="s", section="S", rule="r", mode="full",
                     verdict=parts[0]["verdict"], reason="r", stats=parts)


def test_family_control_applies_holm_in_full_mode():
    strong = {"kind": "effect", "metric": "a", "p": 0.0001, "verdict": "confirmed"}
    borderline = {"kind": "effect", "metric": "b", "p": 0.03, "verdict": "confirmed"}
    open_part = {"kind": "equivalence", "metric": "c", "p": 0.5, "verdict": "inconclusive"}
    exact = {"kind": "exact", "checks": {"x": True}, "verdict": "confirmed"}
    results = [_result("a", [strong]), _result("b", [exact, borderline]), _result("c", [open_part])]
    statement = family_control(results, mode="full")
    assert statement["tests"] == 3 and statement["changed"] == ["b: confirmed -> inconclusive"]
    assert [r.verdict for r in results] == ["confirmed", "inconclusive", "inconclusive"]
    assert borderline["p_holm"] == pytest.approx(0.06) and "Holm" in results[1].reason
    quick = [_result("b", [dict(borderline, verdict="consistent with")])]
    assert family_control(quick, mode="quick")["changed"] == [] and quick[0].verdict == "consistent with"


def test_non_inferior_and_equivalent_use_the_same_interval():
    ev = Evidence()
    for d in (0.001, -0.002, 0.0, 0.003, -0.001):
        ev.add("t", acc=0.9 + d)
        ev.add("c", acc=0.9)
    ni = NonInferior("acc", "t", "c", margin=0.01).decide(ev, "full")
    eq = Equivalent("acc", "t", "c", margin=0.01).decide(ev, "full")
    assert ni.verdict is Verdict.CONFIRMED and eq.verdict is Verdict.CONFIRMED
    assert ni.stats[0]["effect"] == eq.stats[0]["effect"]
    assert math.isclose(ni.stats[0]["bound"], -0.01) and eq.stats[0]["kind"] == "equivalence"


@pytest.mark.slow
def test_the_real_harness_flags_a_baseline_at_chance(tmp_path):
    """A baseline trained at a learning rate far too small to leave chance: the tip is invalid setup."""
    from dltricks.evidence import Context
    from dltricks.experiments.training import TinyCNN, TrainSpec, run_arms

    spec = dict(subset=128, epochs=1, batch_size=64, optimizer="sgd", bn_recalibrate=0)
    ctx = Context(tip_id="test", mode="quick", settings={}, seeds=[0], workdir=Path(tmp_path))
    ev = Evidence()
    run_arms(ctx, ev, {"treatment": (lambda: TinyCNN(width=4), TrainSpec(lr=0.1, **spec)),
                       "baseline": (lambda: TinyCNN(width=4, norm=None), TrainSpec(lr=1e-9, **spec))})
    problems = setup_problems(ev, Effect("val_acc", "treatment", "baseline"))
    assert any(p.startswith("baseline, seed 0: at chance") or p.startswith("baseline, seed 0: not converged")
               for p in problems), problems
    assert ev.budget["optimizer steps"] == 2 and ev.budget["training images seen"] == 128


# ---------------------------------------------------------------------------------------------- edge cases
# Closed forms used below: for df = 1 (Cauchy) P(T >= t) = 1/2 - atan(t)/pi, and t(0.975, 1) = tan(0.475 pi).
def _cauchy_sf(t: float) -> float:
    return 0.5 - math.atan(t) / math.pi


def test_paired_interval_of_one_two_and_no_values():
    with pytest.raises(ValueError, match="^no effects to summarise$"):
        stats.paired_interval([])
    assert stats.paired_interval([0.3]) == stats.Interval(1, 0.3, 0.0, 0.0, 0, None, None, None, 0.95)
    iv = stats.paired_interval([1.0, 3.0])  # mean 2, sd sqrt(2), se 1, df 1
    t1 = math.tan(0.475 * math.pi)
    assert (iv.n, iv.mean, iv.df, iv.confidence) == (2, 2.0, 1, 0.95)
    assert iv.sd == pytest.approx(math.sqrt(2.0)) and iv.se == pytest.approx(1.0)
    assert iv.t_crit == pytest.approx(t1, rel=1e-9)
    assert iv.lo == pytest.approx(2.0 - t1, rel=1e-9) and iv.hi == pytest.approx(2.0 + t1, rel=1e-9)
    assert stats.paired_interval([1.0, 3.0], alpha=0.1).confidence == pytest.approx(0.9)


def test_one_sided_p_values_of_small_and_degenerate_samples():
    iv = stats.paired_interval([1.0, 3.0])  # n = 2 is enough for a p-value: t = (mean - bound) / se, df 1
    assert iv.p_above(0.0) == pytest.approx(_cauchy_sf(2.0), rel=1e-9)
    assert iv.p_above(1.0) == pytest.approx(_cauchy_sf(1.0), rel=1e-9)
    assert iv.p_below(1.0) == pytest.approx(_cauchy_sf(-1.0), rel=1e-9)
    assert stats.paired_interval([0.3]).p_above(-5.0) == 1.0  # one value: nothing is decided
    same = stats.paired_interval([0.5, 0.5, 0.5])  # se = 0: the sign of mean - bound is certain
    assert same.p_above(0.2) == 0.0 and same.p_below(0.7) == 0.0
    assert same.p_above(0.7) == 1.0 and same.p_below(0.2) == 1.0
    assert same.p_above(0.5) == 1.0 and same.p_below(0.5) == 1.0  # on the bound: not above it


def test_equivalence_p_values_are_the_two_one_sided_tests():
    iv = stats.paired_interval([0.1, 0.3])  # mean 0.2, se 0.1, df 1
    _, p_support, p_contradict = stats.equivalence_test(iv, 0.5)
    # H0: effect <= -0.5 (t = 7) and H0: effect >= 0.5 (t = 3): the larger p supports equivalence
    assert p_support == pytest.approx(max(_cauchy_sf(7.0), _cauchy_sf(3.0)), rel=1e-9)
    # H0: effect >= -0.5 (t = -7) and H0: effect <= 0.5 (t = -3): the smaller p contradicts it
    assert p_contradict == pytest.approx(min(_cauchy_sf(-7.0), _cauchy_sf(-3.0)), rel=1e-9)


def test_t_distribution_at_its_edges():
    with pytest.raises(ValueError, match="degrees of freedom must be > 0"):
        stats.t_cdf(1.0, 0)
    assert stats.t_cdf(math.inf, 3) == 1.0 and stats.t_cdf(-math.inf, 3) == 0.0
    assert stats.t_cdf(0.0, 7) == 0.5  # x = df / (df + 0) = 1: I_1 = 1
    assert stats._regularized_beta(2.0, 0.5, 0.0) == 0.0 and stats._regularized_beta(2.0, 0.5, 1.0) == 1.0
    for t in (-3.0, -0.5, 0.5, 3.0):
        assert stats._t_sf(t, 1) == pytest.approx(_cauchy_sf(t), rel=1e-12)
    # Far tails keep their relative precision (computed as the lower tail, not 1 - cdf): scipy's reference
    scipy_stats = pytest.importorskip("scipy.stats")
    for t, df in ((40.0, 1000), (12.0, 30), (-12.0, 30), (8.0, 4)):
        assert stats._t_sf(t, df) == pytest.approx(float(scipy_stats.t.sf(t, df)), rel=1e-9, abs=0.0)


def test_t_cdf_matches_scipy_over_a_grid():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4.5, 9, 30, 200, 5000):
        for t in (-60.0, -7.0, -2.0, -0.3, 0.0, 0.05, 0.7, 1.9, 4.0, 25.0):
            assert stats.t_cdf(t, df) == pytest.approx(float(scipy_stats.t.cdf(t, df)), rel=1e-10, abs=1e-300)


def test_mde_of_two_seeds_and_the_seed_limit():
    # (t(0.975, 1) + t(0.8, 1)) * sd / sqrt(2); t(0.8, 1) = tan(0.3 pi)
    assert stats.mde(1.0, 2) == pytest.approx((math.tan(0.475 * math.pi) + math.tan(0.3 * math.pi)) / 2 ** 0.5)

    def half_width(n: int) -> float:
        return stats.t_quantile(0.975, n - 1) / n ** 0.5

    gap = (half_width(1000) + half_width(1001)) / 2  # cleared first at 1,001 seeds
    assert stats.seeds_to_decide(gap, 1.0, 0.0) is None  # more than the default limit of 1,000
    assert stats.seeds_to_decide(gap, 1.0, 0.0, limit=1001) == 1001


def test_seeds_to_decide_edge_cases():
    assert stats.seeds_to_decide(0.02, 0.02, 0.02) is None  # the mean sits on the bound
    assert stats.seeds_to_decide(0.03, 0.0, 0.01) == 2  # no spread: two seeds decide
    # a gap of 10 standard deviations: t(0.975, 1) / sqrt(2) = 8.98 < 10, so two seeds already clear it
    assert stats.seeds_to_decide(10.0, 1.0, 0.0) == 2
    # the distance to the bound counts, not the mean: mean 0.05 against bound 0.03 is a gap of 0.02
    n = stats.seeds_to_decide(0.05, 0.02, 0.03)
    assert isinstance(n, int) and n == stats.seeds_to_decide(0.02, 0.02, 0.0)
    assert stats.seeds_to_decide(0.01, 0.02, 0.03) == n  # below the bound by the same gap


def test_holm_never_exceeds_one():
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]
    assert stats.holm([0.3, 0.01, 0.9]) == pytest.approx([0.6, 0.03, 0.9])


# ------------------------------------------------------------------ gaps found by mutation testing (issue 23)

def _two_arms(t: list[float], c: list[float], metric: str = "acc") -> Evidence:
    return paired_evidence(t, c, metric, arms=("new", "old"))


def test_rules_describe_and_brief_themselves_word_for_word() -> None:
    from dltricks.evidence.rules import AllOf, Exact

    effect = Effect("acc", "new", "old", min_effect=0.02)
    lower = Effect("loss", "new", "old", higher_is_better=False, min_seeds=3)
    non_inferior = NonInferior("acc", "new", "old", margin=0.05)
    equivalent = Equivalent("acc", "new", "old", margin=0.03, higher_is_better=False)
    exact = Exact(("a", "b"), meaning="Counts by hand.")
    assert effect.brief() == "Effect(acc: new vs old, higher better, min 0.02)"
    assert lower.brief() == "Effect(loss: new vs old, lower better, min 0)"
    assert non_inferior.brief() == "NonInferior(acc: new vs old, margin 0.05)"
    assert equivalent.brief() == "Equivalent(acc: new vs old, margin 0.03, TOST)"
    assert exact.brief() == "Exact (2 checks)"
    assert AllOf((effect, exact)).brief() == effect.brief() + " AND " + exact.brief()
    assert effect.describe() == (
        "new vs old on acc (higher is better), paired by seed; the claim needs an effect of at least 0.02. 95% "
        "Student-t interval of the mean paired effect: wholly above 0.02 = confirmed (full mode, >= 5 seeds) or "
        "consistent with (quick); wholly below = refuted / not consistent with; across it = inconclusive.")
    assert "(lower is better)" in lower.describe() and ">= 3 seeds" in lower.describe()
    assert non_inferior.describe() == (
        "new no worse than old on acc (higher is better) by more than 0.05, paired by seed. 95% Student-t interval "
        "of the mean paired effect: wholly above -0.05 = confirmed (full mode, >= 5 seeds) or consistent with "
        "(quick); wholly below = refuted / not consistent with; across it = inconclusive.")
    assert equivalent.describe() == (
        "new and old within 0.03 of each other on acc (lower is better), paired by seed; equivalence test (TOST): "
        "the 95% Student-t interval of the mean paired difference wholly inside (-0.03, 0.03) = confirmed (full "
        "mode, >= 5 seeds) or consistent with (quick); wholly outside = refuted / not consistent with; otherwise "
        "inconclusive.")
    assert exact.describe() == ("exact (deterministic, any mode): confirmed iff all of a, b hold; refuted if any "
                                "fails. Counts by hand.")
    assert Exact(("a",)).describe().endswith("refuted if any fails.")
    assert AllOf((effect, exact)).describe() == f"all of: ({effect.describe()}) AND ({exact.describe()})"
    assert AllOf((effect, non_inferior)).arms() == [("new", "acc"), ("old", "acc")] * 2 and exact.arms() == []


def test_summarize_and_the_numbers_in_a_reason() -> None:
    from dltricks.evidence.rules import summarize

    assert summarize([2.0]) == {"mean": 2.0, "std": 0.0, "se": 0.0, "n": 1}
    s = summarize([1.0, 2.0, 6.0])
    assert s["mean"] == 3.0 and s["std"] == pytest.approx(math.sqrt(7.0)) and s["n"] == 3
    assert s["se"] == pytest.approx(math.sqrt(7.0) / math.sqrt(3))
    empty = summarize([])
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in ("mean", "std", "se"))
    # The reason quotes the effect and interval to 4 significant digits; one seed has no interval.
    decision = Effect("acc", "new", "old").decide(_two_arms([0.51234], [0.4]), "full")
    assert decision.reason == ("acc: new vs old, effect 0.1123, 95% CI [undefined, undefined] (n=1, df=0); one seed "
                               "gives no interval")


def test_paired_rules_report_their_declared_bound_and_the_arms_they_read() -> None:
    from dltricks.evidence.rules import RuleError

    ev = _two_arms([0.9, 0.91, 0.92, 0.93, 0.95], [0.9, 0.9, 0.9, 0.9, 0.9])
    part = Effect("acc", "new", "old", min_effect=0.01).decide(ev, "full").stats[0]
    assert part["min_effect"] == 0.01 and "margin" not in part and part["bound"] == 0.01
    assert part["treatment_values"] == [0.9, 0.91, 0.92, 0.93, 0.95] and part["control_values"] == [0.9] * 5
    assert part["differences"] == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.05])
    ni = NonInferior("acc", "new", "old", margin=0.02).decide(ev, "full").stats[0]
    assert ni["margin"] == 0.02 and "min_effect" not in ni and ni["bound"] == -0.02
    eq = Equivalent("acc", "new", "old", margin=0.1).decide(ev, "full").stats[0]
    assert eq["margin"] == 0.1 and "min_effect" not in eq
    lower = Effect("acc", "new", "old", higher_is_better=False).decide(ev, "full").stats[0]
    assert lower["differences"] == pytest.approx([-0.0, -0.01, -0.02, -0.03, -0.05]) and lower["better"] == "lower"
    for evidence, message in (
            (_two_arms([1.0], [1.0], metric="loss"), "the experiment reported no 'acc' for arm 'new' (arms: new, old)"),
            (Evidence(), "the experiment reported no 'acc' for arm 'new' (arms: none)"),
            (Evidence(arms={"new": {"acc": []}, "old": {"acc": [1.0]}}), "arm 'new' has no 'acc' values"),
            (Evidence(arms={"new": {"acc": [float("nan")]}, "old": {"acc": [1.0]}}),
             "arm 'new' has non-finite 'acc' values [nan]"),
            (Evidence(arms={"new": {"acc": [1.0, 2.0]}, "old": {"acc": [1.0]}}),
             "acc: 2 values for 'new' but 1 for 'old'")):
        with pytest.raises(RuleError) as err:
            Effect("acc", "new", "old").decide(evidence, "full")
        assert str(err.value) == message


def test_exact_and_allof_decisions_in_full() -> None:
    from dltricks.evidence.rules import AllOf, Exact, RuleError

    ev = Evidence(checks={"a": True, "b": False, "c": True})
    ok = Exact(("a", "c")).decide(ev, "quick")
    assert ok.verdict is Verdict.CONFIRMED and ok.reason == "all 2 exact checks hold"
    assert ok.stats == [{"kind": "exact", "checks": {"a": True, "c": True}, "verdict": "confirmed"}]
    bad = Exact(("a", "b", "c")).decide(ev, "full")
    assert bad.verdict is Verdict.REFUTED and bad.reason == "failed: b"
    assert bad.stats[0]["checks"] == {"a": True, "b": False, "c": True} and bad.stats[0]["verdict"] == "refuted"
    with pytest.raises(RuleError) as err:
        Exact(("a", "x", "y")).decide(ev, "full")
    assert str(err.value) == "the experiment did not report check(s) x, y"
    both = _two_arms([0.9, 0.91, 0.92, 0.93, 0.95], [0.9] * 5)
    both.checks.update({"a": True})
    combined = AllOf((Effect("acc", "new", "old"), Exact(("a",)))).decide(both, "full")
    first = Effect("acc", "new", "old").decide(both, "full")
    assert combined.reason == f"[{first.verdict.value}] {first.reason}; [confirmed] all 1 exact checks hold"
    assert [s["kind"] for s in combined.stats] == ["effect", "exact"]
    assert combined.verdict is first.verdict


def test_a_paired_decision_records_every_number_and_says_why_in_each_case() -> None:
    ev = _two_arms([0.52, 0.55, 0.53, 0.56, 0.54], [0.50, 0.51, 0.50, 0.52, 0.51])
    decision = Effect("acc", "new", "old", min_effect=0.01).decide(ev, "full")
    part = decision.stats[0]
    assert set(part) == {"kind", "metric", "better", "treatment", "control", "treatment_stats", "control_stats",
                         "treatment_values", "control_values", "differences", "effect", "bound", "wanted", "outcome",
                         "p_support", "p_contradict", "p", "verdict", "mode", "min_seeds", "mde", "seeds_to_decide",
                         "min_effect"}
    iv = stats.paired_interval(part["differences"])
    assert part["effect"] == {**iv.to_dict(), "std": iv.sd}
    assert (part["kind"], part["metric"], part["better"], part["treatment"], part["control"]) == (
        "effect", "acc", "higher", "new", "old")
    assert (part["wanted"], part["mode"], part["min_seeds"], part["verdict"]) == (
        "interval above 0.01", "full", 5, "confirmed")
    assert part["outcome"] == stats.SUPPORTED and part["p_support"] < 0.025 < part["p_contradict"]
    assert part["p"] == pytest.approx(min(1.0, 2 * part["p_support"]))
    assert part["mde"] == stats.mde(iv.sd, iv.n) and part["seeds_to_decide"] == stats.seeds_to_decide(
        iv.mean, iv.sd, 0.01)
    assert decision.reason == (f"acc: new vs old, effect {iv.mean:.4g}, 95% CI [{iv.lo:.4g}, {iv.hi:.4g}] (n=5, df=4); "
                               "interval above 0.01: yes")
    # p is capped at 1; a contradicted claim, an open one, and a decisive one with too few seeds say so.
    worse = _two_arms([0.40, 0.41, 0.42, 0.40, 0.41], [0.50, 0.51, 0.50, 0.52, 0.51])
    no = Effect("acc", "new", "old").decide(worse, "full")
    assert no.reason.endswith("interval above 0: no, the interval lies on the other side")
    assert no.stats[0]["p"] <= 1.0 and no.stats[0]["verdict"] == "refuted"
    open_ = Effect("acc", "new", "old").decide(_two_arms([0.5, 0.6, 0.4], [0.5, 0.5, 0.5]), "quick")
    assert open_.reason.endswith("interval above 0: the interval straddles the bound")
    assert open_.stats[0]["p"] == pytest.approx(1.0)
    few = Effect("acc", "new", "old").decide(_two_arms([0.6, 0.61, 0.62], [0.5, 0.5, 0.5]), "full")
    assert few.reason.endswith("the interval is decisive but full mode needs >= 5 seeds")
    four = Effect("acc", "new", "old", min_seeds=4).decide(_two_arms([0.6, 0.61, 0.62, 0.6], [0.5] * 4), "full")
    assert four.reason.endswith("interval above 0: yes") and four.verdict is Verdict.CONFIRMED
    quick_few = Effect("acc", "new", "old").decide(_two_arms([0.6, 0.61, 0.62], [0.5, 0.5, 0.5]), "quick")
    assert quick_few.reason.endswith("interval above 0: yes")  # quick mode has no seed minimum
    two = Effect("acc", "new", "old").decide(_two_arms([0.6, 0.7], [0.5, 0.5]), "quick").stats[0]
    assert two["seeds_to_decide"] == stats.seeds_to_decide(two["effect"]["mean"], two["effect"]["sd"], 0.0)
    one = Effect("acc", "new", "old").decide(_two_arms([0.6], [0.5]), "quick").stats[0]
    assert one["seeds_to_decide"] is None
    assert Effect("acc", "new", "old", higher_is_better=False).decide(worse, "full").stats[0]["better"] == "lower"


def test_setup_problems_name_the_seed_and_the_non_finite_metrics() -> None:
    ev = _two_arms([0.5, float("nan"), 0.6], [0.5, 0.5, 0.5])
    ev.record_health("new", "")
    ev.record_health("new", "diverged")
    ev.record_health("old", "at chance")
    rule = Effect("acc", "new", "old")
    assert setup_problems(ev, rule, seeds=[10, 11]) == ["new, seed 11: diverged", "old, seed 10: at chance",
                                                         "new: acc is not finite in 1 of 3 runs"]
    # A run beyond the listed seeds is named by its index.
    assert setup_problems(ev, rule, seeds=[10]) == ["new, seed 1: diverged", "old, seed 10: at chance",
                                                    "new: acc is not finite in 1 of 3 runs"]
    assert setup_problems(ev, rule, may_fail=("new",)) == ["old, seed 0: at chance",
                                                          "new: acc is not finite in 1 of 3 runs"]
    assert setup_problems(ev, object()) == ["new, seed 1: diverged", "old, seed 0: at chance"]  # no arms() to read
    assert setup_problems(Evidence(), Effect("acc", "x", "y")) == []  # arms the experiment never reported


def test_rule_details_the_other_tests_leave_open() -> None:
    from dltricks.evidence.rules import Exact, summarize

    assert "(lower is better)" in NonInferior("loss", "new", "old", higher_is_better=False).describe()
    assert "(higher is better)" in Equivalent("acc", "new", "old").describe()
    assert summarize([1.0, 3.0])["std"] == pytest.approx(math.sqrt(2.0))  # two values have a spread
    assert Exact(("a", "b", "c")).decide(Evidence(checks={"a": False, "b": True, "c": False}), "full").reason == \
        "failed: a, c"
    # Equivalence with two seeds: the seeds needed to reach the nearer edge of (-margin, margin).
    part = Equivalent("acc", "new", "old", margin=0.05).decide(_two_arms([0.6, 0.7], [0.58, 0.6]), "quick").stats[0]
    iv = part["effect"]
    edges = [stats.seeds_to_decide(iv["mean"], iv["sd"], b) for b in (-0.05, 0.05)]
    assert part["seeds_to_decide"] == min(n for n in edges if n is not None)
    assert Equivalent("acc", "new", "old").decide(_two_arms([0.6], [0.5]), "quick").stats[0]["seeds_to_decide"] is None
    # Neither edge within reach of 1,000 seeds (a margin of 1e-6 against a spread of 7): None, not an error.
    far = Equivalent("acc", "new", "old", margin=1e-6).decide(_two_arms([5.0, -5.0], [0.0, 0.0]), "quick")
    assert far.stats[0]["seeds_to_decide"] is None
    # Every problem of every run is listed, not only the first of an arm.
    ev = _two_arms([0.5, 0.5], [0.5, 0.5])
    ev.record_health("new", "diverged")
    ev.record_health("new", "at chance")
    assert setup_problems(ev, Effect("acc", "new", "old")) == ["new, seed 0: diverged", "new, seed 1: at chance"]

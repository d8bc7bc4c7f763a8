"""The evidence engine: verdict rules on synthetic numbers, caching, --only selection, missing machinery,
experiment errors, and real tips whose claim is made false by their settings."""

from __future__ import annotations

import importlib
import json
import math
import sys
import textwrap
from pathlib import Path

import pytest

from dltricks.errors import ConfigError
from dltricks.evidence import (AllOf, Effect, Equivalent, Evidence, Exact, NonInferior, RuleError, Tip, Verdict,
                               summarize)
from dltricks.tips.catalog import SECTIONS, get_catalog
from dltricks.tips.engine import run_tip, run_tips, select_tips
from train_helpers import paired_evidence


_ev = paired_evidence  # arms "t" and "c"


# -------------------------------------------------------------------------------- rules
FIVE_T, FIVE_C = [0.95, 0.96, 0.97, 0.955, 0.965], [0.90, 0.90, 0.91, 0.905, 0.90]


class TestEffect:
    rule = Effect("acc", "t", "c", min_effect=0.01)

    def test_full_confirms_when_the_interval_lies_above_the_minimum_effect(self):
        d = self.rule.decide(_ev(FIVE_T, FIVE_C), "full")
        assert d.verdict is Verdict.CONFIRMED
        part = d.stats[0]
        assert part["effect"]["n"] == 5 and part["effect"]["df"] == 4 and part["effect"]["lo"] > 0.01
        assert part["treatment_values"] == FIVE_T and len(part["differences"]) == 5

    def test_full_refutes_when_the_interval_lies_below_the_minimum_effect(self):
        assert self.rule.decide(_ev(FIVE_C, FIVE_T), "full").verdict is Verdict.REFUTED
        # a real but negligible improvement (about 0.002) is below the claim's minimum effect 0.01: refuted too
        tiny = [c + 0.002 + 0.0002 * i for i, c in enumerate(FIVE_C)]
        assert self.rule.decide(_ev(tiny, FIVE_C), "full").verdict is Verdict.REFUTED

    def test_full_noisy_effect_is_inconclusive(self):
        d = self.rule.decide(_ev([0.99, 0.85, 0.95, 0.80, 0.97], [0.90, 0.90, 0.95, 0.88, 0.90]), "full")
        assert d.verdict is Verdict.INCONCLUSIVE

    def test_full_needs_five_seeds(self):
        d = self.rule.decide(_ev(FIVE_T[:4], FIVE_C[:4]), "full")
        assert d.verdict is Verdict.INCONCLUSIVE and "needs >= 5 seeds" in d.reason

    def test_quick_never_confirms(self):
        verdicts = {self.rule.decide(_ev(t, c), "quick").verdict for t, c in
                    [(FIVE_T[:3], FIVE_C[:3]), (FIVE_C[:3], FIVE_T[:3]), ([0.9, 0.8, 0.95], [0.85, 0.9, 0.9])]}
        assert verdicts == {Verdict.CONSISTENT, Verdict.NOT_CONSISTENT, Verdict.INCONCLUSIVE}

    def test_one_seed_gives_no_interval(self):
        d = self.rule.decide(_ev([0.99], [0.5]), "quick")
        assert d.verdict is Verdict.INCONCLUSIVE and d.stats[0]["effect"]["lo"] is None

    def test_lower_is_better(self):
        rule = Effect("loss", "t", "c", higher_is_better=False)
        t, c = [0.1, 0.11, 0.12, 0.1, 0.11], [0.5, 0.52, 0.49, 0.5, 0.51]
        assert rule.decide(_ev(t, c, "loss"), "full").verdict is Verdict.CONFIRMED

    def test_missing_arm_or_nan_is_an_error(self):
        with pytest.raises(RuleError, match="no 'acc' for arm 'x'"):
            Effect("acc", "x", "c").decide(_ev([1.0], [0.0]), "quick")
        with pytest.raises(RuleError, match="non-finite"):
            Effect("acc", "t", "c").decide(_ev([float("nan")], [0.0]), "quick")


def test_summarize():
    s = summarize([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(1.0) and s["se"] == pytest.approx(1 / 3 ** 0.5)
    assert summarize([4.0])["std"] == 0.0


def test_non_inferior():
    rule = NonInferior("acc", "t", "c", margin=0.01)
    same = [0.900, 0.901, 0.899, 0.900, 0.902]
    assert rule.decide(_ev(same, [0.901, 0.900, 0.900, 0.899, 0.901]), "full").verdict is Verdict.CONFIRMED
    assert rule.decide(_ev([x - 0.1 for x in same], same), "full").verdict is Verdict.REFUTED
    assert rule.decide(_ev([0.80, 0.81, 0.80], [0.90, 0.90, 0.91]), "quick").verdict is Verdict.NOT_CONSISTENT
    assert rule.decide(_ev([0.895, 0.90, 0.9], [0.90, 0.899, 0.901]), "quick").verdict is Verdict.CONSISTENT


def test_equivalent_is_tost():
    rule = Equivalent("acc", "t", "c", margin=0.01)
    base = [0.900, 0.910, 0.905, 0.895, 0.900]
    assert rule.decide(_ev([b + 0.001 for b in base], base), "full").verdict is Verdict.CONFIRMED
    assert rule.decide(_ev([b + 0.05 + 0.001 * i for i, b in enumerate(base)], base), "full").verdict \
        is Verdict.REFUTED
    assert rule.decide(_ev([b - 0.05 - 0.001 * i for i, b in enumerate(base)], base), "full").verdict \
        is Verdict.REFUTED
    noisy = [0.95, 0.86, 0.93, 0.87, 0.91]
    assert rule.decide(_ev(noisy, base), "full").verdict is Verdict.INCONCLUSIVE


def test_exact_decides_in_any_mode_and_requires_every_check():
    ev = Evidence()
    ev.check("a", 5 == 5)
    ev.check("b", 3 < 2)
    assert Exact(("a",)).decide(ev, "quick").verdict is Verdict.CONFIRMED
    assert Exact(("a", "b")).decide(ev, "full").verdict is Verdict.REFUTED
    with pytest.raises(RuleError, match="did not report"):
        Exact(("a", "c")).decide(ev, "quick")


def test_all_of():
    ev = _ev(FIVE_T, FIVE_C)
    ev.check("ok", True)
    ev.check("bad", False)
    good, refuting = Exact(("ok",)), Exact(("bad",))
    effect = Effect("acc", "t", "c")
    assert AllOf((good, effect)).decide(ev, "full").verdict is Verdict.CONFIRMED
    assert AllOf((good, effect)).decide(ev, "quick").verdict is Verdict.CONSISTENT
    assert AllOf((refuting, effect)).decide(ev, "full").verdict is Verdict.REFUTED
    assert AllOf((good, Effect("acc", "c", "t"))).decide(ev, "quick").verdict is Verdict.NOT_CONSISTENT
    assert AllOf((good, effect)).arms() == [("t", "acc"), ("c", "acc")]


# -------------------------------------------------------------------------------- engine with synthetic tips
EXPERIMENT = '''
import json
from pathlib import Path
from dltricks.evidence import Evidence

def experiment(ctx):
    log = Path(ctx["log"])
    log.write_text(log.read_text() + "run\\n" if log.exists() else "run\\n")
    if ctx.get("fail"):
        raise RuntimeError("boom")
    ev = Evidence(setup="synthetic")
    for seed in ctx.seeds:
        ev.add("t", acc=ctx["effect"] + 0.001 * seed)
        ev.add("c", acc=0.0)
    return ev
'''


@pytest.fixture
def synthetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A throw-away experiment module on sys.path and a tip that uses it (and exercises a second module)."""
    pkg = tmp_path / "mods"
    pkg.mkdir()
    name = f"synth_tip_{abs(hash(str(tmp_path))) % 10**8}"
    (pkg / f"{name}.py").write_text(textwrap.dedent(EXPERIMENT))
    (pkg / f"{name}_dep.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(pkg))
    module, dep = importlib.import_module(name), importlib.import_module(f"{name}_dep")
    log = tmp_path / "runs.log"

    def make(**settings) -> Tip:
        return Tip(id="test.synthetic", title="synthetic", claim="t beats c", source="test", section="Tests",
                   experiment=module.experiment, exercises=(dep,),
                   quick={"log": str(log), "effect": 0.5, **settings},
                   full={"log": str(log), "effect": 0.5, **settings},
                   rule=Effect("acc", "t", "c", min_effect=0.1))

    runs = lambda: len(log.read_text().splitlines()) if log.exists() else 0  # noqa: E731
    yield make, runs, pkg, name
    for suffix in ("", "_dep", "_nodata"):
        sys.modules.pop(name + suffix, None)


def test_cache_hits_and_invalidates_on_config_and_code(synthetic, tmp_path):
    make, runs, pkg, name = synthetic
    cache = tmp_path / "cache"
    r1, _ = run_tip(make(), mode="quick", cache_dir=cache)
    assert r1.verdict == "consistent with" and not r1.cached and runs() == 1
    r2, _ = run_tip(make(), mode="quick", cache_dir=cache)
    assert r2.cached and runs() == 1 and r2.evidence == r1.evidence
    run_tip(make(effect=0.7), mode="quick", cache_dir=cache)  # config change
    assert runs() == 2
    run_tip(make(), mode="quick", cache_dir=cache, seeds=2)  # seed count change
    assert runs() == 3
    run_tip(make(), mode="full", cache_dir=cache)  # mode change
    assert runs() == 4
    # editing the experiment's module re-runs it
    src = pkg / f"{name}.py"
    src.write_text(src.read_text() + "\n# edited\n")
    run_tip(make(), mode="quick", cache_dir=cache)
    assert runs() == 5
    # editing a module the tip exercises re-runs it too
    (pkg / f"{name}_dep.py").write_text("X = 2\n")
    run_tip(make(), mode="quick", cache_dir=cache)
    assert runs() == 6
    run_tip(make(), mode="quick", cache_dir=cache)
    assert runs() == 6
    run_tip(make(), mode="quick", cache_dir=cache, use_cache=False)
    assert runs() == 7


def test_full_mode_synthetic_verdicts(synthetic, tmp_path):
    make, _, _, _ = synthetic
    assert run_tip(make(), mode="full", cache_dir=tmp_path / "c")[0].verdict == "confirmed"
    assert run_tip(make(effect=-0.5), mode="full", cache_dir=tmp_path / "c")[0].verdict == "refuted"
    # an effect of about 0.002 +- 0.001 is far below the claim's minimum effect 0.1: the claim is refuted
    assert run_tip(make(effect=0.0), mode="full", cache_dir=tmp_path / "c")[0].verdict == "refuted"
    assert run_tip(make(effect=0.0985), mode="full", cache_dir=tmp_path / "c")[0].verdict == "inconclusive"


def test_experiment_error_is_reported_not_cached_and_does_not_stop_others(synthetic, tmp_path):
    make, runs, _, _ = synthetic
    bad, good = make(fail=True), make()
    good.id = "test.good"
    results = run_tips([bad, good], mode="quick", out=tmp_path / "out", cache_dir=tmp_path / "c", progress=False)
    assert [r.verdict for r in results] == ["error", "consistent with"]
    assert "RuntimeError: boom" in results[0].reason and "Traceback" in results[0].error
    run_tip(bad, mode="quick", cache_dir=tmp_path / "c")
    assert runs() == 3  # the failed run was not cached


@pytest.mark.slow
def test_two_worker_processes_give_the_results_in_catalog_order(tmp_path):
    tips = select_tips(get_catalog(), ["conv.padding,conv.spp,conv.dilation"])
    pooled = run_tips(tips, mode="quick", out=tmp_path / "out", cache_dir=tmp_path / "c", progress=False, workers=2)
    assert [r.id for r in pooled] == [t.id for t in tips]
    assert [r.verdict for r in pooled] == ["confirmed"] * 3, [r.reason for r in pooled]
    assert all((tmp_path / "out" / plot).is_file() for r in pooled for plot in r.plots)


def test_missing_machinery_is_not_implemented_never_run():
    no_code = Tip(id="x.a", title="a", claim="c", source="s", section="S", rule=Exact(("k",)))
    missing_dep = Tip(id="x.b", title="b", claim="c", source="s", section="S", rule=Exact(("k",)),
                      pending="needs dltricks.no_such_module, which nobody has written")
    for tip, needle in ((no_code, "no experiment"), (missing_dep, "dltricks.no_such_module")):
        result, entry = run_tip(tip, mode="quick", cache_dir=Path("/nonexistent"))
        assert result.verdict == Verdict.NOT_IMPLEMENTED.value and entry is None
        assert needle in result.reason


def test_full_mode_only_tip_and_missing_data_are_skipped(synthetic, tmp_path):
    make, runs, pkg, name = synthetic
    tip = make()
    tip.quick = None
    result, entry = run_tip(tip, mode="quick", cache_dir=tmp_path)
    assert result.verdict == "skipped" and "--full" in result.reason and entry is None and runs() == 0
    (pkg / f"{name}_nodata.py").write_text(
        "from dltricks.errors import DataError\n"
        "def experiment(ctx):\n    raise DataError('ISBI slices not found in /nowhere')\n")
    importlib.invalidate_caches()
    nodata = make()
    nodata.experiment = importlib.import_module(f"{name}_nodata").experiment
    result, _ = run_tip(nodata, mode="quick", cache_dir=tmp_path)
    assert result.verdict == "skipped" and "/nowhere" in result.reason


# -------------------------------------------------------------------------------- catalog and selection
def test_catalog_is_well_formed():
    catalog = get_catalog()
    assert len(catalog) >= 40
    for tip in catalog:
        assert tip.section in SECTIONS, tip.id
        assert tip.claim and tip.cite and tip.reference and tip.rule.describe()
        assert tip.id.split(".")[0] in {"conv", "norm", "optim", "arch", "reg", "ssm", "seg", "det", "learn",
                                        "scale"}, tip.id


def test_only_selects_by_id_glob_and_section():
    catalog = get_catalog()
    assert [t.id for t in select_tips(catalog, ["conv.padding"])] == ["conv.padding"]
    assert {t.id for t in select_tips(catalog, ["conv.padding,conv.dilation"])} == {"conv.padding", "conv.dilation"}
    assert all(t.id.startswith("conv.") for t in select_tips(catalog, ["conv.*"]))
    assert {t.section for t in select_tips(catalog, ["regularisation"])} == {"Regularisation"}
    assert len(select_tips(catalog, None)) == len(catalog)


def test_unknown_tip_id_suggests_close_ones():
    with pytest.raises(ConfigError, match=r"unknown tip 'conv.paddng'.*Did you mean: conv.padding"):
        select_tips(get_catalog(), ["conv.paddng"])


# -------------------------------------------------------------------------------- real tips, claim made false
def _tip(tip_id: str) -> Tip:
    return next(t for t in get_catalog() if t.id == tip_id)


def test_real_exact_tips_confirm(tmp_path):
    for tip_id in ("conv.stacked-3x3", "conv.padding", "conv.transposed-checkerboard", "conv.dilation"):
        result, _ = run_tip(_tip(tip_id), mode="quick", cache_dir=tmp_path)
        assert result.verdict == "confirmed", (tip_id, result.reason)


def test_checkerboard_claim_is_refuted_when_the_uneven_kernel_is_actually_divisible(tmp_path):
    tip = _tip("conv.transposed-checkerboard")
    settings = {**tip.quick, "uneven_kernel": 4}
    result, _ = run_tip(tip, mode="quick", cache_dir=tmp_path, settings=settings)
    assert result.verdict == "refuted"
    assert result.evidence["checks"]["the uneven kernel gives a checkerboard"] is False


def test_activation_claim_is_not_confirmed_in_a_shallow_net(tmp_path):
    # In a 2-layer net sigmoid does not lose orders of magnitude of gradient: the claim about deep nets
    # must not come out confirmed (nor consistent) there, in either mode.
    tip = _tip("optim.activations")
    for mode in ("quick", "full"):
        result, _ = run_tip(tip, mode=mode, cache_dir=tmp_path, settings={"depth": 2, "width": 64})
        assert result.verdict in ("inconclusive", "not consistent with", "refuted"), result.reason
    deep, _ = run_tip(tip, mode="full", cache_dir=tmp_path)
    assert deep.verdict == "confirmed", deep.reason


def test_results_round_trip_through_json(tmp_path):
    result, _ = run_tip(_tip("conv.padding"), mode="quick", cache_dir=tmp_path)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["verdict"] == "confirmed" and data["evidence"]["values"]["padded: output size"] == 28


# -------------------------------------------------------------------------------- training tips (trainer + data)
def _trainer_available() -> bool:
    return _tip("reg.label-smoothing").implemented


needs_trainer = pytest.mark.skipif(not _trainer_available(),
                                   reason="dltricks.train.trainer / dltricks.data not available")


@needs_trainer
def test_label_smoothing_with_eps_zero_is_never_confirmed(tmp_path):
    # eps = 0 makes "label smoothing" identical to hard labels: the calibration claim must not come out
    # confirmed (nor consistent) in either mode; the effect is exactly zero.
    tip = _tip("reg.label-smoothing")
    settings = {"subset": 500, "epochs": 2, "eps": 0.0, "hidden": [64]}
    for mode, seeds in (("quick", 1), ("full", 3)):
        result, _ = run_tip(tip, mode=mode, seeds=seeds, cache_dir=tmp_path, settings=settings)
        assert result.verdict == "inconclusive", result.reason
        ece = next(s for s in result.stats if s["metric"] == "val_ece")
        assert ece["effect"]["mean"] == 0.0 and ece["effect"]["n"] == seeds


@needs_trainer
def test_augmentation_with_everything_off_is_not_confirmed(tmp_path):
    tip = _tip("reg.augmentation")
    settings = {"subset": 300, "epochs": 1, "crop_padding": 0, "rotate_degrees": 0.0, "width": 4}
    result, _ = run_tip(tip, mode="full", seeds=3, cache_dir=tmp_path, settings=settings)
    assert result.verdict == "inconclusive", result.reason


@needs_trainer
def test_gradient_clipping_quick_end_to_end(tmp_path):
    """A real quick training tip through the CLI: numbers come from two trainer runs."""
    from dltricks.cli import main

    out = tmp_path / "report"
    assert main(["verify", "--quick", "--only", "optim.gradient-clipping", "--out", str(out)]) == 0
    tip = json.loads((out / "results.json").read_text())["tips"][0]
    assert tip["verdict"] in ("consistent with", "not consistent with", "inconclusive")
    arms = tip["evidence"]["arms"]
    assert set(arms) == {"clipped", "no clipping"}
    assert all(len(m["diverged"]) == 3 and m["seconds"][0] > 0 for m in arms.values())  # 3 quick seeds
    # a diverged run has no loss (NaN), never a stand-in value; the rule compares divergence rates instead
    assert all(math.isnan(v) for v, bad in zip(arms["no clipping"]["final_train_loss"], arms["no clipping"]["diverged"])
               if bad)
    assert tip["stats"][0]["metric"] == "diverged" and tip["may_fail"] == ["no clipping"]
    assert (out / tip["plots"][0]).is_file()

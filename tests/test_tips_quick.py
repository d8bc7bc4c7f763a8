"""Quick mode covers the whole catalog: every tip whose machinery exists has a quick setting, the tips that
used to be full-mode only (segmentation output stride, Transformer warm-up / pre-LN, H1, H2, attention vs
Gated CNN, CNN vs ViT, S4 vs S6) run end to end in quick mode, and quick mode never says "confirmed".

The end-to-end runs shrink each tip's own quick setting further (a few optimiser steps) so that they
test the plumbing - the experiment code of :mod:`dltricks.experiments`, the arms the rule reads, the
plot - in seconds; the slow-marked test runs two of them at their real quick settings.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dltricks.evidence import AllOf, Effect, Evidence, Exact, NonInferior, Tip, Verdict
from dltricks.tips.catalog import get_catalog
from dltricks.tips.engine import run_tip

FORMERLY_FULL_ONLY = ("seg.pooling-invariance", "optim.warmup-transformers", "optim.pre-ln",
                      "arch.attention-long-range", "arch.cnn-vs-vit-small-data", "ssm.mambaout-h1",
                      "ssm.mamba-long-causal", "ssm.selective-copying")
# Quick mode never confirms or refutes; with the tiny settings below an arm may stay at chance, which the
# setup check reports as "invalid setup" (issue 14), never as evidence.
QUICK_VERDICTS = {"consistent with", "not consistent with", "inconclusive", "invalid setup"}

# Each tip's quick setting made smaller still: same code path, a handful of steps.
TINY = {
    "seg.pooling-invariance": {"steps": 3, "batch_size": 2, "crop_size": 64},
    "optim.warmup-transformers": {"steps": 4, "warmup": 2, "batch_size": 8, "train_size": 64, "val_size": 16},
    "optim.pre-ln": {"steps": 4, "batch_size": 8, "train_size": 64, "val_size": 16},
    "arch.attention-long-range": {"steps": 4},
    "arch.cnn-vs-vit-small-data": {"epochs": 1, "subset": 128, "val_subset": 64},
    "ssm.mambaout-h1": {"epochs": 1, "subset": 64, "val_subset": 64},
    "ssm.mamba-long-causal": {"steps": 4},
    "ssm.selective-copying": {"steps": 4},
}


def _tip(tip_id: str) -> Tip:
    return next(t for t in get_catalog() if t.id == tip_id)


def _leaves(rule) -> list:
    return [leaf for part in rule.rules for leaf in _leaves(part)] if isinstance(rule, AllOf) else [rule]


# Tips whose smallest meaningful run does not fit `make run`'s 5 minutes: full mode only. `make run` skips them
# and shows their stored full-mode verdict instead (the "stored full" column), so each must have one.
FULL_ONLY = ("scale.nas", "scale.quantization", "scale.pruning", "learn.bayesian-uncertainty", "det.focal-loss",
             "det.anchor-free", "det.fpn", "det.single-shot", "det.sliding-window", "learn.transfer-cifar",
             "learn.semi-supervised-cifar")


def test_every_implemented_tip_has_a_quick_setting_or_stored_full_evidence():
    from dltricks.tips.stored import load_stored

    no_quick = sorted(t.id for t in get_catalog() if t.implemented and t.settings("quick") is None)
    assert no_quick == sorted(FULL_ONLY), f"tips without a quick setting (skipped by `make run`): {no_quick}"
    stored = load_stored()
    for tip_id in FULL_ONLY:
        assert tip_id in stored, f"{tip_id} has no quick setting and no stored full result: `make run` shows nothing"
        assert not stored[tip_id].stale, f"{tip_id}: its stored result no longer answers its full setting"
    for tip_id in FORMERLY_FULL_ONLY:
        tip = _tip(tip_id)
        assert tip.implemented, (tip_id, tip.missing())
        assert tip.settings("quick") != tip.settings("full"), tip_id  # a smaller setting, not the full one
        assert "Quick mode" in tip.claim, tip_id  # the claim says what quick mode actually runs


@pytest.mark.parametrize("tip_id", FORMERLY_FULL_ONLY)
def test_quick_mode_cannot_confirm_even_a_huge_effect(tip_id):
    """Statistical rules decide "confirmed" only in full mode: evidence with an overwhelming effect for the
    tip's own arms and metrics is at most "consistent with" in quick mode (and confirmed in full mode)."""
    tip = _tip(tip_id)
    leaves = _leaves(tip.rule)
    assert leaves and not any(isinstance(leaf, Exact) for leaf in leaves)
    # One seed gives no interval, so no direction either (issue 14); a confirmation needs n >= 5 in full mode.
    for seeds, mode, expected in ((1, "quick", Verdict.INCONCLUSIVE), (3, "quick", Verdict.CONSISTENT),
                                  (5, "full", Verdict.CONFIRMED)):
        ev = Evidence()
        for i in range(seeds):
            for leaf in leaves:
                assert isinstance(leaf, (Effect, NonInferior))
                good, bad = (10.0, 0.0) if leaf.higher_is_better else (0.0, 10.0)
                ev.add(leaf.treatment, **{leaf.metric: good + 0.01 * i})
                ev.add(leaf.control, **{leaf.metric: bad})
        assert tip.rule.decide(ev, mode).verdict is expected, (tip_id, mode, seeds)


@pytest.mark.parametrize("tip_id", FORMERLY_FULL_ONLY)
def test_formerly_full_only_tip_runs_in_quick_mode(tip_id, tmp_path, request):
    tip = _tip(tip_id)
    if tip_id == "seg.pooling-invariance":
        request.getfixturevalue("shared_data")  # ISBI 2012 slices; skipped where they are absent
    settings = {**tip.settings("quick"), **TINY[tip_id]}
    # one seed: the plumbing is the same for each of the 3 quick seeds, and the run takes a third of the time
    result, entry = run_tip(tip, mode="quick", seeds=1, cache_dir=tmp_path, settings=settings)
    assert result.verdict in QUICK_VERDICTS, (result.verdict, result.reason, result.error)
    assert result.verdict != "confirmed"
    arms = result.evidence["arms"]
    for leaf in _leaves(tip.rule):
        for arm in (leaf.treatment, leaf.control):
            values = arms[arm][leaf.metric]
            assert values and all(math.isfinite(v) for v in values), (arm, values)
    assert result.evidence["setup"] and result.elapsed_s > 0
    assert entry is not None and result.plots and all((entry / p).is_file() for p in result.plots)


def test_quick_h1_trains_small_matched_models_on_embedded_mnist(tmp_path):
    tip = _tip("ssm.mambaout-h1")
    assert tip.settings("quick")["data"] == "mnist-embedded"
    result, _ = run_tip(tip, mode="quick", cache_dir=tmp_path,
                        settings={**tip.settings("quick"), **TINY["ssm.mambaout-h1"]})
    arms = result.evidence["arms"]
    assert set(arms) == {"MambaOut", "ViM"}  # quick mode trains only the two compared models
    params = [arms[a]["params"][0] for a in ("MambaOut", "ViM")]
    assert max(params) / min(params) < 1.15  # matched parameter budgets
    assert "embedded MNIST" in result.evidence["setup"]


def test_output_stride_tip_without_isbi_data_is_skipped_not_failed(tmp_path, monkeypatch):
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("DLTRICKS_DATA", str(empty))
    tip = _tip("seg.pooling-invariance")
    result, entry = run_tip(tip, mode="quick", cache_dir=tmp_path / "cache",
                            settings={**tip.settings("quick"), **TINY[tip.id]})
    assert result.verdict == "skipped" and entry is None
    assert result.reason.startswith("data missing") and "ISBI" in result.reason


def test_cpu_time_latency_restores_threads():
    from dltricks.measure import time_function

    threads = torch.get_num_threads()
    x = torch.randn(64, 64)
    timing = time_function(lambda: x @ x, min_run_time=0.01, warmup=1, min_runs=3, cpu_time=True)
    assert timing.median > 0 and timing.runs >= 3
    assert torch.get_num_threads() == threads


@pytest.mark.slow
@pytest.mark.parametrize("tip_id", ["arch.cnn-vs-vit-small-data", "ssm.selective-copying"])
def test_real_quick_setting_is_never_confirmed(tip_id, tmp_path: Path):
    result, _ = run_tip(_tip(tip_id), mode="quick", seeds=1, cache_dir=tmp_path)  # 1 of the 3 quick seeds: cheaper
    assert result.verdict in QUICK_VERDICTS, (result.verdict, result.reason, result.error)

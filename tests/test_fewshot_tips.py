"""The few-shot, meta-learning, transfer and zero-shot tips (dltricks.experiments.fewshot_tips) and the fine-tuning
tip (dltricks.experiments.finetune_tips) run end to end with tiny settings, report the arms their rules read, and
replace the planned entries of the catalog."""

from __future__ import annotations

import math

import pytest

from dltricks.evidence import AllOf
from dltricks.tips.catalog import get_catalog
from dltricks.tips.engine import run_tip
from dltricks.tips.planned import PLANNED

TINY = {
    "learn.transfer": {"pretrain": 300, "labels_per_class": 4, "epochs": 2},
    "learn.one-shot": {"episodes": 4, "test_episodes": 5},
    "learn.prototypical-vs-siamese": {"episodes": 4, "test_episodes": 5},
    "learn.meta-learning": {"episodes": 3, "test_episodes": 3, "joint_images": 100},
    "learn.zero-shot": {"subset": 300, "epochs": 1},
    "learn.discriminative-finetuning": {"pretrain": 300, "labels_per_class": 4, "epochs": 2},
    "learn.baseline-vs-meta": {"episodes": 3, "images": 200, "test_episodes": 3, "head_steps": 5},
}


def _leaves(rule) -> list:
    return [leaf for part in rule.rules for leaf in _leaves(part)] if isinstance(rule, AllOf) else [rule]


def test_the_tips_replace_their_planned_entries():
    ids = {t.id for t in get_catalog() if t.implemented}
    assert set(TINY) <= ids
    assert not set(TINY) & {t.id for t in PLANNED}


@pytest.mark.parametrize("tip_id", sorted(TINY))
def test_tip_runs_with_tiny_settings(tip_id, tmp_path):
    tip = next(t for t in get_catalog() if t.id == tip_id)
    assert tip.settings("quick") != tip.settings("full")
    result, _ = run_tip(tip, mode="quick", seeds=1, cache_dir=tmp_path, settings={**tip.settings("quick"),
                                                                                  **TINY[tip_id]})
    assert not result.error, result.error
    assert result.verdict in {"inconclusive", "invalid setup"}  # one seed never gives a direction
    arms = result.evidence["arms"]
    for leaf in _leaves(tip.rule):
        for arm in (leaf.treatment, leaf.control):
            values = arms[arm][leaf.metric]
            assert len(values) == 1 and all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values), (arm, values)

"""SSM experiments: short versions that must show the effect (and the plumbing of the long ones)."""

from __future__ import annotations

import json

import torch

from dltricks.data.sequence_tasks import induction_heads_batch
from dltricks.experiments import ssm
from dltricks.models.mamba import SequenceModel


def test_mamba_learns_induction_heads_quickly() -> None:
    """A small 2-layer Mamba solves a short induction-heads task in 300 steps (200-250 for most seeds); chance
    is 1/7."""
    torch.manual_seed(0)
    gen = lambda n, L, g: induction_heads_batch(n, seq_len=L, vocab_size=8, generator=g)  # noqa: E731
    model = SequenceModel(num_classes=8, vocab_size=8, d_model=32, depth=2, mixer="mamba")
    cfg = ssm.SeqTrainConfig(steps=300, batch_size=32, seq_len=16, lr=3e-3, warmup=20, eval_every=50,
                             target_accuracy=0.99)
    run = ssm.train_sequence_model(model, gen, cfg)
    assert run["last_loss"] < 0.5 * run["first_loss"]
    assert ssm.token_accuracy(model, gen, seq_len=16, batches=4)["accuracy"] >= 0.9


def test_claim_dynamic_depth_width_is_refuted() -> None:
    result = ssm.claim_dynamic_depth_width(lengths=(4, 16))
    assert result["verdict"] == "refuted"
    assert result["same_modules_for_every_input"] and result["same_widths_for_every_input"]
    assert not result["has_attention_module"]
    # what does adapt: the step size Δ varies with the input
    assert all(t["delta"][0]["std_over_time"] > 0 for t in result["traces"] if t["content"] == "random")


def test_gate_ablation_and_h2_plumbing() -> None:
    cfg = ssm.SeqTrainConfig(steps=3, batch_size=4, seq_len=40, eval_every=0)
    gate = ssm.gate_ablation(seq_len=40, num_tokens=4, d_model=16, train=cfg, log=None)
    assert set(gate["models"]) == set(ssm.GATE_ABLATION)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in gate["models"].values())
    h2 = ssm.h2_sequence(tasks=("induction_heads",), d_model=16, quick=True, steps=3, log=None)
    assert set(h2["tasks"]["induction_heads"]) == set(ssm.H2_MIXERS)


def test_scaling_and_cli(tmp_path) -> None:
    result = ssm.scaling(lengths=(16, 64), d_model=16, repeats=1, log=None)
    for r in result["layers"].values():
        assert len(r["latency_ms"]) == 2 and all(t > 0 for t in r["latency_ms"])
        assert all(m >= 0 for m in r["peak_mib"])
    ssm.plot_scaling(result, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").stat().st_size > 0
    out = tmp_path / "claim.json"
    ssm.main(["claim", "--out", str(out)])
    assert json.loads(out.read_text())["verdict"] == "refuted"
    seeds = ssm.main(["gate", "--quick", "--steps", "2", "--seeds", "0,1", "--out", str(tmp_path / "gate.json")])
    summary = seeds["summary"]["models"]["S6 (no gate)"]["accuracy"]
    assert len(summary["values"]) == 2 and summary["std"] >= 0


def test_induction_heads_curriculum_runs_each_stage_then_the_training_length() -> None:
    import pytest

    from dltricks.errors import ConfigError

    cfg = ssm.SeqTrainConfig(steps=2, batch_size=4, seq_len=24, eval_every=0, warmup=1)
    result = ssm.induction_heads(models=("mamba",), d_model=16, vocab_size=8, train=cfg, curriculum=(8, 16),
                                 curriculum_steps=3, eval_lengths=(24, 48), eval_batches=1, log=None)
    run = result["models"]["mamba"]
    assert [s["seq_len"] for s in run["curriculum_stages"]] == [8, 16]
    assert all(s["steps"] == 3 for s in run["curriculum_stages"]) and run["steps"] == 2
    assert set(run["accuracy"]) == {"24", "48"} and result["curriculum"] == [8, 16]
    with pytest.raises(ConfigError, match="curriculum"):
        ssm.induction_heads(models=("mamba",), train=cfg, curriculum=(32,), log=None)

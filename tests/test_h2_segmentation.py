"""MambaOut's Hypothesis 2 on a long, non-causal task: the two token-mixer encoders and the tip end to end.

The encoders differ only in the token mixer (Vision Mamba's bidirectional SSM or MambaOut's Gated CNN), so
what the tip measures is the SSM: same stem, patches, widths, decoder; nearly the same parameters. The ViM
encoder mixes over the whole image (a change at one corner reaches the opposite corner's tokens in one
block); the Gated CNN's reach is its 7x7 window per block.
"""

from __future__ import annotations

import pytest
import torch

from dltricks.models import create_model
from dltricks.models.segmentation.token_mixer import TokenMixerEncoder
from dltricks.tips.catalog import get_catalog
from dltricks.tips.engine import run_tip


@pytest.mark.parametrize("mixer", ["vim", "mambaout"])
def test_encoder_contract(mixer: str):
    encoder = TokenMixerEncoder(mixer=mixer, embed_dim=16, depth=1, patch_size=4, stem_chs=8)
    features = encoder(torch.randn(2, 1, 35, 64))
    assert encoder.feature_strides == [1, 4] and encoder.feature_channels == [8, 16]
    assert [tuple(f.shape) for f in features] == [(2, 8, 35, 64), (2, 16, 9, 16)]  # ceil(H / s), ceil(W / s)


def test_the_two_models_differ_only_in_the_token_mixer():
    vim, gated = create_model("vim_seg_tiny"), create_model("mambaout_seg_tiny")
    params = [sum(p.numel() for p in m.parameters()) for m in (vim, gated)]
    assert abs(params[0] - params[1]) / max(params) < 0.1, params
    shared = ("encoder.stem", "encoder.patch_embed", "decoder", "head")
    for prefix in shared:
        shapes = [{k: v.shape for k, v in m.state_dict().items() if k.startswith(prefix)} for m in (vim, gated)]
        assert shapes[0] == shapes[1] and shapes[0], prefix


@torch.no_grad()
def test_only_the_ssm_reaches_across_the_image():
    """Perturb the top-left patch; the bottom-right token changes with ViM's scan, not with one 7x7 block."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 64, 64, dtype=torch.float64)  # float64: at initialisation the SSM's reach is small
    moved = x.clone()
    moved[..., :4, :4] += 1.0
    reach = {}
    for mixer in ("vim", "mambaout"):
        encoder = TokenMixerEncoder(mixer=mixer, embed_dim=16, depth=1, patch_size=4).double().eval()
        reach[mixer] = float((encoder(moved)[1] - encoder(x)[1])[..., -1, -1].abs().max())  # 255 tokens away
    assert reach["vim"] > 1e-9 and reach["mambaout"] == 0.0, reach


def test_h2_tip_runs_end_to_end_on_isbi(tmp_path):
    tip = next(t for t in get_catalog() if t.id == "ssm.mambaout-h2")
    assert tip.implemented and "not causal" in tip.claim
    tiny = {**tip.settings("quick"), "steps": 2, "batch_size": 2}
    result, _ = run_tip(tip, mode="quick", seeds=1, cache_dir=tmp_path, use_cache=False, settings=tiny)
    if result.verdict == "skipped":
        pytest.skip(f"ISBI 2012 not on this machine: {result.reason}")
    assert result.verdict != "error", result.error
    arms = result.evidence["arms"]
    assert set(arms) == {"ViM (SSM)", "MambaOut (no SSM)"} and all(len(a["dice"]) == 1 for a in arms.values())
    assert result.evidence["values"]["tokens per crop"] == (64 // 4) ** 2

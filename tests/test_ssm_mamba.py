"""The Mamba block: published initialisation and sizes, causality, recurrent inference == full scan,
Vision Mamba's bidirectional mixer (tied directions: flip in, flip out), and the sequence models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dltricks.layers.ssm import BiMamba, GatedCNN1d, Mamba, MambaBlock
from dltricks.layers.ssm.mamba import causal_depthwise_conv1d
from dltricks.models.mamba import MIXERS, MambaLM, SequenceModel


def test_published_sizes_and_initialisation() -> None:
    torch.manual_seed(0)
    d, N = 100, 16
    m = Mamba(d, d_state=N)
    E, R = 2 * d, math.ceil(d / 16)
    assert (m.d_inner, m.dt_rank, m.d_conv) == (E, R, 4)
    assert m.in_proj.weight.shape == (2 * E, d) and m.in_proj.bias is None
    assert m.conv1d.weight.shape == (E, 1, 4) and m.conv1d.bias is not None
    assert m.x_proj.weight.shape == (R + 2 * N, E)
    assert m.dt_proj.weight.shape == (E, R)
    assert m.out_proj.weight.shape == (d, E)
    # A = -(1..N) in every channel, D = 1
    torch.testing.assert_close(-torch.exp(m.A_log), -torch.arange(1, N + 1.0).expand(E, N))
    torch.testing.assert_close(m.D, torch.ones(E))
    # softplus(dt bias) is the sampled dt, inside [1e-3, 1e-1]; its log is spread over the range
    dt = F.softplus(m.dt_proj.bias.detach())
    assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 1e-1 + 1e-7
    assert math.log(dt.max() / dt.min()) > 0.8 * math.log(100)
    bound = R ** -0.5
    assert m.dt_proj.weight.abs().max() <= bound
    expected = 2 * E * d + (4 * E + E) + E * (R + 2 * N) + (R * E + E) + E * N + E + E * d
    assert sum(p.numel() for p in m.parameters()) == expected


def test_causal_depthwise_conv_matches_conv1d() -> None:
    torch.manual_seed(1)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6)
    x = torch.randn(2, 9, 6)
    ref = F.conv1d(F.pad(x.transpose(1, 2), (3, 0)), conv.weight, conv.bias, groups=6).transpose(1, 2)
    torch.testing.assert_close(causal_depthwise_conv1d(x, conv.weight, conv.bias), ref)


def _mixer(kind: str, d: int) -> torch.nn.Module:
    if kind == "gated_cnn":
        return GatedCNN1d(d)
    if kind == "bimamba_not_causal":
        return BiMamba(d)
    return SequenceModel(num_classes=5, in_features=d, d_model=d, depth=2, mixer=kind)


@pytest.mark.parametrize("kind", list(MIXERS) + ["gated_cnn"])
def test_outputs_never_depend_on_future_inputs(kind: str) -> None:
    torch.manual_seed(2)
    model = _mixer(kind, 16).eval()
    x = torch.randn(2, 30, 16)
    with torch.no_grad():
        y = model(x)
        for t in (0, 11, 28):
            x2 = x.clone()
            x2[:, t + 1:] += torch.randn_like(x2[:, t + 1:])
            y2 = model(x2)
            torch.testing.assert_close(y2[:, :t + 1], y[:, :t + 1], rtol=1e-5, atol=1e-5)
            assert not torch.allclose(y2[:, t + 1:], y[:, t + 1:])


def test_bidirectional_mixer_sees_the_future() -> None:
    torch.manual_seed(3)
    m = BiMamba(16).eval()
    x = torch.randn(1, 12, 16)
    x2 = x.clone()
    x2[:, -1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(m(x)[:, 0], m(x2)[:, 0])


@pytest.mark.parametrize("selective", [True, False])
def test_recurrent_inference_equals_full_scan(selective: bool) -> None:
    """Token-by-token with the cache, and prompt-then-continue, both equal the parallel forward."""
    torch.manual_seed(4)
    m = Mamba(24, d_state=8, selective=selective).eval()
    x = torch.randn(2, 21, 24)
    with torch.no_grad():
        full = m(x)
        state = m.allocate_state(2)
        steps = torch.cat([m(x[:, t:t + 1], state=state) for t in range(21)], dim=1)
        state2 = m.allocate_state(2)
        parts = torch.cat([m(x[:, :8], state=state2), m(x[:, 8:9], state=state2), m(x[:, 9:], state=state2)], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(parts, full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state.ssm, state2.ssm, rtol=1e-4, atol=1e-5)


def test_reference_and_chunked_scans_agree_inside_the_block() -> None:
    torch.manual_seed(5)
    m = Mamba(16, d_state=4)
    x = torch.randn(2, 40, 16)
    fast = m(x)
    m.scan_impl = "ref"
    torch.testing.assert_close(m(x), fast, rtol=1e-5, atol=1e-6)


def test_tied_bidirectional_mixer_is_flip_equivariant() -> None:
    """With the backward branch tied to the forward one, reversing the sequence reverses the output -
    through a stack of pre-norm residual blocks too."""
    torch.manual_seed(6)
    blocks = torch.nn.Sequential(*[MambaBlock(16, BiMamba(16).tie_directions()) for _ in range(3)]).eval()
    x = torch.randn(2, 17, 16)
    with torch.no_grad():
        torch.testing.assert_close(blocks(x.flip(1)), blocks(x).flip(1), rtol=1e-5, atol=1e-6)
        untied = MambaBlock(16, BiMamba(16)).eval()
        assert not torch.allclose(untied(x.flip(1)), untied(x).flip(1), atol=1e-4)


def test_bidirectional_mixer_shares_projections() -> None:
    m = BiMamba(32)
    names = {n.split(".")[0] for n, _ in m.named_parameters()}
    assert names == {"in_proj", "out_proj", "forward_branch", "backward_branch"}
    branch = {n.split(".", 1)[1] for n, _ in m.named_parameters() if n.startswith("forward_branch")}
    assert branch == {"conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D"}


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_residual_block(norm: str) -> None:
    torch.manual_seed(7)
    block = MambaBlock(16, norm=norm, d_state=4)
    expected_norm = torch.nn.RMSNorm if norm == "rms" else torch.nn.LayerNorm
    assert isinstance(block.norm, expected_norm)
    x = torch.randn(2, 10, 16)
    torch.testing.assert_close(block(x), x + block.mixer(block.norm(x)))


def test_lm_greedy_generation_matches_full_forward() -> None:
    torch.manual_seed(8)
    lm = MambaLM(num_classes=32, d_model=32, depth=2).eval()
    assert lm.head.weight is lm.encoder.weight  # tied embeddings
    prompt = torch.randint(0, 32, (2, 5))
    out = lm.generate(prompt, 6)
    assert out.shape == (2, 11)
    with torch.no_grad():
        seq = prompt
        for _ in range(6):
            seq = torch.cat([seq, lm(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    torch.testing.assert_close(out, seq)


def test_sequence_classifier_and_options() -> None:
    torch.manual_seed(9)
    for mixer in MIXERS:
        model = SequenceModel(num_classes=10, in_features=1, d_model=16, depth=2, mixer=mixer, pool="mean")
        assert model(torch.randn(3, 20, 1)).shape == (3, 10)
    with pytest.raises(ValueError, match="mixer"):
        SequenceModel(num_classes=10, vocab_size=5, mixer="lstm")
    with pytest.raises(ValueError, match="exactly one"):
        SequenceModel(num_classes=10)
    with pytest.raises(ValueError, match="token ids"):
        SequenceModel(num_classes=10, vocab_size=5)(torch.randn(2, 3))

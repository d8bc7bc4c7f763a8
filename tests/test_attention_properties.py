"""Laws of attention and position encodings, checked on random inputs (hypothesis)."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dltricks.layers.attention import LocalSelfAttention, MultiHeadAttention, SparseAttention
from dltricks.layers.position import (RotaryEmbedding, SinusoidalPositionalEncoding, apply_rotary,
                                      relative_position_index, sinusoidal_position_encoding, sinusoidal_shift_matrix)
from dltricks.layers.transformer import TransformerEncoderLayer

FAST = settings(max_examples=25, deadline=None)


def _causal_layers(seed: int):
    torch.manual_seed(seed)
    return [
        ("mha", MultiHeadAttention(8, 2).eval(), {"is_causal": True}),
        ("mha-plain", MultiHeadAttention(8, 2, fused=False).eval(), {"is_causal": True}),
        ("block", TransformerEncoderLayer(8, 2, mlp_ratio=2).eval(), {"is_causal": True}),
        ("local", LocalSelfAttention(8, 2, window=2, causal=True).eval(), {}),
        ("sparse", SparseAttention(8, 2, stride=3, causal=True).eval(), {}),
    ]


@FAST
@given(T=st.integers(2, 12), cut=st.integers(1, 11), seed=st.integers(0, 2**16))
def test_causal_mask_future_tokens_never_change_earlier_outputs(T, cut, seed):
    cut = min(cut, T - 1)  # positions [0, cut) are the past, [cut, T) are changed
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, T, 8, generator=g)
    changed = x.clone()
    changed[:, cut:] = torch.randn(2, T - cut, 8, generator=g) * 3
    for name, layer, kwargs in _causal_layers(seed):
        with torch.no_grad():
            before, after = layer(x, **kwargs), layer(changed, **kwargs)
        torch.testing.assert_close(after[:, :cut], before[:, :cut], msg=lambda m, name=name: f"{name}: {m}")
        assert not torch.allclose(after[:, cut:], before[:, cut:]), name


@FAST
@given(T=st.integers(2, 10), seed=st.integers(0, 2**16))
def test_self_attention_without_positions_is_permutation_equivariant(T, seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, T, 8, generator=g)
    perm = torch.randperm(T, generator=g)
    for layer in (MultiHeadAttention(8, 2).eval(), TransformerEncoderLayer(8, 2, mlp_ratio=2).eval(),
                  TransformerEncoderLayer(8, 2, norm_first=False).eval()):
        with torch.no_grad():
            torch.testing.assert_close(layer(x[:, perm]), layer(x)[:, perm])


@FAST
@given(T=st.integers(3, 10), seed=st.integers(0, 2**16))
def test_positions_break_permutation_equivariance(T, seed):
    """The contrapositive: adding the sinusoidal code makes the output depend on order."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, T, 8, generator=g)
    perm = torch.roll(torch.arange(T), 1)
    layer, pe = MultiHeadAttention(8, 2).eval(), SinusoidalPositionalEncoding(8)
    with torch.no_grad():
        assert not torch.allclose(layer(pe(x[:, perm])), layer(pe(x))[:, perm], atol=1e-4)


@settings(max_examples=50, deadline=None)
@given(pos=st.integers(0, 5000), phi=st.integers(-2000, 2000), dim=st.sampled_from([2, 8, 16, 64, 512]))
def test_sinusoidal_shift_is_a_fixed_rotation(pos, phi, dim):
    """PE(pos + φ) = M(φ) PE(pos), with M(φ) depending only on φ (not on pos)."""
    if pos + phi < 0:
        phi = -pos
    table = sinusoidal_position_encoding(1, dim, offset=pos, dtype=torch.float64)[0]
    shifted = sinusoidal_position_encoding(1, dim, offset=pos + phi, dtype=torch.float64)[0]
    M = sinusoidal_shift_matrix(phi, dim)
    torch.testing.assert_close(M @ table, shifted, rtol=1e-9, atol=1e-9)
    # M is orthogonal (a rotation): norms and inner products are preserved.
    torch.testing.assert_close(M @ M.T, torch.eye(dim, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_sinusoidal_table_values():
    pe = sinusoidal_position_encoding(50, 16)
    pos, i = 7, 3
    assert abs(pe[pos, 2 * i].item() - math.sin(pos / 10000 ** (2 * i / 16))) < 1e-6
    assert abs(pe[pos, 2 * i + 1].item() - math.cos(pos / 10000 ** (2 * i / 16))) < 1e-6


@FAST
@given(m=st.integers(0, 300), n=st.integers(0, 300), shift=st.integers(0, 300), seed=st.integers(0, 2**16))
def test_rope_scores_depend_only_on_relative_position(m, n, shift, seed):
    g = torch.Generator().manual_seed(seed)
    rope = RotaryEmbedding(16)
    q, k = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)

    def rotated(x, pos):
        cos, sin = rope.angles(torch.tensor([pos]))
        return apply_rotary(x[None], cos.double(), sin.double())[0]

    score = rotated(q, m) @ rotated(k, n)
    score_shifted = rotated(q, m + shift) @ rotated(k, n + shift)
    torch.testing.assert_close(score, score_shifted, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rotated(q, m).norm(), q.norm())  # rotation keeps norms


def test_rope_in_attention_makes_it_translation_invariant():
    """With RoPE and no other positions, attention scores are invariant to where the sequence starts."""
    torch.manual_seed(0)
    rope = RotaryEmbedding(4)
    q, k = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    q0, k0 = rope(q, k)
    q7, k7 = rope(q, k, offset=7)
    torch.testing.assert_close(q0 @ k0.transpose(-1, -2), q7 @ k7.transpose(-1, -2), rtol=1e-5, atol=1e-5)


def test_relative_position_index_for_smaller_window_uses_same_offsets():
    full = relative_position_index((7, 7))
    small = relative_position_index((3, 3), (7, 7))
    # Token (0,0) and (1,2) of a 3x3 window have the same offset as tokens (0,0) and (1,2) of the 7x7 window.
    assert small[0, 1 * 3 + 2] == full[0, 1 * 7 + 2]
    assert full.max() == 13 * 13 - 1 and full.min() == 0
    assert (full.diagonal() == 6 * 13 + 6).all()  # zero offset in the middle of the table

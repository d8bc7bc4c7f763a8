"""Attention layers against references: PyTorch's fused kernel, nn.MultiheadAttention, dense masks,
loops over rows, and hand-computed formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dltricks.layers.attention import (AdditiveAttention, AxialAttention2d, KeyValueAttention, LinformerSelfAttention,
                                       LocalSelfAttention, MultiHeadAttention, MultiplicativeAttention, SparseAttention,
                                       StructuredSelfAttention, attention, band_to_dense, causal_mask, local_attention,
                                       local_attention_mask, masked_softmax, padding_mask, scaled_dot_product_attention,
                                       sparse_attention_masks, strided_attention)


def qkv(B=2, H=3, Tq=7, Tk=7, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, Tq, D, generator=g), torch.randn(B, H, Tk, D, generator=g),
            torch.randn(B, H, Tk, D, generator=g))


# --- scaled dot-product: plain reference vs F.scaled_dot_product_attention ------------------------

def test_sdpa_plain_matches_torch_no_mask():
    q, k, v = qkv(Tq=5, Tk=9)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_sdpa_plain_matches_torch_causal():
    q, k, v = qkv(Tq=6, Tk=6)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))
    # Non-square causal (top-left aligned, like PyTorch).
    q, k, v = qkv(Tq=4, Tk=7)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_sdpa_plain_matches_torch_padding_and_float_masks():
    q, k, v = qkv(Tq=5, Tk=6)
    pad = padding_mask(torch.tensor([6, 3]), 6)  # (B, T_k), True = padding
    bool_mask = ~pad[:, None, None, :]  # True = attend
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, attn_mask=bool_mask),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask))
    bias = torch.randn(1, 3, 5, 6)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3))


def test_attention_dispatch_padding_plus_causal_both_paths_agree():
    q, k, v = qkv(Tq=6, Tk=6)
    pad = padding_mask(torch.tensor([6, 4]), 6)
    fused, _ = attention(q, k, v, key_padding_mask=pad, is_causal=True)
    plain, weights = attention(q, k, v, key_padding_mask=pad, is_causal=True, need_weights=True)
    mask = causal_mask(6) & ~pad[:, None, None, :]
    torch.testing.assert_close(fused, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.testing.assert_close(plain, fused)
    # Padded keys and future keys get exactly zero weight; rows sum to one.
    assert (weights[1, :, :, 4:] == 0).all()
    assert (weights.triu(1) == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 6))


def test_fully_masked_rows_are_zero_not_nan():
    q, k, v = qkv(B=1, H=1, Tq=3, Tk=3)
    mask = torch.tensor([[True, False, False], [False, False, False], [True, True, True]])
    out, w = scaled_dot_product_attention(q, k, v, attn_mask=mask, need_weights=True)
    assert torch.isfinite(out).all() and (out[0, 0, 1] == 0).all() and (w[0, 0, 1] == 0).all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_masked_softmax_gradient_is_finite_with_empty_rows():
    scores = torch.randn(2, 4, requires_grad=True)
    mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
    masked_softmax(scores, mask).sum().backward()
    assert torch.isfinite(scores.grad).all()


# --- multi-head attention vs nn.MultiheadAttention -------------------------------------------------

@pytest.mark.parametrize("fused", [True, False])
def test_mha_matches_torch_self_attention_with_masks(fused):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ours = MultiHeadAttention(16, 4, fused=fused).load_from_torch(ref).eval()
    x = torch.randn(3, 7, 16)
    pad = padding_mask(torch.tensor([7, 5, 2]), 7)
    causal_forbidden = ~causal_mask(7)  # nn.MultiheadAttention: True = NOT allowed
    expected, expected_w = ref(x, x, x, key_padding_mask=pad, attn_mask=causal_forbidden, average_attn_weights=False)
    out, w = ours(x, key_padding_mask=pad, is_causal=True, need_weights=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(w, expected_w)
    torch.testing.assert_close(ours(x, key_padding_mask=pad, is_causal=True), expected)


def test_mha_matches_torch_cross_attention_and_kdim():
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(12, 3, batch_first=True).eval()
    ours = MultiHeadAttention(12, 3).load_from_torch(ref).eval()
    query, memory = torch.randn(2, 4, 12), torch.randn(2, 9, 12)
    torch.testing.assert_close(ours(query, memory), ref(query, memory, memory)[0])
    value = torch.randn(2, 9, 12)
    torch.testing.assert_close(ours(query, memory, value), ref(query, memory, value)[0])
    # Different key/value widths: separate projections.
    ref = nn.MultiheadAttention(12, 3, kdim=5, vdim=6, batch_first=True).eval()
    ours = MultiHeadAttention(12, 3, kdim=5, vdim=6).load_from_torch(ref).eval()
    key, value = torch.randn(2, 9, 5), torch.randn(2, 9, 6)
    torch.testing.assert_close(ours(query, key, value), ref(query, key, value)[0])


def test_mha_attention_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, attn_drop=0.5)
    x = torch.randn(2, 5, 8)
    mha.eval()
    torch.testing.assert_close(mha(x), mha(x))
    mha.train()
    assert not torch.allclose(mha(x), mha(x))


def test_mha_attn_bias_is_added_to_scores():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, fused=True).eval()
    x = torch.randn(1, 4, 8)
    bias = torch.randn(2, 4, 4)
    out, w = mha(x, attn_bias=bias, need_weights=True)
    q, k, v = mha.qkv(x).view(1, 4, 3, 2, 4).permute(2, 0, 3, 1, 4)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 2.0 + bias, dim=-1)
    torch.testing.assert_close(w, expected)
    torch.testing.assert_close(out, mha(x, attn_bias=bias))  # fused path agrees


# --- additive, multiplicative, structured, key-value ------------------------------------------------

def test_additive_attention_formula_and_padding():
    torch.manual_seed(0)
    att = AdditiveAttention(5, 6, 7)
    s, h = torch.randn(2, 5), torch.randn(2, 4, 6)
    pad = padding_mask(torch.tensor([4, 2]), 4)
    context, w = att(s, h, key_padding_mask=pad)
    # Score by hand: v^T tanh(W1 s + W2 h + b).
    scores = torch.stack([
        torch.stack([att.score.weight[0] @ torch.tanh(att.query_proj.weight @ s[b] + att.key_proj.weight @ h[b, j]
                                                       + att.key_proj.bias) for j in range(4)]) for b in range(2)])
    scores[1, 2:] = -math.inf
    expected_w = torch.softmax(scores, dim=-1)
    torch.testing.assert_close(w, expected_w)
    torch.testing.assert_close(context, torch.einsum("bt,btd->bd", expected_w, h))
    # Sequence of queries gives the same as one query at a time.
    ctx_seq, w_seq = att(torch.stack([s, s], 1), h, key_padding_mask=pad)
    torch.testing.assert_close(w_seq[:, 1], w)


@pytest.mark.parametrize("kind", ["dot", "general", "scaled_dot"])
def test_multiplicative_attention(kind):
    torch.manual_seed(0)
    att = MultiplicativeAttention(6, 6, kind=kind)
    s, h = torch.randn(2, 6), torch.randn(2, 5, 6)
    context, w = att(s, h)
    W = att.query_proj.weight if kind == "general" else torch.eye(6)
    scale = 1 / math.sqrt(6) if kind == "scaled_dot" else 1.0
    scores = torch.einsum("bd,de,bte->bt", s, W.T, h) * scale  # s^T W h
    torch.testing.assert_close(w, torch.softmax(scores, -1))
    torch.testing.assert_close(context, torch.einsum("bt,btd->bd", w, h))
    with pytest.raises(ValueError):
        MultiplicativeAttention(4, 6, kind="dot")


def test_structured_self_attention_and_penalty():
    torch.manual_seed(0)
    att = StructuredSelfAttention(8, attn_dim=5, num_hops=3)
    x = torch.randn(2, 6, 8)
    pad = padding_mask(torch.tensor([6, 4]), 6)
    m, a = att(x, key_padding_mask=pad)
    assert m.shape == (2, 3, 8) and a.shape == (2, 3, 6)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 3))
    assert (a[1, :, 4:] == 0).all()
    expected = torch.softmax(att.ws2.weight @ torch.tanh(att.ws1.weight @ x[0].T), dim=-1)
    torch.testing.assert_close(a[0], expected)
    # Penalty: zero for one-hot rows on distinct tokens, (r^2 - r) for identical one-hot rows.
    distinct = torch.eye(3, 6)[None]
    same = torch.zeros(1, 3, 6)
    same[..., 0] = 1
    assert StructuredSelfAttention.penalty(distinct).item() == 0.0
    assert StructuredSelfAttention.penalty(same).item() == pytest.approx(6.0)


@pytest.mark.parametrize("mode", ["attention", "key_value", "key_value_predict"])
def test_key_value_attention_matches_loop(mode):
    torch.manual_seed(0)
    k_dim, L = 4, 3
    parts = KeyValueAttention.PARTS[mode]
    att = KeyValueAttention(k_dim, window=L, mode=mode)
    h = torch.randn(2, 6, parts * k_dim)
    out, w = att(h, need_weights=True)
    key, value, predict = h[..., :k_dim], h[..., (parts > 1) * k_dim:(1 + (parts > 1)) * k_dim], h[..., -k_dim:]
    for t in range(6):
        start = max(0, t - L)
        if t == 0:
            read = torch.zeros(2, k_dim)
        else:
            mem = att.memory_proj(key[:, start:t])  # (B, n, A)
            scores = att.score(torch.tanh(mem + att.query_proj(key[:, t])[:, None])).squeeze(-1)
            alpha = torch.softmax(scores, -1)
            read = torch.einsum("bn,bnk->bk", alpha, value[:, start:t])
            torch.testing.assert_close(w[:, t, L - (t - start):], alpha)
        expected = torch.tanh(att.read_proj(read) + att.out_proj(predict[:, t]))
        torch.testing.assert_close(out[:, t], expected)


# --- efficient variants against dense references ----------------------------------------------------

@pytest.mark.parametrize("T,window,block,causal", [(13, 2, None, False), (16, 3, None, True), (10, 4, 3, False),
                                                   (7, 9, None, False), (12, 0, None, False), (20, 5, 8, True)])
def test_local_attention_equals_banded_dense_attention(T, window, block, causal):
    q, k, v = qkv(Tq=T, Tk=T)
    pad = padding_mask(torch.tensor([T, T - 3]), T)
    out, band = local_attention(q, k, v, window=window, causal=causal, key_padding_mask=pad, block_size=block,
                                need_weights=True)
    mask = local_attention_mask(T, window, causal=causal) & ~pad[:, None, None, :]
    expected, expected_w = scaled_dot_product_attention(q, k, v, attn_mask=mask, need_weights=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(band_to_dense(band, window, causal=causal), expected_w)


def _matmul_sizes(fn) -> list[int]:
    """Element counts of every torch.matmul output produced while running ``fn``."""
    seen: list[int] = []
    real_matmul = torch.matmul

    def spy(a, b):
        out = real_matmul(a, b)
        seen.append(out.numel())
        return out

    torch.matmul = spy
    try:
        fn()
    finally:
        torch.matmul = real_matmul
    return seen


def test_local_attention_memory_is_linear_in_length():
    """Work and memory are O(T * (block + 2 * window)): doubling T doubles the scores computed (a masked dense
    implementation would quadruple), and no score tensor exceeds T * (b + 2r) elements."""
    totals, largest = {}, {}
    for T in (512, 1024):
        q, k, v = qkv(B=1, H=1, Tq=T, Tk=T, D=4)
        sizes = _matmul_sizes(lambda: local_attention(q, k, v, window=8))
        totals[T], largest[T] = sum(sizes), max(sizes)
    assert totals[1024] == 2 * totals[512]
    assert largest[1024] <= 1024 * (8 + 2 * 8)


def test_local_attention_chunks_bound_the_score_tensors():
    q, k, v = qkv(B=1, H=2, Tq=300, Tk=300, D=4)
    pad = padding_mask(torch.tensor([270]), 300)
    ref, ref_band = local_attention(q, k, v, window=5, key_padding_mask=pad, need_weights=True)
    sizes = _matmul_sizes(lambda: local_attention(q, k, v, window=5, key_padding_mask=pad, chunk_elements=500))
    assert max(sizes) <= 2 * 5 * 15 * 3  # 3 blocks (b=5, span 15, 2 heads) per chunk
    out, band = local_attention(q, k, v, window=5, key_padding_mask=pad, need_weights=True, chunk_elements=500)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(band, ref_band)


def test_local_self_attention_module_matches_masked_mha():
    torch.manual_seed(0)
    local = LocalSelfAttention(12, 3, window=2).eval()
    full = MultiHeadAttention(12, 3).eval()
    full.load_state_dict(local.state_dict())
    x = torch.randn(2, 9, 12)
    out, band = local(x, need_weights=True)
    expected, w = full(x, attn_mask=local_attention_mask(9, 2), need_weights=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(band_to_dense(band, 2), w)
    with pytest.raises(ValueError, match="attn_mask"):
        local(x, attn_mask=torch.ones(9, 9, dtype=torch.bool))


@pytest.mark.parametrize("T,stride,causal", [(16, 4, True), (14, 4, True), (15, 3, False)])
def test_strided_attention_equals_dense_mask(T, stride, causal):
    q, k, v = qkv(Tq=T, Tk=T)
    pad = padding_mask(torch.tensor([T, T - 2]), T)
    out, _ = strided_attention(q, k, v, stride=stride, causal=causal, key_padding_mask=pad)
    _, strided = sparse_attention_masks(T, stride, causal=causal)
    expected = scaled_dot_product_attention(q, k, v, attn_mask=strided & ~pad[:, None, None, :])
    torch.testing.assert_close(out, expected)


def test_sparse_attention_module_heads_follow_their_patterns():
    torch.manual_seed(0)
    sparse = SparseAttention(16, 4, stride=4).eval()
    x = torch.randn(2, 18, 16)
    out = sparse(x)
    # Reference: dense attention per head group with the two masks.
    q, k, v = sparse.qkv(x).view(2, 18, 3, 4, 4).permute(2, 0, 3, 1, 4)
    local, strided = sparse_attention_masks(18, 4)
    heads = torch.cat([scaled_dot_product_attention(q[:, :2], k[:, :2], v[:, :2], attn_mask=local),
                       scaled_dot_product_attention(q[:, 2:], k[:, 2:], v[:, 2:], attn_mask=strided)], dim=1)
    torch.testing.assert_close(out, sparse.proj(heads.transpose(1, 2).reshape(2, 18, 16)))
    # Causal: the first output only depends on the first token.
    x2 = x.clone()
    x2[:, 1:] += 1
    torch.testing.assert_close(sparse(x2)[:, 0], out[:, 0])


def test_axial_attention_matches_row_and_column_loops():
    torch.manual_seed(0)
    axial = AxialAttention2d(8, 2).eval()
    x = torch.randn(2, 5, 6, 8)  # (B, H, W, C)
    out, (w_h, w_w) = axial(x, need_weights=True)
    assert w_h.shape == (2 * 6, 2, 5, 5) and w_w.shape == (2 * 5, 2, 6, 6)
    y = torch.stack([axial.height_attn(x[:, :, j]) for j in range(6)], dim=2)  # each column separately
    expected = torch.stack([axial.width_attn(y[:, i]) for i in range(5)], dim=1)  # each row separately
    torch.testing.assert_close(out, expected)


def test_linformer_matches_explicit_projection_and_handles_padding():
    torch.manual_seed(0)
    lin = LinformerSelfAttention(8, 2, seq_len=12, proj_len=4).eval()
    x = torch.randn(2, 10, 8)
    out, w = lin(x, need_weights=True)
    assert w.shape == (2, 2, 10, 4)
    q, k, v = lin.qkv(x).view(2, 10, 3, 2, 4).permute(2, 0, 3, 1, 4)
    k2 = lin.proj_k[:, :10] @ k  # (k, T) @ (B, h, T, d)
    v2 = lin.proj_v[:, :10] @ v
    expected = F.scaled_dot_product_attention(q, k2, v2)
    torch.testing.assert_close(out, lin.proj(expected.transpose(1, 2).reshape(2, 10, 8)))
    # Padding: values at padded positions do not matter.
    pad = padding_mask(torch.tensor([10, 6]), 10)
    x2 = x.clone()
    x2[1, 6:] = 100.0
    torch.testing.assert_close(lin(x, key_padding_mask=pad)[1, :6], lin(x2, key_padding_mask=pad)[1, :6])
    with pytest.raises(ValueError, match="is_causal"):
        lin(x, is_causal=True)
    with pytest.raises(ValueError, match="at most 12"):
        lin(torch.randn(1, 13, 8))


def test_every_attention_module_returns_weights():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 8)
    for module in (MultiHeadAttention(8, 2), LocalSelfAttention(8, 2, window=2), SparseAttention(8, 2, stride=3),
                   LinformerSelfAttention(8, 2, seq_len=8, proj_len=4)):
        out, weights = module(x, need_weights=True)
        assert out.shape == x.shape and weights is not None
    assert AxialAttention2d(8, 2)(torch.randn(1, 3, 4, 8), need_weights=True)[1][0].shape == (4, 2, 3, 3)
    assert StructuredSelfAttention(8, attn_dim=4, num_hops=2)(x)[1].shape == (2, 2, 8)
    assert KeyValueAttention(4, window=2, mode="key_value")(x, need_weights=True)[1].shape == (2, 8, 2)
    assert AdditiveAttention(8, 8)(x[:, 0], x)[1].shape == (2, 8)


def test_mha_bias_with_bool_mask_and_padding_broadcast():
    """A per-head bias (h, T, T) combined with a boolean (T, T) mask and a (B, T) padding mask."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(3, 5, 8)
    bias = torch.randn(2, 5, 5)
    pad = padding_mask(torch.tensor([5, 3, 4]), 5)
    out, w = mha(x, attn_bias=bias, attn_mask=causal_mask(5), key_padding_mask=pad, need_weights=True)
    q, k, v = mha.qkv(x).view(3, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2) / 2.0 + bias).masked_fill(~causal_mask(5), float("-inf"))
    scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    torch.testing.assert_close(w, torch.softmax(scores, -1))
    torch.testing.assert_close(mha(x, attn_bias=bias, attn_mask=causal_mask(5), key_padding_mask=pad), out)

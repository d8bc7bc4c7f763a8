"""Attention in all its forms, from a single alignment score to efficient long-sequence variants.

All of them compute a weighted average of *values* whose weights come from comparing a *query*
with *keys*:

    a_ij = softmax_j(score(q_i, k_j)),        out_i = sum_j a_ij v_j.

Score functions
---------------
* :class:`AdditiveAttention` (Bahdanau, Cho & Bengio 2015, eq. 6 of App. A): score = vᵀ tanh(W₁ s + W₂ h).
* :class:`MultiplicativeAttention` (Luong, Pham & Manning 2015, eq. 8): ``dot`` sᵀh, ``general`` sᵀWh,
  ``scaled_dot`` sᵀh / √d.
* :func:`scaled_dot_product_attention` (Vaswani et al. 2017, eq. 1): softmax(QKᵀ/√d + mask) V, the plain
  reference that materialises the (T_q, T_k) matrix; :func:`attention` dispatches to PyTorch's fused
  ``F.scaled_dot_product_attention`` unless the weights are wanted. Both are checked against each other
  in ``tests/test_attention.py`` with padding and causal masks.
* :class:`MultiHeadAttention` (Vaswani et al. 2017, sec. 3.2.2): h heads of width d/h, each with its own
  projections, concatenated and projected back. Checked against ``nn.MultiheadAttention``.

Special forms
-------------
* :class:`StructuredSelfAttention` (Lin et al. 2017, "A structured self-attentive sentence embedding"):
  A = softmax(W_s2 tanh(W_s1 Hᵀ)) has r rows ("hops"); M = A H; the penalty ‖AAᵀ − I‖²_F pushes the
  hops to look at different tokens.
* :class:`KeyValueAttention` (Daniluk et al. 2017, "Frustratingly short attention spans in neural
  language modeling"): the RNN output is split into a key (for scoring), a value (to be averaged)
  and, in the key-value-predict form, a part that predicts the next token.

Efficient variants for long inputs (memory below the O(T²) of full attention)
-----------------------------------------------------------------------------
* :func:`local_attention`: restricted/windowed self-attention, |i − j| ≤ r (Vaswani et al. 2017 sec. 4
  "restricted"; Longformer's sliding window). Computed in blocks of size b with an overlap of r on
  each side, so time is O(T (b + 2r) d) and memory O(T (b + 2r)) - never a masked T×T matrix.
* :func:`strided_attention` and :class:`SparseAttention` (Child et al. 2019, "Generating long
  sequences with sparse Transformers", sec. 4.2): half of the heads attend to the previous ``stride``
  positions, the other half to every ``stride``-th position; with stride ≈ √T this is O(T√T).
* :class:`AxialAttention2d` (Ho et al. 2019, "Axial attention in multidimensional transformers"):
  attention along the height axis, then along the width axis of a (B, H, W, C) map:
  O(HW(H + W)) instead of O((HW)²).
* :class:`LinformerSelfAttention` (Wang et al. 2020, eq. 7): keys and values are projected along
  the sequence axis to k ≪ T rows, K' = E K and V' = F V, so attention costs O(T k).

Masks follow ``F.scaled_dot_product_attention``: a boolean ``attn_mask`` is True where a query *may*
attend, a float ``attn_mask`` is added to the scores. ``key_padding_mask`` (B, T_k) follows
``nn.MultiheadAttention``: True marks *padding* keys that must be ignored. A query row with no key left
gets all-zero weights and a zero output (as PyTorch's fused kernel does), never NaN.

Every module can return its attention weights (``need_weights=True``) for plotting; weights are the
probabilities before attention dropout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "causal_mask", "padding_mask", "merge_masks", "masked_softmax", "scaled_dot_product_attention", "attention",
    "AdditiveAttention", "MultiplicativeAttention", "MultiHeadAttention", "StructuredSelfAttention",
    "KeyValueAttention", "local_attention", "band_to_dense", "local_attention_mask", "LocalSelfAttention",
    "strided_attention", "sparse_attention_masks", "SparseAttention", "AxialAttention2d", "LinformerSelfAttention",
]


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------

def causal_mask(t_q: int, t_k: int | None = None, *, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (t_q, t_k) mask, True where query i may attend key j, i.e. j <= i (top-left aligned,
    as ``is_causal=True`` in ``F.scaled_dot_product_attention``)."""
    t_k = t_q if t_k is None else t_k
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril()


def padding_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Key padding mask (B, T) from sequence lengths: True at padding positions (j >= length)."""
    max_len = int(lengths.max()) if max_len is None else max_len
    positions = torch.arange(max_len, device=lengths.device)  # (T,)
    return positions[None, :] >= lengths[:, None]  # (B, T)


def merge_masks(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, *, is_causal: bool,
                t_q: int, t_k: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """One mask broadcastable to (B, heads, T_q, T_k) in ``F.scaled_dot_product_attention`` convention.

    Boolean inputs stay boolean (True = attend); if ``attn_mask`` is a float bias the result is a float
    bias with -inf at the forbidden positions.
    """
    mask = attn_mask
    if is_causal:
        causal = causal_mask(t_q, t_k, device=device)
        mask = causal if mask is None else _combine(mask, causal, dtype)
    if key_padding_mask is not None:
        if key_padding_mask.shape[-1] != t_k:
            raise ValueError(f"key_padding_mask has {key_padding_mask.shape[-1]} positions, keys have {t_k}")
        keep = ~key_padding_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, T_k)
        mask = keep if mask is None else _combine(mask, keep, dtype)
    return mask


def _combine(mask: torch.Tensor, keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """AND of a boolean ``keep`` with a boolean or additive-float ``mask``."""
    if mask.dtype == torch.bool:
        return mask & keep
    return torch.where(keep, mask.to(dtype), float("-inf"))  # broadcasts both ways, unlike masked_fill


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` after masking (boolean True = keep, or additive float).

    Rows whose every entry is masked get zero weights instead of the NaN a plain softmax gives.
    """
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    empty = scores.amax(dim=dim, keepdim=True) == float("-inf")  # rows with nothing to attend to
    if bool(empty.any()):
        scores = scores.masked_fill(empty, 0.0)
        return torch.softmax(scores, dim=dim).masked_fill(empty, 0.0)
    return torch.softmax(scores, dim=dim)


# ----------------------------------------------------------------------------------------------
# Scaled dot-product attention: the plain reference and the dispatcher
# ----------------------------------------------------------------------------------------------

def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None, *,
                                 need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q Kᵀ · scale + mask) V, written out (Vaswani et al. 2017, eq. 1).

    Same arguments and semantics as ``F.scaled_dot_product_attention`` (q: (..., T_q, d), k: (..., T_k, d),
    v: (..., T_k, d_v); ``scale`` defaults to 1/√d), but the (T_q, T_k) weight matrix is materialised
    so it can be returned. Memory is O(T_q T_k): use :func:`attention` when the weights are not needed.
    """
    t_q, t_k = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    # Scores: (..., T_q, d) @ (..., d, T_k) -> (..., T_q, T_k)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    mask = attn_mask
    if is_causal:
        causal = causal_mask(t_q, t_k, device=q.device)
        mask = causal if mask is None else _combine(mask, causal, scores.dtype)
    weights = masked_softmax(scores, mask)
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    out = torch.matmul(dropped, v)  # (..., T_q, d_v)
    return (out, weights) if need_weights else out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, attn_mask: torch.Tensor | None = None,
              key_padding_mask: torch.Tensor | None = None, is_causal: bool = False, dropout_p: float = 0.0,
              scale: float | None = None, need_weights: bool = False,
              fused: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head scaled dot-product attention on (B, heads, T, d) tensors with both mask kinds.

    Uses PyTorch's fused kernel (flash / memory-efficient / math, chosen by PyTorch) unless
    ``need_weights`` or ``fused=False`` asks for the plain reference. Returns ``(out, weights or None)``.
    """
    t_q, t_k = q.shape[-2], k.shape[-2]
    if fused and not need_weights:
        if attn_mask is None and key_padding_mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal, scale=scale), None
        mask = merge_masks(attn_mask, key_padding_mask, is_causal=is_causal, t_q=t_q, t_k=t_k,
                           device=q.device, dtype=q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale), None
    mask = merge_masks(attn_mask, key_padding_mask, is_causal=is_causal, t_q=t_q, t_k=t_k,
                       device=q.device, dtype=q.dtype)
    out, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale,
                                                need_weights=True)
    return out, (weights if need_weights else None)


# ----------------------------------------------------------------------------------------------
# Additive and multiplicative attention (the RNN encoder-decoder era)
# ----------------------------------------------------------------------------------------------

class AdditiveAttention(nn.Module):
    """Bahdanau attention: score(s, h) = vᵀ tanh(W₁ s + W₂ h).

    Args:
        query_dim: size of the decoder state s.
        key_dim: size of the encoder states h.
        attn_dim: size of the hidden layer of the scoring MLP.

    ``forward(query, keys, values=None, *, key_padding_mask=None, need_weights=True)`` takes a query
    (B, D_q) or (B, T_q, D_q) and keys (B, T_k, D_k); values default to the keys. It returns the
    context (B, [T_q,] D_v) and the weights (B, [T_q,] T_k). The key projection W₂ h does not depend
    on the query, so :meth:`project_keys` lets a decoder loop compute it once per sequence.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int | None = None) -> None:
        super().__init__()
        attn_dim = attn_dim or key_dim
        self.query_proj = nn.Linear(query_dim, attn_dim, bias=False)  # W₁
        self.key_proj = nn.Linear(key_dim, attn_dim, bias=True)  # W₂ (its bias plays the role of b)
        self.score = nn.Linear(attn_dim, 1, bias=False)  # v

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return self.key_proj(keys)  # (B, T_k, A)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor | None = None, *,
                key_padding_mask: torch.Tensor | None = None, projected_keys: torch.Tensor | None = None,
                need_weights: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        values = keys if values is None else values
        single = query.dim() == 2
        if single:
            query = query[:, None]  # (B, 1, D_q)
        keys_a = self.project_keys(keys) if projected_keys is None else projected_keys  # (B, T_k, A)
        # W₁ s + W₂ h for every (query, key) pair: (B, T_q, 1, A) + (B, 1, T_k, A) -> (B, T_q, T_k, A)
        hidden = torch.tanh(self.query_proj(query)[:, :, None, :] + keys_a[:, None, :, :])
        scores = self.score(hidden).squeeze(-1)  # (B, T_q, T_k)
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, :]  # (B, 1, T_k), True = keep
        weights = masked_softmax(scores, mask)
        context = torch.bmm(weights, values)  # (B, T_q, D_v)
        if single:
            context, weights = context[:, 0], weights[:, 0]
        return context, (weights if need_weights else None)


class MultiplicativeAttention(nn.Module):
    """Luong attention: ``dot`` score sᵀh, ``general`` score sᵀWh, ``scaled_dot`` sᵀh/√d.

    Same call as :class:`AdditiveAttention`. ``dot`` and ``scaled_dot`` need ``query_dim == key_dim``.
    """

    def __init__(self, query_dim: int, key_dim: int, *, kind: str = "general") -> None:
        super().__init__()
        if kind not in ("dot", "general", "scaled_dot"):
            raise ValueError(f"kind must be 'dot', 'general' or 'scaled_dot', got {kind!r}")
        if kind != "general" and query_dim != key_dim:
            raise ValueError(f"{kind} attention needs query_dim == key_dim, got {query_dim} and {key_dim}; "
                             "use kind='general'")
        self.kind = kind
        # sᵀ W h = (Wᵀ s)ᵀ h: we project the query to the key space.
        self.query_proj = nn.Linear(query_dim, key_dim, bias=False) if kind == "general" else None
        self.scale = 1.0 / math.sqrt(key_dim) if kind == "scaled_dot" else 1.0

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor | None = None, *,
                key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        values = keys if values is None else values
        single = query.dim() == 2
        if single:
            query = query[:, None]  # (B, 1, D_q)
        if self.query_proj is not None:
            query = self.query_proj(query)  # (B, T_q, D_k)
        scores = torch.bmm(query, keys.transpose(1, 2)) * self.scale  # (B, T_q, T_k)
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, :]
        weights = masked_softmax(scores, mask)
        context = torch.bmm(weights, values)  # (B, T_q, D_v)
        if single:
            context, weights = context[:, 0], weights[:, 0]
        return context, (weights if need_weights else None)


# ----------------------------------------------------------------------------------------------
# Multi-head attention
# ----------------------------------------------------------------------------------------------

class MultiHeadAttention(nn.Module):
    """Multi-head attention: concat_h(softmax(Q_h K_hᵀ/√d_h) V_h) W_O with Q_h = X W_Q^h etc.

    Args:
        embed_dim: model width D (= num_heads * head_dim).
        num_heads: number of heads h.
        kdim, vdim: widths of key and value inputs for cross-attention (default D). When both equal D
            the three input projections are one fused ``qkv`` linear layer (timm layout, and the layout of
            ``nn.MultiheadAttention.in_proj_weight``); otherwise ``q``, ``k`` and ``v`` layers.
        qkv_bias, proj_bias: biases of the input and output projections.
        attn_drop: dropout on the attention weights; proj_drop: dropout after the output projection.
        rope: optional rotary position embedding applied to queries and keys (see
            :class:`dltricks.layers.position.RotaryEmbedding`).
        fused: use ``F.scaled_dot_product_attention`` when the weights are not requested.

    ``forward(query, key=None, value=None, *, attn_mask=None, key_padding_mask=None, is_causal=False,
    attn_bias=None, need_weights=False)``: self-attention when ``key`` is None; ``attn_bias``
    (broadcastable to (B, h, T_q, T_k)) is added to the scores (relative position bias). Returns the
    output (B, T_q, D), or ``(output, weights (B, h, T_q, T_k))`` with ``need_weights=True``.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, kdim: int | None = None, vdim: int | None = None,
                 qkv_bias: bool = True, proj_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 rope: nn.Module | None = None, fused: bool = True) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        kdim, vdim = kdim or embed_dim, vdim or embed_dim
        self.fused_qkv = kdim == embed_dim and vdim == embed_dim
        if self.fused_qkv:
            self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=qkv_bias)
        else:
            self.q = nn.Linear(embed_dim, embed_dim, bias=qkv_bias)
            self.k = nn.Linear(kdim, embed_dim, bias=qkv_bias)
            self.v = nn.Linear(vdim, embed_dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(embed_dim, embed_dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rope = rope
        self.fused = fused

    def _project(self, query: torch.Tensor, key: torch.Tensor | None,
                 value: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        D = self.embed_dim
        if not self.fused_qkv:
            key = query if key is None else key
            value = key if value is None else value
            return self.q(query), self.k(key), self.v(value)
        if key is None and value is None:
            return self.qkv(query).chunk(3, dim=-1)  # 3 x (B, T, D)
        w, b = self.qkv.weight, self.qkv.bias  # (3D, D), (3D,)
        bq, bk, bv = (None, None, None) if b is None else b.split(D)
        key = query if key is None else key
        q = F.linear(query, w[:D], bq)
        if value is None or value is key:
            k, v = F.linear(key, w[D:], None if b is None else b[D:]).chunk(2, dim=-1)
        else:
            k, v = F.linear(key, w[D:2 * D], bk), F.linear(value, w[2 * D:], bv)
        return q, k, v

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None, *,
                attn_mask: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None,
                is_causal: bool = False, attn_bias: torch.Tensor | None = None,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        B, t_q, _ = query.shape
        q, k, v = self._project(query, key, value)  # (B, T, D) each
        t_k = k.shape[1]
        # Split heads: (B, T, D) -> (B, T, h, d) -> (B, h, T, d)
        q = q.view(B, t_q, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, t_k, self.num_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, t_k, self.num_heads, self.head_dim).transpose(1, 2)
        if self.rope is not None:
            q, k = self.rope(q, k)
        if attn_bias is not None:
            bias = attn_bias.to(q.dtype)
            if attn_mask is None:
                attn_mask = bias
            elif attn_mask.dtype == torch.bool:
                attn_mask = _combine(bias, attn_mask, q.dtype)
            else:
                attn_mask = bias + attn_mask
        out, weights = attention(q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                 is_causal=is_causal, dropout_p=self.attn_drop if self.training else 0.0,
                                 need_weights=need_weights, fused=self.fused)
        out = out.transpose(1, 2).reshape(B, t_q, self.embed_dim)  # (B, T_q, h*d)
        out = self.proj_drop(self.proj(out))
        return (out, weights) if need_weights else out

    @torch.no_grad()
    def load_from_torch(self, mha: nn.MultiheadAttention) -> MultiHeadAttention:
        """Copy the weights of an ``nn.MultiheadAttention`` with the same sizes (for parity tests and
        conversion)."""
        if not self.fused_qkv or not mha._qkv_same_embed_dim:
            self.q.weight.copy_(mha.q_proj_weight)
            self.k.weight.copy_(mha.k_proj_weight)
            self.v.weight.copy_(mha.v_proj_weight)
            if mha.in_proj_bias is not None:
                for layer, bias in zip((self.q, self.k, self.v), mha.in_proj_bias.chunk(3)):
                    layer.bias.copy_(bias)
        else:
            self.qkv.weight.copy_(mha.in_proj_weight)
            if mha.in_proj_bias is not None:
                self.qkv.bias.copy_(mha.in_proj_bias)
        self.proj.weight.copy_(mha.out_proj.weight)
        if mha.out_proj.bias is not None:
            self.proj.bias.copy_(mha.out_proj.bias)
        return self

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, attn_drop={self.attn_drop}"


# ----------------------------------------------------------------------------------------------
# Structured self-attention (Lin et al. 2017)
# ----------------------------------------------------------------------------------------------

class StructuredSelfAttention(nn.Module):
    """A sentence embedding matrix M = A H with r attention "hops".

        A = softmax(W_s2 tanh(W_s1 Hᵀ))       (r × T, softmax over the T tokens; Lin et al. eq. 6)
        M = A H                                 (r × D)
        P = ‖A Aᵀ − I‖²_F                       (eq. 8; added to the loss times a coefficient)

    Args:
        embed_dim: width D of the token states H (2u for a bidirectional LSTM of size u).
        attn_dim: d_a (350 in the paper).
        num_hops: r (30 in the paper).

    ``forward(x (B, T, D), key_padding_mask=None)`` returns ``(M (B, r, D), A (B, r, T))``.
    """

    def __init__(self, embed_dim: int, *, attn_dim: int = 350, num_hops: int = 30) -> None:
        super().__init__()
        self.ws1 = nn.Linear(embed_dim, attn_dim, bias=False)
        self.ws2 = nn.Linear(attn_dim, num_hops, bias=False)

    def forward(self, x: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.ws2(torch.tanh(self.ws1(x))).transpose(1, 2)  # (B, T, r) -> (B, r, T)
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, :]  # (B, 1, T)
        weights = masked_softmax(scores, mask)  # A: (B, r, T)
        return torch.bmm(weights, x), weights  # M: (B, r, D)

    @staticmethod
    def penalty(weights: torch.Tensor) -> torch.Tensor:
        """Batch mean of ‖A Aᵀ − I‖²_F for A of shape (B, r, T)."""
        gram = torch.bmm(weights, weights.transpose(1, 2))  # (B, r, r)
        eye = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
        return (gram - eye).square().sum(dim=(1, 2)).mean()


# ----------------------------------------------------------------------------------------------
# Key-value(-predict) attention (Daniluk et al. 2017)
# ----------------------------------------------------------------------------------------------

class KeyValueAttention(nn.Module):
    """Attention over the previous L outputs of a language-model RNN, with separated roles.

    Each output h_t of the RNN is split ("mode"):

    * ``attention``: h_t = k_t = v_t = p_t (one vector does everything, the baseline of the paper);
    * ``key_value``: [k_t; v_t] = h_t, with p_t = v_t;
    * ``key_value_predict``: [k_t; v_t; p_t] = h_t.

    Then (Daniluk et al. 2017, sec. 3):

        α_t = softmax(wᵀ tanh(W^Y [k_{t−L} … k_{t−1}] + (W^h k_t) 1ᵀ))      (scores on keys)
        r_t = [v_{t−L} … v_{t−1}] α_tᵀ                                       (average of values)
        h*_t = tanh(W^r r_t + W^x p_t)                                        (fed to the softmax)

    Args:
        dim: size k of each part; the input has ``parts * dim`` features (1, 2 or 3 parts).
        window: L, how many previous steps are attended (positions before the start are masked).
        mode: one of the three above.

    ``forward(h (B, T, parts*dim), need_weights=False)`` returns h* (B, T, dim) and, optionally,
    the weights (B, T, L) where column l is the key at t − L + l. The window is gathered with
    ``unfold``, so memory is O(T L dim), not O(T²).
    """

    PARTS = {"attention": 1, "key_value": 2, "key_value_predict": 3}

    def __init__(self, dim: int, *, window: int = 5, mode: str = "key_value_predict",
                 attn_dim: int | None = None) -> None:
        super().__init__()
        if mode not in self.PARTS:
            raise ValueError(f"mode must be one of {', '.join(self.PARTS)}, got {mode!r}")
        attn_dim = attn_dim or dim
        self.dim, self.window, self.mode = dim, window, mode
        self.parts = self.PARTS[mode]
        self.memory_proj = nn.Linear(dim, attn_dim, bias=False)  # W^Y
        self.query_proj = nn.Linear(dim, attn_dim, bias=False)  # W^h
        self.score = nn.Linear(attn_dim, 1, bias=False)  # w
        self.read_proj = nn.Linear(dim, dim, bias=False)  # W^r
        self.out_proj = nn.Linear(dim, dim, bias=True)  # W^x

    def forward(self, h: torch.Tensor, *,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        B, T, F_ = h.shape
        if F_ != self.parts * self.dim:
            raise ValueError(f"{self.mode} attention expects {self.parts} x {self.dim} = {self.parts * self.dim} "
                             f"input features, got {F_}")
        parts = h.split(self.dim, dim=-1)
        key, value, predict = parts[0], parts[min(1, self.parts - 1)], parts[-1]  # (B, T, k) each
        L = self.window
        # Memory windows: position t sees keys t-L .. t-1. Left-pad L zeros, then unfold:
        # (B, T+L, A) -> (B, T, A, L) -> (B, T, L, A); the last window element (t itself) is dropped.
        mem_keys = F.pad(self.memory_proj(key), (0, 0, L, 0)).unfold(1, L, 1)[:, :T].transpose(2, 3)
        mem_vals = F.pad(value, (0, 0, L, 0)).unfold(1, L, 1)[:, :T].transpose(2, 3)  # (B, T, L, k)
        hidden = torch.tanh(mem_keys + self.query_proj(key)[:, :, None, :])  # (B, T, L, A)
        scores = self.score(hidden).squeeze(-1)  # (B, T, L)
        # Slot l holds position t - L + l, which exists only if t - L + l >= 0.
        t = torch.arange(T, device=h.device)[:, None]
        slot = torch.arange(L, device=h.device)[None, :]
        valid = (t - L + slot) >= 0  # (T, L)
        weights = masked_softmax(scores, valid)
        read = torch.einsum("btl,btlk->btk", weights, mem_vals)  # r_t: (B, T, k)
        out = torch.tanh(self.read_proj(read) + self.out_proj(predict))  # h*_t: (B, T, k)
        return (out, weights) if need_weights else out


# ----------------------------------------------------------------------------------------------
# Local (restricted) attention, computed in overlapping blocks
# ----------------------------------------------------------------------------------------------

def local_attention_mask(t: int, window: int, *, causal: bool = False,
                         device: torch.device | None = None) -> torch.Tensor:
    """Dense boolean (T, T) mask of local attention: True where j - i is in [-window, window]
    ([-window, 0] if causal). Only for references and plots: :func:`local_attention` never builds it."""
    i = torch.arange(t, device=device)[:, None]
    j = torch.arange(t, device=device)[None, :]
    offset = j - i
    return (offset >= -window) & (offset <= (0 if causal else window))


def band_to_dense(band: torch.Tensor, window: int, *, causal: bool = False) -> torch.Tensor:
    """Expand band weights (..., T, n_offsets) from :func:`local_attention` into (..., T, T)."""
    *lead, T, n = band.shape
    dense = band.new_zeros(*lead, T, T + 2 * window)  # column c holds key c - window
    i = torch.arange(T, device=band.device)[:, None]
    o = torch.arange(n, device=band.device)[None, :]
    cols = (i + o).expand(T, n)  # key (i - window + o) sits at column i + o
    dense.scatter_(-1, cols.expand(*lead, T, n), band)
    return dense[..., window:window + T]


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int, causal: bool = False,
                    key_padding_mask: torch.Tensor | None = None, block_size: int | None = None,
                    dropout_p: float = 0.0, scale: float | None = None, need_weights: bool = False,
                    chunk_elements: int = 1 << 21) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Self-attention restricted to keys j with |i − j| <= ``window`` (j in [i − window, i] if causal).

    q, k, v: (B, h, T, d). The sequence is cut into blocks of ``block_size`` queries (default: the
    window); each block attends to its own keys plus ``window`` keys on either side, a (b, b + 2r) score
    matrix per block. Time O(T (b + 2r) d), memory O(T (b + 2r)): linear in T for a fixed window. Blocks
    are processed in chunks of about ``chunk_elements`` scores (8 MiB in float32), which keeps the working
    set in cache and bounds the memory of the scores; only the output (and the band weights, if asked
    for) grow with T.

    Returns ``(out (B, h, T, d_v), weights or None)``; weights are in band form (B, h, T, n_offsets),
    column o holding key i − window + o (``n_offsets`` = 2·window + 1, or window + 1 if causal); expand
    them with :func:`band_to_dense`.
    """
    B, H, T, D = q.shape
    r = int(window)
    if r < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    b = max(1, int(block_size or r or 1))
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    right = 0 if causal else r  # keys after the query
    nb = -(-T // b)  # number of blocks (ceil)
    pad = nb * b - T
    span = b + r + right  # keys seen by one block
    # Queries in blocks: (B, h, T, d) -> (B, h, nb, b, d)
    qb = F.pad(q, (0, 0, 0, pad)).view(B, H, nb, b, D)
    # Keys and values padded by r on the left and `right` (+ the block padding) on the right, then cut
    # into overlapping windows: (B, h, T + pad + r + right, d) -> unfold -> (B, h, nb, d, span) -> (B, h, nb, span, d)
    kb = F.pad(k, (0, 0, r, pad + right)).unfold(2, span, b).transpose(-2, -1)
    vb = F.pad(v, (0, 0, r, pad + right)).unfold(2, span, b).transpose(-2, -1)
    # Which (query a, key slot c) pairs are allowed: key position j = blk*b - r + c, query i = blk*b + a.
    a = torch.arange(b, device=q.device)[:, None]
    c = torch.arange(span, device=q.device)[None, :]
    offset = c - r - a  # j - i, (b, span)
    in_band = (offset >= -r) & (offset <= right)
    # Keys outside [0, T) (the padding we added) or marked as padding are never attended.
    key_ok = (torch.ones(B, T, dtype=torch.bool, device=q.device) if key_padding_mask is None
              else ~key_padding_mask.bool())
    key_ok = F.pad(key_ok, (r, pad + right), value=False).unfold(1, span, b)  # (B, nb, span)
    n_off = r + right + 1
    # Band form: offset o (key i - r + o) of query a sits in slot c = a + o.
    slots = torch.arange(b, device=q.device)[:, None] + torch.arange(n_off, device=q.device)[None, :]  # (b, n_off)

    # Blocks are processed in chunks whose score tensors stay around ``chunk_elements`` floats: the working
    # set stays in cache, so time is linear in T, and the peak memory of the scores is bounded.
    per_block = B * H * b * span
    step = max(1, chunk_elements // per_block)
    outs, bands = [], []
    for s0 in range(0, nb, step):
        s1 = min(nb, s0 + step)
        scores = torch.matmul(qb[:, :, s0:s1], kb[:, :, s0:s1].transpose(-2, -1)) * scale  # (B, h, n, b, span)
        mask = in_band[None, None] & key_ok[:, s0:s1, None, :]  # (B, n, b, span)
        weights = masked_softmax(scores, mask[:, None])  # (B, h, n, b, span)
        dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
        outs.append(torch.matmul(dropped, vb[:, :, s0:s1]))  # (B, h, n, b, d_v)
        if need_weights:
            bands.append(weights.gather(-1, slots.expand(B, H, s1 - s0, b, n_off)))  # (B, h, n, b, n_off)
    out = (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)).reshape(B, H, nb * b, -1)[:, :, :T]  # (B, h, T, d_v)
    if not need_weights:
        return out, None
    band = (bands[0] if len(bands) == 1 else torch.cat(bands, dim=2)).reshape(B, H, nb * b, n_off)[:, :, :T]
    return out, band


class LocalSelfAttention(MultiHeadAttention):
    """Multi-head self-attention restricted to a window of ``window`` tokens on each side (or only the
    past if ``causal``), computed blockwise by :func:`local_attention`. Same parameters as
    :class:`MultiHeadAttention`; weights are returned in band form (B, h, T, n_offsets)."""

    def __init__(self, embed_dim: int, num_heads: int, *, window: int, causal: bool = False,
                 block_size: int | None = None, **kwargs) -> None:
        super().__init__(embed_dim, num_heads, **kwargs)
        self.window, self.causal, self.block_size = window, causal, block_size

    def forward(self, x: torch.Tensor, *, key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = False, **unused) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        _reject_masks(unused, type(self).__name__)
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, h, T, d)
        if self.rope is not None:
            q, k = self.rope(q, k)
        out, weights = local_attention(q, k, v, window=self.window, causal=self.causal,
                                       key_padding_mask=key_padding_mask, block_size=self.block_size,
                                       dropout_p=self.attn_drop if self.training else 0.0, need_weights=need_weights)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, T, self.embed_dim)))  # (B, T, D)
        return (out, weights) if need_weights else out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", window={self.window}, causal={self.causal}"


def _reject_masks(unused: dict, name: str) -> None:
    """Efficient variants build their own masks; a general attn_mask would need the full matrix."""
    given = {k: v for k, v in unused.items() if v is not None and v is not False}
    if given:
        raise ValueError(f"{name} does not take {', '.join(given)}: its sparsity pattern is its mask")


# ----------------------------------------------------------------------------------------------
# Strided sparse attention (Child et al. 2019)
# ----------------------------------------------------------------------------------------------

def strided_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, stride: int, causal: bool = True,
                      key_padding_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                      need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention to positions j with (i − j) mod ``stride`` == 0 (and j <= i if causal).

    Implemented by folding the sequence into a (T/stride, stride) grid and attending along its columns:
    (B, h, T, d) -> (B, h, stride, T/stride, d). Memory O(T²/stride). Weights (if requested) are per
    column: (B, h, stride, T/stride, T/stride).
    """
    B, H, T, D = q.shape
    s = int(stride)
    m = -(-T // s)  # rows of the grid
    pad = m * s - T

    def fold(x: torch.Tensor) -> torch.Tensor:
        # (B, h, T, d) -> (B, h, m, s, d) -> (B, h, s, m, d): position i = row*s + col
        return F.pad(x, (0, 0, 0, pad)).view(B, H, m, s, x.shape[-1]).transpose(2, 3)

    key_ok = (torch.ones(B, T, dtype=torch.bool, device=q.device) if key_padding_mask is None
              else ~key_padding_mask.bool())
    key_ok = F.pad(key_ok, (0, pad), value=False).view(B, m, s).transpose(1, 2)  # (B, s, m)
    mask = key_ok[:, None, :, None, :]  # (B, 1, s, 1, m)
    if causal:
        mask = mask & causal_mask(m, device=q.device)  # rows are in time order
    out, weights = scaled_dot_product_attention(fold(q), fold(k), fold(v), attn_mask=mask, dropout_p=dropout_p,
                                                need_weights=True)
    out = out.transpose(2, 3).reshape(B, H, m * s, -1)[:, :, :T]  # unfold back to (B, h, T, d_v)
    return out, (weights if need_weights else None)


def sparse_attention_masks(t: int, stride: int, *, causal: bool = True,
                           device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense (T, T) masks of the two patterns of :class:`SparseAttention` (local, strided), for
    references and plots."""
    i = torch.arange(t, device=device)[:, None]
    j = torch.arange(t, device=device)[None, :]
    past = (j <= i) if causal else torch.ones(t, t, dtype=torch.bool, device=device)
    local = past & ((i - j).abs() <= stride)
    strided = past & ((i - j) % stride == 0)
    return local, strided


class SparseAttention(MultiHeadAttention):
    """Factorised sparse self-attention of Child et al. (2019): the first half of the heads attends to
    the previous ``stride`` positions (:func:`local_attention`), the second half to every ``stride``-th
    earlier position (:func:`strided_attention`). Two steps of it connect any two positions; with
    stride ≈ √T the cost is O(T√T) instead of O(T²). ``causal=False`` makes both patterns two-sided.

    Weights (``need_weights=True``) are returned as a pair ``(local band, strided per column)``.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, stride: int, causal: bool = True, **kwargs) -> None:
        if num_heads < 2 or num_heads % 2:
            raise ValueError("SparseAttention splits heads between two patterns: "
                             f"num_heads must be even, got {num_heads}")
        super().__init__(embed_dim, num_heads, **kwargs)
        self.stride, self.causal = stride, causal

    def forward(self, x: torch.Tensor, *, key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = False, **unused):
        _reject_masks(unused, type(self).__name__)
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, h, T, d)
        if self.rope is not None:
            q, k = self.rope(q, k)
        half = self.num_heads // 2
        drop = self.attn_drop if self.training else 0.0
        out_local, w_local = local_attention(q[:, :half], k[:, :half], v[:, :half], window=self.stride,
                                             causal=self.causal, key_padding_mask=key_padding_mask,
                                             dropout_p=drop, need_weights=need_weights)
        out_strided, w_strided = strided_attention(q[:, half:], k[:, half:], v[:, half:], stride=self.stride,
                                                   causal=self.causal, key_padding_mask=key_padding_mask,
                                                   dropout_p=drop, need_weights=need_weights)
        out = torch.cat([out_local, out_strided], dim=1)  # (B, h, T, d)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, T, self.embed_dim)))
        return (out, (w_local, w_strided)) if need_weights else out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", stride={self.stride}, causal={self.causal}"


# ----------------------------------------------------------------------------------------------
# Axial attention (Ho et al. 2019)
# ----------------------------------------------------------------------------------------------

class AxialAttention2d(nn.Module):
    """Self-attention along the height axis, then along the width axis, of a channels-last map.

    x: (B, H, W, C) -> (B, H, W, C). Each axis has its own :class:`MultiHeadAttention`; every pixel
    reaches every other pixel in the two steps at O(HW(H + W)) cost. With ``need_weights`` it also
    returns ``(height weights (B*W, h, H, H), width weights (B*H, h, W, W))``.
    """

    def __init__(self, embed_dim: int, num_heads: int, **kwargs) -> None:
        super().__init__()
        self.height_attn = MultiHeadAttention(embed_dim, num_heads, **kwargs)
        self.width_attn = MultiHeadAttention(embed_dim, num_heads, **kwargs)

    def forward(self, x: torch.Tensor, *, need_weights: bool = False):
        B, H, W, C = x.shape
        # Columns as sequences: (B, H, W, C) -> (B, W, H, C) -> (B*W, H, C)
        cols = x.transpose(1, 2).reshape(B * W, H, C)
        cols = self.height_attn(cols, need_weights=need_weights)
        cols, w_h = cols if need_weights else (cols, None)
        x = cols.view(B, W, H, C).transpose(1, 2)  # (B, H, W, C)
        # Rows as sequences: (B, H, W, C) -> (B*H, W, C)
        rows = self.width_attn(x.reshape(B * H, W, C), need_weights=need_weights)
        rows, w_w = rows if need_weights else (rows, None)
        out = rows.view(B, H, W, C)
        return (out, (w_h, w_w)) if need_weights else out


# ----------------------------------------------------------------------------------------------
# Linformer (Wang et al. 2020)
# ----------------------------------------------------------------------------------------------

class LinformerSelfAttention(MultiHeadAttention):
    """Self-attention with keys and values compressed along the sequence axis.

        head_i = softmax(Q_i (E K_i)ᵀ / √d) (F V_i),   E, F ∈ R^{k × n}      (Wang et al. 2020, eq. 7)

    Args:
        seq_len: the maximum sequence length n (E and F have n columns; a shorter input uses the
            first T columns).
        proj_len: k, the number of compressed key/value rows (256 in the paper's main runs).
        share_kv: use one matrix for E and F (the paper's "key-value sharing").

    Causal masking is impossible (every compressed row mixes all positions), so ``is_causal`` raises.
    Padded keys are zeroed before the projection. Weights are (B, h, T, k).
    """

    def __init__(self, embed_dim: int, num_heads: int, *, seq_len: int, proj_len: int = 256,
                 share_kv: bool = False, **kwargs) -> None:
        super().__init__(embed_dim, num_heads, **kwargs)
        self.seq_len, self.proj_len = seq_len, proj_len
        self.proj_k = nn.Parameter(torch.randn(proj_len, seq_len) / math.sqrt(proj_len))  # E
        self.proj_v = None if share_kv else nn.Parameter(torch.randn(proj_len, seq_len) / math.sqrt(proj_len))  # F

    def forward(self, x: torch.Tensor, *, key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = False, **unused):
        _reject_masks(unused, type(self).__name__)
        B, T, _ = x.shape
        if T > self.seq_len:
            raise ValueError(f"Linformer was built for sequences of at most {self.seq_len} tokens, got input of {T}")
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, h, T, d)
        if key_padding_mask is not None:
            keep = (~key_padding_mask.bool())[:, None, :, None].to(k.dtype)  # (B, 1, T, 1)
            k, v = k * keep, v * keep
        e = self.proj_k[:, :T]
        f = (self.proj_v if self.proj_v is not None else self.proj_k)[:, :T]
        k = torch.einsum("kt,bhtd->bhkd", e, k)  # E K: (B, h, k, d)
        v = torch.einsum("kt,bhtd->bhkd", f, v)  # F V: (B, h, k, d)
        out, weights = attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0,
                                 need_weights=need_weights, fused=self.fused)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, T, self.embed_dim)))
        return (out, weights) if need_weights else out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", seq_len={self.seq_len}, proj_len={self.proj_len}"

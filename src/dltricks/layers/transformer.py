"""Transformer encoder and decoder blocks, pre-LN or post-LN.

Post-LN (Vaswani et al. 2017, the original):  x = LN(x + Dropout(Sublayer(x)))
Pre-LN  (Xiong et al. 2020; GPT-2, ViT):      x = x + Dropout(Sublayer(LN(x)))  and one final LN.

Xiong et al. show that with post-LN the gradient at the last layers is large at initialisation, which is
why post-LN Transformers need a learning-rate warm-up; pre-LN keeps gradients well-scaled and trains
without (or with a short) warm-up. Both are here, selected by ``norm_first``.

Dropout sits in three places, as in the original: on the attention weights (``attn_drop``), after each
sub-layer before the residual sum (``drop``, P_drop = 0.1 for the base model) and inside the MLP after
its activation. ``drop_path`` (stochastic depth, Huang et al. 2016) drops whole residual branches per
sample (ViT/DeiT/Swin training recipe).

The blocks are checked against ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` with
copied weights in both norm placements (``tests/test_transformer.py``).

**Positions at every layer** (DETR, Carion et al. 2020, Sec. 3.2 and Fig. 10). Instead of adding a position
encoding once to the input, DETR adds it to the queries and keys of every attention layer, never to the
values: self-attention reads ``Attn(q = x + p, k = x + p, v = x)`` and cross-attention
``Attn(q = x + p_query, k = m + p_memory, v = m)``. The optional ``pos`` (encoder) and ``query_pos`` /
``memory_pos`` (decoder) arguments do this; left out, a layer computes exactly what it did before.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from dltricks.layers.attention import MultiHeadAttention
from dltricks.layers.drop import DropPath
from dltricks.layers.mlp import Mlp

__all__ = ["TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder", "TransformerDecoder"]


def _attn_kwargs(**kwargs: Any) -> dict[str, Any]:
    """Only the mask arguments that were given (efficient attention layers reject general masks)."""
    return {k: v for k, v in kwargs.items() if v is not None and v is not False}


def _attend(attn: nn.Module, x: torch.Tensor, pos: torch.Tensor | None, **kwargs: Any):
    """Self-attention of ``x``; with ``pos``, queries and keys read ``x + pos`` and values ``x`` (DETR)."""
    if pos is None:
        return attn(x, **kwargs)
    return attn(x + pos, x + pos, x, **kwargs)


class TransformerEncoderLayer(nn.Module):
    """Self-attention + MLP with residuals (timm ``Block`` naming: norm1, attn, norm2, mlp).

    Args:
        embed_dim, num_heads, mlp_ratio: width, heads, MLP hidden size as a multiple of the width.
        qkv_bias: biases in the q/k/v projections.
        drop: dropout after attention and MLP outputs (and inside the MLP).
        attn_drop: dropout on attention weights.
        drop_path: stochastic-depth rate of this block.
        norm_first: pre-LN (True) or post-LN (False).
        act_layer, norm_layer: MLP activation and normalisation constructors.
        attn_layer: constructor ``(embed_dim, num_heads, **kw)`` of the attention module, to swap in
            :class:`~dltricks.layers.attention.LocalSelfAttention`, Linformer...

    ``forward(x, *, attn_mask=None, key_padding_mask=None, is_causal=False, attn_bias=None,
    need_weights=False, pos=None)`` returns x or ``(x, attention weights)``; ``pos`` (broadcastable to x) is
    added to the queries and keys of the attention (see the module docstring).
    """

    def __init__(self, embed_dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, norm_first: bool = True,
                 act_layer: Callable[[], nn.Module] = nn.GELU,
                 norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
                 attn_layer: Callable[..., nn.Module] = MultiHeadAttention, **attn_options: Any) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = norm_layer(embed_dim)
        self.attn = attn_layer(embed_dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop,
                               **attn_options)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = norm_layer(embed_dim)
        self.mlp = Mlp(embed_dim, int(embed_dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, *, attn_mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, is_causal: bool = False,
                attn_bias: torch.Tensor | None = None, need_weights: bool = False, pos: torch.Tensor | None = None):
        kwargs = _attn_kwargs(attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal,
                              attn_bias=attn_bias, need_weights=need_weights)
        weights = None
        if self.norm_first:
            y = _attend(self.attn, self.norm1(x), pos, **kwargs)
            y, weights = y if need_weights else (y, None)
            x = x + self.drop_path1(y)
            x = x + self.drop_path2(self.mlp(self.norm2(x)))
        else:
            y = _attend(self.attn, x, pos, **kwargs)
            y, weights = y if need_weights else (y, None)
            x = self.norm1(x + self.drop_path1(y))
            x = self.norm2(x + self.drop_path2(self.mlp(x)))
        return (x, weights) if need_weights else x


class TransformerDecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to the encoder output ("memory"), MLP.

    ``forward(x, memory, *, self_attn_mask=None, is_causal=True, key_padding_mask=None,
    memory_key_padding_mask=None, need_weights=False, query_pos=None, memory_pos=None)`` returns x or
    ``(x, (self-attention weights, cross-attention weights))``; ``query_pos`` is added to the queries (and the
    self-attention keys), ``memory_pos`` to the cross-attention keys (see the module docstring).
    """

    def __init__(self, embed_dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, norm_first: bool = True,
                 act_layer: Callable[[], nn.Module] = nn.GELU,
                 norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
                 memory_dim: int | None = None, rope: nn.Module | None = None) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = norm_layer(embed_dim)
        self.self_attn = MultiHeadAttention(embed_dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                            proj_drop=drop, rope=rope)
        self.norm2 = norm_layer(embed_dim)
        self.cross_attn = MultiHeadAttention(embed_dim, num_heads, kdim=memory_dim, vdim=memory_dim,
                                             qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.norm3 = norm_layer(embed_dim)
        self.mlp = Mlp(embed_dim, int(embed_dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, *, self_attn_mask: torch.Tensor | None = None,
                is_causal: bool = True, key_padding_mask: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None, need_weights: bool = False,
                query_pos: torch.Tensor | None = None, memory_pos: torch.Tensor | None = None):
        self_kw = _attn_kwargs(attn_mask=self_attn_mask, is_causal=is_causal, key_padding_mask=key_padding_mask,
                               need_weights=need_weights)
        cross_kw = _attn_kwargs(key_padding_mask=memory_key_padding_mask, need_weights=need_weights)

        def split(y):
            return y if need_weights else (y, None)

        def cross(h):
            if query_pos is None and memory_pos is None:
                return self.cross_attn(h, memory, **cross_kw)
            keys = memory if memory_pos is None else memory + memory_pos
            return self.cross_attn(h if query_pos is None else h + query_pos, keys, memory, **cross_kw)

        if self.norm_first:
            y, w_self = split(_attend(self.self_attn, self.norm1(x), query_pos, **self_kw))
            x = x + self.drop_path(y)
            y, w_cross = split(cross(self.norm2(x)))
            x = x + self.drop_path(y)
            x = x + self.drop_path(self.mlp(self.norm3(x)))
        else:
            y, w_self = split(_attend(self.self_attn, x, query_pos, **self_kw))
            x = self.norm1(x + self.drop_path(y))
            y, w_cross = split(cross(x))
            x = self.norm2(x + self.drop_path(y))
            x = self.norm3(x + self.drop_path(self.mlp(x)))
        return (x, (w_self, w_cross)) if need_weights else x


class _LayerStack(nn.Module):
    """``depth`` layers of ``layer_cls`` and a final norm (by default exactly when pre-LN, which needs it;
    post-LN may ask for one, as ``nn.TransformerEncoder`` does). ``drop_path_rate`` grows linearly with
    depth from 0 to the given rate (Huang et al. 2016)."""

    layer_cls: type[nn.Module]

    def __init__(self, embed_dim: int, depth: int, num_heads: int, *, norm_first: bool = True,
                 final_norm: bool | None = None, drop_path_rate: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6), **layer_kwargs: Any) -> None:
        super().__init__()
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layers = nn.ModuleList([
            self.layer_cls(embed_dim, num_heads, norm_first=norm_first, drop_path=rates[i], norm_layer=norm_layer,
                           **layer_kwargs) for i in range(depth)])
        final_norm = norm_first if final_norm is None else final_norm
        self.norm = norm_layer(embed_dim) if final_norm else nn.Identity()


class TransformerEncoder(_LayerStack):
    """A stack of :class:`TransformerEncoderLayer` with a final norm (see :class:`_LayerStack`)."""

    layer_cls = TransformerEncoderLayer

    def forward(self, x: torch.Tensor, *, need_weights: bool = False, **kwargs: Any):
        all_weights = []
        for layer in self.layers:
            x = layer(x, need_weights=need_weights, **kwargs)
            if need_weights:
                x, w = x
                all_weights.append(w)
        x = self.norm(x)
        return (x, all_weights) if need_weights else x


class TransformerDecoder(_LayerStack):
    """A stack of :class:`TransformerDecoderLayer` with a final norm (see :class:`_LayerStack`)."""

    layer_cls = TransformerDecoderLayer

    def forward(self, x: torch.Tensor, memory: torch.Tensor, *, need_weights: bool = False, **kwargs: Any):
        all_weights = []
        for layer in self.layers:
            x = layer(x, memory, need_weights=need_weights, **kwargs)
            if need_weights:
                x, w = x
                all_weights.append(w)
        x = self.norm(x)
        return (x, all_weights) if need_weights else x

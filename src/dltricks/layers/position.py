"""Position information for attention, which by itself is blind to order.

Self-attention without positions is permutation-equivariant: permuting the tokens permutes the
outputs the same way (``tests/test_attention_properties.py`` checks it). Four ways to break that
symmetry:

* **Sinusoidal** (Vaswani et al. 2017, sec. 3.5): PE(pos, 2i) = sin(pos ω_i), PE(pos, 2i+1) = cos(pos ω_i)
  with ω_i = 10000^(−2i/d). Each (sin, cos) pair is a point on a circle turning at speed ω_i, so a
  shift by φ is a fixed rotation: PE(pos + φ) = M(φ) PE(pos) with M(φ) block-diagonal,
  M_i(φ) = [[cos φω_i, sin φω_i], [−sin φω_i, cos φω_i]] (:func:`sinusoidal_shift_matrix`; the
  identity is tested for random pos and φ). Hence relative offsets are linear functions of the code.
* **2-D sine** (DETR, Carion et al. 2020, Sec. 3.2 and its code): half of the channels encode the row,
  half the column, each with the table above at a continuous position. With ``normalize`` the cell
  ``(i, j)`` of an ``H x W`` map sits at ``y = 2π (i + 1) / H``, ``x = 2π (j + 1) / W``, so every map size
  spans the same angles (:func:`sine_position_encoding_2d`).
* **Learned absolute** (Gehring et al. 2017; BERT; ViT): a trained (N, D) table, resampled
  bicubically when a ViT sees another grid size (:func:`resample_abs_pos_embed`).
* **Relative position bias** (Swin, Liu et al. 2021, eq. 4): a learned scalar per head and per 2-D
  offset (Δy, Δx) inside a window, added to the attention logits: softmax(QKᵀ/√d + B)V. The table has
  (2M−1)² rows for an M×M window.
* **Rotary** (RoPE, Su et al. 2021, eq. 34): rotate each (x_j, x_{j+d/2}) pair of queries and keys by
  the angle pos·θ_j; then ⟨R_m q, R_n k⟩ depends only on m − n, making dot-product attention
  relative without changing the values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["sinusoidal_position_encoding", "sine_position_encoding_2d", "sinusoidal_shift_matrix",
           "SinusoidalPositionalEncoding",
           "LearnedPositionalEmbedding", "resample_abs_pos_embed", "relative_position_index",
           "RelativePositionBias", "RotaryEmbedding", "apply_rotary"]


def _frequencies(dim: int, base: float, device: torch.device | None = None) -> torch.Tensor:
    """ω_i = base^(−2i/d) for i = 0 .. d/2 − 1."""
    return base ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float64) / dim)


def sinusoidal_position_encoding(num_positions: int, dim: int, *, base: float = 10000.0, offset: int = 0,
                                 device: torch.device | None = None,
                                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (num_positions, dim) sinusoidal table of Vaswani et al.; even columns sin, odd columns cos.

    Computed in float64 and then cast, so large positions keep their precision.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal encoding needs an even dimension, got {dim}")
    pos = torch.arange(offset, offset + num_positions, device=device, dtype=torch.float64)[:, None]  # (T, 1)
    angles = pos * _frequencies(dim, base, device)[None, :]  # (T, d/2)
    pe = torch.stack([angles.sin(), angles.cos()], dim=-1)  # (T, d/2, 2)
    return pe.flatten(1).to(dtype)  # (T, d): sin, cos, sin, cos...


def sine_position_encoding_2d(height: int, width: int, dim: int, *, base: float = 10000.0, normalize: bool = True,
                              device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """DETR's position code ``(height * width, dim)`` of a map's cells, row-major: columns ``[0, dim/2)`` encode
    the row, ``[dim/2, dim)`` the column, each as ``sin, cos, sin, cos...`` of ``pos * base^(-2i / (dim/2))``
    with ``pos = i + 1`` (or ``2π (i + 1) / H`` when ``normalize``)."""
    if dim % 4:
        raise ValueError(f"a 2-D sine encoding needs a dimension divisible by 4, got {dim}")
    half = dim // 2
    ys = torch.arange(1, height + 1, device=device, dtype=torch.float64)
    xs = torch.arange(1, width + 1, device=device, dtype=torch.float64)
    if normalize:
        ys, xs = ys * (2 * math.pi / height), xs * (2 * math.pi / width)
    freqs = _frequencies(half, base, device)  # (dim/4,)

    def table(pos: torch.Tensor) -> torch.Tensor:
        angles = pos[:, None] * freqs[None]  # (T, dim/4)
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (T, dim/2): sin, cos, sin, cos...

    pe_y, pe_x = table(ys), table(xs)  # (H, dim/2), (W, dim/2)
    # (H, W, dim) -> (H * W, dim)
    grid = torch.cat([pe_y[:, None].expand(-1, width, -1), pe_x[None].expand(height, -1, -1)], dim=-1)
    return grid.reshape(height * width, dim).to(dtype)


def sinusoidal_shift_matrix(phi: float, dim: int, *, base: float = 10000.0,
                            dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """M(φ) with PE(pos + φ) = M(φ) PE(pos) for every pos: one 2×2 rotation per frequency.

    sin((p+φ)ω) =  cos(φω) sin(pω) + sin(φω) cos(pω)
    cos((p+φ)ω) = −sin(φω) sin(pω) + cos(φω) cos(pω)
    """
    angles = phi * _frequencies(dim, base)  # (d/2,)
    c, s = angles.cos(), angles.sin()
    blocks = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)  # (d/2, 2, 2)
    return torch.block_diag(*blocks).to(dtype)  # (d, d)


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the sinusoidal table to token embeddings (B, T, D), then dropout.

    ``scale`` multiplies the embeddings first (√D in Vaswani et al., who share the embedding matrix
    with the output layer). ``offset`` shifts positions (for incremental decoding). Sequences longer
    than ``max_len`` are computed on the fly.
    """

    def __init__(self, dim: int, *, max_len: int = 1024, dropout: float = 0.0, scale: float = 1.0,
                 base: float = 10000.0) -> None:
        super().__init__()
        self.dim, self.base, self.scale = dim, base, scale
        self.register_buffer("pe", sinusoidal_position_encoding(max_len, dim, base=base), persistent=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        T = x.shape[1]
        if offset + T <= self.pe.shape[0]:
            pe = self.pe[offset:offset + T]
        else:
            pe = sinusoidal_position_encoding(T, self.dim, base=self.base, offset=offset, device=x.device)
        return self.drop(x * self.scale + pe.to(x.dtype))  # (B, T, D) + (T, D)


class LearnedPositionalEmbedding(nn.Module):
    """A trained table of ``num_positions`` vectors added to the tokens (B, T, D), T <= num_positions."""

    def __init__(self, num_positions: int, dim: int, *, dropout: float = 0.0, init_std: float = 0.02) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_positions, dim))
        nn.init.trunc_normal_(self.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        T = x.shape[1]
        if offset + T > self.weight.shape[0]:
            raise ValueError(f"input of {offset + T} positions is longer than the {self.weight.shape[0]} learned "
                             "positions; build the model with a larger max_len")
        return self.drop(x + self.weight[offset:offset + T])


def resample_abs_pos_embed(pos_embed: torch.Tensor, new_size: tuple[int, int], old_size: tuple[int, int], *,
                           num_prefix_tokens: int = 1, mode: str = "bicubic") -> torch.Tensor:
    """Interpolate a ViT position table (1, prefix + H·W, D) from an ``old_size`` grid to ``new_size``.

    Prefix tokens (class token) keep their embedding; the grid part is resized as a (D, H, W) image
    (Dosovitskiy et al. 2021, sec. 3.2 "fine-tuning at higher resolution").
    """
    if tuple(new_size) == tuple(old_size):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    D = pos_embed.shape[-1]
    grid = grid.reshape(1, old_size[0], old_size[1], D).permute(0, 3, 1, 2)  # (1, D, H, W)
    grid = F.interpolate(grid.float(), size=new_size, mode=mode, align_corners=False).to(pos_embed.dtype)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_size[0] * new_size[1], D)  # (1, H'W', D)
    return torch.cat([prefix, grid], dim=1)


def relative_position_index(window: tuple[int, int], table_window: tuple[int, int] | None = None,
                            device: torch.device | None = None) -> torch.Tensor:
    """(N, N) index into a ((2M_h−1)(2M_w−1))-row bias table for the N = h·w tokens of an h×w window.

    ``table_window`` (M_h, M_w) is the window the table was built for; a smaller window uses the
    central part of the table, so a Swin stage whose feature map is smaller than its window still
    reads the same biases for the same offsets.
    """
    h, w = window
    mh, mw = table_window or window
    if h > mh or w > mw:
        raise ValueError(f"window {window} is larger than the bias table's window {(mh, mw)}")
    coords = torch.stack(torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                                        indexing="ij")).flatten(1)  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N): (Δy, Δx) for every pair
    dy = rel[0] + mh - 1  # shift to [0, 2M_h − 2]
    dx = rel[1] + mw - 1
    return dy * (2 * mw - 1) + dx  # (N, N)


class RelativePositionBias(nn.Module):
    """Swin's learned bias B[Δy, Δx] per head, added to window-attention logits.

    ``forward(window=None)`` returns the (num_heads, N, N) bias for the full window or for a smaller
    ``(h, w)`` window.
    """

    def __init__(self, window_size: int | tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.window_size = (window_size, window_size) if isinstance(window_size, int) else tuple(window_size)
        mh, mw = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * mh - 1) * (2 * mw - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(self.window_size), persistent=False)

    def forward(self, window: tuple[int, int] | None = None) -> torch.Tensor:
        if window is None or tuple(window) == self.window_size:
            index = self.relative_position_index
        else:
            index = relative_position_index(tuple(window), self.window_size,
                                            device=self.relative_position_bias_table.device)
        N = index.shape[0]
        bias = self.relative_position_bias_table[index.reshape(-1)].view(N, N, -1)  # (N, N, heads)
        return bias.permute(2, 0, 1).contiguous()  # (heads, N, N)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x_j, x_{j+d/2}) of x (..., T, d) by the angles whose cos/sin are (T, d/2)."""
    x1, x2 = x.chunk(2, dim=-1)  # (..., T, d/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) for queries and keys of shape (B, heads, T, head_dim).

    Pair j of a token at position m is rotated by m·θ_j, θ_j = base^(−2j/d). We pair dimension j with
    j + d/2 (the "rotate half" layout of GPT-NeoX), a fixed permutation of the paper's adjacent pairs.
    ``forward(q, k, offset=0)`` returns the rotated (q, k); keys may be longer than queries
    (queries are then taken to be the last positions, as in cached decoding).
    """

    def __init__(self, head_dim: int, *, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head_dim, got {head_dim}")
        self.head_dim, self.base = head_dim, base

    def angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the angles pos·θ_j, (T, d/2), computed in float64 (float32 loses ~1e-5 rad at
        position 1000) and returned in float32."""
        freqs = _frequencies(self.head_dim, self.base, positions.device)  # (d/2,)
        theta = positions.to(torch.float64)[:, None] * freqs[None, :]  # (T, d/2)
        return theta.cos().float(), theta.sin().float()

    def forward(self, q: torch.Tensor, k: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        t_q, t_k = q.shape[-2], k.shape[-2]
        positions = torch.arange(offset, offset + t_k, device=q.device)
        cos, sin = self.angles(positions)
        k = apply_rotary(k, cos.to(k.dtype), sin.to(k.dtype))
        q = apply_rotary(q, cos[t_k - t_q:].to(q.dtype), sin[t_k - t_q:].to(q.dtype))
        return q, k

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"

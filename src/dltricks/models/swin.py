"""Swin Transformer (Liu et al. 2021, "Swin Transformer: hierarchical vision transformer using shifted
windows").

Self-attention is computed inside non-overlapping M×M windows (cost linear in the image area instead of
quadratic), and every second block shifts the window grid by ⌊M/2⌋ so information crosses window borders:

    ẑ_l   = W-MSA(LN(z_{l−1})) + z_{l−1},      z_l   = MLP(LN(ẑ_l)) + ẑ_l          (eq. 3)
    ẑ_l+1 = SW-MSA(LN(z_l)) + z_l,             z_l+1 = MLP(LN(ẑ_l+1)) + ẑ_l+1

The shift is a cyclic roll of the feature map by (−M/2, −M/2); windows at the border then contain pixels
from opposite edges, which must not attend to each other: each pixel gets the label of the region it came
from and pairs with different labels get −100 added to their logits (the "attention mask"). Inside a
window attention adds a learned relative position bias B (eq. 4, :class:`RelativePositionBias`):
Attention(Q, K, V) = softmax(QKᵀ/√d + B)V. Between stages :class:`PatchMerging` concatenates 2×2
neighbours (4C) and projects them to 2C, halving the resolution.

``swin_tiny_patch4_window7_224``: C=96, depths (2, 2, 6, 2), heads (3, 6, 12, 24), window 7:
28,288,354 parameters at 1000 classes (as timm; tested). ``swin_cifar_patch2_window4_32``: 2×2 patches
of a 32×32 image, window 4, depths (2, 6, 2).

Any input size works: like the original, a stage whose map is not larger than the window uses one
window of the map's size and no shift; otherwise the map is padded to a multiple of the window and the
padding is masked out of attention (the detection variant pads without masking).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.layers.attention import attention
from dltricks.layers.drop import DropPath
from dltricks.layers.mlp import Mlp
from dltricks.layers.patch_embed import PatchEmbed
from dltricks.layers.position import RelativePositionBias
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

PAPER = "Liu et al., Swin Transformer: Hierarchical Vision Transformer using Shifted Windows, ICCV 2021"

__all__ = ["SwinTransformer", "SwinTransformerBlock", "WindowAttention", "PatchMerging", "window_partition",
           "window_reverse", "shifted_window_mask"]

MASK_VALUE = -100.0  # added to logits of pairs from different regions (as in the reference code)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of ``window`` -> (B·nW, window², C), windows in row-major order."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C)  # (B, nH, M, nW, M, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, C)  # (B*nH*nW, M*M, C)


def window_reverse(windows: torch.Tensor, window: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B·nW, window², C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window, W // window, window, window, C)  # (B, nH, nW, M, M, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def shifted_window_mask(H: int, W: int, window: int, shift: int, *, valid: tuple[int, int] | None = None,
                        device: torch.device | None = None) -> torch.Tensor | None:
    """Additive mask (nW, M², M²) for a padded (H, W) map cut into M×M windows after a roll by ``-shift``.

    Pixels are labelled by the region they came from (3×3 regions when shifted) and by whether they are
    padding (outside ``valid`` = the unpadded (h, w)); pairs with different labels get ``MASK_VALUE``.
    Returns ``None`` when no pair needs masking.
    """
    valid = valid or (H, W)
    if shift == 0 and tuple(valid) == (H, W):
        return None
    labels = torch.zeros(H, W, dtype=torch.long, device=device)
    if shift > 0:
        count = 0
        for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
                labels[hs, ws] = count
                count += 1
    # Padding is at the bottom/right before the roll; label it in unrolled coordinates, then roll.
    pad = torch.ones(H, W, dtype=torch.bool, device=device)
    pad[:valid[0], :valid[1]] = False
    pad = torch.roll(pad, shifts=(-shift, -shift), dims=(0, 1))
    labels = labels * 2 + pad.long()
    windows = window_partition(labels[None, :, :, None], window).squeeze(-1)  # (nW, M*M)
    different = windows[:, :, None] != windows[:, None, :]  # (nW, M*M, M*M)
    return torch.zeros(different.shape, device=device).masked_fill(different, MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with relative position bias.

    ``forward(x (B·nW, N, C), *, mask=(nW, N, N) or None, window=(h, w), need_weights=False)``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, *, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.rel_pos = RelativePositionBias(window_size, num_heads)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None, window: tuple[int, int] | None = None,
                need_weights: bool = False):
        Bw, N, C = x.shape
        # (B*nW, N, 3C) -> (3, B*nW, heads, N, d)
        q, k, v = self.qkv(x).view(Bw, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = self.rel_pos(window)  # (heads, N, N)
        if mask is not None:
            nW = mask.shape[0]
            # Group windows per image so the (nW, 1, N, N) mask broadcasts: (B, nW, heads, N, d)
            q, k, v = (t.view(Bw // nW, nW, self.num_heads, N, self.head_dim) for t in (q, k, v))
            bias = bias[None] + mask[:, None]  # (nW, heads, N, N)
        out, weights = attention(q, k, v, attn_mask=bias.to(q.dtype),
                                 dropout_p=self.attn_drop if self.training else 0.0, need_weights=need_weights)
        out = out.reshape(Bw, self.num_heads, N, self.head_dim).transpose(1, 2).reshape(Bw, N, C)
        out = self.proj_drop(self.proj(out))
        if need_weights:
            return out, weights.reshape(Bw, self.num_heads, N, N)
        return out


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention block on a channels-last map (B, H, W, C)."""

    def __init__(self, dim: int, num_heads: int, *, window_size: int = 7, shift_size: int = 0, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size), got {shift_size} for window {window_size}")
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path2 = DropPath(drop_path)
        self._mask_cache: dict[tuple, torch.Tensor | None] = {}

    def _window_and_shift(self, H: int, W: int) -> tuple[int, int]:
        # A map not larger than the window is one window and is not shifted (as the original code does).
        if min(H, W) <= self.window_size:
            return min(H, W), 0
        return self.window_size, self.shift_size

    def _mask(self, Hp: int, Wp: int, window: int, shift: int, valid: tuple[int, int],
              device: torch.device) -> torch.Tensor | None:
        key = (Hp, Wp, window, shift, valid, str(device))
        if key not in self._mask_cache:
            self._mask_cache[key] = shifted_window_mask(Hp, Wp, window, shift, valid=valid, device=device)
        return self._mask_cache[key]

    def _attend(self, x: torch.Tensor, need_weights: bool):
        B, H, W, C = x.shape
        window, shift = self._window_and_shift(H, W)
        Hp, Wp = -(-H // window) * window, -(-W // window) * window
        x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))  # pad bottom/right: (B, Hp, Wp, C)
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        mask = self._mask(Hp, Wp, window, shift, (H, W), x.device)
        windows = window_partition(x, window)  # (B*nW, M*M, C)
        out = self.attn(windows, mask=mask, window=(window, window), need_weights=need_weights)
        out, weights = out if need_weights else (out, None)
        x = window_reverse(out, window, Hp, Wp)  # (B, Hp, Wp, C)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        return x[:, :H, :W].contiguous(), weights

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        y, weights = self._attend(self.norm1(x), need_weights)
        x = x + self.drop_path1(y)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return (x, weights) if need_weights else x


class PatchMerging(nn.Module):
    """2×2 neighbours -> concatenation (4C) -> LayerNorm -> linear to 2C: (B, H, W, C) -> (B, ⌈H/2⌉, ⌈W/2⌉, 2C).
    Odd sizes are zero-padded."""

    def __init__(self, dim: int, *, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        # Order (0,0), (1,0), (0,1), (1,1) of the reference implementation: (B, H/2, W/2, 4C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, *, downsample: bool, window_size: int,
                 drop_path: Sequence[float], **block_kwargs) -> None:
        super().__init__()
        self.downsample = PatchMerging(dim // 2) if downsample else nn.Identity()
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, num_heads, window_size=window_size,
                                 shift_size=0 if i % 2 == 0 else window_size // 2, drop_path=drop_path[i],
                                 **block_kwargs)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x


class SwinTransformer(ClassifierMixin, nn.Module):
    """Hierarchical Transformer: patch embedding, stages of (shifted) window blocks with patch merging
    between them, final LayerNorm, average pooling, linear head.

    Args:
        embed_dim: C of the first stage (doubles at every stage), depths, num_heads per stage,
        window_size M, patch_size, mlp_ratio, drop_rate, attn_drop_rate, drop_path_rate (linear over all
        blocks, 0.2 for Swin-T in the paper).

    ``forward_features`` returns the final-normed channels-last map (B, H/32, W/32, 8C); ``forward_head``
    averages it over space (the pre-logit features) and applies ``head``.
    """

    head_attr = "head"

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, patch_size: int = 4,
                 embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} must have the same length")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, norm_layer=nn.LayerNorm, pad=True,
                                      flatten=False)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        stages, dim, start = [], embed_dim, 0
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            if i > 0:
                dim *= 2
            stages.append(SwinStage(dim, depth, heads, downsample=i > 0, window_size=window_size,
                                    drop_path=rates[start:start + depth], mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                    drop=drop_rate, attn_drop=attn_drop_rate))
            start += depth
        self.stages = nn.ModuleList(stages)
        self.num_features = dim
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"SwinTransformer expects input of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        x = self.pos_drop(self.patch_embed(x))  # (B, H/4, W/4, C)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)  # (B, H/32, W/32, 8C)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(1, 2))  # (B, 8C)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def get_attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Window attention weights of every block, each (B·nW, heads, M², M²)."""
        x = self.patch_embed(x)
        maps = []
        for stage in self.stages:
            x = stage.downsample(x)
            for block in stage.blocks:
                x, weights = block(x, need_weights=True)
                maps.append(weights)
        return maps


@register_model(input_size=(3, 224, 224), test_input_size=(3, 64, 64), min_input_size=None)
def swin_tiny_patch4_window7_224(*, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.2) -> SwinTransformer:
    """Swin-T: C=96, depths (2, 2, 6, 2), heads (3, 6, 12, 24), window 7; 28,288,354 parameters at 1000 classes."""
    return SwinTransformer(num_classes=num_classes, in_chans=in_chans, img_size=224, patch_size=4, embed_dim=96,
                           depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, drop_rate=drop_rate,
                           attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)


@register_model(input_size=(3, 32, 32), test_input_size=(3, 32, 32), min_input_size=None)
def swin_cifar_patch2_window4_32(*, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0,
                                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1) -> SwinTransformer:
    """Swin for 32×32 images: 2×2 patches (16×16 tokens), window 4, C=96, depths (2, 6, 2), heads (3, 6, 12)."""
    return SwinTransformer(num_classes=num_classes, in_chans=in_chans, img_size=32, patch_size=2, embed_dim=96,
                           depths=(2, 6, 2), num_heads=(3, 6, 12), window_size=4, drop_rate=drop_rate,
                           attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)

"""Vision Mamba (ViM; Zhu, Liao, Zhang, Wang, Liu & Wang 2024, "Vision Mamba: Efficient Visual
Representation Learning with Bidirectional State Space Model", ICML; Algorithm 1).

A plain (non-hierarchical) stack like ViT, with attention replaced by a bidirectional Mamba mixer:

    tokens = PatchEmbed_16×16(image)                      (B, M, D), row-major patch order
    t      = [tokens[:M/2], cls, tokens[M/2:]] + pos        class token in the middle, absolute positions
    t      = t + DropPath(BiMamba(RMSNorm(t)))  × depth    shared in/out projections, forward and
                                                           backward SSM branches averaged
    logits = Linear(RMSNorm(t)[middle])                    classify from the middle class token

The official "bimamba v2" layout is followed: each block has one ``in_proj``/``out_proj`` and two
directional branches with their own conv1d, x_proj, dt_proj, A and D (see
:class:`~dltricks.layers.ssm.BiMamba`); RMSNorm (eps 1e-5); out_proj weights re-scaled by 1/√depth
at initialisation as in ``mamba_ssm``. Putting the class token in the middle lets both scan
directions reach it after about M/2 steps; the paper reports +0.4 % top-1 for it over a head token.

``vim_tiny`` (D 192) and ``vim_small`` (D 384), depth 24, patch 16, 224×224: 7.1 M and 25.8 M
parameters (paper: 7 M and 26 M; 76.1 % and 80.5 % ImageNet top-1). Other input sizes resample the
position table bicubically. ``vim_tiny_cifar`` uses 4×4 patches on 32×32 images.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dltricks.layers.patch_embed import PatchEmbed
from dltricks.layers.position import resample_abs_pos_embed
from dltricks.layers.ssm.mamba import BiMamba, MambaBlock
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

__all__ = ["VisionMamba"]

PAPER = ("Zhu et al., Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space "
         "Model (ICML 2024), arXiv:2401.09417")


class VisionMamba(ClassifierMixin, nn.Module):
    """ViM classifier (module docstring).

    ``forward_features`` returns the final-normed token sequence (B, M + 1, D) with the class token at
    index ``M // 2``; ``forward_head`` takes that token, applies the head dropout (the pre-logit
    features) and ``head``.

    Args:
        img_size, patch_size, in_chans: native input and patching; other sizes that are multiples of the
            patch size work through position-table resampling.
        embed_dim, depth: width D and number of blocks.
        d_state, expand: SSM states per channel and inner expansion of the bidirectional mixer.
        drop_rate: dropout after adding positions and before the head; drop_path_rate: stochastic depth
            rising linearly to this value.
        scan_impl: selective-scan implementation (see :func:`~dltricks.layers.ssm.selective_scan`).
    """

    head_attr = "head"

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 192, depth: int = 24, d_state: int = 16, expand: float = 2,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, scan_impl: str = "auto") -> None:
        super().__init__()
        self.in_chans, self.num_classes, self.num_features = in_chans, num_classes, embed_dim
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Position table stored as [class token, grid row-major]; the class token's row is added to the
        # class token before it is inserted in the middle (same sum as the official in-sequence layout).
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList([
            MambaBlock(embed_dim, BiMamba(embed_dim, d_state=d_state, expand=expand, scan_impl=scan_impl),
                       norm="rms", drop_path=rates[i]) for i in range(depth)])
        self.norm = nn.RMSNorm(embed_dim, eps=1e-5)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(depth)

    def _init_weights(self, depth: int) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for name, p in self.blocks.named_parameters():
            if name.endswith("out_proj.weight"):  # mamba_ssm: kaiming-uniform, then / sqrt(number of residuals)
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                with torch.no_grad():
                    p /= math.sqrt(depth)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)

    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        return resample_abs_pos_embed(self.pos_embed, grid, self.grid_size, num_prefix_tokens=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final-normed tokens (B, M + 1, D), class token at index M // 2."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"VisionMamba expects input (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.patch_size:
            raise ValueError(f"VisionMamba needs input of at least {self.patch_size}x{self.patch_size} pixels "
                             f"(one patch), got {x.shape[-2]}x{x.shape[-1]}")
        tokens = self.patch_embed(x)  # (B, M, D)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        pos = self._pos_embed(grid)  # (1, 1 + M, D)
        tokens = tokens + pos[:, 1:]
        cls = (self.cls_token + pos[:, :1]).expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        middle = tokens.shape[1] // 2
        x = torch.cat([tokens[:, :middle], cls, tokens[:, middle:]], dim=1)  # (B, M + 1, D)
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # RMSNorm acts per token, so this is the norm of each token alone

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, (x.shape[1] - 1) // 2])  # the middle class token: (B, D)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_IMAGENET = dict(paper=PAPER, input_size=(3, 224, 224), test_input_size=(3, 32, 32), min_input_size=16)


@register_model(**_IMAGENET)
def vim_tiny(*, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, drop_path_rate: float = 0.0,
             **kwargs) -> VisionMamba:
    """Vim-Ti: D 192, depth 24, patch 16 (7.1 M parameters)."""
    return VisionMamba(img_size=img_size, patch_size=16, in_chans=in_chans, num_classes=num_classes, embed_dim=192,
                       depth=24, drop_path_rate=drop_path_rate, **kwargs)


@register_model(**_IMAGENET)
def vim_small(*, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, drop_path_rate: float = 0.05,
              **kwargs) -> VisionMamba:
    """Vim-S: D 384, depth 24, patch 16 (25.8 M parameters)."""
    return VisionMamba(img_size=img_size, patch_size=16, in_chans=in_chans, num_classes=num_classes, embed_dim=384,
                       depth=24, drop_path_rate=drop_path_rate, **kwargs)


@register_model(paper=PAPER, input_size=(3, 32, 32), test_input_size=(3, 16, 16), min_input_size=4)
def vim_tiny_cifar(*, num_classes: int = 10, in_chans: int = 3, img_size: int = 32, drop_path_rate: float = 0.0,
                   **kwargs) -> VisionMamba:
    """Vim-Ti for 32×32 images: 4×4 patches (64 tokens + class token), D 192, depth 12."""
    kwargs.setdefault("embed_dim", 192)
    kwargs.setdefault("depth", 12)
    return VisionMamba(img_size=img_size, patch_size=4, in_chans=in_chans, num_classes=num_classes,
                       drop_path_rate=drop_path_rate, **kwargs)

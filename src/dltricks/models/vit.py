"""Vision Transformer (Dosovitskiy et al. 2021, "An image is worth 16x16 words"), a CIFAR ViT and
hybrid convolution-stem ViTs.

    z_0 = [x_class; x_p¹E; …; x_pᴺE] + E_pos              (eq. 1: patches -> tokens, class token, positions)
    z'_l = z_{l−1} + MSA(LN(z_{l−1}))                       (eq. 2: pre-LN self-attention)
    z_l  = z'_l + MLP(LN(z'_l))                              (eq. 3)
    y    = head(LN(z_L⁰))                                    (eq. 4: the class token's final state)

Registered: ``vit_tiny/small/base_patch16_224`` (DeiT / ViT sizes; parameter counts at 1000 classes
5,717,416 / 22,050,664 / 86,567,656, equal to timm's, tested), ``vit_cifar_patch4_32`` (4×4 patches
of a 32×32 image: 64 tokens), and two hybrids with a convolutional stem instead of the patchify
layer (Xiao et al. 2021, "Early convolutions help transformers see better"): ``vit_hybrid_cifar``
(stride-4 stem, 8×8 tokens) and ``vit_small_convstem_224`` (their ViT_C stem of four 3×3 stride-2
convolutions and one 1×1 convolution, with one Transformer block fewer to keep the compute).

Input sizes: the position table is learned for ``img_size``; another size (a multiple of the patch
size) resamples it bicubically on the fly, as for fine-tuning at higher resolution (sec. 3.2), so the
224-px models also run on small test images. ``get_attention_maps`` returns every block's weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from dltricks.layers.patch_embed import ConvStem, PatchEmbed
from dltricks.layers.position import resample_abs_pos_embed
from dltricks.layers.transformer import TransformerEncoderLayer
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

PAPER = "Dosovitskiy et al., An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale, ICLR 2021"

__all__ = ["VisionTransformer"]


class VisionTransformer(ClassifierMixin, nn.Module):
    """ViT with a patch or convolutional stem, a class token (or mean pooling) and pre-LN blocks.

    Args:
        img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio: the usual.
        qkv_bias: biases in the q/k/v projection.
        drop_rate, attn_drop_rate, drop_path_rate: dropout after sub-layers, on attention weights and
            stochastic depth (linearly increasing with depth).
        class_token: prepend a learned class token; ``global_pool`` chooses ``"token"`` (its final
            state) or ``"avg"`` (mean of the patch tokens).
        stem: ``"patch"`` (P×P linear projection) or ``"conv"`` (:class:`ConvStem` with ``stem_widths``;
            the token stride is 2^len(stem_widths)).

    ``forward_features`` returns the final-normed tokens (B, prefix + N, D); ``forward_head`` pools them
    (class token or mean), applies the head dropout (the pre-logit features) and ``head``.
    """

    head_attr = "head"

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, class_token: bool = True, global_pool: str = "token",
                 stem: str = "patch", stem_widths: Sequence[int] = (48, 96, 192, 384)) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        self.num_classes, self.in_chans, self.embed_dim = num_classes, in_chans, embed_dim
        self.num_features = embed_dim
        self.global_pool = global_pool
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        if stem == "patch":
            self.patch_embed: nn.Module = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
            self.stride = patch_size
        elif stem == "conv":
            self.patch_embed = ConvStem(in_chans, embed_dim, widths=stem_widths)
            self.stride = self.patch_embed.stride
        else:
            raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")
        self.grid_size = (img_size // self.stride, img_size // self.stride)
        self.num_prefix_tokens = 1 if class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        num_tokens = self.grid_size[0] * self.grid_size[1] + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList([
            TransformerEncoderLayer(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                                    attn_drop=attn_drop_rate, drop_path=rates[i], norm_first=True,
                                    norm_layer=norm_layer) for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # Truncated normal(0.02) for positions and linear layers, zero biases (timm / DeiT recipe).
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"VisionTransformer expects input of shape (B, {self.in_chans}, H, W), "
                             f"got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        if isinstance(self.patch_embed, PatchEmbed) and (H % self.stride or W % self.stride):
            raise ValueError(f"VisionTransformer needs input height and width that are multiples of the patch size "
                             f"{self.stride} (at least {self.stride}), got {H}x{W}")
        if isinstance(self.patch_embed, ConvStem) and min(H, W) < self.stride:
            raise ValueError(f"VisionTransformer with a stride-{self.stride} stem needs input of at least "
                             f"{self.stride}x{self.stride} pixels, got {H}x{W}")
        x = self.patch_embed(x)  # (B, N, D)
        grid = (-(-H // self.stride), -(-W // self.stride))
        pos = resample_abs_pos_embed(self.pos_embed, grid, self.grid_size, num_prefix_tokens=self.num_prefix_tokens)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, D)
        return self.pos_drop(x + pos)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._tokens(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # (B, prefix + N, D)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens:].mean(dim=1)  # (B, D)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def get_attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of every block, each (B, heads, prefix + N, prefix + N)."""
        x = self._tokens(x)
        maps = []
        for block in self.blocks:
            x, weights = block(x, need_weights=True)
            maps.append(weights)
        return maps


def _vit(**kwargs) -> VisionTransformer:
    return VisionTransformer(**kwargs)


@register_model(input_size=(3, 224, 224), test_input_size=(3, 32, 32), min_input_size=16)
def vit_tiny_patch16_224(*, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, drop_rate: float = 0.0,
                         attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> VisionTransformer:
    """ViT-Ti/16 (DeiT-Ti): D=192, 12 blocks, 3 heads; 5,717,416 parameters at 1000 classes."""
    return _vit(num_classes=num_classes, in_chans=in_chans, img_size=img_size, patch_size=16, embed_dim=192, depth=12,
                num_heads=3, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)


@register_model(input_size=(3, 224, 224), test_input_size=(3, 32, 32), min_input_size=16)
def vit_small_patch16_224(*, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, drop_rate: float = 0.0,
                          attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> VisionTransformer:
    """ViT-S/16 (DeiT-S): D=384, 12 blocks, 6 heads; 22,050,664 parameters at 1000 classes."""
    return _vit(num_classes=num_classes, in_chans=in_chans, img_size=img_size, patch_size=16, embed_dim=384, depth=12,
                num_heads=6, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)


@register_model(input_size=(3, 224, 224), test_input_size=(3, 32, 32), min_input_size=16)
def vit_base_patch16_224(*, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, drop_rate: float = 0.0,
                         attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> VisionTransformer:
    """ViT-B/16: D=768, 12 blocks, 12 heads; 86,567,656 parameters at 1000 classes."""
    return _vit(num_classes=num_classes, in_chans=in_chans, img_size=img_size, patch_size=16, embed_dim=768, depth=12,
                num_heads=12, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)


@register_model(input_size=(3, 32, 32), test_input_size=(3, 32, 32), min_input_size=4)
def vit_cifar_patch4_32(*, num_classes: int = 10, in_chans: int = 3, img_size: int = 32, drop_rate: float = 0.0,
                        attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1) -> VisionTransformer:
    """ViT for 32×32 images: 4×4 patches (64 tokens), D=256, 6 blocks, 8 heads, MLP ratio 2 (3.2 M parameters)."""
    return _vit(num_classes=num_classes, in_chans=in_chans, img_size=img_size, patch_size=4, embed_dim=256, depth=6,
                num_heads=8, mlp_ratio=2.0, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                drop_path_rate=drop_path_rate)


@register_model(input_size=(3, 32, 32), test_input_size=(3, 32, 32), min_input_size=4)
def vit_hybrid_cifar(*, num_classes: int = 10, in_chans: int = 3, img_size: int = 32, drop_rate: float = 0.0,
                     attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1) -> VisionTransformer:
    """Hybrid CNN + Transformer for 32×32 images: two 3×3 stride-2 conv-BN-ReLU layers (32, 64 channels) and a
    1×1 projection give 8×8 tokens, then the Transformer of ``vit_cifar_patch4_32`` with mean pooling."""
    return _vit(num_classes=num_classes, in_chans=in_chans, img_size=img_size, stem="conv", stem_widths=(32, 64),
                embed_dim=256, depth=6, num_heads=8, mlp_ratio=2.0, class_token=False, global_pool="avg",
                drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)


@register_model(input_size=(3, 224, 224), test_input_size=(3, 32, 32), min_input_size=16,
                paper="Xiao et al., Early Convolutions Help Transformers See Better, NeurIPS 2021")
def vit_small_convstem_224(*, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224,
                           drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                           drop_path_rate: float = 0.0) -> VisionTransformer:
    """ViT_C-S: the convolutional stem of Xiao et al. (3×3 stride-2 convs with 48, 96, 192, 384 channels,
    BN-ReLU, then 1×1 to D=384) replacing the 16×16 patchify layer, and 11 instead of 12 blocks."""
    return _vit(num_classes=num_classes, in_chans=in_chans, img_size=img_size, stem="conv",
                stem_widths=(48, 96, 192, 384), embed_dim=384, depth=11, num_heads=6, drop_rate=drop_rate,
                attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)

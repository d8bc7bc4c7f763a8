"""MLP-Mixer (Tolstikhin et al. 2021, "MLP-Mixer: an all-MLP architecture for vision").

No attention and no convolution beyond the patch projection: each block mixes information across
tokens with an MLP applied to every channel (the same weights for all channels), then across channels
with an MLP applied to every token (eq. 1):

    U = X + W₂ σ(W₁ LN(X)ᵀ)ᵀ          token mixing: MLP over the N patches, shared by the C channels
    Y = U + W₄ σ(W₃ LN(U))            channel mixing: MLP over the C channels, shared by the N patches

The token-mixing MLP has a weight per (patch, patch) pair, so the number of patches - hence the input
size - is fixed at construction: another input size raises a ``ValueError``.

``mixer_b16_224``: 16×16 patches, C=768, 12 blocks, token MLP 384, channel MLP 3072: 59,880,472
parameters at 1000 classes (tested). ``mixer_cifar_patch4_32``: 4×4 patches of 32×32 images (64 tokens),
C=256, 8 blocks, token MLP 128, channel MLP 1024.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from dltricks.layers.drop import DropPath
from dltricks.layers.mlp import Mlp
from dltricks.layers.patch_embed import PatchEmbed
from dltricks.models._classifier import ClassifierMixin
from dltricks.models._registry import register_model

PAPER = "Tolstikhin et al., MLP-Mixer: An all-MLP Architecture for Vision, NeurIPS 2021"

__all__ = ["MixerBlock", "MlpMixer"]


class MixerBlock(nn.Module):
    """Token mixing then channel mixing, each pre-LN with a residual; x: (B, N, C)."""

    def __init__(self, dim: int, num_tokens: int, *, tokens_dim: int, channels_dim: int, drop: float = 0.0,
                 drop_path: float = 0.0, act_layer: Callable[[], nn.Module] = nn.GELU,
                 norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6)) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.mlp_tokens = Mlp(num_tokens, tokens_dim, act_layer=act_layer, drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp_channels = Mlp(dim, channels_dim, act_layer=act_layer, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Token mixing acts along N: (B, N, C) -> (B, C, N) -> MLP over N -> (B, N, C)
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2))
        x = x + self.drop_path(self.mlp_channels(self.norm2(x)))
        return x


class MlpMixer(ClassifierMixin, nn.Module):
    """Patch embedding -> ``depth`` Mixer blocks -> LayerNorm -> mean over tokens -> linear head.

    ``forward_features`` returns the normed tokens (B, N, C); ``forward_head`` averages them, applies the
    head dropout (the pre-logit features) and ``head``.
    """

    head_attr = "head"

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, patch_size: int = 16,
                 embed_dim: int = 768, depth: int = 12, mlp_ratio: tuple[float, float] = (0.5, 4.0),
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        self.num_features = embed_dim
        self.stem = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_tokens = self.stem.num_patches
        tokens_dim, channels_dim = int(mlp_ratio[0] * embed_dim), int(mlp_ratio[1] * embed_dim)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(*[
            MixerBlock(embed_dim, num_tokens, tokens_dim=tokens_dim, channels_dim=channels_dim, drop=drop_rate,
                       drop_path=rates[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name == "head":
                    nn.init.zeros_(m.weight)  # the paper's zero-initialised head
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.normal_(m.bias, std=1e-6) if "mlp" in name else nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_chans, self.img_size, self.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"MlpMixer's token-mixing MLPs are built for input of exactly "
                             f"{self.img_size}x{self.img_size} pixels (B, {self.in_chans}, {self.img_size}, "
                             f"{self.img_size}), got {tuple(x.shape)}; build it with img_size= to change")
        x = self.stem(x)  # (B, N, C)
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=1))  # (B, C)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(input_size=(3, 224, 224), test_input_size=(3, 224, 224), min_input_size=224)
def mixer_b16_224(*, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, drop_rate: float = 0.0,
                  drop_path_rate: float = 0.0) -> MlpMixer:
    """Mixer-B/16: C=768, 12 blocks, token MLP 384, channel MLP 3072; 59,880,472 parameters at 1000 classes."""
    return MlpMixer(num_classes=num_classes, in_chans=in_chans, img_size=img_size, patch_size=16, embed_dim=768,
                    depth=12, drop_rate=drop_rate, drop_path_rate=drop_path_rate)


@register_model(input_size=(3, 32, 32), test_input_size=(3, 32, 32), min_input_size=32)
def mixer_cifar_patch4_32(*, num_classes: int = 10, in_chans: int = 3, img_size: int = 32, drop_rate: float = 0.0,
                          drop_path_rate: float = 0.1) -> MlpMixer:
    """Mixer for 32×32 images: 4×4 patches (64 tokens), C=256, 8 blocks, token MLP 128, channel MLP 1024."""
    return MlpMixer(num_classes=num_classes, in_chans=in_chans, img_size=img_size, patch_size=4, embed_dim=256,
                    depth=8, drop_rate=drop_rate, drop_path_rate=drop_path_rate)

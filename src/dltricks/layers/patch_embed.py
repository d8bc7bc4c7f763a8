"""Turning an image into a sequence of tokens.

* :class:`PatchEmbed` (Dosovitskiy et al. 2021, eq. 1): cut the image into non-overlapping P×P
  patches and project each linearly to D dimensions - a P×P convolution with stride P.
  (B, C, H, W) -> (B, H/P · W/P, D), row-major over the patch grid.
* :class:`ConvStem` (Xiao et al. 2021, "Early convolutions help transformers see better"): replace the
  patchify convolution by a few 3×3 stride-2 conv-BN-ReLU layers and a final 1×1 projection; the
  "hybrid" convolution + Transformer design. Xiao et al. report more stable training (less
  sensitivity to the learning rate and optimiser) and +1-2 % ImageNet top-1 at equal FLOPs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchEmbed", "ConvStem"]


def _pair(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


class PatchEmbed(nn.Module):
    """P×P patches -> linear projection to ``embed_dim`` (+ optional norm).

    Args:
        img_size: the native input size (sets :attr:`grid_size` and :attr:`num_patches`).
        patch_size: P.
        pad: pad inputs on the right/bottom to a multiple of P (Swin); otherwise a size that is not a
            multiple of P raises a ``ValueError``.
        flatten: return tokens (B, N, D); otherwise a channels-last grid (B, H/P, W/P, D).

    ``forward`` returns the tokens; :attr:`last_grid` holds the (H/P, W/P) grid of the last call.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int | tuple[int, int] = 16, in_chans: int = 3,
                 embed_dim: int = 768, *, norm_layer: Callable[[int], nn.Module] | None = None, bias: bool = True,
                 pad: bool = False, flatten: bool = True) -> None:
        super().__init__()
        self.img_size, self.patch_size = _pair(img_size), _pair(patch_size)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans, self.pad, self.flatten = in_chans, pad, flatten
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.patch_size
        H, W = x.shape[-2:]
        if H % ph or W % pw:
            if not self.pad:
                raise ValueError(f"input of {H}x{W} pixels is not a multiple of the patch size {ph}x{pw}; "
                                 f"use an input size divisible by {ph}")
            x = F.pad(x, (0, (-W) % pw, 0, (-H) % ph))
        x = self.proj(x)  # (B, D, H/P, W/P)
        x = x.permute(0, 2, 3, 1)  # (B, H/P, W/P, D)
        x = self.norm(x)
        if self.flatten:
            x = x.flatten(1, 2)  # (B, N, D)
        return x


class ConvStem(nn.Module):
    """Stride-2 3×3 conv-BN-ReLU layers, then a 1×1 conv to ``embed_dim``: a patch embedding with total
    stride 2^len(widths) (Xiao et al. 2021 use widths (48, 96, 192, 384) for stride 16).

    Output: tokens (B, N, D), or a channels-last grid (B, H/s, W/s, D) with ``flatten=False``.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 384, *, widths: Sequence[int] = (48, 96, 192, 384),
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 act_layer: Callable[[], nn.Module] = nn.ReLU, flatten: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_chans
        for width in widths:
            layers += [nn.Conv2d(c_in, width, 3, stride=2, padding=1, bias=False), norm_layer(width), act_layer()]
            c_in = width
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c_in, embed_dim, 1)
        self.stride = 2 ** len(widths)
        self.in_chans, self.flatten = in_chans, flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.stem(x))  # (B, D, H/s, W/s)
        x = x.permute(0, 2, 3, 1)  # (B, H/s, W/s, D)
        return x.flatten(1, 2) if self.flatten else x  # (B, N, D)

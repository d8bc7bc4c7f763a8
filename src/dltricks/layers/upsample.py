"""Learned and unlearned upsampling: transposed convolution, resize + convolution, max-unpooling.

* **Transposed convolution** ("deconvolution", fractionally strided conv; Long, Shelhamer & Darrell,
  FCN, CVPR 2015; Zeiler et al. 2011): the gradient of a strided conv. It equals inserting ``s - 1`` zeros
  between input pixels and running an ordinary conv with the flipped kernel (tested). When the kernel
  size is not divisible by the stride, output pixels receive different numbers of kernel taps and the
  output shows a **checkerboard** pattern (Odena, Dumoulin & Olah, "Deconvolution and Checkerboard
  Artifacts", Distill 2016); ``kernel_size == stride`` (the default here) or a multiple of it avoids the
  uneven overlap.
* **Resize + convolution** (Odena et al.'s fix): nearest or bilinear upsampling, then a normal conv. Every
  output pixel sees the same number of taps, so no checkerboard by construction.
* **Max-unpooling** (SegNet, Badrinarayanan, Kendall & Cipolla, TPAMI 2017): the encoder's max-pool keeps
  the argmax positions; the decoder puts each value back at its position and zeros elsewhere - exact
  boundary locations for free, no learned weights (SegNet's decoder then densifies with convs).

:func:`checkerboard_score` measures the artifact: how much the ``s x s`` sub-grids of an upsampled map
differ on average, relative to the map's scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TransposedConvUpsample", "ResizeConvUpsample", "MaxPoolWithIndices", "MaxUnpool", "make_upsample",
           "checkerboard_score", "UPSAMPLE_MODES"]


class TransposedConvUpsample(nn.Module):
    """``ConvTranspose2d`` that maps H x W to exactly ``scale * H x scale * W``.

    ``kernel_size`` defaults to ``scale`` (non-overlapping taps). Padding and output padding are chosen
    so that ``(H - 1) * s - 2p + k + op = s * H``: ``p = ceil((k - s) / 2)``, ``op = s - k + 2p``.
    ``output_size`` in ``forward`` picks a size up to ``s - 1`` pixels larger (odd skip connections);
    sizes out of reach are left to the caller (pad or crop).
    """

    def __init__(self, in_chs: int, out_chs: int, scale: int = 2, *, kernel_size: int | None = None,
                 bias: bool = True) -> None:
        super().__init__()
        k = kernel_size or scale
        if k < scale:
            raise ValueError(f"kernel_size ({k}) must be at least the scale ({scale})")
        padding = math.ceil((k - scale) / 2)
        output_padding = scale - k + 2 * padding
        self.conv = nn.ConvTranspose2d(in_chs, out_chs, k, stride=scale, padding=padding,
                                       output_padding=output_padding, bias=bias)
        self.scale, self.kernel_size, self.padding = scale, k, padding

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None,
                output_size: tuple[int, int] | None = None) -> torch.Tensor:
        if output_size is not None:
            # Reachable sizes: (H - 1) * s - 2p + k + op with 0 <= op < s.
            low = [(n - 1) * self.scale - 2 * self.padding + self.kernel_size for n in x.shape[-2:]]
            if all(lo <= int(t) < lo + self.scale for lo, t in zip(low, output_size)):
                return self.conv(x, output_size=list(output_size))  # (B, C_out, *output_size)
        return self.conv(x)  # (B, C_out, s*H, s*W)


class ResizeConvUpsample(nn.Module):
    """Interpolate by ``scale`` (``"nearest"`` or ``"bilinear"``), then a ``kernel_size`` conv with same padding."""

    def __init__(self, in_chs: int, out_chs: int, scale: int = 2, *, mode: str = "nearest", kernel_size: int = 3,
                 bias: bool = True) -> None:
        super().__init__()
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
        self.scale, self.mode = scale, mode
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=bias)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None,
                output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Upsample to ``output_size`` if given (e.g. a skip connection's odd size), else by ``scale``."""
        align = False if self.mode == "bilinear" else None
        if output_size is None:
            x = F.interpolate(x, scale_factor=self.scale, mode=self.mode, align_corners=align)
        else:
            x = F.interpolate(x, size=tuple(output_size), mode=self.mode, align_corners=align)
        return self.conv(x)  # (B, C_out, s*H, s*W)


class MaxPoolWithIndices(nn.Module):
    """Max-pooling that also returns the flat argmax positions needed by :class:`MaxUnpool`."""

    def __init__(self, kernel_size: int = 2, stride: int | None = None) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride or kernel_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.max_pool2d(x, self.kernel_size, self.stride, return_indices=True)  # values, indices (B, C, H', W')


class MaxUnpool(nn.Module):
    """SegNet upsampling: [1x1 conv to the pooled map's channels,] unpool with its indices, [k x k conv].

    Args:
        in_chs, out_chs: a 1x1 conv maps ``in_chs`` to ``out_chs`` first when they differ (the indices
            belong to a map with ``out_chs`` channels).
        scale: the pooling's kernel and stride.
        kernel_size: a conv with same padding after unpooling to densify the sparse map (SegNet's decoder);
            0 (default) leaves the sparse map to the caller's next layers.
    """

    def __init__(self, in_chs: int, out_chs: int | None = None, scale: int = 2, *, kernel_size: int = 0) -> None:
        super().__init__()
        out_chs = out_chs or in_chs
        self.scale = scale
        self.proj = nn.Conv2d(in_chs, out_chs, 1) if in_chs != out_chs else nn.Identity()
        self.conv = nn.Conv2d(out_chs, out_chs, kernel_size, padding=kernel_size // 2) if kernel_size else nn.Identity()

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None,
                output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """``indices`` from :class:`MaxPoolWithIndices`; ``output_size`` (H, W) restores odd sizes."""
        if indices is None:
            raise ValueError("max-unpooling needs the indices returned by the matching max-pool")
        x = self.proj(x)  # (B, C_out, H, W): channels of the map the indices came from
        x = F.max_unpool2d(x, indices, self.scale, self.scale,
                           output_size=None if output_size is None else tuple(output_size))  # (B, C_out, sH, sW)
        return self.conv(x)


UPSAMPLE_MODES = ("transposed", "bilinear", "nearest", "unpool")


def make_upsample(mode: str, in_chs: int, out_chs: int, scale: int = 2, *, kernel_size: int | None = None) -> nn.Module:
    """An upsampling block by name; every one is called as ``up(x, indices=None, output_size=None)``.

    ``"transposed"``: transposed conv (``kernel_size`` default ``scale``); ``"bilinear"`` / ``"nearest"``:
    resize + conv (``kernel_size`` default 3); ``"unpool"``: :class:`MaxUnpool` (``kernel_size`` default 0).
    """
    if mode == "transposed":
        return TransposedConvUpsample(in_chs, out_chs, scale, kernel_size=kernel_size)
    if mode in ("nearest", "bilinear"):
        return ResizeConvUpsample(in_chs, out_chs, scale, mode=mode, kernel_size=kernel_size or 3)
    if mode == "unpool":
        return MaxUnpool(in_chs, out_chs, scale, kernel_size=kernel_size or 0)
    raise ValueError(f"unknown upsampling {mode!r}: choose from {', '.join(UPSAMPLE_MODES)}")


def checkerboard_score(y: torch.Tensor, stride: int = 2, *, border: int = 2) -> float:
    """Relative spread of the ``stride x stride`` phase sub-grids of ``y`` (B, C, H, W).

    For each phase (i, j) the mean of ``y[..., i::s, j::s]`` is taken per (sample, channel) over the
    interior (``border`` pixels cropped); the score is the standard deviation of those s^2 phase means
    divided by the mean absolute value of the interior. A checkerboard gives a large score; an output
    whose every pixel is computed the same way gives about 0 on smooth inputs.
    """
    y = y.detach()
    if border:
        y = y[..., border:-border, border:-border]
    phases = [y[..., i::stride, j::stride].mean(dim=(-2, -1)) for i in range(stride) for j in range(stride)]
    phase_means = torch.stack(phases, dim=-1)  # (B, C, s*s)
    spread = phase_means.std(dim=-1, unbiased=False).mean()
    scale = y.abs().mean().clamp_min(1e-12)
    return float(spread / scale)

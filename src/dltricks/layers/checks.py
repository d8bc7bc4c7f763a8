"""Input checks that turn deep shape errors into one clear message at the model's entrance."""

from __future__ import annotations

import torch


def check_image_input(x: torch.Tensor, *, in_chans: int, min_size: int, model: str) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(B, in_chans, H, W)`` with ``H, W >= min_size``."""
    if x.dim() != 4:
        raise ValueError(f"{model} expects input of shape (B, {in_chans}, H, W), got {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"{model} expects input with {in_chans} channels, got {x.shape[1]} "
                         f"(input shape {tuple(x.shape)}); build it with in_chans={x.shape[1]}")
    if min(x.shape[-2:]) < min_size:
        raise ValueError(f"{model} needs input of at least {min_size}x{min_size} pixels, got "
                         f"{x.shape[-2]}x{x.shape[-1]}")

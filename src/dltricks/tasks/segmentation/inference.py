"""Sliding-window inference for images larger than a model was trained on, test-time flips, PNG masks.

A fully convolutional model accepts any size, but memory grows with the image and a model trained on
256-pixel crops has only ever seen that context. Sliding-window inference cuts the image into
overlapping ``window x window`` tiles (the last tile of each row/column aligned with the border), runs
the model on batches of tiles and blends the tile logits back with per-pixel weights:

    logits(x) = sum_t w_t(x) z_t(x) / sum_t w_t(x)

``weighting="gaussian"`` uses a Gaussian centred on each tile (sigma = window / 8, as nnU-Net does), so
pixels near a tile's border - where the model saw the least context and the zero padding of its
convolutions - count less; ``"uniform"`` averages. Images smaller than the window are reflect-padded.
``tta=True`` also averages over the 8 flips/90-degree rotations of each tile (the dihedral group, the
augmentations the ISBI model was trained with), undoing each transform on the logits before blending.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dltricks.tasks.segmentation.losses import segmentation_logits
from dltricks.utils.io import atomic_write_bytes

__all__ = ["tile_starts", "gaussian_window", "dihedral", "dihedral_inverse", "predict_sliding_window",
           "save_mask_png", "mask_to_png_bytes"]


def tile_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets covering ``[0, length)`` with tiles of ``window``; the last one ends at ``length``."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def gaussian_window(window: int, *, sigma_scale: float = 1 / 8, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(window, window)`` Gaussian weights with sigma ``window * sigma_scale``, max 1, min clamped > 0."""
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-0.5 * (coords / (window * sigma_scale)) ** 2)
    w = torch.outer(g, g)
    w = w / w.max()
    return w.clamp_min(1e-3).to(dtype)  # pixels covered by one tile only must keep a non-zero weight


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th of the 8 dihedral transforms of the last two dims: ``k % 4`` quarter turns, flipped if
    ``k >= 4``."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    """Undo :func:`dihedral` ``k``."""
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, -(k % 4), dims=(-2, -1))


def _tiles(height: int, width: int, window: int, stride: int) -> Iterator[tuple[int, int]]:
    for top in tile_starts(height, window, stride):
        for left in tile_starts(width, window, stride):
            yield top, left


@torch.no_grad()
def predict_sliding_window(model: nn.Module, image: torch.Tensor, *, window: int = 256, overlap: float = 0.5,
                           batch_size: int = 4, weighting: str = "gaussian", tta: bool = False) -> torch.Tensor:
    """Blended logits ``(B, K, H, W)`` of ``model`` over overlapping ``window`` tiles of ``image`` ``(B, C, H, W)``.

    Args:
        window: tile side in pixels.
        overlap: fraction of a tile shared with its neighbour (0.5: stride = window / 2).
        batch_size: tiles per forward pass.
        weighting: ``"gaussian"`` or ``"uniform"`` blending.
        tta: average over the 8 dihedral transforms of every tile (8x the compute).

    The model is run in its current mode (call ``model.eval()`` first).
    """
    if image.dim() != 4:
        raise ValueError(f"expected an image batch (B, C, H, W), got {tuple(image.shape)}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if weighting not in ("gaussian", "uniform"):
        raise ValueError(f"weighting must be 'gaussian' or 'uniform', got {weighting!r}")
    B, _, H, W = image.shape
    # Reflect-pad images smaller than the window (reflection needs pad < size; fall back to replicate).
    pad_h, pad_w = max(0, window - H), max(0, window - W)
    if pad_h or pad_w:
        mode = "reflect" if pad_h < H and pad_w < W else "replicate"
        image = F.pad(image, (0, pad_w, 0, pad_h), mode=mode)
    Hp, Wp = image.shape[-2:]
    stride = max(1, int(round(window * (1 - overlap))))
    weight = (gaussian_window(window) if weighting == "gaussian" else torch.ones(window, window)).to(image.device)
    positions = list(_tiles(Hp, Wp, window, stride))
    transforms = range(8) if tta else range(1)

    out: torch.Tensor | None = None
    norm = torch.zeros(1, 1, Hp, Wp, device=image.device)
    for top, left in positions:
        norm[..., top:top + window, left:left + window] += weight
    for start in range(0, len(positions), batch_size):
        chunk = positions[start:start + batch_size]
        # (n * B, C, win, win)
        tiles = torch.cat([image[:, :, top:top + window, left:left + window] for top, left in chunk])
        logits = 0
        for k in transforms:
            z = segmentation_logits(model(dihedral(tiles, k)))  # (n * B, K, win, win)
            logits = logits + dihedral_inverse(z.float(), k)
        logits = logits / len(transforms)
        if out is None:
            out = torch.zeros(B, logits.shape[1], Hp, Wp, device=image.device)
        for i, (top, left) in enumerate(chunk):
            out[:, :, top:top + window, left:left + window] += logits[i * B:(i + 1) * B] * weight
    assert out is not None
    return (out / norm)[:, :, :H, :W]


def mask_to_png_bytes(mask: torch.Tensor | np.ndarray, *, foreground: int = 255, background: int = 0) -> bytes:
    """Encode a ``(H, W)`` boolean mask as an 8-bit grayscale PNG (``foreground`` / ``background`` values)."""
    from io import BytesIO

    from PIL import Image

    m = torch.as_tensor(mask).detach().cpu().bool().numpy()
    if m.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {m.shape}")
    pixels = np.where(m, np.uint8(foreground), np.uint8(background)).astype(np.uint8)
    buffer = BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def save_mask_png(mask: torch.Tensor | np.ndarray, path: str | os.PathLike[str], *, foreground: int = 255,
                  background: int = 0) -> None:
    """Write a ``(H, W)`` boolean mask as a grayscale PNG, atomically.

    For ISBI 2012 pass ``foreground=0, background=255`` to get the data set's own convention (membrane
    black, cell interior white), so predictions compare directly with ``label/N.png``.
    """
    atomic_write_bytes(path, mask_to_png_bytes(mask, foreground=foreground, background=background))

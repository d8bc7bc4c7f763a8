"""Region-of-interest feature extraction: RoI pooling (Fast R-CNN) and RoIAlign (Mask R-CNN).

A two-stage detector cuts a fixed ``PH x PW`` grid of features out of a feature map for every proposal
box, whatever the box's size, so that one fully connected head can score them all.

**RoI pooling** (Girshick, "Fast R-CNN", ICCV 2015, Sec. 2.1). The box is scaled by ``spatial_scale``
(1 / stride) and *rounded* to whole cells, ``[x1', x2']`` with ``x1' = round(x1 s)``, ``x2' = round(x2 s)``,
width ``w = max(x2' - x1' + 1, 1)``; bin ``j`` covers the columns

    floor(j w / PW) + x1'  ...  ceil((j + 1) w / PW) + x1' - 1        (clipped to the map)

and outputs the maximum over its cells (0 for a bin that lies outside the map).

**RoIAlign** (He, Gkioxari, Dollar & Girshick, "Mask R-CNN", ICCV 2017, Sec. 3). The two roundings of RoI
pooling misalign the pooled features with the box by up to a cell, which costs mask accuracy (paper
Table 2c, ResNet-50-C4: RoIAlign gains about 3 points of mask AP and 5 of AP75 over RoIPool). RoIAlign
keeps the box continuous: with ``aligned=True`` (Detectron2's choice) the box is ``x1 s - 0.5 .. x2 s - 0.5``
in the coordinates of cell centres; each bin (width ``b_w = (x2 - x1) s / PW``) is sampled at ``r x r`` regular points
(``sampling_ratio = r``)

    x_{j, i} = x1 s - 0.5 + j b_w + (i + 0.5) b_w / r,      i = 0 .. r - 1

each value read by bilinear interpolation of the four nearest cells, and the bin outputs their mean. A point
with ``x < -1`` or ``x > W`` (or the same in ``y``) reads 0; a point in ``[-1, 0)`` reads column 0 and one
at or past ``W - 1`` reads column ``W - 1`` (the rule of the Detectron / torchvision kernels). With
``aligned=False`` (the paper's original) there is no half-cell shift and boxes narrower than one cell are
widened to one cell.

``roi_align`` and ``roi_pool`` take ``rois (K, 5)`` rows ``(batch_index, x1, y1, x2, y2)`` in image pixels and
return ``(K, C, PH, PW)``; ``roi_align_batched`` takes ``P`` boxes per image, ``(B, P, 4)``, and returns
``(B, P, C, PH, PW)``. Gradients flow to the features (not to the box coordinates, as in the paper's
"approximate joint training"). ``tests/test_det_roi.py`` checks both against a loop over Python floats on
random maps and boxes (hypothesis), empty and degenerate boxes included, checks that RoIAlign of a linear
map returns the linear function at each bin centre, and that the batched form gives the same numbers.
"""

from __future__ import annotations

import torch

__all__ = ["roi_align", "roi_align_batched", "roi_pool", "boxes_to_rois"]


def boxes_to_rois(boxes: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """``(K, 5)`` rois ``(batch_index, x1, y1, x2, y2)`` from per-image boxes: a list of ``(n_i, 4)`` or a
    ``(B, n, 4)`` tensor."""
    boxes = list(boxes)
    if not boxes:
        return torch.zeros(0, 5)
    index = torch.cat([torch.full((len(b), 1), float(i), dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)])
    return torch.cat([index, torch.cat(boxes)], dim=1)


def _has_values(x: torch.Tensor) -> bool:
    """Value checks need values: not on the meta device, nor while torch.export / torch.compile trace shapes."""
    return not (torch.compiler.is_compiling() or torch.compiler.is_exporting() or x.device.type == "meta")


def _check(features: torch.Tensor, rois: torch.Tensor, output_size: int | tuple[int, int]) -> tuple[int, int]:
    if features.dim() != 4:
        raise ValueError(f"RoI features must be (B, C, H, W), got {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (K, 5) rows (batch_index, x1, y1, x2, y2), got {tuple(rois.shape)}")
    if _has_values(rois) and rois.shape[0] > 0:
        if not torch.isfinite(rois).all():
            raise ValueError("rois hold a non-finite coordinate")
        index = rois[:, 0]
        if ((index < 0) | (index >= len(features)) | (index != index.round())).any():
            raise ValueError(f"roi batch indices must be integers in [0, {len(features)})")
    PH, PW = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if PH < 1 or PW < 1:
        raise ValueError(f"output_size must be >= 1, got {output_size}")
    return PH, PW


def _axis_weights(coords: torch.Tensor, size: int, bins: int) -> torch.Tensor:
    """Bilinear weights ``(K, bins, size)`` along one axis: for sample coordinates ``(K, bins * r)``, the
    weight of each cell in the mean over a bin's ``r`` points (0 for a point outside ``[-1, size]``)."""
    K, S = coords.shape
    valid = (coords >= -1.0) & (coords <= size)
    c = coords.clamp(min=0)
    low = c.floor().long().clamp(max=size - 1)
    at_edge = low >= size - 1
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(c), c - low.to(c.dtype))
    weights = c.new_zeros(K, S, size)
    weights.scatter_add_(2, low[..., None], ((1 - frac) * valid)[..., None])
    weights.scatter_add_(2, high[..., None], (frac * valid)[..., None])
    return weights.view(K, bins, S // bins, size).mean(dim=2)


def _bin_weights(boxes: torch.Tensor, size: tuple[int, int], output_size: tuple[int, int], *, spatial_scale: float,
                 sampling_ratio: int, aligned: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-axis RoIAlign weights of ``(..., 4)`` xyxy boxes: ``A_y (..., PH, H)`` and ``A_x (..., PW, W)``."""
    (H, W), (PH, PW), r = size, output_size, sampling_ratio
    lead = boxes.shape[:-1]
    boxes = boxes.reshape(-1, 4)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (boxes[:, i] * spatial_scale - offset for i in range(4))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    # Sample coordinates: bin j, point i sits at x1 + (j r + i + 0.5) b_w / r.
    steps_x = torch.arange(PW * r, device=boxes.device, dtype=boxes.dtype) + 0.5  # (PW r,)
    steps_y = torch.arange(PH * r, device=boxes.device, dtype=boxes.dtype) + 0.5  # (PH r,)
    xs = x1[:, None] + steps_x[None] * (roi_w / (PW * r))[:, None]  # (K, PW r)
    ys = y1[:, None] + steps_y[None] * (roi_h / (PH * r))[:, None]  # (K, PH r)
    return _axis_weights(ys, H, PH).view(*lead, PH, H), _axis_weights(xs, W, PW).view(*lead, PW, W)


def roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: int | tuple[int, int], *,
              spatial_scale: float = 1.0, sampling_ratio: int = 2, aligned: bool = True) -> torch.Tensor:
    """RoIAlign (see the module docstring): ``(K, C, PH, PW)`` from ``features (B, C, H, W)`` and ``rois (K, 5)``.

    Bilinear interpolation and the mean over a bin are separable in ``x`` and ``y``, so the output is
    ``sum_{h, w} A_y[k, i, h] F[b_k, c, h, w] A_x[k, j, w]`` with per-axis weight matrices ``A`` (two einsums;
    memory ``K C H W`` for the gathered maps: :func:`roi_align_batched` avoids the gather when every image has
    the same number of boxes).

    Args:
        spatial_scale: map cells per image pixel (1 / stride).
        sampling_ratio: ``r``, sample points per bin along each axis (a fixed number; Detectron's adaptive
            ``ceil(roi_size / PH)`` is not supported).
        aligned: shift the box by half a cell (Detectron2); ``False`` is the paper's original rule.
    """
    PH, PW = _check(features, rois, output_size)
    if sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be >= 1, got {sampling_ratio}")
    B, C, H, W = features.shape
    if rois.shape[0] == 0:
        return features.new_zeros(0, C, PH, PW)
    a_y, a_x = _bin_weights(rois[:, 1:].to(features.dtype), (H, W), (PH, PW), spatial_scale=spatial_scale,
                            sampling_ratio=sampling_ratio, aligned=aligned)  # (K, PH, H), (K, PW, W)
    maps = features[rois[:, 0].long()]  # (K, C, H, W)
    rows = torch.einsum("kih,kchw->kciw", a_y, maps)  # (K, C, PH, W)
    return torch.einsum("kciw,kjw->kcij", rows, a_x)  # (K, C, PH, PW)


def roi_align_batched(features: torch.Tensor, boxes: torch.Tensor, output_size: int | tuple[int, int], *,
                      spatial_scale: float = 1.0, sampling_ratio: int = 2, aligned: bool = True) -> torch.Tensor:
    """RoIAlign of ``P`` boxes per image, ``boxes (B, P, 4)`` xyxy -> ``(B, P, C, PH, PW)``; the same numbers
    as :func:`roi_align` on the flattened rois, computed image by image as one batched matrix product (no
    per-box copy of the maps)."""
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != features.shape[0]:
        raise ValueError(f"boxes must be (B, P, 4) for {features.shape[0]} images, got {tuple(boxes.shape)}")
    PH, PW = _check(features, torch.zeros(0, 5, device=features.device), output_size)
    if _has_values(boxes) and not torch.isfinite(boxes).all():
        raise ValueError("boxes hold a non-finite coordinate")
    if sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be >= 1, got {sampling_ratio}")
    B, C, H, W = features.shape
    a_y, a_x = _bin_weights(boxes.to(features.dtype), (H, W), (PH, PW), spatial_scale=spatial_scale,
                            sampling_ratio=sampling_ratio, aligned=aligned)  # (B, P, PH, H), (B, P, PW, W)
    P = boxes.shape[1]
    # (B, P PH, H) @ (B, H, C W) -> (B, P, PH, C, W): one matrix product per image.
    rows = torch.bmm(a_y.reshape(B, P * PH, H), features.permute(0, 2, 1, 3).reshape(B, H, C * W))
    rows = rows.view(B, P, PH, C, W)
    return torch.einsum("bpicw,bpjw->bpcij", rows, a_x)  # (B, P, C, PH, PW)


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's ``round``: halves away from zero (``torch.round`` rounds them to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _bin_masks(start: torch.Tensor, length: torch.Tensor, bins: int, size: int) -> torch.Tensor:
    """``(K, bins, size)``: cell ``c`` lies in bin ``j`` of a rounded RoI (see the module docstring)."""
    j = torch.arange(bins, device=start.device, dtype=length.dtype)
    lo = (torch.floor(j[None] * length[:, None] / bins) + start[:, None]).clamp(0, size)  # (K, bins)
    hi = (torch.ceil((j[None] + 1) * length[:, None] / bins) + start[:, None]).clamp(0, size)
    cells = torch.arange(size, device=start.device, dtype=length.dtype)
    return (cells[None, None] >= lo[..., None]) & (cells[None, None] < hi[..., None])


def roi_pool(features: torch.Tensor, rois: torch.Tensor, output_size: int | tuple[int, int], *,
             spatial_scale: float = 1.0) -> torch.Tensor:
    """RoI max pooling of Fast R-CNN (see the module docstring): ``(K, C, PH, PW)``."""
    PH, PW = _check(features, rois, output_size)
    B, C, H, W = features.shape
    K = rois.shape[0]
    if K == 0:
        return features.new_zeros(0, C, PH, PW)
    corners = _round_half_away(rois[:, 1:].double() * spatial_scale)
    x1, y1, x2, y2 = corners.unbind(1)
    width, height = (x2 - x1 + 1).clamp(min=1), (y2 - y1 + 1).clamp(min=1)
    cols = _bin_masks(x1, width, PW, W)  # (K, PW, W)
    rows = _bin_masks(y1, height, PH, H)  # (K, PH, H)
    feats = features[rois[:, 0].long()]  # (K, C, H, W)
    neg = torch.finfo(features.dtype).min
    # Max over each bin's columns, then over its rows: (K, C, H, W) -> (K, C, H, PW) -> (K, C, PH, PW).
    by_col = torch.where(cols[:, None, None], feats[:, :, :, None, :], neg).amax(dim=-1)
    pooled = torch.where(rows[:, None, :, :, None], by_col[:, :, None], neg).amax(dim=3)
    empty = ~(rows.any(-1)[:, :, None] & cols.any(-1)[:, None, :])  # (K, PH, PW): a bin outside the map
    return pooled.masked_fill(empty[:, None], 0.0)

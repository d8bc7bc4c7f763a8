"""RoIAlign and RoI pooling (dltricks.layers.roi) against loops over Python floats, one output cell at a time."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dltricks.layers.roi import boxes_to_rois, roi_align, roi_align_batched, roi_pool


def bilinear_ref(fmap: list[list[float]], y: float, x: float) -> float:
    """One bilinear read of an H x W map with the Detectron border rule (see dltricks.layers.roi)."""
    H, W = len(fmap), len(fmap[0])
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= H - 1:
        y0 = y1 = H - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= W - 1:
        x0 = x1 = W - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * fmap[y0][x0] + (1 - ly) * lx * fmap[y0][x1] + ly * (1 - lx) * fmap[y1][x0]
            + ly * lx * fmap[y1][x1])


def roi_align_ref(features: torch.Tensor, rois: torch.Tensor, PH: int, PW: int, scale: float, r: int,
                  aligned: bool) -> torch.Tensor:
    K, C = len(rois), features.shape[1]
    out = torch.zeros(K, C, PH, PW, dtype=torch.float64)
    for k in range(K):
        b, x1, y1, x2, y2 = rois[k].tolist()
        off = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = x1 * scale - off, y1 * scale - off, x2 * scale - off, y2 * scale - off
        w, h = x2 - x1, y2 - y1
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        bw, bh = w / PW, h / PH
        for c in range(C):
            fmap = features[int(b), c].tolist()
            for i in range(PH):
                for j in range(PW):
                    total = 0.0
                    for iy in range(r):
                        for ix in range(r):
                            y = y1 + i * bh + (iy + 0.5) * bh / r
                            x = x1 + j * bw + (ix + 0.5) * bw / r
                            total += bilinear_ref(fmap, y, x)
                    out[k, c, i, j] = total / (r * r)
    return out


def c_round(v: float) -> int:
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def roi_pool_ref(features: torch.Tensor, rois: torch.Tensor, PH: int, PW: int, scale: float) -> torch.Tensor:
    K, C, H, W = len(rois), *features.shape[1:]
    out = torch.zeros(K, C, PH, PW, dtype=torch.float64)
    for k in range(K):
        b, x1, y1, x2, y2 = rois[k].tolist()
        sx, sy, ex, ey = c_round(x1 * scale), c_round(y1 * scale), c_round(x2 * scale), c_round(y2 * scale)
        bw, bh = max(ex - sx + 1, 1) / PW, max(ey - sy + 1, 1) / PH
        for i in range(PH):
            h0 = min(max(math.floor(i * bh) + sy, 0), H)
            h1 = min(max(math.ceil((i + 1) * bh) + sy, 0), H)
            for j in range(PW):
                w0 = min(max(math.floor(j * bw) + sx, 0), W)
                w1 = min(max(math.ceil((j + 1) * bw) + sx, 0), W)
                for c in range(C):
                    cells = [features[int(b), c, y, x].item() for y in range(h0, h1) for x in range(w0, w1)]
                    out[k, c, i, j] = max(cells) if cells else 0.0
    return out


@st.composite
def roi_case(draw) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Maps of 1-2 images and 0-4 rois in image pixels: degenerate, partly or wholly outside the map."""
    B, C = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    H, W = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25]))
    seed = draw(st.integers(0, 2**16))
    features = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    # Half-integers and the map's borders (in pixels at every scale) hit the rounding and border rules exactly.
    coord = st.sampled_from([-4.0, -2.0, -0.5, 0.5, 2.5, 3.5, 8.0, 12.0, 24.0]) | st.floats(-6, 30, allow_nan=False,
                                                                                          width=32)
    rows = []
    for _ in range(draw(st.integers(0, 4))):
        x1, y1 = draw(coord), draw(coord)
        w = draw(st.sampled_from([0.0, 0.5]) | st.floats(0, 30, width=32))
        h = draw(st.sampled_from([0.0, 1.0]) | st.floats(0, 30, width=32))
        rows.append([draw(st.integers(0, B - 1)), x1, y1, x1 + w, y1 + h])
    return features, torch.tensor(rows, dtype=torch.float64).reshape(-1, 5), scale


@settings(max_examples=60, deadline=None)
@given(roi_case(), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.booleans())
def test_roi_align_matches_loop(case, PH: int, PW: int, r: int, aligned: bool) -> None:
    features, rois, scale = case
    out = roi_align(features, rois, (PH, PW), spatial_scale=scale, sampling_ratio=r, aligned=aligned)
    assert out.shape == (len(rois), features.shape[1], PH, PW)
    torch.testing.assert_close(out, roi_align_ref(features, rois, PH, PW, scale, r, aligned), rtol=1e-9, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(roi_case(), st.integers(1, 3), st.booleans())
def test_batched_roi_align_equals_roi_align(case, r: int, aligned: bool) -> None:
    """The same boxes for every image: roi_align_batched (B, P, ...) is roi_align on the flattened rois."""
    features, rois, scale = case
    boxes = rois[:, 1:].expand(len(features), -1, -1)  # (B, P, 4)
    out = roi_align_batched(features, boxes, (2, 3), spatial_scale=scale, sampling_ratio=r, aligned=aligned)
    flat = roi_align(features, boxes_to_rois(list(boxes)), (2, 3), spatial_scale=scale, sampling_ratio=r,
                     aligned=aligned)
    assert out.shape == (*boxes.shape[:2], features.shape[1], 2, 3)
    torch.testing.assert_close(out.flatten(0, 1), flat, rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(roi_case(), st.integers(1, 3), st.integers(1, 3))
def test_roi_pool_matches_loop(case, PH: int, PW: int) -> None:
    features, rois, scale = case
    out = roi_pool(features, rois, (PH, PW), spatial_scale=scale)
    assert out.shape == (len(rois), features.shape[1], PH, PW)
    torch.testing.assert_close(out, roi_pool_ref(features, rois, PH, PW, scale), rtol=0, atol=0)


@settings(max_examples=30, deadline=None)
@given(st.floats(-2, 2), st.floats(-2, 2), st.floats(-5, 5), st.floats(0, 4), st.floats(0, 4), st.floats(0.5, 6),
       st.floats(0.5, 6))
def test_roi_align_of_a_linear_map_is_the_bin_centre_value(a: float, b: float, c: float, x1: float, y1: float,
                                                           w: float, h: float) -> None:
    """Bilinear interpolation is exact on ``f(x, y) = a x + b y + c`` and a bin's sample points are symmetric
    about its centre, so every output is ``f`` at the bin centre (boxes well inside the 12 x 12 map)."""
    H = W = 12
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    features = (a * xs + b * ys + c)[None, None]
    rois = torch.tensor([[0.0, x1 + 1, y1 + 1, x1 + 1 + w, y1 + 1 + h]], dtype=torch.float64)
    out = roi_align(features, rois, 3, sampling_ratio=2)[0, 0]
    # Bin centres in cell coordinates (aligned: image pixel x lies at cell coordinate x - 0.5).
    cx = x1 + 1 - 0.5 + (torch.arange(3, dtype=torch.float64) + 0.5) * w / 3
    cy = y1 + 1 - 0.5 + (torch.arange(3, dtype=torch.float64) + 0.5) * h / 3
    torch.testing.assert_close(out, a * cx[None, :] + b * cy[:, None] + c, rtol=1e-9, atol=1e-9)


def test_empty_rois_and_gradients() -> None:
    features = torch.randn(2, 3, 5, 5, requires_grad=True)
    assert roi_align(features, torch.zeros(0, 5), 2).shape == (0, 3, 2, 2)
    assert roi_pool(features, torch.zeros(0, 5), 2).shape == (0, 3, 2, 2)
    rois = boxes_to_rois([torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.zeros(0, 4)])
    assert rois.tolist() == [[0.0, 0.0, 0.0, 4.0, 4.0]]
    roi_align(features, rois, 2).sum().backward()
    assert features.grad[0].abs().sum() > 0 and features.grad[1].abs().sum() == 0  # only image 0 is read


@pytest.mark.parametrize("rois, message", [(torch.tensor([[0.0, 0, 0, 1]]), r"\(K, 5\)"),
                                           (torch.tensor([[2.0, 0, 0, 1, 1]]), "batch indices"),
                                           (torch.tensor([[0.0, float("nan"), 0, 1, 1]]), "non-finite")])
def test_bad_rois_raise(rois: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        roi_align(torch.zeros(2, 1, 4, 4), rois, 2)
    with pytest.raises(ValueError, match=message):
        roi_pool(torch.zeros(2, 1, 4, 4), rois, 2)


def test_roi_pool_snaps_a_shifted_box_and_roi_align_follows_it() -> None:
    """The misalignment that RoIAlign removes (Mask R-CNN Sec. 3): at stride 8, moving a box by 1-3 px leaves RoI
    pooling's output unchanged (the box is rounded to whole cells) while RoIAlign's changes with the shift."""
    features = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    box = torch.tensor([[0.0, 16.0, 16.0, 40.0, 40.0]], dtype=torch.float64)
    pooled, aligned = roi_pool(features, box, 3, spatial_scale=1 / 8), roi_align(features, box, 3, spatial_scale=1 / 8)
    for shift in (1.0, 2.0, 3.0):
        moved = box + torch.tensor([0.0, shift, shift, shift, shift], dtype=torch.float64)
        assert torch.equal(roi_pool(features, moved, 3, spatial_scale=1 / 8), pooled)
        assert (roi_align(features, moved, 3, spatial_scale=1 / 8) - aligned).abs().max() > 1e-3


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_ops_on_exact_borders_and_half_cells(aligned: bool) -> None:
    """Sample points exactly on ``x = W`` and ``x = -1`` (still read) and just past them (read 0), and corners at
    half cells (RoI pooling rounds them away from zero, as C's ``round``)."""
    features = torch.arange(16, dtype=torch.float64).view(1, 1, 4, 4) + 1
    off = 0.5 if aligned else 0.0  # pixel x lies at cell coordinate x - off
    rois = torch.tensor([[0, 3 + off, 3 + off, 5 + off, 5 + off],  # the one sample point at (4, 4): the border
                         [0, -2 + off, -2 + off, off, off],  # at (-1, -1): the other border
                         [0, 4 + off, 0, 6.5 + off, 2],  # x = 5.25 > W: reads 0
                         [0, 0.5, 0.5, 2.5, 2.5], [0, 1.5, 0.5, 3.5, 1.5]], dtype=torch.float64)
    out = roi_align(features, rois, 1, sampling_ratio=1, aligned=aligned)
    torch.testing.assert_close(out, roi_align_ref(features, rois, 1, 1, 1.0, 1, aligned), rtol=1e-12, atol=1e-12)
    assert out[0, 0, 0, 0] == 16.0 and out[1, 0, 0, 0] == 1.0 and out[2, 0, 0, 0] == 0.0
    pooled = roi_pool(features, rois, 2)
    torch.testing.assert_close(pooled, roi_pool_ref(features, rois, 2, 2, 1.0), rtol=0, atol=0)
    # [0.5, 2.5] rounds to cells 1..3, so the top-left bin is cells 1..2 with maximum 11 (torch.round's 0..2
    # would give cells 0..1 and 6).
    assert pooled[3, 0, 0, 0] == 11.0

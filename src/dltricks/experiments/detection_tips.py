"""Tips about object detection, tested on the detection code itself (:mod:`dltricks.layers.roi`)."""

from __future__ import annotations

import torch

from dltricks.evidence import LECTURE, Context, Evidence, Exact, tip
from dltricks.layers import roi

DET = "Object detection"


@tip(id="det.roialign", title="RoIAlign instead of RoI pooling (Mask R-CNN)",
     claim="Sampling a region's features bilinearly at continuous positions (RoIAlign) instead of rounding the "
           "region to the feature grid (RoI pooling) keeps the pooled features aligned with the box: on a map "
           "whose value is the x coordinate, RoIAlign returns each bin's centre exactly, RoI pooling is off by "
           "up to a cell, and a shift of the box by less than a cell moves RoIAlign's features but not RoI "
           "pooling's. (The consequence the lecture draws, better masks, is not measured here.)",
     cite=LECTURE.at(1983, 1995, "Mask R-CNN, RoIAlign"),
     source="He et al., Mask R-CNN 2017, Sec. 3 and Table 2c; Girshick, Fast R-CNN 2015", section=DET,
     exercises=(roi,), seeds={"quick": 1, "full": 1}, budget_s=1,
     quick={"stride": 8, "shifts": 8}, full={"stride": 8, "shifts": 16},
     rule=Exact(checks=("RoIAlign returns the bin centres on a linear map",
                        "RoI pooling is off by at least half a cell somewhere",
                        "every sub-cell shift moves RoIAlign's features",
                        "RoI pooling ignores some sub-cell shifts")))
def roialign_alignment(ctx: Context) -> Evidence:
    """RoIAlign and RoI pooling (:mod:`dltricks.layers.roi`) on a feature map whose value is the x coordinate
    of the cell centre in image pixels, for one box shifted by whole image pixels (fractions of a cell)."""
    stride, shifts = int(ctx.get("stride", 8)), int(ctx.get("shifts", 8))
    H = W = 16
    xs = (torch.arange(W, dtype=torch.float64) + 0.5) * stride  # cell centres in image pixels
    fmap = xs.expand(1, 1, H, W).clone()  # (1, 1, H, W): value = x of the cell centre
    bins = 4
    align_err, pool_err, align_out, pool_out = [], [], [], []
    for s in range(shifts):
        x1, x2 = 20.0 + s * stride / shifts, 20.0 + s * stride / shifts + 64.0
        rois = torch.tensor([[0.0, x1, 24.0, x2, 88.0]], dtype=torch.float64)
        centres = x1 + (torch.arange(bins, dtype=torch.float64) + 0.5) * (x2 - x1) / bins  # true bin centres
        a = roi.roi_align(fmap, rois, bins, spatial_scale=1 / stride, sampling_ratio=2, aligned=True)[0, 0]
        # max pooling of a map increasing in x gives the value at the bin's right edge: compare it with that
        p = roi.roi_pool(fmap, rois, bins, spatial_scale=1 / stride)[0, 0]
        right_edges = x1 + torch.arange(1, bins + 1, dtype=torch.float64) * (x2 - x1) / bins - stride / 2
        align_err.append(float((a - centres).abs().max()))
        pool_err.append(float((p - right_edges).abs().max()))
        align_out.append(tuple(a[0].tolist()))
        pool_out.append(tuple(p[0].tolist()))
    ev = Evidence(setup=f"a 16x16 feature map at stride {stride} whose value is the x coordinate of each cell "
                        f"centre (image pixels); one 64x64 px box shifted by 0..{shifts - 1} steps of "
                        f"{stride / shifts:g} px; {bins}x{bins} bins; RoIAlign with 2x2 samples per bin, aligned "
                        f"(dltricks.layers.roi, checked against brute-force loops in tests/test_det_roi.py)")
    ev.values.update({"largest RoIAlign error (px)": max(align_err), "largest RoI pooling error (px)": max(pool_err),
                      "distinct RoIAlign outputs": len(set(align_out)), "distinct RoI pooling outputs":
                      len(set(pool_out)), "shifts": shifts, "cell (px)": stride})
    ev.check("RoIAlign returns the bin centres on a linear map", max(align_err) < 1e-6)
    ev.check("RoI pooling is off by at least half a cell somewhere", max(pool_err) >= stride / 2)
    ev.check("every sub-cell shift moves RoIAlign's features", len(set(align_out)) == shifts)
    ev.check("RoI pooling ignores some sub-cell shifts", len(set(pool_out)) < shifts)
    ev.headline = (f"{shifts} sub-cell shifts: RoIAlign {len(set(align_out))} distinct outputs, error "
                   f"{max(align_err):.1e} px; RoI pooling {len(set(pool_out))} distinct, error up to "
                   f"{max(pool_err):.1f} px (cell {stride} px)")
    return ev

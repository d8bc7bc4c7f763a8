"""Faster R-CNN: a region proposal network, then RoIAlign and a box head on each proposal (two stages).

Papers: Ren, He, Girshick & Sun, "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal
Networks", NeurIPS 2015; with a feature pyramid as in Lin et al., "Feature Pyramid Networks for Object
Detection", CVPR 2017 (Sec. 4); RoIAlign from He et al., "Mask R-CNN", ICCV 2017.

**Stage 1, the RPN.** A 3x3 conv + ReLU shared by all pyramid levels, then per anchor one objectness logit
and four deltas (:func:`dltricks.layers.boxes.encode_boxes`, weights 1). Anchors: one size per level,
``anchor_scale`` strides, with height/width ratios 1/2, 1, 2 (FPN Sec. 4.1: 32-512 px on P2-P6, i.e. 8
strides; our MNIST-size model uses 3 strides on P2-P4: 12, 24, 48 px, since digits there are 10-28 px).
Proposals: decode and clip every anchor, take the ``pre_nms_top_k`` best by objectness, NMS at IoU 0.7,
keep the ``post_nms_top_k`` best (the paper: 6,000 -> 300 at test time; ours: 300 -> 64). The proposals are
cut from the graph: the second stage does not back-propagate into their coordinates (the paper's
"approximate joint training", Sec. 3.2).

**Stage 2, the RoI head.** Each proposal is assigned a pyramid level by its size (FPN Eq. 1)

    k = clamp( floor(k_0 + log2( sqrt(w h) / canonical_size )), levels )

(the paper: ``k_0 = 4``, ``canonical_size = 224``; ours: the stride-16 level for a 64 px box, so digits read
the stride-4 map), RoIAlign gives ``7 x 7`` features from that level, and two fully connected layers
(FPN's "2fc" head, 1,024 wide; ours 128) feed a ``K + 1``-way softmax (background last) and class-specific
box deltas (weights ``(10, 10, 5, 5)``).

**Output** (one dict in training and evaluation mode, like the one-stage detectors): ``rpn_logits (B, N, 1)``,
``rpn_deltas (B, N, 4)``, ``rpn_anchors (B, N, 4)`` for the ``N`` anchors; ``proposals (B, P, 4)`` and
``proposal_valid (B, P)`` (fewer than ``P`` boxes may survive NMS; the rest are zero boxes marked invalid);
``logits (B, P, K)`` and ``background_logits (B, P, 1)`` (the ``K + 1`` logits of the softmax, split so that
``logits`` has one column per class as in the other detectors) and ``roi_deltas (B, P, K, 4)``. The objective
(:class:`dltricks.tasks.detection.losses.FasterRCNNLoss`) matches anchors and proposals to the ground truth
from this dict alone. Every step has a fixed shape (NMS as a keep mask, :func:`~dltricks.layers.boxes.nms_mask`),
so the forward pass also runs on the meta device.

Not as in the paper: the ground-truth boxes are not added to the proposals during training (``forward``
sees only the images), so the head learns from the RPN's proposals alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.errors import ModelError
from dltricks.layers.boxes import anchor_grid, box_area, clip_boxes, decode_boxes, nms_mask
from dltricks.layers.roi import roi_align_batched
from dltricks.models._registry import register_model
from dltricks.models.detection.base import DenseDetector, flatten_levels, small_resnet

__all__ = ["FasterRCNN", "faster_rcnn_tiny", "ROI_BOX_WEIGHTS"]

PAPER = "Ren et al., Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks, NeurIPS 2015"
ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


class FasterRCNN(DenseDetector):
    """Faster R-CNN with an FPN (see the module docstring).

    Args:
        num_classes, in_chans, backbone, pyramid_strides, pyramid_chs: as :class:`RetinaNet` (default backbone:
            :func:`small_resnet` with three stages, widths 16, 32, 64).
        anchor_scale: anchor size in strides of its level; ratios: anchor height / width.
        pre_nms_top_k, post_nms_top_k, rpn_nms_thresh: proposal selection per image.
        roi_size, sampling_ratio: RoIAlign output side and sample points per bin and axis.
        canonical_size, canonical_level: a box of ``canonical_size`` px is pooled from level ``canonical_level``.
        hidden: width of the two fully connected layers of the box head.
    """

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1, backbone: nn.Module | None = None,
                 pyramid_strides: Sequence[int] = (4, 8, 16), pyramid_chs: int = 64, anchor_scale: float = 3.0,
                 ratios: Sequence[float] = (0.5, 1.0, 2.0), pre_nms_top_k: int = 300, post_nms_top_k: int = 64,
                 rpn_nms_thresh: float = 0.7, roi_size: int = 7, sampling_ratio: int = 2,
                 canonical_size: float = 64.0, canonical_level: int = 2, hidden: int = 128) -> None:
        for key, value in (("pre_nms_top_k", pre_nms_top_k), ("post_nms_top_k", post_nms_top_k), ("roi_size", roi_size),
                           ("sampling_ratio", sampling_ratio), ("hidden", hidden)):
            if value < 1:
                raise ModelError(f"FasterRCNN needs {key} >= 1, got {value}")
        if backbone is None:  # three stages (strides 4, 8, 16): the pyramid uses every one
            backbone = small_resnet(in_chans, widths=(16, 32, 64))
        super().__init__(num_classes=num_classes, in_chans=in_chans, backbone=backbone,
                         pyramid_strides=pyramid_strides, pyramid_chs=pyramid_chs)
        self.anchor_sizes = [[anchor_scale * s] for s in self.strides]
        self.ratios = tuple(float(r) for r in ratios)
        A = len(self.ratios)
        self.pre_nms_top_k, self.post_nms_top_k, self.rpn_nms_thresh = pre_nms_top_k, post_nms_top_k, rpn_nms_thresh
        self.roi_size, self.sampling_ratio = roi_size, sampling_ratio
        self.canonical_size, self.canonical_level = canonical_size, canonical_level
        self.rpn_conv = nn.Conv2d(pyramid_chs, pyramid_chs, 3, padding=1)
        self.rpn_cls = nn.Conv2d(pyramid_chs, A, 1)
        self.rpn_box = nn.Conv2d(pyramid_chs, A * 4, 1)
        self.box_head = nn.Sequential(nn.Flatten(), nn.Linear(pyramid_chs * roi_size ** 2, hidden),
                                      nn.ReLU(inplace=True), nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.cls_out = nn.Linear(hidden, num_classes + 1)
        self.box_out = nn.Linear(hidden, num_classes * 4)
        # The initialisation of the reference implementations: N(0, 0.01) RPN convs and classifier,
        # N(0, 0.001) box regressor, zero biases.
        for m, std in ((self.rpn_conv, 0.01), (self.rpn_cls, 0.01), (self.rpn_box, 0.01), (self.cls_out, 0.01),
                       (self.box_out, 0.001)):
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)

    def anchors(self, feature_sizes: Sequence[tuple[int, int]], *, device: torch.device | None = None) -> torch.Tensor:
        """Anchors ``(N, 4)`` xyxy for pyramid maps of the given sizes."""
        return anchor_grid(feature_sizes, self.strides, self.anchor_sizes, self.ratios, device=device)

    @torch.no_grad()
    def propose(self, rpn_logits: torch.Tensor, rpn_deltas: torch.Tensor, anchors: torch.Tensor,
                image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Proposals ``(B, P, 4)`` and their validity ``(B, P)`` from the RPN output (fixed shapes)."""
        boxes = clip_boxes(decode_boxes(rpn_deltas.float(), anchors[None].float()), image_size)  # (B, N, 4)
        scores = rpn_logits.float()[..., 0]  # (B, N)
        k = min(self.pre_nms_top_k, scores.shape[1])
        P = min(self.post_nms_top_k, k)
        top_scores, top = scores.topk(k, dim=1)  # (B, k), best first
        candidates = boxes.gather(1, top[..., None].expand(-1, -1, 4))  # (B, k, 4)
        # Boxes of (near) zero area cannot suppress others (IoU 0) and are dropped.
        keep = nms_mask(candidates, self.rpn_nms_thresh) & (box_area(candidates) > 1e-2)  # (B, k)
        chosen = top_scores.masked_fill(~keep, -math.inf).topk(P, dim=1).indices  # the P best kept ones, (B, P)
        valid = keep.gather(1, chosen)
        proposals = candidates.gather(1, chosen[..., None].expand(-1, -1, 4)) * valid[..., None]
        return proposals, valid

    def roi_levels(self, boxes: torch.Tensor) -> torch.Tensor:
        """Pyramid level index of each box (FPN Eq. 1, see the module docstring)."""
        size = box_area(boxes).clamp(min=1e-6).sqrt()
        level = torch.floor(self.canonical_level + torch.log2(size / self.canonical_size))
        return level.clamp(0, len(self.strides) - 1).long()

    def pool(self, pyramid: list[torch.Tensor], proposals: torch.Tensor, *, output_size: int | None = None
             ) -> torch.Tensor:
        """RoIAlign features ``(B P, C, S, S)`` of every proposal from its level (``S``: ``output_size``, default
        ``roi_size``)."""
        size = output_size or self.roi_size
        B, P = proposals.shape[:2]
        levels = self.roi_levels(proposals)  # (B, P)
        pooled = None
        # Every level pools every proposal and the level mask picks one: fixed shapes, no data-dependent split.
        for level, (features, stride) in enumerate(zip(pyramid, self.strides)):
            out = roi_align_batched(features, proposals.to(features.dtype), size, spatial_scale=1.0 / stride,
                                    sampling_ratio=self.sampling_ratio)  # (B, P, C, S, S)
            mask = (levels == level).to(out.dtype)[..., None, None, None]
            pooled = out * mask if pooled is None else pooled + out * mask
        return pooled.flatten(0, 1)

    def forward_head(self, pyramid: list[torch.Tensor], image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        cls_maps, box_maps = [], []
        for p in pyramid:
            t = F.relu(self.rpn_conv(p))
            cls_maps.append(self.rpn_cls(t))  # (B, A, H_l, W_l)
            box_maps.append(self.rpn_box(t))  # (B, A * 4, H_l, W_l)
        rpn_logits = flatten_levels(cls_maps, 1)  # (B, N, 1)
        rpn_deltas = flatten_levels(box_maps, 4)  # (B, N, 4)
        anchors = self.anchors([tuple(p.shape[-2:]) for p in pyramid], device=rpn_logits.device)  # (N, 4)
        proposals, valid = self.propose(rpn_logits.detach(), rpn_deltas.detach(), anchors, image_size)
        B, P = proposals.shape[:2]
        hidden = self.box_head(self.pool(pyramid, proposals))  # (B P, hidden)
        class_logits = self.cls_out(hidden).view(B, P, self.num_classes + 1)  # background last
        return {"rpn_logits": rpn_logits, "rpn_deltas": rpn_deltas, "rpn_anchors": anchors.expand(B, -1, -1),
                "proposals": proposals, "proposal_valid": valid,
                "logits": class_logits[..., :-1], "background_logits": class_logits[..., -1:],
                "roi_deltas": self.box_out(hidden).view(B, P, self.num_classes, 4)}

    @staticmethod
    def decode(output: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-specific boxes ``(B, P, K, 4)`` and softmax scores ``(B, P, K)`` (0 for invalid proposals)."""
        deltas = output["roi_deltas"].float()
        proposals = output["proposals"].float()[:, :, None].expand_as(deltas)
        boxes = decode_boxes(deltas, proposals, ROI_BOX_WEIGHTS)
        logits = torch.cat([output["logits"], output["background_logits"]], dim=-1).float()  # (B, P, K + 1)
        scores = logits.softmax(-1)[..., :-1] * output["proposal_valid"][..., None]
        return boxes, scores


@register_model(task="detection", input_size=(1, 64, 64), test_input_size=(1, 64, 64), min_input_size=32,
                paper=PAPER)
def faster_rcnn_tiny(*, num_classes: int = 10, in_chans: int = 1, **kwargs) -> FasterRCNN:
    """Faster R-CNN (FPN P2-P4, RoIAlign 7x7, 2 x 128 fc head) on a 3-stage, one-block-per-stage ResNet (widths
    16-64), for 64 px MNIST scenes."""
    return FasterRCNN(num_classes=num_classes, in_chans=in_chans, **kwargs)

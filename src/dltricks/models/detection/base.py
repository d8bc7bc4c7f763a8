"""One contract for dense (one-stage) detectors: backbone -> feature pyramid -> head, one ``forward``.

**Backbone.** A registered ResNet's ``forward_features_list`` (the encoder contract of
:mod:`dltricks.models.resnet`): maps highest resolution first with their ``feature_strides``. The pyramid
uses the stages at strides ``pyramid_strides`` (default 8, 16, 32: ``C_3 .. C_5``).

**Pyramid** (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017): a 1x1 lateral conv
per stage, a top-down pass adding the 2x nearest-upsampled coarser level, a 3x3 conv on each sum:

    P_5 = L_5(C_5),     P_i = L_i(C_i) + Up(P_{i+1}),     P_i <- Conv3x3(P_i)

**Output** (the same in training and evaluation mode): a dict of dense per-location tensors, batch first,
locations ordered level, row, column (then anchor), e.g. for RetinaNet ``logits (B, N, K)``,
``deltas (B, N, 4)`` and ``anchors (B, N, 4)``. The locations ride along with the predictions, so the loss
and the decoding (:mod:`dltricks.tasks.detection`) need no model; ``postprocess`` methods turn the dict
into per-image ``(boxes, scores, labels)`` with a score threshold and class-wise NMS.
"""

from __future__ import annotations

import math

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.errors import ModelError
from dltricks.layers.boxes import batched_nms
from dltricks.models.resnet import ResNet

__all__ = ["FeaturePyramid", "DenseDetector", "small_resnet", "backbone_for_stride", "select_detections",
           "head_tower", "init_head", "flatten_levels"]


def small_resnet(in_chans: int, *, widths: Sequence[int] = (16, 32, 64, 128), **kwargs: Any) -> ResNet:
    """A ResNet-10-like backbone (one basic block per stage, ImageNet stem) for CPU-sized detection tasks."""
    return ResNet("basic", (1,) * len(widths), num_classes=0, in_chans=in_chans, stem_width=widths[0],
                  stage_widths=tuple(widths), **kwargs)


def backbone_for_stride(in_chans: int, stride: int) -> ResNet:
    """:func:`small_resnet` whose last stage has stride ``stride`` (8: widths 16, 32; 16: 16, 32, 64; 32: 16-128),
    so a detector that reads only the last map (YOLO, DETR) still trains every stage."""
    if stride not in (8, 16, 32):
        raise ModelError(f"stride must be 8, 16 or 32, got {stride}")
    return small_resnet(in_chans, widths=(16, 32, 64, 128)[:int(math.log2(stride)) - 1])


class FeaturePyramid(nn.Module):
    """FPN neck: backbone maps at ``strides`` -> pyramid maps ``P_i`` with ``pyramid_chs`` channels each."""

    def __init__(self, in_channels: Sequence[int], *, pyramid_chs: int = 64) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, pyramid_chs, 1) for c in in_channels)
        self.smooth = nn.ModuleList(nn.Conv2d(pyramid_chs, pyramid_chs, 3, padding=1) for _ in in_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = [None] * len(features)  # type: ignore[list-item]
        top = None
        for i in reversed(range(len(features))):
            x = self.lateral[i](features[i])  # (B, pyramid_chs, H / s_i, W / s_i)
            if top is not None:
                x = x + F.interpolate(top, size=x.shape[-2:], mode="nearest")
            top = x
            out[i] = self.smooth[i](x)
        return out


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, *, score_thresh: float, nms_thresh: float,
                      max_detections: int, pre_nms_top_k: int = 1000, return_locations: bool = False
                      ) -> tuple[torch.Tensor, ...]:
    """Per-image detections from ``boxes (N, 4)`` (or class-specific ``(N, K, 4)``, as in Faster R-CNN) and
    per-class ``scores (N, K)``: every (location, class) pair above ``score_thresh``, the ``pre_nms_top_k``
    best, class-wise NMS, the ``max_detections`` best. ``return_locations`` adds each detection's row in
    ``boxes`` (Mask R-CNN reads its mask there)."""
    K = scores.shape[1]
    flat = scores.reshape(-1)  # (N * K,), location-major
    keep = (flat > score_thresh).nonzero().squeeze(1)
    if len(keep) > pre_nms_top_k:
        keep = keep[flat[keep].topk(pre_nms_top_k).indices]
    det_scores, locations, labels = flat[keep], keep // K, keep % K
    det_boxes = boxes[locations, labels] if boxes.dim() == 3 else boxes[locations]
    kept = batched_nms(det_boxes, det_scores, labels, nms_thresh)[:max_detections]
    if return_locations:
        return det_boxes[kept], det_scores[kept], labels[kept], locations[kept]
    return det_boxes[kept], det_scores[kept], labels[kept]


def sample_balanced(positive: torch.Tensor, negative: torch.Tensor, *, num: int,
                    positive_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Random indices of at most ``num * positive_fraction`` positives and enough negatives to make ``num``
    (the minibatch sampler of Faster R-CNN), from boolean masks ``(N,)``."""
    pos, neg = positive.nonzero().squeeze(1), negative.nonzero().squeeze(1)
    n_pos = min(len(pos), int(num * positive_fraction))
    n_neg = min(len(neg), num - n_pos)
    pos = pos[torch.randperm(len(pos), device=pos.device)[:n_pos]]
    neg = neg[torch.randperm(len(neg), device=neg.device)[:n_neg]]
    return pos, neg


class DenseDetector(nn.Module):
    """Backbone + :class:`FeaturePyramid` + a head (set by subclasses). Subclasses define ``head`` and
    ``forward_head(pyramid, image_size) -> dict``, and ``decode(output) -> (boxes (B, N, 4), scores (B, N, K))``.
    """

    def __init__(self, *, num_classes: int, in_chans: int, backbone: nn.Module | None = None,
                 pyramid_strides: Sequence[int] = (8, 16, 32), pyramid_chs: int = 64,
                 min_input_size: int = 32) -> None:
        super().__init__()
        if num_classes < 1:
            raise ModelError(f"a detector needs num_classes >= 1, got {num_classes}")
        self.num_classes, self.in_chans, self.min_input_size = num_classes, in_chans, min_input_size
        self.backbone = backbone if backbone is not None else small_resnet(in_chans)
        strides = list(self.backbone.feature_strides)
        missing = [s for s in pyramid_strides if s not in strides]
        if missing:
            raise ModelError(f"backbone has no map at stride(s) {missing} (its strides: {strides})")
        self.levels = [strides.index(s) for s in pyramid_strides]
        self.strides = tuple(int(s) for s in pyramid_strides)
        self.neck = FeaturePyramid([self.backbone.feature_channels[i] for i in self.levels], pyramid_chs=pyramid_chs)

    def _check_input(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ModelError(f"{name} expects input of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ModelError(f"{name} got an empty batch (input of shape {tuple(x.shape)}); pass at least one image")
        if min(x.shape[-2:]) < self.min_input_size:
            raise ModelError(f"{name} needs input of at least {self.min_input_size}x{self.min_input_size} pixels, "
                             f"got {x.shape[-2]}x{x.shape[-1]}")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check_input(x)
        features = self.backbone.forward_features_list(x)
        pyramid = self.neck([features[i] for i in self.levels])  # [(B, D, H / s, W / s)], finest first
        return self.forward_head(pyramid, tuple(x.shape[-2:]))

    def forward_head(self, pyramid: list[torch.Tensor], image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover - abstract

    @staticmethod
    def decode(output: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover - abstract

    @torch.no_grad()
    def predict(self, x: torch.Tensor, *, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                max_detections: int = 100) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per-image ``(boxes (n, 4) xyxy, scores (n,), labels (n,))`` for a batch of images."""
        return self.postprocess(self(x), score_thresh=score_thresh, nms_thresh=nms_thresh,
                                max_detections=max_detections)

    @classmethod
    def postprocess(cls, output: dict[str, torch.Tensor], *, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                    max_detections: int = 100) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        boxes, scores = cls.decode(output)
        return [select_detections(b, s, score_thresh=score_thresh, nms_thresh=nms_thresh,
                                  max_detections=max_detections) for b, s in zip(boxes, scores)]


def head_tower(channels: int, num_convs: int) -> nn.Sequential:
    """``num_convs`` x (3x3 conv, GroupNorm, ReLU): the towers of the RetinaNet and FCOS heads."""
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(min(32, channels // 4), channels),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def init_head(module: nn.Module, *, prior: float | None = None, cls_layer: nn.Conv2d | None = None) -> None:
    """Normal(0, 0.01) convs with zero bias; the classifier's bias set to ``-log((1 - prior) / prior)`` so every
    location starts with foreground probability ``prior`` (Lin et al. 2017, Sec. 4.1: 0.01)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
    if cls_layer is not None and prior is not None:
        nn.init.constant_(cls_layer.bias, -math.log((1 - prior) / prior))


def flatten_levels(maps: list[torch.Tensor], per_location: int) -> torch.Tensor:
    """``[(B, A * P, H_l, W_l)]`` -> ``(B, sum_l H_l * W_l * A, P)``: the anchor order of
    :mod:`dltricks.layers.boxes`."""
    out = []
    for m in maps:
        B, _, H, W = m.shape
        # (B, A, P, H, W) -> (B, H, W, A, P) -> (B, H * W * A, P)
        out.append(m.view(B, -1, per_location, H, W).permute(0, 3, 4, 1, 2).reshape(B, -1, per_location))
    return torch.cat(out, dim=1)

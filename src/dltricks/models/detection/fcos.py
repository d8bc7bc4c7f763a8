"""FCOS: anchor-free one-stage detection, per-pixel box distances and centre-ness.

Paper: Tian, Shen, Chen & He, "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019.

Instead of anchors, every location ``(x, y)`` of pyramid level ``P_l`` (stride ``s``) that falls inside an
object regresses the distances to the four sides of its box, ``(l, t, r, b)``, so the box is
``(x - l, y - t, x + r, y + b)``. Each level takes the objects whose largest distance ``max(l, t, r, b)`` is
in its own range (the paper: 0-64, 64-128, ... pixels for P3, P4, ...; our MNIST-size model: 0-16, 16-32,
32-inf px), which also resolves most overlaps; a location still inside two boxes takes the smaller one.

Locations far from an object's centre give poor boxes; a third branch predicts their *centre-ness*

    centerness = sqrt( min(l, r) / max(l, r) * min(t, b) / max(t, b) )

(trained with binary cross-entropy) and the class score is multiplied by it before NMS, which pushes those
boxes down the ranking (paper Table 4: +3.6 AP). We put the centre-ness branch on the box tower (the
paper's later versions) and sample positives only within ``1.5`` strides of the box centre ("center
sampling", from the FCOS code base).

Distances are ``exp(scale_l * x) * s`` with one learnable ``scale_l`` per level, as in the paper.

**Output.** ``{"logits": (B, N, K), "ltrb": (B, N, 4) pixels, "centerness": (B, N, 1) logits,
"points": (B, N, 2), "strides": (B, N, 1)}``; :meth:`FCOS.decode` gives boxes and scores
``sqrt(sigmoid(logit) * sigmoid(centerness))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dltricks.layers.boxes import point_grid
from dltricks.models._registry import model_entrypoint, register_model
from dltricks.models.detection.base import DenseDetector, flatten_levels, head_tower, init_head

__all__ = ["FCOS", "fcos_tiny", "fcos_resnet18"]

PAPER = "Tian et al., FCOS: Fully Convolutional One-Stage Object Detection, ICCV 2019"


class FCOS(DenseDetector):
    """FCOS on a ResNet + FPN (see the module docstring); arguments as :class:`RetinaNet`'s.

    Args:
        size_ranges: ``max(l, t, r, b)`` range of each level in pixels (``None``: ``[0, 2 s_0]``,
            ``[2 s_0, 4 s_0]``, ..., the last open-ended).
    """

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1, backbone: nn.Module | None = None,
                 pyramid_strides: Sequence[int] = (8, 16, 32), pyramid_chs: int = 64, num_convs: int = 2,
                 prior: float = 0.01, size_ranges: Sequence[tuple[float, float]] | None = None) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, backbone=backbone,
                         pyramid_strides=pyramid_strides, pyramid_chs=pyramid_chs)
        if size_ranges is None:
            bounds = [0.0] + [2.0 * self.strides[0] * 2 ** i for i in range(len(self.strides) - 1)] + [float("inf")]
            size_ranges = list(zip(bounds[:-1], bounds[1:]))
        if len(size_ranges) != len(self.strides):
            raise ValueError(f"size_ranges needs one range per level ({len(self.strides)}), got {len(size_ranges)}")
        self.size_ranges = [tuple(float(v) for v in r) for r in size_ranges]
        self.cls_tower = head_tower(pyramid_chs, num_convs)
        self.box_tower = head_tower(pyramid_chs, num_convs)
        self.cls_out = nn.Conv2d(pyramid_chs, num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(pyramid_chs, 4, 3, padding=1)
        self.ctr_out = nn.Conv2d(pyramid_chs, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        init_head(nn.ModuleList([self.cls_tower, self.box_tower, self.cls_out, self.box_out, self.ctr_out]),
                  prior=prior, cls_layer=self.cls_out)

    def forward_head(self, pyramid: list[torch.Tensor], image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        cls_maps, box_maps, ctr_maps = [], [], []
        for level, p in enumerate(pyramid):
            cls_maps.append(self.cls_out(self.cls_tower(p)))  # (B, K, H_l, W_l)
            box_feat = self.box_tower(p)
            # exp keeps distances positive; the clamp keeps an untrained head finite.
            ltrb = torch.exp((self.scales[level] * self.box_out(box_feat)).clamp(max=10.0)) * self.strides[level]
            box_maps.append(ltrb)  # (B, 4, H_l, W_l) pixels
            ctr_maps.append(self.ctr_out(box_feat))  # (B, 1, H_l, W_l)
        logits = flatten_levels(cls_maps, self.num_classes)  # (B, N, K)
        B = logits.shape[0]
        points, strides = point_grid([tuple(p.shape[-2:]) for p in pyramid], self.strides, device=logits.device)
        return {"logits": logits, "ltrb": flatten_levels(box_maps, 4), "centerness": flatten_levels(ctr_maps, 1),
                "points": points.expand(B, -1, -1), "strides": strides[:, None].expand(B, -1, -1)}

    @staticmethod
    def decode(output: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes ``(B, N, 4)`` xyxy and scores ``(B, N, K)`` (class probability x centre-ness, square-rooted)."""
        points, ltrb = output["points"].float(), output["ltrb"].float()
        boxes = torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)
        scores = (output["logits"].float().sigmoid() * output["centerness"].float().sigmoid()).sqrt()
        return boxes, scores


@register_model(task="detection", input_size=(1, 64, 64), test_input_size=(1, 64, 64), min_input_size=32,
                paper=PAPER)
def fcos_tiny(*, num_classes: int = 10, in_chans: int = 1, **kwargs) -> FCOS:
    """FCOS on a 4-stage, one-block-per-stage ResNet (widths 16-128), P3-P5, for 64 px MNIST scenes."""
    return FCOS(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(task="detection", input_size=(3, 512, 512), test_input_size=(3, 64, 64), min_input_size=32,
                paper=PAPER)
def fcos_resnet18(*, num_classes: int = 80, in_chans: int = 3, **kwargs) -> FCOS:
    """FCOS on ResNet-18, 4-conv towers, P3-P5, 256-wide FPN, the paper's size ranges (0-64-128-inf px)."""
    backbone = model_entrypoint("resnet18")(num_classes=0, in_chans=in_chans)
    kwargs = {"num_convs": 4, "pyramid_chs": 256, "size_ranges": [(0, 64), (64, 128), (128, float("inf"))],
              **kwargs}
    return FCOS(num_classes=num_classes, in_chans=in_chans, backbone=backbone, **kwargs)

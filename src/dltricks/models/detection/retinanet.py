"""RetinaNet: a one-stage detector with anchors on a feature pyramid, trained with the focal loss.

Paper: Lin, Goyal, Girshick, He & Dollar, "Focal Loss for Dense Object Detection", ICCV 2017.

A one-stage detector scores ~10^4-10^5 anchors per image, nearly all background. With cross-entropy the
many easy negatives dominate the loss; two-stage detectors and SSD answer with proposals or hard-negative
mining. RetinaNet keeps every anchor and down-weights the easy ones instead (the focal loss, in
:mod:`dltricks.tasks.detection.losses`):

    FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t),     gamma = 2, alpha = 0.25

**Anchors.** On pyramid level ``P_l`` (stride ``s``) each cell carries ``A = 3 x 3`` anchors: sizes
``anchor_scale * s * 2^(k/3)``, ``k = 0, 1, 2`` and height/width ratios ``1/2, 1, 2`` (the paper: levels
P3-P7 and ``anchor_scale = 4``, i.e. 32 px at P3; the MNIST-size models use P3-P5 and ``anchor_scale = 2``,
since digits there are 10-28 px).

**Head.** Two small FCNs shared by all levels: a classification tower (``num_convs`` 3x3 convs, then
``A * K`` sigmoid logits) and a box tower (then ``A * 4`` deltas, :func:`dltricks.layers.boxes.encode_boxes`
with weights 1). The towers use GroupNorm (as later re-implementations do; the paper has no norm). The
classifier's bias starts at ``-log((1 - pi) / pi)``, ``pi = 0.01``, so the loss of the ~all-background
first step does not explode (paper Sec. 4.1).

**Output.** ``{"logits": (B, N, K), "deltas": (B, N, 4), "anchors": (B, N, 4)}`` for ``N`` anchors over all
levels; :meth:`RetinaNet.decode` gives boxes and sigmoid scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dltricks.layers.boxes import anchor_grid, decode_boxes
from dltricks.models._registry import model_entrypoint, register_model
from dltricks.models.detection.base import DenseDetector, flatten_levels, head_tower, init_head

__all__ = ["RetinaNet", "retinanet_tiny", "retinanet_resnet18"]

PAPER = "Lin et al., Focal Loss for Dense Object Detection, ICCV 2017 (RetinaNet)"


class RetinaNet(DenseDetector):
    """RetinaNet on a ResNet + FPN (see the module docstring).

    Args:
        num_classes: object classes (no background class: sigmoid scores per class).
        in_chans: image channels.
        backbone: a ResNet with ``forward_features_list`` (default: :func:`small_resnet`).
        pyramid_strides, pyramid_chs: pyramid levels and their width.
        anchor_scale: anchor size in strides; ratios: anchor height / width.
        num_convs: depth of each head tower (4 in the paper).
        prior: initial foreground probability of every anchor.
    """

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1, backbone: nn.Module | None = None,
                 pyramid_strides: Sequence[int] = (8, 16, 32), pyramid_chs: int = 64, anchor_scale: float = 2.0,
                 ratios: Sequence[float] = (0.5, 1.0, 2.0), num_convs: int = 2, prior: float = 0.01) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, backbone=backbone,
                         pyramid_strides=pyramid_strides, pyramid_chs=pyramid_chs)
        self.ratios = tuple(float(r) for r in ratios)
        self.anchor_sizes = [[anchor_scale * s * 2 ** (k / 3) for k in range(3)] for s in self.strides]
        self.num_anchors = len(self.ratios) * 3
        self.cls_tower = head_tower(pyramid_chs, num_convs)
        self.box_tower = head_tower(pyramid_chs, num_convs)
        self.cls_out = nn.Conv2d(pyramid_chs, self.num_anchors * num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(pyramid_chs, self.num_anchors * 4, 3, padding=1)
        init_head(nn.ModuleList([self.cls_tower, self.box_tower, self.cls_out, self.box_out]), prior=prior,
                  cls_layer=self.cls_out)

    def anchors(self, feature_sizes: Sequence[tuple[int, int]], *, device: torch.device | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Anchors ``(N, 4)`` xyxy for pyramid maps of the given sizes."""
        return anchor_grid(feature_sizes, self.strides, self.anchor_sizes, self.ratios, device=device, dtype=dtype)

    def forward_head(self, pyramid: list[torch.Tensor], image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        logits = flatten_levels([self.cls_out(self.cls_tower(p)) for p in pyramid], self.num_classes)  # (B, N, K)
        deltas = flatten_levels([self.box_out(self.box_tower(p)) for p in pyramid], 4)  # (B, N, 4)
        anchors = self.anchors([tuple(p.shape[-2:]) for p in pyramid], device=logits.device)  # (N, 4)
        return {"logits": logits, "deltas": deltas, "anchors": anchors.expand(logits.shape[0], -1, -1)}

    @staticmethod
    def decode(output: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes ``(B, N, 4)`` xyxy and class probabilities ``(B, N, K)``."""
        boxes = decode_boxes(output["deltas"].float(), output["anchors"].float())
        return boxes, output["logits"].float().sigmoid()


_TINY = dict(task="detection", input_size=(1, 64, 64), test_input_size=(1, 64, 64), min_input_size=32, paper=PAPER)


@register_model(**_TINY)
def retinanet_tiny(*, num_classes: int = 10, in_chans: int = 1, **kwargs) -> RetinaNet:
    """RetinaNet on a 4-stage, one-block-per-stage ResNet (widths 16-128), P3-P5, for 64 px MNIST scenes."""
    return RetinaNet(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(task="detection", input_size=(3, 512, 512), test_input_size=(3, 64, 64), min_input_size=32,
                paper=PAPER)
def retinanet_resnet18(*, num_classes: int = 80, in_chans: int = 3, **kwargs) -> RetinaNet:
    """RetinaNet on ResNet-18 with the paper's anchor size (4 strides) and 4-conv towers, P3-P5, 256-wide FPN."""
    backbone = model_entrypoint("resnet18")(num_classes=0, in_chans=in_chans)
    kwargs = {"anchor_scale": 4.0, "num_convs": 4, "pyramid_chs": 256, **kwargs}
    return RetinaNet(num_classes=num_classes, in_chans=in_chans, backbone=backbone, **kwargs)


"""Mask R-CNN: Faster R-CNN plus a small fully convolutional head that predicts one mask per box.

Paper: He, Gkioxari, Dollar & Girshick, "Mask R-CNN", ICCV 2017. Built on :class:`~.faster_rcnn.FasterRCNN`
(RPN, RoIAlign, box head) with the FPN mask head of the paper's Fig. 4 (right), made smaller.

**Mask head.** RoIAlign cuts ``14 x 14`` features from each box's pyramid level (FPN Eq. 1, as the box head),
``mask_convs`` 3x3 convs with ReLU (paper: 4 x 256 channels; ours 2 x 32), a 2x2 transposed conv of stride 2
with ReLU to ``28 x 28``, and a 1x1 conv to one logit map per class, ``mask_logits (B, P, K, 28, 28)``. The
class is decided by the box head; the mask head only says which pixels of the box belong to the object, so
the classes do not compete for a pixel (a per-pixel sigmoid, not a softmax over classes: paper Table 2b, 5.5
points of mask AP).

**Loss** (paper Sec. 3, :class:`dltricks.tasks.detection.losses.MaskRCNNLoss`): on the foreground proposals
that the box head's sampler drew, the binary cross-entropy of the matched class's map against the target

    L_mask = mean over foreground RoIs r and the 28 x 28 cells (i, j) of BCE(sigmoid(m_r,k_r[i, j]), t_r[i, j])

where ``t_r`` is the ground-truth mask of the RoI's box, cut out by RoIAlign to ``28 x 28`` and thresholded at
0.5 (:func:`~dltricks.tasks.detection.losses.mask_targets`). The total is ``L_rpn + L_cls + L_box + L_mask``.

**Which boxes.** In training mode the mask head reads the proposals (as the box head). In evaluation mode it
reads each proposal's refined box of its highest-scoring class, as the paper's inference does (Sec. 3.1:
the mask branch runs on the detection boxes); ``mask_boxes (B, P, 4)`` in the output says which boxes the
masks belong to. :meth:`postprocess` selects detections as Faster R-CNN does, takes the mask of each
detection's class, resizes it to its box and pastes it into the image (:func:`paste_masks`), thresholded at
0.5. Unlike the paper, every proposal gets a mask in both modes (fixed shapes, no data-dependent
selection); the paper's test-time mask branch runs on the 100 best detections only.

Measured (``benchmarks/detection_cells.py``, ``isbi2012-cells`` validation tiles, one seed, 1 CPU thread): after
15 epochs (180 steps of 8 tiles, 182 s of CPU time) box mAP 0.161 / AP50 0.410 and mask mAP 0.127 / AP50
0.362; ``faster_rcnn_tiny`` with the same recipe reached box mAP 0.150 / AP50 0.393. After 30 epochs (391 s):
box mAP 0.197 / AP50 0.471, mask mAP 0.194 / AP50 0.454. The mask head makes a training step about 4 times
as costly (1.02 s against 0.24 s of CPU), because it runs on every proposal.
Details in ``docs/detection.md`` ("Cell instances and Mask R-CNN").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dltricks.errors import ModelError
from dltricks.layers.boxes import clip_boxes
from dltricks.models._registry import register_model
from dltricks.models.detection.base import select_detections
from dltricks.models.detection.faster_rcnn import FasterRCNN

__all__ = ["MaskRCNN", "mask_rcnn_tiny", "paste_masks"]

PAPER = "He et al., Mask R-CNN, ICCV 2017"


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], *,
                threshold: float = 0.5) -> torch.Tensor:
    """Binary image masks ``(n, H, W)`` from box-frame probabilities ``masks (n, M, M)`` and ``boxes (n, 4)``.

    Pixel ``(y, x)`` (centre ``(x + 0.5, y + 0.5)``) reads the box-frame map bilinearly at the same relative
    position in its box (0 outside the box), then ``>= threshold``.
    """
    H, W = image_size
    n = len(masks)
    if n == 0:
        return torch.zeros(0, H, W, dtype=torch.bool, device=masks.device)
    boxes = boxes.float()
    width = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-3)[:, None]  # (n, 1)
    height = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-3)[:, None]
    xs = torch.arange(W, device=masks.device, dtype=torch.float32) + 0.5
    ys = torch.arange(H, device=masks.device, dtype=torch.float32) + 0.5
    # Normalised map coordinates, -1 and 1 at the box edges (grid_sample with align_corners=False).
    gx = 2 * (xs[None] - boxes[:, :1]) / width - 1  # (n, W)
    gy = 2 * (ys[None] - boxes[:, 1:2]) / height - 1  # (n, H)
    grid = torch.stack([gx[:, None, :].expand(n, H, W), gy[:, :, None].expand(n, H, W)], dim=-1)  # (n, H, W, 2)
    pasted = F.grid_sample(masks[:, None].float(), grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)  # (n, 1, H, W)
    return pasted[:, 0] >= threshold


class MaskRCNN(FasterRCNN):
    """Faster R-CNN with a mask head (see the module docstring).

    Args:
        mask_roi_size: RoIAlign side for the mask head (masks are twice as large).
        mask_convs, mask_chs: number and width of the mask head's 3x3 convs.
        **kwargs: as :class:`FasterRCNN`.
    """

    def __init__(self, *, mask_roi_size: int = 14, mask_convs: int = 2, mask_chs: int = 32, **kwargs) -> None:
        for key, value in (("mask_roi_size", mask_roi_size), ("mask_convs", mask_convs), ("mask_chs", mask_chs)):
            if value < 1:
                raise ModelError(f"MaskRCNN needs {key} >= 1, got {value}")
        super().__init__(**kwargs)
        self.mask_roi_size = mask_roi_size
        layers: list[nn.Module] = []
        channels = self.neck.smooth[0].out_channels
        for _ in range(mask_convs):
            layers += [nn.Conv2d(channels, mask_chs, 3, padding=1), nn.ReLU(inplace=True)]
            channels = mask_chs
        layers += [nn.ConvTranspose2d(channels, mask_chs, 2, stride=2), nn.ReLU(inplace=True)]
        self.mask_head = nn.Sequential(*layers)
        self.mask_out = nn.Conv2d(mask_chs, self.num_classes, 1)
        # Detectron's initialisation: MSRA fill for the convs, N(0, 0.001) for the mask logits (p = 0.5 at start).
        for m in self.mask_head.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_out.weight, std=0.001)
        nn.init.zeros_(self.mask_out.bias)

    def forward_head(self, pyramid: list[torch.Tensor], image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        out = super().forward_head(pyramid, image_size)
        B, P = out["proposals"].shape[:2]
        if self.training:
            mask_boxes = out["proposals"]
        else:  # each proposal's refined box of its best class (the paper's inference)
            boxes, scores = self.decode(out)  # (B, P, K, 4), (B, P, K)
            best = scores.argmax(-1)[..., None, None].expand(-1, -1, 1, 4)  # (B, P, 1, 4)
            mask_boxes = clip_boxes(boxes.gather(2, best)[:, :, 0], image_size).detach()  # (B, P, 4)
        features = self.pool(pyramid, mask_boxes, output_size=self.mask_roi_size)  # (B P, C, 14, 14)
        logits = self.mask_out(self.mask_head(features))  # (B P, K, 28, 28)
        M = logits.shape[-1]
        out["mask_boxes"] = mask_boxes
        out["mask_logits"] = logits.view(B, P, self.num_classes, M, M)
        out["image_size"] = torch.tensor(image_size, device=logits.device).expand(B, 2)
        return out

    @classmethod
    def postprocess(cls, output: dict[str, torch.Tensor], *, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                    max_detections: int = 100) -> list[tuple[torch.Tensor, ...]]:
        """Per-image ``(boxes (n, 4), scores (n,), labels (n,), masks (n, H, W) bool)``."""
        boxes, scores = cls.decode(output)
        H, W = (int(v) for v in output["image_size"][0])
        results = []
        for b in range(len(boxes)):
            det_boxes, det_scores, labels, locations = select_detections(
                boxes[b], scores[b], score_thresh=score_thresh, nms_thresh=nms_thresh,
                max_detections=max_detections, return_locations=True)
            probs = output["mask_logits"][b, locations, labels].float().sigmoid()  # (n, 28, 28)
            masks = paste_masks(probs, output["mask_boxes"][b, locations], (H, W))
            results.append((det_boxes, det_scores, labels, masks))
        return results


@register_model(task="detection", input_size=(1, 64, 64), test_input_size=(1, 64, 64), min_input_size=32,
                paper=PAPER)
def mask_rcnn_tiny(*, num_classes: int = 10, in_chans: int = 1, pyramid_strides: Sequence[int] = (4, 8, 16),
                   **kwargs) -> MaskRCNN:
    """Mask R-CNN: ``faster_rcnn_tiny`` plus a mask head (RoIAlign 14x14, 2 x 32-channel 3x3 convs, a stride-2
    transposed conv, per-class 28x28 sigmoid masks)."""
    return MaskRCNN(num_classes=num_classes, in_chans=in_chans, pyramid_strides=pyramid_strides, **kwargs)

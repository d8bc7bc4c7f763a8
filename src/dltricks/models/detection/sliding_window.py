"""Sliding-window detection: a small CNN classifies every window of a fixed grid of positions, sizes and shapes.

The baseline that the detection part of the lecture starts from (``../shared/sources/003_5c6ca2dbabe6feb5.txt``,
lines 1939-1952: the Viola-Jones scan with a CNN as the classifier, which also predicts a shift of the window's
boundary; R-CNN then classifies a few thousand proposals instead of every window). Papers: Viola & Jones 2001
and Dalal & Triggs 2005 (windows over positions and scales, NMS); Sermanet et al., "OverFeat", ICLR 2014,
Sec. 4 (the same classifier applied convolutionally shares the computation: the cure this baseline does not use).

**Windows.** Windows of each height in ``window_sizes`` (default 16, 20, 24 and 28 px: the digit sizes of the
MNIST-detection scenes) and each width-to-height ratio in ``aspect_ratios`` (default 0.4, 0.7 and 1: digits
are narrow; with square windows alone a 1 or a 7 has no window at IoU 0.5 and is never taught) at every
``window_stride`` (4 px) inside the image: 1,793 windows on a 64 px scene. Each window is cut out of the
*image* and resized to ``crop`` x ``crop`` pixels (16) by bilinear sampling (RoIAlign with spatial scale 1,
:func:`dltricks.layers.roi.roi_align_batched`).

**Classifier.** A LeNet-style CNN (three 3x3 conv + ReLU layers of 16, 32 and 64 channels, the first two
followed by 2x2 max pooling, the 4 x 4 map flattened into a 128-wide fully connected layer) gives ``K + 1``
logits per window, the last one background, and (``regress=True``, the lecture's "boundary shift", OverFeat
Sec. 4.3) four class-agnostic box deltas relative to the window (:func:`dltricks.layers.boxes.encode_boxes`
with Fast R-CNN's weights 10, 10, 5, 5). With ``regress=False`` a detection is the window itself.

**Training** (:class:`dltricks.tasks.detection.losses.SlidingWindowLoss`, through ``fit`` like every detector):
a window whose IoU with a ground-truth box is >= 0.5 takes that box's class, every other window is background
(R-CNN's fine-tuning rule). Classifying all windows of 32 scenes costs several seconds of CPU per training step
and few of them touch a digit, so a training step classifies ``train_windows`` (128) windows per image, drawn
at random: at most a quarter foreground, at most half near misses (background windows that overlap a digit by
IoU >= 0.1: Fast R-CNN's [0.1, 0.5) background, "a heuristic for hard example mining"), the rest other
background. The model gets the targets in training for this (``takes_targets``: ``fit`` calls
``model(x, targets=y)``). The loss is the mean cross-entropy of those windows plus the smooth-L1 loss of the
foreground windows' deltas. Evaluation and prediction classify every window. **Prediction**: softmax scores
per class, class-wise NMS at IoU 0.5, as the other detectors.

**Design, measured** (overfitting two scenes, seed 0): with square windows only and an ignored band of IoU
0.3-0.5 (R-CNN's SVM rule), partial views of a digit were never taught to be background, scored as high as
the digit and survived NMS: AP50 0.42-0.47 after 25-40 steps. Narrow windows, no ignored band and the near-miss
sampling give AP50 1.0 after 100 steps. The global average pooling first used in the classifier left it at
0 % accuracy on the digits' windows after one epoch (the stroke layout is the digit): hence the flattened map.

**Cost.** One forward pass of a 64 px scene is 1,793 crops through the classifier. The measured comparison
with a single-shot detector is the tip ``det.sliding-window`` (docs/detection.md).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from dltricks.errors import ModelError
from dltricks.layers.boxes import box_iou, decode_boxes
from dltricks.layers.roi import roi_align_batched
from dltricks.models._registry import register_model
from dltricks.models.detection.base import DenseDetector, sample_balanced
from dltricks.models.detection.faster_rcnn import ROI_BOX_WEIGHTS

__all__ = ["SlidingWindow", "sliding_window_tiny", "window_grid", "label_windows"]

PAPER = ("Dalal & Triggs, Histograms of Oriented Gradients for Human Detection, CVPR 2005 (sliding windows); "
         "Sermanet et al., OverFeat, ICLR 2014")


def window_grid(image_size: tuple[int, int], sizes: Sequence[int], stride: int, *, ratios: Sequence[float] = (1.0,),
                device: torch.device | None = None) -> torch.Tensor:
    """Every window ``(N, 4)`` xyxy of each height in ``sizes`` and width ``round(height * ratio)`` for each ratio
    in ``ratios`` whose top-left corner lies on the ``stride`` grid and which fits inside the image; heights in
    order, then ratios, then rows, then columns."""
    H, W = image_size
    out = []
    for h in sizes:
        for r in ratios:
            w = max(1, round(h * r))
            if h > H or w > W:  # the window does not fit
                continue
            ys = torch.arange(0, H - h + 1, stride, device=device, dtype=torch.float32)
            xs = torch.arange(0, W - w + 1, stride, device=device, dtype=torch.float32)
            y, x = torch.meshgrid(ys, xs, indexing="ij")  # (n_y, n_x) each
            y, x = y.reshape(-1), x.reshape(-1)
            out.append(torch.stack([x, y, x + w, y + h], dim=1))  # (n_y n_x, 4)
    return torch.cat(out) if out else torch.zeros(0, 4, device=device)


def label_windows(windows: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                  fg_iou: float = 0.5, bg_iou: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class of each window ``(N,)`` (``num_classes``: background, ``-1``: ignored), the index of its best
    box (``-1`` without boxes) and that IoU (0 without boxes): IoU >= ``fg_iou`` takes the box's class,
    < ``bg_iou`` is background, in between is ignored (the defaults, 0.5 and 0.5, are R-CNN's fine-tuning rule:
    no window is ignored)."""
    N = len(windows)
    classes = torch.full((N,), num_classes, dtype=torch.long, device=windows.device)
    best = torch.full((N,), -1, dtype=torch.long, device=windows.device)
    best_iou = torch.zeros(N, device=windows.device)
    if len(boxes):
        best_iou, best = box_iou(boxes.to(windows.dtype), windows).max(dim=0)  # (N,) each
        classes = torch.where(best_iou >= fg_iou, labels.long()[best], classes)
        classes = torch.where((best_iou >= bg_iou) & (best_iou < fg_iou), torch.full_like(classes, -1), classes)
    return classes, best, best_iou


class SlidingWindow(nn.Module):
    """A window classifier applied at every position and size (see the module docstring).

    Args:
        num_classes: object classes (a background logit is added).
        in_chans: image channels.
        window_sizes: window heights in pixels; aspect_ratios: window widths as fractions of the height;
        window_stride: step between window corners in pixels.
        crop: side in pixels that every window is resized to before classification.
        widths: channels of the three conv layers; hidden: width of the fully connected layer.
        regress: also predict a box shift per window (otherwise the window is the box).
        train_windows: windows classified per image in a training step that gets the targets (``fit`` passes
            them, see :attr:`takes_targets`): at most a quarter foreground, the rest background, drawn at random
            (R-CNN's fine-tuning batch); 0, or no targets, classifies every window, as at test time.
    """

    #: ``fit`` calls ``model(x, targets=y)`` in training steps (the window sampling needs the boxes).
    takes_targets = True
    #: without gradients, windows classified at once (whole images; bounds the memory of a large batch)
    eval_windows = 8192

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1, window_sizes: Sequence[int] = (16, 20, 24, 28),
                 aspect_ratios: Sequence[float] = (0.4, 0.7, 1.0), window_stride: int = 4, crop: int = 16,
                 widths: Sequence[int] = (16, 32, 64), hidden: int = 128, regress: bool = True,
                 train_windows: int = 128) -> None:
        super().__init__()
        if num_classes < 1:
            raise ModelError(f"a detector needs num_classes >= 1, got {num_classes}")
        if not window_sizes or min(window_sizes) < 4:
            raise ModelError(f"window_sizes must hold sides of at least 4 px, got {tuple(window_sizes)}")
        if window_stride < 1 or crop < 4:
            raise ModelError(f"SlidingWindow needs window_stride >= 1 and crop >= 4, got {window_stride} and {crop}")
        if len(widths) != 3:
            raise ModelError(f"widths must give the channels of 3 conv layers, got {tuple(widths)}")
        self.num_classes, self.in_chans = num_classes, in_chans
        if not aspect_ratios or min(aspect_ratios) <= 0:
            raise ModelError(f"aspect_ratios must be positive width / height ratios, got {tuple(aspect_ratios)}")
        self.window_sizes, self.window_stride, self.crop = tuple(int(s) for s in window_sizes), window_stride, crop
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.min_input_size = max(self.window_sizes)
        if train_windows < 0:
            raise ModelError(f"train_windows must be >= 0 (0: every window), got {train_windows}")
        self.train_windows = train_windows
        c1, c2, c3 = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, c1, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(inplace=True),
            # the digit's identity is in the layout of the strokes: keep the 4 x 4 map (no global pooling)
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(c3 * 16, hidden), nn.ReLU(inplace=True))
        self.cls_out = nn.Linear(hidden, num_classes + 1)
        self.box_out = nn.Linear(hidden, 4) if regress else None
        if self.box_out is not None:  # start at the window itself
            nn.init.normal_(self.box_out.weight, std=0.001)
            nn.init.zeros_(self.box_out.bias)

    def windows(self, image_size: tuple[int, int], *, device: torch.device | None = None) -> torch.Tensor:
        """The windows ``(N, 4)`` of an image of this size."""
        return window_grid(image_size, self.window_sizes, self.window_stride, ratios=self.aspect_ratios, device=device)

    def sample_windows(self, windows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``train_windows`` windows per image ``(B, n, 4)`` from ``windows (N, 4)`` and the padded targets
        ``(B, M, 5)``: foreground (IoU >= 0.5) up to a quarter, near misses (background at IoU >= 0.1) up to
        half, other background for the rest."""
        if isinstance(targets, (tuple, list)):  # (boxes, instance masks) of a data set with masks
            targets = targets[0]
        out = []
        for t in targets:
            t = t[t[:, 4] >= 0]
            classes, _, iou = label_windows(windows, t[:, :4], t[:, 4], self.num_classes)
            background = classes == self.num_classes
            pos, near = sample_balanced((classes >= 0) & (classes < self.num_classes), background & (iou >= 0.1),
                                        num=self.train_windows * 3 // 4, positive_fraction=1 / 3)
            far = background & (iou < 0.1)
            far = far.nonzero().squeeze(1)
            far = far[torch.randperm(len(far), device=far.device)[:self.train_windows - len(pos) - len(near)]]
            index = torch.cat([pos, near, far])
            if len(index) < self.train_windows:  # too few labelled windows: top up with ignored ones
                rest = torch.ones(len(windows), dtype=torch.bool, device=windows.device)
                rest[index] = False
                extra = rest.nonzero().squeeze(1)
                index = torch.cat([index, extra[torch.randperm(len(extra), device=extra.device)]])
            out.append(windows[index[:self.train_windows]])
        return torch.stack(out)  # (B, n, 4)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ModelError(f"SlidingWindow expects input of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ModelError(f"SlidingWindow got an empty batch (input of shape {tuple(x.shape)}); pass at least "
                             "one image")
        if min(x.shape[-2:]) < self.min_input_size:
            m = self.min_input_size
            raise ModelError(f"SlidingWindow needs input of at least {m}x{m} pixels (its largest window), "
                             f"got {x.shape[-2]}x{x.shape[-1]}")
        B = x.shape[0]
        windows = self.windows(tuple(x.shape[-2:]), device=x.device)  # (N, 4)
        if self.training and targets is not None and 0 < self.train_windows < len(windows):
            windows = self.sample_windows(windows, targets)  # (B, n, 4)
        else:
            windows = windows[None].expand(B, -1, -1)  # (B, N, 4)
        N = windows.shape[1]
        # Without gradients (evaluation, predict) a few images at a time: the activations of every window of a
        # batch of 500 scenes would take about 15 GB (dltricks eval's default batch was killed for memory).
        # Not while exporting (torch.export / ONNX): a Python loop over the batch would fix the batch size.
        step = max(1, self.eval_windows // max(N, 1))
        chunked = not torch.is_grad_enabled() and isinstance(B, int) and B > step and not torch.compiler.is_compiling()

        def classify(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
            crops = roi_align_batched(images, boxes.to(images.dtype), self.crop, spatial_scale=1.0,
                                      sampling_ratio=2)  # (b, N, C, crop, crop)
            return self.features(crops.flatten(0, 1))  # (b N, hidden)

        # Unchunked (training, exporting, small batches) the batch is never sliced, so its size stays symbolic.
        hidden = (torch.cat([classify(x[i:i + step], windows[i:i + step]) for i in range(0, B, step)]) if chunked
                  else classify(x, windows))  # (B N, hidden)
        logits = self.cls_out(hidden).view(B, N, self.num_classes + 1)  # background last
        out = {"windows": windows, "logits": logits[..., :-1],
               "background_logits": logits[..., -1:]}
        if self.box_out is not None:
            out["window_deltas"] = self.box_out(hidden).view(B, N, 4)
        return out

    @staticmethod
    def decode(output: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes ``(B, N, 4)`` (the windows shifted by their deltas) and softmax class scores ``(B, N, K)``."""
        logits = torch.cat([output["logits"], output["background_logits"]], dim=-1).float()  # (B, N, K + 1)
        boxes = output["windows"].float()
        if "window_deltas" in output:
            boxes = decode_boxes(output["window_deltas"].float(), boxes, ROI_BOX_WEIGHTS)
        return boxes, logits.softmax(-1)[..., :-1]

    # Post-processing is the dense detectors' (score threshold, top-k, class-wise NMS, at most 100 boxes).
    predict = DenseDetector.predict
    postprocess = DenseDetector.__dict__["postprocess"]  # the classmethod itself: it calls this class's decode


@register_model(task="detection", input_size=(1, 64, 64), test_input_size=(1, 64, 64), min_input_size=28,
                paper=PAPER)
def sliding_window_tiny(*, num_classes: int = 10, in_chans: int = 1, **kwargs) -> SlidingWindow:
    """Sliding-window detector for 64 px MNIST scenes: windows 16-28 px high, 0.4-1x as wide, every 4 px (1,793
    per scene), each resized to 16 px and classified, with a box shift, by a 3-conv CNN and one FC layer."""
    return SlidingWindow(num_classes=num_classes, in_chans=in_chans, **kwargs)

"""Tips about object detection: RoIAlign tested on the detection code itself (:mod:`dltricks.layers.roi`); the focal
loss and anchor-free detection measured on detectors trained on the MNIST-detection scenes."""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import torch

from dltricks.evidence import LECTURE, AllOf, Context, Effect, Evidence, Exact, NonInferior, tip
from dltricks.layers import roi
from dltricks.models.detection import base, faster_rcnn, fcos, retinanet, sliding_window
from dltricks.tasks.detection import losses

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


# --------------------------------------------------------------------------------------------- trained detectors
# One-stage detectors on the MNIST-detection scenes (64 px canvases of real digits, dltricks.data.detection) through
# `fit`, with the recipe of benchmarks/detection_mnist.py; COCO AP from the maintained evaluator's protocol
# (dltricks.tasks.detection.metrics, tested against pycocotools). Runs are memoised so that the two tips that need
# the focal-loss RetinaNet train it once per seed.
_DET_RECIPE = {"optim": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4},
               "schedule": {"name": "cosine", "warmup_steps": 50},
               "train": {"batch_size": 32, "eval_batch_size": 100, "grad_clip": 10.0, "device": "cpu"},
               "checkpoint": {"every_epochs": 0, "keep_best": False}}


@functools.lru_cache(maxsize=64)
def _detector_run(model_name: str, loss: str, seed: int, epochs: int, scenes: int,
                  options: tuple[tuple[str, Any], ...] = ()) -> dict[str, float]:
    """Train ``model_name`` (with model ``options``) on ``scenes`` MNIST-detection training scenes for ``epochs``
    epochs with ``loss`` ("focal": the paper's gamma 2, alpha 0.25; "ce": plain binary cross-entropy, gamma 0 and
    no alpha weighting, with the same prior-probability initialisation of the classifier) and score it on the
    500 validation scenes; ``latency_ms``: CPU time of ``predict`` (forward, decoding, NMS) on one 64 px scene,
    one thread, median over 20 validation scenes."""
    from dltricks import create_model
    from dltricks.tasks import build_task
    from dltricks.tasks.detection.losses import RetinaNetLoss
    from dltricks.train import fit

    recipe = {**_DET_RECIPE, "train": {**_DET_RECIPE["train"], "epochs": epochs, "seed": seed, "eval_every": epochs}}
    task = build_task("mnist-detection", batch_size=32, eval_batch_size=100, seed=seed, train_scenes=scenes)
    if loss == "ce":
        task.loss.retinanet = RetinaNetLoss(task.num_classes, alpha=-1.0, gamma=0.0)
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=task.num_classes, in_chans=1, **dict(options))
    t0 = time.perf_counter()
    result = fit(model, task, recipe, run_dir=None, progress=False)
    final = result.final
    return {"map": float(final.get("val_map", float("nan"))), "ap50": float(final.get("val_ap50", float("nan"))),
            "ap_small": float(final.get("val_ap_small", float("nan"))), "seconds": time.perf_counter() - t0,
            "steps": float(final.get("steps", 0)), "latency_ms": _predict_latency(result.model, task),
            "train_loss": float(result.history[-1].get("train_loss", float("nan")))}


def _predict_latency(model: torch.nn.Module, task: Any, scenes: int = 20) -> float:
    """Median CPU milliseconds of ``model.predict`` on one validation scene at a time (one thread)."""
    import statistics

    model = model.eval().to(memory_format=torch.contiguous_format)
    times = []
    with torch.inference_mode():
        for x, _ in task.val_loader.iter_epoch(0):
            for i in range(min(scenes, len(x))):
                image = x[i:i + 1]
                model.predict(image)  # warm-up
                t0 = time.process_time()
                for _ in range(3):
                    model.predict(image)
                times.append((time.process_time() - t0) / 3)
            break
    return 1e3 * statistics.median(times)


def _detector_arms(ctx: Context, ev: Evidence, arms: dict[str, tuple[Any, ...]]) -> None:
    epochs, scenes = int(ctx["epochs"]), int(ctx["scenes"])
    for seed in ctx.seeds:
        for arm, (model_name, loss, *options) in arms.items():
            ctx.report(f"{arm}, seed {seed}")
            run = _detector_run(model_name, loss, seed, epochs, scenes, tuple(options[0]) if options else ())
            ev.add(arm, **{k: v for k, v in run.items() if k != "steps"})
            # A detector that finds (almost) nothing did not train: the comparison would be meaningless.
            ev.record_health(arm, "" if run["ap50"] > 0.05 else f"did not train (AP50 {run['ap50']:.3f})")
            ev.budget = {"epochs": epochs, "training scenes": scenes, "optimizer steps": int(run["steps"]),
                         "batch": 32}
    ev.setup = (f"MNIST-detection scenes (64 px canvases of real digits): {scenes} training scenes, {epochs} epochs, "
                "batch 32, AdamW 2e-3 with cosine decay and 50 warm-up steps, clipping at 10; COCO AP on the 500 "
                "validation scenes built from digits never seen in training")


@tip(id="det.focal-loss", title="Focal loss (RetinaNet)",
     claim="The focal loss lets a one-stage detector learn from every anchor without hard-negative mining: the same "
           "RetinaNet trained with the focal loss (gamma 2, alpha 0.25) reaches a higher COCO AP than with plain "
           "binary cross-entropy (gamma 0, no class weighting), both starting from the paper's foreground prior "
           "of 0.01. (The lecture's wider claim, closing the gap to two-stage detectors, is not measured here.)",
     cite=LECTURE.at(2040, 2047, "RetinaNet"), source="Lin et al., Focal Loss for Dense Object Detection, ICCV 2017",
     section=DET, exercises=(losses, retinanet), quick=None, full={"epochs": 3, "scenes": 4000},
     seeds={"quick": 2, "full": 5}, budget_s=1500, shares="det-mnist",
     metrics={"map": "COCO AP@[.5:.95] on the validation scenes", "ap50": "COCO AP at IoU 0.5"},
     rule=Effect(metric="map", treatment="focal loss", control="cross-entropy", min_effect=0.0))
def focal_vs_cross_entropy(ctx: Context) -> Evidence:
    ev = Evidence()
    _detector_arms(ctx, ev, {"focal loss": ("retinanet_tiny", "focal"), "cross-entropy": ("retinanet_tiny", "ce")})
    mean = {k: sum(v["map"]) / len(v["map"]) for k, v in ev.arms.items()}
    ev.headline = f"COCO AP: focal {mean['focal loss']:.3f} vs cross-entropy {mean['cross-entropy']:.3f}"
    return ev


@tip(id="det.anchor-free", title="Anchor-free detection (FCOS)",
     claim="Predicting at each location inside an object its distances to the four sides of the box (FCOS, with "
           "centre-ness) detects without anchor boxes and is not less accurate than the anchor-based RetinaNet on the "
           "same backbone, pyramid and schedule: its COCO AP is at most 0.02 below RetinaNet's.",
     cite=LECTURE.at(2049, 2054, "FCOS"), source="Tian et al., FCOS, ICCV 2019; Lin et al., RetinaNet, ICCV 2017",
     section=DET, exercises=(losses, fcos, retinanet), quick=None, full={"epochs": 3, "scenes": 4000},
     seeds={"quick": 2, "full": 5}, budget_s=1500, shares="det-mnist",
     metrics={"map": "COCO AP@[.5:.95] on the validation scenes", "ap50": "COCO AP at IoU 0.5"},
     rule=NonInferior(metric="map", treatment="FCOS", control="RetinaNet", margin=0.02))
def anchor_free_vs_anchors(ctx: Context) -> Evidence:
    ev = Evidence()
    _detector_arms(ctx, ev, {"FCOS": ("fcos_tiny", "focal"), "RetinaNet": ("retinanet_tiny", "focal")})
    mean = {k: sum(v["map"]) / len(v["map"]) for k, v in ev.arms.items()}
    ev.headline = f"COCO AP: FCOS {mean['FCOS']:.3f} vs RetinaNet {mean['RetinaNet']:.3f}"
    return ev


@tip(id="det.fpn", title="Feature pyramid neck",
     claim="A feature pyramid (top-down path with lateral connections, heads on P3-P5) detects small objects better "
           "than a single-scale head: RetinaNet with its FPN reaches a higher COCO AP on the MNIST-detection scenes "
           "(digits of 10-28 px, all 'small' by COCO's rule) than the same RetinaNet predicting from the stride-16 "
           "map alone, with anchors resized to the digits (anchor scale 1: 16-25 px), same backbone and schedule.",
     cite=(LECTURE.at(2022, 2034, "FPN and its variants"), LECTURE.at(1779, 1783, "FPN as a neck")),
     source="Lin et al., Feature Pyramid Networks for Object Detection, CVPR 2017 (Table 1: single-scale vs FPN)",
     section=DET, exercises=(base, retinanet, losses), quick=None, full={"epochs": 3, "scenes": 4000},
     seeds={"quick": 2, "full": 5}, budget_s=900, shares="det-fpn",
     metrics={"map": "COCO AP@[.5:.95] on the validation scenes", "ap_small": "COCO AP on objects under 32x32 px"},
     rule=Effect(metric="map", treatment="FPN (P3-P5)", control="single scale (P4)", min_effect=0.0))
def fpn_vs_single_scale(ctx: Context) -> Evidence:
    ev = Evidence()
    _detector_arms(ctx, ev, {"FPN (P3-P5)": ("retinanet_tiny", "focal"),
                             "single scale (P4)": ("retinanet_tiny", "focal",
                                                   (("pyramid_strides", (16,)), ("anchor_scale", 1.0)))})
    mean = {k: sum(v["map"]) / len(v["map"]) for k, v in ev.arms.items()}
    ev.headline = f"COCO AP: FPN {mean['FPN (P3-P5)']:.3f} vs single scale {mean['single scale (P4)']:.3f}"
    return ev


@tip(id="det.single-shot", title="Single-shot detectors (SSD, YOLO)",
     claim="A one-stage detector (RetinaNet) predicts faster than a two-stage one (Faster R-CNN with the same "
           "backbone and pyramid): lower CPU latency per image (forward, decoding and NMS, one thread); the two-stage "
           "detector's usual accuracy lead is tested at the same training budget (375 steps), where it need not hold.",
     cite=LECTURE.at(1997, 2003, "SSD / YOLO"), source="Liu et al., SSD, ECCV 2016; Ren et al., Faster R-CNN, 2015",
     section=DET, exercises=(base, faster_rcnn, retinanet, losses), quick=None, full={"epochs": 3, "scenes": 4000},
     seeds={"quick": 2, "full": 5}, budget_s=1500, shares="det-two-stage",
     metrics={"map": "COCO AP@[.5:.95] on the validation scenes", "latency_ms": "CPU ms per 64 px scene, batch 1"},
     rule=AllOf((Effect(metric="latency_ms", treatment="RetinaNet (one stage)", control="Faster R-CNN (two stages)",
                        higher_is_better=False, min_effect=0.0),
                 Effect(metric="map", treatment="Faster R-CNN (two stages)", control="RetinaNet (one stage)",
                        min_effect=0.0))))
def one_stage_vs_two_stage(ctx: Context) -> Evidence:
    ev = Evidence()
    _detector_arms(ctx, ev, {"RetinaNet (one stage)": ("retinanet_tiny", "focal"),
                             "Faster R-CNN (two stages)": ("faster_rcnn_tiny", "focal")})
    mean = {k: (sum(v["map"]) / len(v["map"]), sum(v["latency_ms"]) / len(v["latency_ms"]))
            for k, v in ev.arms.items()}
    ev.headline = "; ".join(f"{k}: AP {m:.3f}, {lat:.1f} ms" for k, (m, lat) in mean.items())
    return ev


@tip(id="det.sliding-window", title="Sliding windows vs a single-shot detector",
     claim="Classifying every window of a grid of positions, sizes and shapes with a CNN (the detector before "
           "R-CNN, with a box shift per window) is far slower than a single-shot detector that shares one "
           "convolutional pass over the image, at no better accuracy: the sliding-window detector's CPU latency "
           "per scene is at least 3x RetinaNet's, and RetinaNet's COCO AP is at most 0.02 below it, both trained "
           "on the same scenes with the same schedule.",
     cite=LECTURE.at(1939, 1952, "sliding-window detector, then proposals"),
     source="Sermanet et al., OverFeat, ICLR 2014 (Sec. 4.1: the cost of windows, shared computation); "
            "Girshick et al., R-CNN, CVPR 2014; Lin et al., RetinaNet, ICCV 2017",
     section=DET, exercises=(sliding_window, retinanet, losses), quick=None, full={"epochs": 3, "scenes": 4000},
     seeds={"quick": 2, "full": 5}, budget_s=1500, shares="det-mnist",
     metrics={"map": "COCO AP@[.5:.95] on the validation scenes", "latency_ms": "CPU ms per 64 px scene, batch 1",
              "log2_slowdown": "log2(arm latency / RetinaNet latency), same seed (RetinaNet: 0)"},
     rule=AllOf((Effect(metric="log2_slowdown", treatment="sliding window", control="RetinaNet (one stage)",
                        min_effect=math.log2(3)),
                 NonInferior(metric="map", treatment="RetinaNet (one stage)", control="sliding window",
                             margin=0.02))))
def sliding_window_vs_single_shot(ctx: Context) -> Evidence:
    ev = Evidence()
    _detector_arms(ctx, ev, {"sliding window": ("sliding_window_tiny", "focal"),
                             "RetinaNet (one stage)": ("retinanet_tiny", "focal")})
    lat = {k: v["latency_ms"] for k, v in ev.arms.items()}
    ev.arms["sliding window"]["log2_slowdown"] = [math.log2(a / b) for a, b in
                                                  zip(lat["sliding window"], lat["RetinaNet (one stage)"])]
    ev.arms["RetinaNet (one stage)"]["log2_slowdown"] = [0.0] * len(lat["RetinaNet (one stage)"])
    windows = len(sliding_window.window_grid((64, 64), (16, 20, 24, 28), 4, ratios=(0.4, 0.7, 1.0)))
    ev.setup += (f"; sliding window: sliding_window_tiny, {windows} windows per scene (heights 16-28 px, widths "
                 "0.4-1x, every 4 px), each resized to 16 px and classified with a box shift by a 3-conv CNN, "
                 "128 windows per scene per training step; latency: CPU time of predict on one scene, one thread")
    mean = {k: (sum(v["map"]) / len(v["map"]), sum(v["latency_ms"]) / len(v["latency_ms"]))
            for k, v in ev.arms.items()}
    ev.headline = "; ".join(f"{k}: AP {m:.3f}, {lat_ms:.1f} ms" for k, (m, lat_ms) in mean.items())
    return ev

"""Tips on learning from unlabelled images: semi-supervised learning and unsupervised domain adaptation.

Both experiments train :class:`~dltricks.experiments.training.TinyCNN` with :func:`dltricks.train.fit`, whose
``unlabelled=`` option adds the unlabelled loss term of :mod:`dltricks.train.unlabelled` to each step.

* Semi-supervised: the embedded MNIST training split (8,000 images) with ``labels`` of its images kept labelled
  (a class-stratified draw with seed 0, :func:`~dltricks.train.unlabelled.split_labelled`: every class keeps
  its share, 9 to 11 images per class for 100 labels) and the rest used without their labels; accuracy on the
  2,000 validation images. Arms: supervised only (the same steps on the labelled images alone),
  pseudo-labelling, mean teacher, FixMatch.
* Domain adaptation: source MNIST (``source`` labelled training images), target the 1,797 scikit-learn 8x8
  digits in MNIST's frame (:mod:`dltricks.data.shift`), split class-balanced in half: the adaptation methods see
  the images (never the labels) of one half, accuracy is measured on the other half. Arms: source only, AdaBN
  (the source-only model with target BatchNorm statistics), CORAL, DANN, self-training (pseudo-labels on the
  target images). Every arm of a seed starts from the same initialisation and sees the same source batches.

docs/semi-supervised.md and docs/domain-adaptation.md have the tables.
"""

from __future__ import annotations

import time
from typing import Any

import torch

import dltricks.data.shift
import dltricks.layers.grad_reverse
import dltricks.train.unlabelled
from dltricks.data.mnist import load_mnist_embedded
from dltricks.data.shift import as_float, load_sklearn_digits, split_target
from dltricks.evidence import README, AllOf, Context, Effect, Evidence
from dltricks.experiments.training import TinyCNN, train_tip
from dltricks.train import Unlabelled, fit, prepare
from dltricks.train.unlabelled import adabn, split_labelled

LEARN = "Learning setups"
UNLABELLED_CODE = (dltricks.train.unlabelled, dltricks.layers.grad_reverse, dltricks.data.shift)
SEMI_ARMS = ("supervised only", "pseudo-label", "mean teacher", "FixMatch")
ADAPT_ARMS = ("source only", "AdaBN", "CORAL", "DANN", "self-training")

# The unlabelled term of each arm (UnlabelledConfig keys); the weights and thresholds are the papers' defaults
# where they exist (FixMatch: lambda_u 1, tau 0.95; DANN: gamma 10) and our choice otherwise (mean teacher's
# consistency weight 10 ramped up over 30 % of the steps, with the teacher's decay 0.99 of its paper).
SEMI_OPTIONS: dict[str, dict[str, Any] | None] = {
    "supervised only": None,
    "pseudo-label": {"method": "pseudo-label", "threshold": 0.95, "rampup": 0.3},
    "mean teacher": {"method": "mean-teacher", "weight": 10.0, "rampup": 0.3, "teacher_decay": 0.99},
    "FixMatch": {"method": "fixmatch", "threshold": 0.95},
}
ADAPT_OPTIONS: dict[str, dict[str, Any] | None] = {
    "source only": None,
    "CORAL": {"method": "coral", "weight": 1.0},
    "DANN": {"method": "dann", "weight": 1.0},
    "self-training": {"method": "pseudo-label", "threshold": 0.9, "rampup": 0.3},
}


def _recipe(steps: int, batch_size: int, seed: int) -> dict[str, Any]:
    """SGD with Nesterov momentum 0.9, lr 0.03, weight decay 5e-4 and a cosine schedule (FixMatch's optimizer
    settings), ``steps`` optimizer steps, evaluated once at the end."""
    return {"optim": {"name": "sgd", "lr": 0.03, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
            "schedule": {"name": "cosine"},
            "train": {"steps": steps, "batch_size": batch_size, "seed": seed, "device": "cpu", "eval_every": 10**6}}


def _fit(seed: int, n_train: int, steps: int, batch_size: int, width: int, options: dict[str, Any] | None,
         images: Any, **prepare_options: Any) -> tuple[Any, float]:
    """One TinyCNN trained on the first ``n_train`` (class-balanced, seed 0) embedded-MNIST images, with the
    unlabelled term ``options`` on ``images``; returns the fit result and its wall time."""
    recipe = _recipe(steps, batch_size, seed)
    torch.manual_seed(seed)  # the same initialisation for every arm of a seed
    model, task = prepare(TinyCNN(width=width), "mnist-embedded", recipe, subset=n_train, subset_seed=0,
                          **prepare_options)
    unlabelled = None if options is None else Unlabelled(images, **options, seed=seed)
    t0 = time.perf_counter()
    result = fit(model, task, recipe, unlabelled=unlabelled, progress=False)
    return result, time.perf_counter() - t0


@train_tip(id="learn.semi-supervised", title="Unlabelled images help when labels are scarce",
           claim="With 100 labelled MNIST images (class-stratified, 9 to 11 per class) and the other 7,900 training "
                 "images unlabelled, pseudo-labelling, mean teacher and FixMatch each reach a higher validation "
                 "accuracy than the same network and steps trained on the 100 labelled images alone (quick: TinyCNN "
                 "width 8, 60 steps; full: width 16, 300 steps, 5 seeds).",
           cite=README.at(143, 146, topic="semi-supervised learning"),
           source="Lee 2013 (ICML workshop); Tarvainen & Valpola 2017 (NeurIPS); Sohn et al. 2020 (NeurIPS)",
           section=LEARN, exercises=UNLABELLED_CODE,
           quick={"labels": 100, "steps": 60, "batch_size": 16, "ratio": 2, "width": 8, "val_subset": 500},
           full={"labels": 100, "steps": 300, "batch_size": 32, "ratio": 3, "width": 16, "val_subset": 2000},
           budget_s=20,
           rule=AllOf(tuple(Effect("accuracy", arm, "supervised only", min_effect=0.0) for arm in SEMI_ARMS[1:])))
def semi_supervised(ctx: Context) -> Evidence:
    labels, steps = ctx.get("labels", 100), ctx.get("steps", 60)
    ev = Evidence(setup=f"TinyCNN width {ctx.get('width', 8)}, {labels} labelled embedded-MNIST images (class-"
                        f"stratified), the other {8000 - labels} unlabelled; {steps} steps of "
                        f"{ctx.get('batch_size', 16)} labelled + {ctx.get('ratio', 2)}x as many unlabelled images; "
                        f"accuracy on {ctx.get('val_subset', 500)} validation images")
    _, unlabelled = split_labelled(load_mnist_embedded("train"), labels, seed=0)
    seconds: dict[str, float] = {}
    for seed in ctx.seeds:
        for arm in SEMI_ARMS:
            options = SEMI_OPTIONS[arm]
            options = None if options is None else {**options, "ratio": ctx.get("ratio", 2)}
            result, wall = _fit(seed, labels, steps, ctx.get("batch_size", 16), ctx.get("width", 8), options,
                                unlabelled, val_subset=ctx.get("val_subset", 500))
            seconds[arm] = seconds.get(arm, 0.0) + wall
            ev.add(arm, accuracy=result.final["val_accuracy"], loss=result.final["val_loss"], seconds=wall)
    ev.values["seconds_per_arm"] = seconds
    return ev


def target_accuracy(model: torch.nn.Module, test: Any) -> float:
    """Accuracy of ``model`` (eval mode) on the target test images."""
    model.eval()
    with torch.no_grad():
        return float((model(as_float(test)).argmax(dim=1) == test.labels).float().mean())


@train_tip(id="learn.domain-adaptation", title="Adapting to the target domain beats source-only training",
           claim="A TinyCNN trained on MNIST and tested on the scikit-learn 8x8 handwritten digits (resized into "
                 "MNIST's frame) is more accurate on held-out target images after each of AdaBN, CORAL, DANN and "
                 "self-training with the other half of the target images (unlabelled) than trained on the source "
                 "alone (quick: 1,000 source images, 60 steps; full: 8,000 source images, 300 steps, 5 seeds).",
           cite=README.at(138, 141, topic="domain adaptation"),
           source="Li et al. 2016 (AdaBN); Sun & Saenko 2016 (Deep CORAL); Ganin et al. 2016 (JMLR, DANN); "
                  "Lee 2013 (pseudo-labels)",
           section=LEARN, exercises=UNLABELLED_CODE,
           quick={"source": 1000, "steps": 60, "batch_size": 32, "width": 8},
           full={"source": 8000, "steps": 300, "batch_size": 64, "width": 16},
           budget_s=20,
           rule=AllOf(tuple(Effect("target_accuracy", arm, "source only", min_effect=0.0) for arm in ADAPT_ARMS[1:])))
def domain_adaptation(ctx: Context) -> Evidence:
    n_source, steps = ctx.get("source", 1000), ctx.get("steps", 60)
    adapt, test = split_target(load_sklearn_digits(), seed=0)
    ev = Evidence(setup=f"TinyCNN width {ctx.get('width', 8)}, {n_source} labelled MNIST images, {steps} steps of "
                        f"{ctx.get('batch_size', 32)}; target: {len(adapt)} unlabelled scikit-learn digits to adapt "
                        f"with, {len(test)} held-out ones to test on")
    for seed in ctx.seeds:
        for arm in ADAPT_ARMS:
            if arm == "AdaBN":
                continue  # measured on the source-only model below
            result, wall = _fit(seed, n_source, steps, ctx.get("batch_size", 32), ctx.get("width", 8),
                                ADAPT_OPTIONS[arm], adapt, val_subset=ctx.get("val_subset", 500))
            ev.add(arm, target_accuracy=target_accuracy(result.model, test),
                   source_accuracy=result.final["val_accuracy"], seconds=wall)
            if arm == "source only":
                t0 = time.perf_counter()
                adabn(result.model, adapt)
                ev.add("AdaBN", target_accuracy=target_accuracy(result.model, test),
                       seconds=wall + time.perf_counter() - t0)
    return ev

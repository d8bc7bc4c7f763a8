"""Semi-supervised learning on CIFAR-10 with 4,000 labels (issue 20): the CIFAR arm of ``learn.semi-supervised``.

The labelled-subset tasks of CIFAR-10 are class-balanced draws of the 50,000 training images with seed 0
(:func:`~dltricks.train.unlabelled.split_labelled`, the draw of ``--subset N --subset-seed 0``): 250 labels are
25 images per class, 4,000 labels 400 per class; every other training image is the unlabelled set (49,750 and
46,000 images). This tip uses the 4,000-label task.

Per seed, four arms train the CIFAR-10 testbed's network (``airbench_cifar`` at widths 32-64-128, patch-whitening
stem from the labelled images) with the testbed's recipe (Nesterov SGD lr 0.4 one-cycle, weight decay 5e-4, bf16,
2 px reflect crops and flips of the labelled batch) for the same optimizer steps and labelled batches: supervised
only, pseudo-labelling, mean teacher and FixMatch (:mod:`dltricks.train.unlabelled`, the options of the MNIST
arm: :data:`~dltricks.experiments.unlabelled_tips.SEMI_OPTIONS`). Accuracy on a class-stratified draw of 2,000
CIFAR-10 test images.

Far from the papers' budgets: FixMatch trains a WRN-28-2 (1.5 M parameters) for 2^20 steps of 64 labelled and
448 unlabelled images and reports 95.7 % with 4,000 labels (Sohn et al. 2020, Table 2); here a 0.5 M-parameter
network takes ``epochs`` passes over the labelled images (500 steps of 64 at 8 epochs) with 3 unlabelled images
per labelled one, about 2.5 minutes of one CPU core per semi-supervised run. The unlabelled views are those of
:mod:`dltricks.train.unlabelled` (shift, rotation, contrast and brightness, cutout; no flips: FixMatch's weak
view of CIFAR flips as well). Needs CIFAR-10 (``cifar10-jpg.zip`` or the tarball) in the default data folders;
full mode only. docs/semi-supervised.md has the table.
"""

from __future__ import annotations

import time

import torch

import dltricks.data.shift
import dltricks.layers.grad_reverse
import dltricks.train.unlabelled
from dltricks.data.base import ArrayDataset
from dltricks.evidence import README, AllOf, Context, Effect, Evidence
from dltricks.experiments._harness import TrainSpec, health, recipe
from dltricks.experiments.training import testbed, train_tip
from dltricks.experiments.transfer_tips import _cifar10
from dltricks.experiments.unlabelled_tips import SEMI_ARMS, SEMI_OPTIONS
from dltricks.models import create_model
from dltricks.tasks.classification import make_classification_task
from dltricks.train import Unlabelled, fit
from dltricks.train.recipe import load_recipe
from dltricks.train.unlabelled import split_labelled

LEARN = "Learning setups"


def _spec(epochs: int, batch_size: int, seed: int) -> TrainSpec:
    """The CIFAR-10 testbed's recipe over the labelled set, ``epochs`` passes of ``batch_size`` images."""
    return TrainSpec(**{**testbed("cifar10").spec, "epochs": epochs, "batch_size": batch_size, "seed": seed,
                        "subset": None, "val_subset": None, "bn_recalibrate": 0})


def train_arm(labelled: ArrayDataset, val: ArrayDataset, spec: TrainSpec, unlabelled: Unlabelled | None,
              *, widths: tuple[int, ...] = (32, 64, 128)) -> dict[str, float]:
    """One arm: ``airbench_cifar`` (initialised from ``spec.seed``) trained on ``labelled`` with the unlabelled term
    ``unlabelled`` (None: supervised only); its validation accuracy and loss on ``val``."""
    # The augmentation goes to the task built here (fit checks that a recipe's augment section is applied by a
    # task built from it, which make_classification_task is not).
    rec = load_recipe({**recipe(spec).to_dict(), "augment": {}})
    task = make_classification_task(labelled.name, labelled, val, batch_size=spec.batch_size, seed=spec.seed,
                                    augment=dict(spec.augment))
    torch.manual_seed(spec.seed)  # the same initialisation for every arm of a seed
    model = create_model("airbench_cifar", num_classes=len(labelled.classes), widths=widths)
    result = fit(model, task, rec, run_dir=None, progress=False, unlabelled=unlabelled)
    return {"accuracy": float(result.final["val_accuracy"]), "loss": float(result.final["val_loss"]),
            "steps": float(result.final["steps"])}


@train_tip(id="learn.semi-supervised-cifar", title="Unlabelled images help with 4,000 CIFAR-10 labels",
           claim="With 4,000 labelled CIFAR-10 images (400 per class) and the other 46,000 training images "
                 "unlabelled, pseudo-labelling, mean teacher and FixMatch each reach a higher test accuracy than "
                 "the same network and steps trained on the labelled images alone (airbench_cifar at widths "
                 "32-64-128, 8 epochs of the labelled images at batch 64 with 3 unlabelled images per labelled "
                 "one; full mode only).",
           cite=README.at(143, 146, topic="semi-supervised learning"),
           source="Lee 2013 (ICML workshop); Tarvainen & Valpola 2017 (NeurIPS); Sohn et al. 2020 (NeurIPS)",
           section=LEARN,
           exercises=(dltricks.train.unlabelled, dltricks.layers.grad_reverse, dltricks.data.shift),
           quick=None, full={"labels": 4000, "epochs": 8, "batch_size": 64, "ratio": 3, "val_images": 2000},
           budget_s=3600,
           rule=AllOf(tuple(Effect("accuracy", arm, "supervised only", min_effect=0.0) for arm in SEMI_ARMS[1:])))
def semi_supervised_cifar(ctx: Context) -> Evidence:
    labels, epochs = int(ctx.get("labels", 4000)), int(ctx.get("epochs", 8))
    batch, ratio = int(ctx.get("batch_size", 64)), int(ctx.get("ratio", 3))
    train_all, test_all = _cifar10()
    labelled, rest = split_labelled(train_all, labels, seed=0)
    val = test_all.sample(int(ctx.get("val_images", 2000)), seed=0)
    ev = Evidence(setup=f"airbench_cifar (widths 32-64-128); {labels:,} labelled CIFAR-10 training images "
                        f"(class-balanced, seed 0), the other {len(rest):,} unlabelled; {epochs} epochs of the "
                        f"labelled images at batch {batch} + {ratio}x as many unlabelled images per step; the "
                        "testbed recipe (Nesterov SGD 0.4, one-cycle, bf16, crops and flips); accuracy on "
                        f"{len(val):,} test images")
    seconds: dict[str, float] = {}
    steps = 0
    for seed in ctx.seeds:
        for arm in SEMI_ARMS:
            ctx.report(f"{arm}, seed {seed}")
            options = SEMI_OPTIONS[arm]
            unlabelled = None if options is None else Unlabelled(rest, **options, ratio=ratio, seed=seed)
            t0 = time.process_time()
            out = train_arm(labelled, val, _spec(epochs, batch, seed), unlabelled)
            cpu = time.process_time() - t0
            seconds[arm] = seconds.get(arm, 0.0) + cpu
            steps = int(out["steps"])
            ev.add(arm, accuracy=out["accuracy"], loss=out["loss"], cpu_seconds=cpu)
            ev.record_health(arm, health(val_acc=out["accuracy"], num_classes=10, val_size=len(val)))
    ev.budget = {"labelled images": labels, "unlabelled images": len(rest), "optimizer steps": steps,
                 "labelled batch": batch, "unlabelled per labelled": ratio, "val_images": len(val)}
    ev.values["cpu_seconds_per_arm"] = seconds
    return ev


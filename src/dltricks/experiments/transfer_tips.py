"""Transfer learning on CIFAR-10: pre-train on classes 0-4, learn classes 5-9 from 1 %, 10 % or 100 % of their labels.

The protocol of issue 19 (Yosinski et al. 2014 split one data set's classes in two; Kornblith et al. 2019 compare
fine-tuning, a linear probe of the frozen features and training from scratch). Per seed:

1. the speedrun network of the CIFAR-10 testbed (``airbench_cifar``, widths 32-64-128, patch-whitening stem) is
   trained on ``pretrain`` training images of classes 0-4 (airplane, automobile, bird, cat, deer), drawn with
   the seed, 5 outputs;
2. for each label fraction, a labelled set of classes 5-9 (dog, frog, horse, ship, truck) is drawn with the seed:
   1 % = 250 of their 25,000 training images, 10 % = 2,500, 100 % = all;
3. three arms learn it through ``fit`` with the same recipe: **fine-tune** (the pre-trained weights, a new
   5-way head, everything trains), **linear probe** (the same weights frozen but the head: the recipe's
   ``finetune: {linear_probe: true}``), **scratch** (fresh weights);
4. accuracy on a stratified draw of the CIFAR-10 test images of classes 5-9 (never seen in training).

Each fraction trains for a fixed number of images, not epochs (1 %: 40 epochs, 10 %: 8, 100 %: 2; 10,000,
20,000 and 50,000 images), so the small sets are not starved of steps and the full set stays affordable on a
CPU. The recipe is the testbed's (Nesterov SGD 0.4 one-cycle over the run, weight decay 5e-4, bf16, 2 px
reflect crops and flips, batch 128, or 64 for the 1 % set). Needs CIFAR-10 (``cifar10-jpg.zip`` or the tarball)
in the default data folders; full mode only (about 5 minutes of one core per seed).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

import dltricks.train.finetune
from dltricks.data.base import ArrayDataset
from dltricks.evidence import README, Context, Effect, Evidence
from dltricks.experiments._harness import TrainSpec, health, recipe
from dltricks.experiments.training import testbed, train_tip
from dltricks.models import create_model
from dltricks.tasks.classification import find_cifar10, make_classification_task
from dltricks.train import fit
from dltricks.train.recipe import load_recipe

LEARN = "Learning setups"
SOURCE, TARGET = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
# label fraction -> epochs over the labelled set (a fixed budget of images per fraction, see the docstring)
FRACTIONS = {"1%": (0.01, 40), "10%": (0.1, 8), "100%": (1.0, 2)}


@functools.lru_cache(maxsize=1)
def _cifar10(data_dir: str | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-10's training and test splits (decoded once per process)."""
    from dltricks.data.imagefolder import load_image_folder

    kind, path = find_cifar10(data_dir)
    if kind == "python":
        from dltricks.data.cifar import load_cifar10_splits

        splits = load_cifar10_splits(path)
    else:
        splits = load_image_folder(path)
    return splits["train"], splits["test"]


def _classes(data: ArrayDataset, classes: tuple[int, ...], *, name: str) -> ArrayDataset:
    """The images of ``classes``, relabelled 0..len(classes)-1, with the data set's normalisation."""
    keep = torch.isin(data.labels, torch.tensor(classes))
    labels = torch.searchsorted(torch.tensor(classes), data.labels[keep])  # classes are sorted
    return ArrayDataset(data.images[keep].contiguous(), labels, tuple(data.classes[c] for c in classes), name,
                        data.mean, data.std)


def _stratified(data: ArrayDataset, fraction: float, seed: int, *, name: str) -> ArrayDataset:
    """``fraction`` of each class's images, drawn with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(int(data.labels.max()) + 1):
        idx = torch.nonzero(data.labels == c).flatten()
        n = max(1, round(fraction * len(idx)))
        picks.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return data.subset(torch.cat(picks), name=name)


def _spec(epochs: int, batch_size: int, seed: int, *, data_init: bool = True) -> TrainSpec:
    """The CIFAR-10 testbed's recipe; ``data_init=False`` keeps the loaded patch-whitening stem (a pre-trained
    network must not be re-initialised from the target images)."""
    base = testbed("cifar10").spec
    return TrainSpec(**{**base, "epochs": epochs, "batch_size": batch_size, "seed": seed, "subset": None,
                        "val_subset": None, "bn_recalibrate": 0, **({} if data_init else {"data_init": 0})})


def _fit(model: torch.nn.Module, train: ArrayDataset, val: ArrayDataset, spec: TrainSpec,
         finetune: dict[str, Any] | None = None) -> float:
    """Train ``model`` on ``train`` with the testbed recipe; its accuracy on ``val``."""
    # The augmentation goes to the task built here (fit checks that a recipe's augment section is applied by a
    # task built from it, which make_classification_task is not).
    rec = load_recipe({**recipe(spec).to_dict(), "augment": {}, **({"finetune": finetune} if finetune else {})})
    task = make_classification_task(train.name, train, val, batch_size=spec.batch_size, seed=spec.seed,
                                    augment=dict(spec.augment))
    torch.manual_seed(spec.seed)
    return float(fit(model, task, rec, run_dir=None, progress=False).final["val_accuracy"])


def _network(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("airbench_cifar", num_classes=5, widths=(32, 64, 128))


@train_tip(id="learn.transfer-cifar", title="Fine-tuning beats scratch on CIFAR-10 with 1 % of the labels",
           claim="A network pre-trained on CIFAR-10 classes 0-4 and fine-tuned on classes 5-9 with 1 % of their "
                 "training labels (250 images) is more accurate on those classes than the same network trained "
                 "from scratch on the same images; a linear probe of the frozen features and 10 % and 100 % of the "
                 "labels are reported beside it (airbench_cifar at widths 32-64-128, 10,000 pre-training images; "
                 "full mode only).",
           cite=README.at(158, 160, topic="transfer learning"),
           source="Yosinski et al. 2014 (NeurIPS); Kornblith et al., Do Better ImageNet Models Transfer Better?, "
                  "CVPR 2019",
           section=LEARN, exercises=(dltricks.train.finetune,), quick=None,
           full={"pretrain": 10000, "pretrain_epochs": 4, "val_images": 2000}, budget_s=2400,
           metrics={"acc_1%": "accuracy on classes 5-9 after learning from 1 % of their labels",
                    "acc_10%": "the same with 10 %", "acc_100%": "the same with all labels"},
           rule=Effect("acc_1%", "fine-tune", "scratch", min_effect=0.0))
def transfer_cifar(ctx: Context) -> Evidence:
    train_all, test_all = _cifar10()
    source = _classes(train_all, SOURCE, name="CIFAR-10 classes 0-4")
    target = _classes(train_all, TARGET, name="CIFAR-10 classes 5-9")
    val_pool = _classes(test_all, TARGET, name="CIFAR-10 test, classes 5-9")
    val_images = int(ctx.get("val_images", 2000))
    val = _stratified(val_pool, val_images / len(val_pool), 0, name="CIFAR-10 test, classes 5-9 (drawn)")
    pretrain, pretrain_epochs = int(ctx.get("pretrain", 10000)), int(ctx.get("pretrain_epochs", 4))
    ev = Evidence(setup=f"airbench_cifar (widths 32-64-128) pre-trained {pretrain_epochs} epochs on {pretrain:,} "
                        "CIFAR-10 training images of classes 0-4; then classes 5-9 learnt from 1 % (250 images, 40 "
                        "epochs, batch 64), 10 % (2,500, 8 epochs) or 100 % (25,000, 2 epochs) of their labels by "
                        "fine-tuning, a linear probe or from scratch; the testbed recipe (Nesterov SGD 0.4, "
                        f"one-cycle, bf16, crops and flips); accuracy on {len(val):,} test images of classes 5-9")
    for seed in ctx.seeds:
        ctx.report(f"pre-training, seed {seed}")
        pre = _stratified(source, pretrain / len(source), seed, name="CIFAR-10 classes 0-4 (pre-training)")
        network = _network(seed)
        source_acc = _fit(network, pre, _classes(test_all, SOURCE, name="CIFAR-10 test, classes 0-4"),
                          _spec(pretrain_epochs, 128, seed))
        state = {k: v.clone() for k, v in network.state_dict().items()}
        for label, (fraction, epochs) in FRACTIONS.items():
            labelled = _stratified(target, fraction, seed, name=f"CIFAR-10 classes 5-9 ({label} of the labels)")
            batch = 64 if len(labelled) < 1000 else 128
            for arm, init, finetune in (("fine-tune", state, None), ("linear probe", state, {"linear_probe": True}),
                                        ("scratch", None, None)):
                ctx.report(f"{label} of the labels, {arm}, seed {seed}")
                model = _network(seed)
                if init is not None:
                    model.load_state_dict(init)
                    model.reset_classifier(5)  # a fresh head for the new classes
                acc = _fit(model, labelled, val, _spec(epochs, batch, seed, data_init=init is None), finetune)
                ev.add(arm, **{f"acc_{label}": acc})
                if label == "1%":
                    ev.record_health(arm, health(val_acc=acc, num_classes=5, val_size=len(val)))
        ev.add("pre-training (classes 0-4)", source_accuracy=source_acc)
        ev.record_health("pre-training (classes 0-4)", health(val_acc=source_acc, num_classes=5, val_size=5000))
    ev.budget = {"pretrain_images": pretrain, "pretrain_epochs": pretrain_epochs,
                 "target_images_per_arm": {k: f"{round(f * 25000):,} x {e} epochs" for k, (f, e) in FRACTIONS.items()},
                 "val_images": len(val)}
    means = {arm: {k: sum(v) / len(v) for k, v in metrics.items()} for arm, metrics in ev.arms.items()}
    ev.headline = "; ".join(f"{arm}: " + ", ".join(f"{k.removeprefix('acc_')} {v:.1%}" for k, v in m.items())
                            for arm, m in means.items())
    return ev

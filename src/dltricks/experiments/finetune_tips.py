"""Tip on how to fine-tune: discriminative learning rates and gradual unfreezing (Howard & Ruder 2018, ULMFiT).

The setting is the one of ``learn.transfer`` (:func:`dltricks.experiments.fewshot_tips.transfer_few_labels`): an
MLP pre-trained on MNIST digits 0-4 learns digits 5-9 from 10 labels per class. Three ways to fine-tune it
with the recipe's ``finetune`` section (:mod:`dltricks.train.finetune`) are compared: every layer at the same
learning rate; the pre-trained body at a tenth of the head's rate (discriminative learning rates, ULMFiT
section 3.2); and the body frozen for the first fifth of the epochs, then thawed (gradual unfreezing, ULMFiT
section 3.3, here with one group below the head).
"""

from __future__ import annotations

import torch

import dltricks.train.finetune
from dltricks.evidence import README, AllOf, Context, Effect, Evidence
from dltricks.experiments.fewshot_tips import TEST_CLASSES, _digits, _train_target, pretrained_and_few_labels
from dltricks.experiments.training import train_tip
from dltricks.fewshot.baseline import class_subset
from dltricks.models import create_model

LEARN = "Learning setups"


@train_tip(id="learn.discriminative-finetuning", title="Discriminative learning rates and gradual unfreezing help",
           claim="Fine-tuning a pre-trained network with a smaller learning rate for the pre-trained layers than for "
                 "the new head, or with those layers frozen at first and thawed later, ends more accurate than "
                 "fine-tuning every layer at one rate (quick: MLP 128-64 pre-trained on 2,000 MNIST images of digits "
                 "0-4, then 10 labels per class of digits 5-9, 50 epochs; body x0.1, or frozen for 10 epochs).",
           cite=README.at(158, 160, topic="transfer learning"), source="Howard & Ruder 2018 (ACL), sections 3.2-3.3",
           section=LEARN, exercises=(dltricks.train.finetune,),
           quick={"pretrain": 2000, "labels_per_class": 10, "epochs": 50},
           full={"pretrain": 5000, "labels_per_class": 10, "epochs": 50}, budget_s=10,
           rule=AllOf((Effect("accuracy", "discriminative learning rates", "one learning rate", min_effect=0.0),
                       Effect("accuracy", "gradual unfreezing", "one learning rate", min_effect=0.0))))
def discriminative_finetuning(ctx: Context) -> Evidence:
    x, y = _digits("train")
    vx, vy = _digits("val")
    per_class, epochs = ctx.get("labels_per_class", 10), ctx.get("epochs", 50)
    ev = Evidence(setup=f"MLP 128-64 pre-trained 1 epoch on {ctx.get('pretrain', 2000)} embedded-MNIST images of "
                        f"digits 0-4 (Adam 1e-3); target: {per_class} labelled images per class of digits 5-9, "
                        f"{epochs} epochs of 2 batches (Adam 3e-3, new head); accuracy on the digits 5-9 of the "
                        "validation split")
    val = class_subset(vx, vy, TEST_CLASSES, name="digits 5-9 (val)")
    arms = {"one learning rate": None, "discriminative learning rates": {"lr_mult": {"stages": 0.1}},
            "gradual unfreezing": {"freeze": ["stages"], "unfreeze_every": max(1, epochs // 5)}}
    for seed in ctx.seeds:
        target, state = pretrained_and_few_labels(x, y, seed=seed, per_class=per_class,
                                                  pretrain=ctx.get("pretrain", 2000))
        for arm, finetune in arms.items():
            torch.manual_seed(seed)
            model = create_model("mlp", num_classes=5, hidden=(128, 64))
            model.load_state_dict(state)
            model.reset_classifier(5)  # the same fresh head for every arm of a seed
            ev.add(arm, accuracy=_train_target(model, target, val, epochs=epochs, seed=seed, finetune=finetune))
    ev.budget = {"pretrain_images": ctx.get("pretrain", 2000), "target_labels": 5 * per_class, "target_epochs": epochs}
    ev.headline = ", ".join(f"{arm} {sum(a['accuracy']) / len(a['accuracy']):.1%}" for arm, a in ev.arms.items())
    return ev

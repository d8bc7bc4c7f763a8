"""A short U-Net training on real ISBI 2012 crops, by ``fit`` with the isbi-unet recipe scaled down, must
learn the membranes (about 15 s on one core)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dltricks.tasks.segmentation.isbi import isbi2012_membrane_task
from dltricks.models.segmentation.unet import UNet
from dltricks.tasks.segmentation.metrics import dice_score
from dltricks.tasks.segmentation.evaluate import evaluate_segmentation
from dltricks.train import fit, task_for_recipe
from dltricks.train.recipe import load_recipe
from dltricks.train.schedule import LRSchedule


def test_short_unet_training_learns_membranes(shared_data: Path) -> None:
    recipe = load_recipe("isbi-unet", ["train.steps=40", "train.batch_size=8", "optim.lr=3e-3",
                                       "schedule.warmup_steps=5", "train.amp=false", "train.channels_last=false",
                                       "train.eval_every=40", "train.device=cpu", "data.crop_size=64",
                                       "data.samples_per_epoch=80", "data.elastic=false", "data.final_window=null",
                                       "data.final_tta=false"])
    task = task_for_recipe("isbi2012-membrane", recipe, data_dir=shared_data)
    # Held-out: the central 128x128 of the 5 validation slices.
    xs, ys = zip(*[(x[..., 192:320, 192:320], y[..., 192:320, 192:320]) for x, y in task.val_loader.iter_epoch(0)])
    x_val, y_val = torch.cat(xs), torch.cat(ys)
    torch.manual_seed(0)
    model = UNet(num_classes=1, in_chans=1, base_channels=8, depth=3)

    def val_dice() -> float:
        model.eval()
        with torch.no_grad():
            return dice_score(model(x_val)[:, 0] > 0, y_val[:, 0] > 0.5).mean().item()

    before = val_dice()
    result = fit(model, task, recipe, progress=False)
    after = val_dice()
    losses = [r["train_loss"] for r in result.history]  # mean of each period of 10 steps
    assert result.final["steps"] == 40 and losses[-1] < losses[0]
    # Untrained: 0.21; after 40 steps of 8 crops: 0.78 (membrane Dice on held-out slices).
    assert after > 0.65 and after > before + 0.3, (before, after)


def test_evaluate_segmentation_on_perfect_predictions(shared_data: Path) -> None:
    task = isbi2012_membrane_task(batch_size=2, data_dir=shared_data)

    class Oracle(torch.nn.Module):
        """Returns the target of the slice it is shown (looked up by its pixels)."""

        def __init__(self) -> None:
            super().__init__()
            self.pairs = list(task.val_loader.iter_epoch(0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for xv, yv in self.pairs:
                if torch.equal(xv, x):
                    return yv * 20 - 10
            raise AssertionError("unknown slice")

    metrics = evaluate_segmentation(Oracle(), task.val_loader)
    assert metrics["images"] == 5
    for key in ("dice", "iou", "pixel_accuracy", "boundary_f1", "dice_pooled", "boundary_accuracy",
                "dice_tolerance1"):
        assert metrics[key] == 1.0, key
    assert metrics["isbi_pixel_error"] == 0.0


def test_cosine_schedule() -> None:
    """The schedule of the isbi-unet recipe: linear warm-up, then cosine to 1 % (dltricks.train.schedule)."""
    cosine_lr = LRSchedule(load_recipe("isbi-unet", ["schedule.warmup_steps=10"]).schedule, 25, 4, total=100)
    assert cosine_lr(0) == pytest.approx(0.1)
    assert cosine_lr(9) == pytest.approx(cosine_lr.main_factor(9))  # the warm-up is over at step 9
    assert abs(cosine_lr(100) - 0.01) < 1e-9
    values = [cosine_lr(s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))

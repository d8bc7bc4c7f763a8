"""The wiring between trainer parts that are each tested alone (issue 23).

* float16 autocast + GradScaler + gradient clipping: the gradients must be unscaled before they are
  clipped, else every update shrinks by the loss scale (65536) and training silently stops;
* the loss ``fit`` optimises, for every loss a task can hand it (classification with hard and soft targets
  and auxiliary heads, token losses with ignored positions, the segmentation losses), equals PyTorch's
  reference (``nn.CrossEntropyLoss(label_smoothing=...)`` and friends) on the same outputs, with and
  without label smoothing.

docs/testing.md lists the bugs these tests were checked against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from dltricks.tasks.base import Task
from dltricks.tasks.dates import PAD_ID, dates_loss, dates_metrics
from dltricks.tasks.segmentation.losses import SegmentationLoss
from dltricks.tasks.segmentation.metrics import SegmentationMetrics
from dltricks.tasks.sequence import masked_token_loss, masked_token_metrics
from dltricks.train import fit, load_recipe
from dltricks.train.trainer import _Trainer
from train_helpers import TOY, tiny_mlp, toy_task

FP16_CLIP = ["train.device=cpu", "train.amp=true", "train.amp_dtype=float16", "optim.lr=1.0", "optim.momentum=0"]


def _trainer(overrides: list[str], model: nn.Module) -> _Trainer:
    return _Trainer(model, toy_task(), load_recipe(None, [*TOY, *overrides]), run_dir=None, progress=False, log=None,
                    on_epoch=None, meta=None)


def _one_step(overrides: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor], _Trainer]:
    """One optimizer step on the first toy batch: (update of every parameter, fp32 gradients, trainer)."""
    t = _trainer(overrides, tiny_mlp())
    x, y = next(iter(t.task.train_loader.iter_epoch(0)))
    reference = tiny_mlp()  # the same initial weights, float32, no scaler: the gradient the step should follow
    nn.functional.cross_entropy(reference(x), y).backward()
    before = [p.detach().clone() for p in t.raw_model.parameters()]
    t._forward_backward(x, y, 1.0, "test", sync=True)
    t._optimizer_step()
    updates = [b - p.detach() for b, p in zip(before, t.raw_model.parameters())]  # lr = 1: the clipped gradient
    return updates, [p.grad for p in reference.parameters()], t


def test_fp16_clip_by_norm_clips_the_unscaled_gradient():
    updates, grads, t = _one_step([*FP16_CLIP, "train.grad_clip=0.01"])
    assert t.scaler is not None and t.scaler.get_scale() == 2.0 ** 16  # scaled, and the step was not skipped
    grad_norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    assert grad_norm > 0.1  # the clip is active: the raw gradient norm is far above 0.01
    update_norm = torch.sqrt(sum((u ** 2).sum() for u in updates))
    # Clipped after unscale_: the update has norm lr * 0.01. Clipped before it: 0.01 / 65536 = 1.5e-7.
    assert update_norm.item() == pytest.approx(0.01, rel=1e-3)
    for u, g in zip(updates, grads):  # the direction of the float32 gradient (float16 rounding aside)
        assert_close(u, g * (0.01 / grad_norm), rtol=0.02, atol=2e-5)


def test_fp16_clip_by_value_clamps_the_unscaled_gradient():
    updates, grads, _ = _one_step([*FP16_CLIP, "train.grad_clip=0.001", "train.grad_clip_mode=value"])
    assert max(g.abs().max() for g in grads) > 0.01
    assert max(u.abs().max() for u in updates).item() == pytest.approx(0.001, rel=1e-3)
    for u, g in zip(updates, grads):
        assert_close(u, g.clamp(-0.001, 0.001), rtol=0.02, atol=2e-5)


def test_fp16_with_clipping_trains_like_float32():
    """End to end: a float16 run with clipping moves the weights as far as a float32 run does."""
    def distance(overrides: list[str]) -> float:
        model = tiny_mlp()
        start = [p.detach().clone() for p in model.parameters()]
        fit(model, toy_task(), load_recipe(None, [*TOY, "train.epochs=1", "optim.lr=0.05", "train.device=cpu",
                                                  "train.grad_clip=0.05", *overrides]), progress=False)
        return torch.sqrt(sum(((p.detach() - s) ** 2).sum() for p, s in zip(model.parameters(), start))).item()

    fp32 = distance([])
    fp16 = distance(["train.amp=true", "train.amp_dtype=float16"])
    assert fp16 == pytest.approx(fp32, rel=0.05)


# --------------------------------------------------------------------------------------------------
# The loss fit computes, against PyTorch's reference


class ListLoader:
    """The loader protocol over a fixed list of batches (the same batches every epoch)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches
        self.num_samples = sum(len(y) for _, y in batches)
        self.batch_size = len(batches[0][1])

    def __len__(self) -> int:
        return len(self.batches)

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from self.batches[start_batch:]


def _fit_loss(model: nn.Module, task: Task, eps: float, overrides: tuple[str, ...] = ()) -> float:
    """The train_loss fit reports for one epoch in which the weights do not move (lr = 1e-30)."""
    recipe = load_recipe(None, [f"train.label_smoothing={eps}", "optim.lr=1e-30", "train.epochs=1",
                                "train.device=cpu", f"train.batch_size={task.train_loader.batch_size}", *overrides])
    return fit(model, task, recipe, progress=False).history[0]["train_loss"]


def _reference_loss(model: nn.Module, task: Task, loss: Callable[[Any, torch.Tensor], torch.Tensor],
                    weight: Callable[[torch.Tensor], float] = lambda y: float(len(y))) -> float:
    """The epoch's loss by the reference: each batch's loss weighted by what the task counts in it."""
    model.train()
    total = count = 0.0
    with torch.no_grad():
        for x, y in task.train_loader.iter_epoch(0):
            total += loss(model(x), y).item() * weight(y)
            count += weight(y)
    return total / count


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_fit_classification_loss_is_cross_entropy_loss(eps):
    model, task = tiny_mlp(), toy_task()
    ours = _fit_loss(model, task, eps)
    assert ours == pytest.approx(_reference_loss(model, task, nn.CrossEntropyLoss(label_smoothing=eps)), rel=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_fit_loss_with_mixup_soft_targets_is_cross_entropy_loss(eps):
    overrides = ("augment.mixup_alpha=0.4", "augment.mix_prob=1.0")
    augment = load_recipe(None, list(overrides)).augment
    model, task = tiny_mlp(), toy_task(augment=augment)
    y = next(iter(task.train_loader.iter_epoch(0)))[1]
    assert y.shape == (16, 4) and not torch.equal(y, y.round())  # really soft targets
    ours = _fit_loss(model, task, eps, overrides)
    assert ours == pytest.approx(_reference_loss(model, task, nn.CrossEntropyLoss(label_smoothing=eps)), rel=1e-5)


class _TwoHeads(nn.Module):
    """A classifier with an auxiliary head in training mode (as GoogLeNet and Inception v3)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.main, self.aux = nn.Linear(16, 4), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> Any:
        h = self.body(x)
        return (self.main(h), self.aux(h)) if self.training else self.main(h)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_fit_loss_with_an_auxiliary_head_adds_0_3_of_its_loss(eps):
    model, task = _TwoHeads(), toy_task()
    ce = nn.CrossEntropyLoss(label_smoothing=eps)
    reference = _reference_loss(model, task, lambda out, y: ce(out[0], y) + 0.3 * ce(out[1], y))
    assert _fit_loss(model, task, eps) == pytest.approx(reference, rel=1e-5)


class _TokenModel(nn.Module):
    """(B, T) token ids -> (B, T, V) logits."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.out = nn.Embedding(vocab, 8), nn.Linear(8, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.embed(x)))  # (B, T, V)


def _token_batches(vocab: int, ignore: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """4 batches of 8 sequences of 6 tokens, targets ignored at a different number of positions per row."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        x = torch.randint(1, vocab, (8, 6), generator=g)
        y = torch.randint(1, vocab, (8, 6), generator=g)
        keep = torch.arange(6)[None] < torch.randint(1, 7, (8, 1), generator=g)  # (8, 6): a ragged prefix
        batches.append((x, torch.where(keep, y, torch.full_like(y, ignore))))
    return batches


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_fit_dates_loss_is_cross_entropy_loss_ignoring_padding(eps):
    vocab = 12
    task = Task("tokens", ListLoader(_token_batches(vocab, PAD_ID)), None, num_classes=vocab, loss=dates_loss,
                batch_metrics=dates_metrics)
    model = _TokenModel(vocab)
    ce = nn.CrossEntropyLoss(ignore_index=PAD_ID, label_smoothing=eps)
    reference = _reference_loss(model, task, lambda logits, y: ce(logits.transpose(1, 2), y))  # (B, V, T)
    assert _fit_loss(model, task, eps) == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_fit_masked_token_loss_is_cross_entropy_loss_over_scored_tokens(eps):
    vocab = 10
    task = Task("masked", ListLoader(_token_batches(vocab, -100)), None, num_classes=vocab, loss=masked_token_loss,
                batch_metrics=masked_token_metrics)
    model = _TokenModel(vocab)
    ce = nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=eps)
    # The task counts scored tokens, so the epoch's loss is the mean over all scored tokens of the epoch.
    reference = _reference_loss(model, task, lambda logits, y: ce(logits.reshape(-1, vocab), y.reshape(-1)),
                                weight=lambda y: float((y != -100).sum()))
    assert _fit_loss(model, task, eps) == pytest.approx(reference, rel=1e-5)


def _segmentation_batches(with_weights: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        x = torch.randn(4, 1, 8, 8, generator=g)
        mask = (torch.rand(4, 1, 8, 8, generator=g) > 0.6).float()
        weight = 1 + 4 * torch.rand(4, 1, 8, 8, generator=g)
        batches.append((x, torch.cat([mask, weight], 1) if with_weights else mask))
    return batches


def _seg_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 1))


def _soft_dice_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - (2 sum p y + 1) / (sum p + sum y + 1) over the whole batch."""
    p = torch.sigmoid(logits)
    return 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)


# The Dice loss takes no pixel weights (the ISBI weight maps apply to the cross-entropy term only).
@pytest.mark.parametrize("kind,with_weights", [("bce", False), ("bce", True), ("bce+dice", False),
                                               ("bce+dice", True), ("dice", False)])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_fit_segmentation_losses_match_their_definitions(kind, with_weights, eps):
    loss = SegmentationLoss(kind)
    task = Task("seg", ListLoader(_segmentation_batches(with_weights)), None, num_classes=1, in_chans=1, loss=loss,
                batch_metrics=SegmentationMetrics(loss))
    model = _seg_model()

    def reference(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        y, w = (target[:, :1], target[:, 1:]) if with_weights else (target, None)
        # Binary label smoothing moves the targets halfway: y (1 - eps) + eps / 2.
        bce = nn.BCEWithLogitsLoss(weight=w)(logits, y * (1 - eps) + eps / 2)
        return {"bce": bce, "dice": _soft_dice_loss(logits, y), "bce+dice": bce + _soft_dice_loss(logits, y)}[kind]

    assert _fit_loss(model, task, eps) == pytest.approx(_reference_loss(model, task, reference), rel=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_fit_multiclass_segmentation_loss_is_cross_entropy_loss(eps):
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 3, (4, 8, 8), generator=g)) for _ in range(3)]
    task = Task("seg3", ListLoader(batches), None, num_classes=3, in_chans=1, loss=SegmentationLoss("bce"),
                batch_metrics=lambda out, y: {"count": float(len(y))})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 1))
    reference = _reference_loss(model, task, nn.CrossEntropyLoss(label_smoothing=eps))
    assert _fit_loss(model, task, eps) == pytest.approx(reference, rel=1e-5)

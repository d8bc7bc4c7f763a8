"""Segmentation losses against their formulas written out longhand and against torch's built-ins."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dltricks.errors import ConfigError
from dltricks.tasks.segmentation.losses import SegmentationLoss, bce_dice_loss, bce_loss, dice_loss


def _binary(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 1, 5, 6, generator=g) * 2
    target = (torch.rand(3, 1, 5, 6, generator=g) < 0.3).float()
    return logits, target


def test_bce_matches_formula_and_torch() -> None:
    logits, y = _binary()
    p = torch.sigmoid(logits)
    longhand = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    torch.testing.assert_close(bce_loss(logits, y), longhand)
    torch.testing.assert_close(bce_loss(logits, y), F.binary_cross_entropy(p, y))


def test_bce_label_smoothing_moves_targets() -> None:
    logits, y = _binary(1)
    eps = 0.2
    torch.testing.assert_close(bce_loss(logits, y, label_smoothing=eps),
                               F.binary_cross_entropy_with_logits(logits, y * (1 - eps) + eps / 2))


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("squared", [False, True])
def test_dice_matches_formula(per_image: bool, squared: bool) -> None:
    logits, y = _binary(2)
    p = torch.sigmoid(logits)
    eps = 1.0
    if per_image:
        values = []
        for i in range(p.shape[0]):
            den = (p[i] ** 2).sum() + (y[i] ** 2).sum() if squared else p[i].sum() + y[i].sum()
            values.append(1 - (2 * (p[i] * y[i]).sum() + eps) / (den + eps))
        expected = torch.stack(values).mean()
    else:
        den = (p ** 2).sum() + (y ** 2).sum() if squared else p.sum() + y.sum()
        expected = 1 - (2 * (p * y).sum() + eps) / (den + eps)
    torch.testing.assert_close(dice_loss(logits, y, eps=eps, squared=squared, per_image=per_image), expected)


def test_dice_perfect_and_worst() -> None:
    y = torch.zeros(2, 1, 4, 4)
    y[:, :, 1:3, 1:3] = 1
    confident = (y * 2 - 1) * 50  # logits: sigmoid ~ y
    assert dice_loss(confident, y, eps=1e-6).item() < 1e-4
    assert dice_loss(-confident, y, eps=1e-6).item() > 0.999


def test_multiclass_losses() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 5, 5, generator=g)
    target = torch.randint(0, 4, (2, 5, 5), generator=g)
    torch.testing.assert_close(bce_loss(logits, target), F.cross_entropy(logits, target))
    p = logits.softmax(1)
    onehot = F.one_hot(target, 4).permute(0, 3, 1, 2).float()
    per_class = [(2 * (p[:, c] * onehot[:, c]).sum() + 1) / (p[:, c].sum() + onehot[:, c].sum() + 1) for c in range(4)]
    torch.testing.assert_close(dice_loss(logits, target), 1 - torch.stack(per_class).mean())


def test_bce_dice_is_weighted_sum_and_task_loss_by_name() -> None:
    logits, y = _binary(4)
    torch.testing.assert_close(bce_dice_loss(logits, y, bce_weight=0.5, dice_weight=2.0),
                               0.5 * bce_loss(logits, y) + 2.0 * dice_loss(logits, y))
    torch.testing.assert_close(SegmentationLoss("bce+dice")(logits, y), bce_loss(logits, y) + dice_loss(logits, y))
    torch.testing.assert_close(SegmentationLoss("dice")((logits, logits * 0), y), dice_loss(logits, y))
    torch.testing.assert_close(SegmentationLoss("bce")({"logits": logits}, y, label_smoothing=0.0), bce_loss(logits, y))
    with pytest.raises(ConfigError, match="bce"):
        SegmentationLoss("bce-dice")


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="target"):
        bce_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4))

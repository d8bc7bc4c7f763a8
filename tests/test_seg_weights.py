"""U-Net's weight map (dltricks.tasks.segmentation.weights) against brute force and hand-worked values, and its
path through the ISBI task, the augmentation and the loss."""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dltricks.errors import ConfigError
from dltricks.tasks.segmentation.losses import SegmentationLoss, bce_loss
from dltricks.tasks.segmentation.weights import (class_balance_weights, connected_components, two_nearest_distances,
                                           unet_weight_map, unet_weight_maps)


def _flood_fill_components(mask: torch.Tensor) -> torch.Tensor:
    """Reference: breadth-first search over 4-neighbours, labels 1..K in row-major order of first pixel."""
    H, W = mask.shape
    labels = torch.zeros(H, W, dtype=torch.int64)
    k = 0
    for i in range(H):
        for j in range(W):
            if mask[i, j] and labels[i, j] == 0:
                k += 1
                labels[i, j] = k
                queue = deque([(i, j)])
                while queue:
                    y, x = queue.popleft()
                    for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                        if 0 <= ny < H and 0 <= nx < W and mask[ny, nx] and labels[ny, nx] == 0:
                            labels[ny, nx] = k
                            queue.append((ny, nx))
    return labels


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to renaming the labels (0 must map to 0)."""
    pairs = set(zip(a.flatten().tolist(), b.flatten().tolist()))
    left, right = {p[0] for p in pairs}, {p[1] for p in pairs}
    return len(pairs) == len(left) == len(right) and ((0, 0) in pairs or 0 not in left | right)


@pytest.mark.parametrize("seed", range(4))
def test_connected_components_match_flood_fill(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(23, 31, generator=generator) < 0.55
    ours = connected_components(mask)
    reference = _flood_fill_components(mask)
    assert ours.max() == reference.max()
    assert _same_partition(ours, reference)


def test_connected_components_long_spiral() -> None:
    # One long winding component (a spiral corridor): the label has to travel along all of it.
    mask = torch.zeros(21, 21, dtype=torch.bool)
    top, left, bottom, right = 0, 0, 20, 20
    while top <= bottom and left <= right:
        mask[top, left:right + 1] = True
        mask[top:bottom + 1, right] = True
        if top + 2 <= bottom:
            mask[bottom, left:right + 1] = True
        if left + 2 <= right and top + 2 <= bottom:
            mask[top + 2:bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
    assert connected_components(mask).max() == _flood_fill_components(mask).max()


def _octile(dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Shortest 8-connected path with steps 1 and sqrt(2): max + (sqrt(2) - 1) min."""
    a, b = dy.abs().float(), dx.abs().float()
    return torch.maximum(a, b) + (math.sqrt(2) - 1) * torch.minimum(a, b)


@pytest.mark.parametrize("seed", range(3))
def test_two_nearest_distances_match_brute_force(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    components = connected_components(torch.rand(17, 19, generator=generator) < 0.3)
    d1, d2 = two_nearest_distances(components, max_distance=100)
    H, W = components.shape
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    per_component = []
    for k in range(1, int(components.max()) + 1):
        py, px = torch.nonzero(components == k, as_tuple=True)
        dist = _octile(ys[..., None] - py, xs[..., None] - px).amin(-1)  # (H, W) to component k
        per_component.append(dist)
    stacked = torch.stack(per_component).sort(0).values  # (K, H, W)
    torch.testing.assert_close(d1, stacked[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(d2, stacked[1], atol=1e-4, rtol=0)
    # Capped: nothing beyond max_distance.
    d1_capped, _ = two_nearest_distances(components, max_distance=1.5)
    assert torch.isinf(d1_capped[stacked[0] > 1.5]).all()


def test_weight_map_between_two_cells_by_hand() -> None:
    # Two cells (columns 0-4 and 8-11) separated by a 3-pixel membrane (columns 5-7).
    membrane = torch.zeros(6, 12, dtype=torch.bool)
    membrane[:, 5:8] = True
    w0, sigma = 10.0, 5.0
    weights = unet_weight_map(membrane, w0=w0, sigma=sigma, class_weights=(0.5, 2.0))
    assert torch.all(weights[:, :5] == 0.5) and torch.all(weights[:, 8:] == 0.5)
    # Column 5: d1 = 1 (left cell), d2 = 3 (right cell); column 6: 2 + 2; column 7: 3 + 1. All d1 + d2 = 4.
    expected = 2.0 + w0 * math.exp(-(4.0 ** 2) / (2 * sigma ** 2))
    torch.testing.assert_close(weights[:, 5:8], torch.full((6, 3), expected))
    # A membrane next to a single cell gets no border term (no second cell), only w_c.
    lone = torch.zeros(6, 12, dtype=torch.bool)
    lone[:, 8:] = True
    assert torch.all(unet_weight_map(lone, class_weights=(0.5, 2.0))[:, 8:] == 2.0)
    with pytest.raises(ValueError, match="w0"):
        unet_weight_map(membrane, w0=-1.0)


def test_weight_maps_of_a_stack_share_the_class_weights() -> None:
    masks = torch.zeros(2, 1, 6, 12, dtype=torch.bool)
    masks[0, 0, :, 5:8] = True  # 25 % membrane in slice 0, none in slice 1: 12.5 % overall
    maps = unet_weight_maps(masks, w0=10.0, sigma=5.0, balance_classes=True)
    assert maps.shape == (2, 1, 6, 12)
    w_cell, w_membrane = class_balance_weights(masks)
    torch.testing.assert_close(maps[0, 0], unet_weight_map(masks[0, 0], class_weights=(w_cell, w_membrane)))
    assert torch.all(maps[1] == w_cell)
    with pytest.raises(ValueError, match="N, 1, H, W"):
        unet_weight_maps(masks[:, 0])


def test_class_balance_weights_have_mean_one() -> None:
    masks = torch.zeros(2, 1, 10, 10, dtype=torch.bool)
    masks[:, :, :2] = True  # 20 % foreground
    w_background, w_foreground = class_balance_weights(masks)
    assert w_foreground == pytest.approx(2.5) and w_background == pytest.approx(0.625)
    pixel_weights = torch.where(masks, w_foreground, w_background)
    assert pixel_weights.mean().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="both classes"):
        class_balance_weights(torch.zeros(4, 4, dtype=torch.bool))


def test_weighted_bce_and_the_two_channel_target() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=generator)
    mask = (torch.rand(2, 1, 8, 8, generator=generator) < 0.3).float()
    weight = torch.rand(2, 1, 8, 8, generator=generator) * 5
    p = torch.sigmoid(logits)
    longhand = (-(mask * p.log() + (1 - mask) * (1 - p).log()) * weight).mean()
    torch.testing.assert_close(bce_loss(logits, mask, weight=weight), longhand)
    target = torch.cat([mask, weight], dim=1)  # (B, 2, H, W): mask, pixel weight
    torch.testing.assert_close(SegmentationLoss("bce")(logits, target), longhand)
    unweighted_dice = SegmentationLoss("bce+dice")(logits, mask) - SegmentationLoss("bce")(logits, mask)
    torch.testing.assert_close(SegmentationLoss("bce+dice")(logits, target), longhand + unweighted_dice)
    with pytest.raises(ValueError, match="Dice loss takes no pixel weights"):
        SegmentationLoss("dice")(logits, target)


def test_isbi_task_carries_weight_maps_through_augmentation(shared_data: Path) -> None:
    from dltricks.tasks.segmentation.isbi import isbi2012_membrane_task

    task = isbi2012_membrane_task(batch_size=2, data_dir=shared_data, subset=2, crop_size=96, elastic=False,
                                  border_weight=10.0, balance_classes=True)
    w_cell, w_membrane = class_balance_weights(task.train_loader.data.masks)
    assert task.train_loader._weights is None  # nothing computed until the training loader draws a sample
    x, y = next(iter(task.train_loader))
    assert x.shape == (2, 1, 96, 96) and y.shape == (2, 2, 96, 96)
    mask, weight = y[:, 0].bool(), y[:, 1]
    # Without elastic warping the weights are moved exactly with the mask: w_c inside cells, w_c plus a
    # non-negative border term on membranes.
    assert torch.allclose(weight[~mask], torch.tensor(w_cell))
    assert (weight[mask] >= w_membrane - 1e-6).all() and (weight[mask] > w_membrane + 1).any()
    # With elastic warping the weights stay within the same range and the mask stays binary.
    warped = isbi2012_membrane_task(batch_size=2, data_dir=shared_data, subset=2, crop_size=96, elastic=True,
                                    border_weight=10.0, balance_classes=True)
    _, yw = next(iter(warped.train_loader))
    assert set(yw[:, 0].unique().tolist()) <= {0.0, 1.0}
    assert yw[:, 1].min() >= w_cell - 1e-5 and yw[:, 1].max() <= w_membrane + 10.0 + 1e-4
    # Validation batches are plain masks, and the loss accepts both.
    _, yv = next(iter(task.val_loader))
    assert yv.shape[1] == 1
    assert torch.isfinite(task.loss(torch.zeros_like(y[:, :1]), y))
    with pytest.raises(ConfigError, match="loss is 'dice'"):
        isbi2012_membrane_task(batch_size=2, data_dir=shared_data, subset=2, border_weight=10.0, loss="dice")


def test_weight_map_on_a_real_slice_is_largest_between_close_cells(shared_data: Path) -> None:
    from dltricks.data.isbi import load_isbi

    membrane = load_isbi(shared_data).masks[0, 0].bool()
    weights = unet_weight_map(membrane, w0=10.0, sigma=5.0)
    cells = ~membrane
    assert torch.all(weights[cells] == 1.0)
    # Thin membranes (cells within 2 px on both sides) weigh more than the middle of thick membrane blobs.
    near_cells = F.max_pool2d(cells[None, None].float(), 5, stride=1, padding=2)[0, 0].bool()
    thin = membrane & near_cells
    thick = membrane & ~F.max_pool2d(cells[None, None].float(), 21, stride=1, padding=10)[0, 0].bool()
    assert thick.any() and weights[thin].mean() > weights[thick].mean() + 3

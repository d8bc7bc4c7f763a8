"""Each batched augmentation against the property that defines it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from dltricks.config import ConfigError, from_dict
from dltricks.data.augment import (AugmentConfig, apply_mixing, cutmix, cutout, mixup, one_hot, random_crop,
                                   random_hflip, random_rotate, rotate, sample_beta)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(B: int = 8, C: int = 3, H: int = 16, W: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(B, C, H, W, generator=gen(seed + 100))


# --- random crop ---------------------------------------------------------------------------------------

def test_crop_with_padding_zero_is_identity():
    x = images()
    assert_close(random_crop(x, 0, gen()), x)


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_crop_is_a_window_of_the_padded_image(mode):
    x, p = images(B=16, H=10, W=12), 3
    out = random_crop(x, p, gen(1), mode=mode)
    assert out.shape == x.shape
    padded = F.pad(x, (p,) * 4, mode="reflect" if mode == "reflect" else "constant")
    offsets = set()
    for b in range(x.shape[0]):
        matches = [(i, j) for i in range(2 * p + 1) for j in range(2 * p + 1)
                   if torch.equal(padded[b, :, i:i + 10, j:j + 12], out[b])]
        assert matches, f"sample {b} is not a window of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 1  # offsets differ between samples


def test_crop_zero_padding_fills_with_zeros():
    x = torch.ones(64, 1, 4, 4)
    out = random_crop(x, 2, gen())
    # Every visible zero comes from the padding: rows/cols outside the image.
    assert ((out == 0) | (out == 1)).all() and (out == 0).any()


def test_crop_is_deterministic_per_generator_seed():
    x = images()
    assert torch.equal(random_crop(x, 4, gen(5)), random_crop(x, 4, gen(5)))
    assert not torch.equal(random_crop(x, 4, gen(5)), random_crop(x, 4, gen(6)))


# --- horizontal flip -----------------------------------------------------------------------------------

def test_hflip_each_sample_is_unchanged_or_mirrored():
    x = images(B=64)
    out = random_hflip(x, gen(3))
    flipped = torch.tensor([torch.equal(out[b], x[b].flip(-1)) for b in range(64)])
    kept = torch.tensor([torch.equal(out[b], x[b]) for b in range(64)])
    assert (flipped | kept).all()
    assert 10 < int(flipped.sum()) < 54  # p = 0.5


def test_hflip_twice_with_same_draws_is_identity():
    x = images()
    assert_close(random_hflip(random_hflip(x, gen(4), p=1.0), gen(4), p=1.0), x, rtol=0, atol=0)
    assert_close(random_hflip(random_hflip(x, gen(4)), gen(4)), x, rtol=0, atol=0)
    assert torch.equal(random_hflip(x, gen(), p=0.0), x)


# --- rotation ------------------------------------------------------------------------------------------

def test_rotation_by_zero_is_identity():
    x = images(H=12, W=20)
    assert_close(rotate(x, 0.0), x)
    assert_close(random_rotate(x, 0.0, gen()), x)


def test_rotation_by_90_matches_rot90_counter_clockwise():
    x = images(H=8, W=8)
    assert_close(rotate(x, 90.0), torch.rot90(x, 1, dims=(2, 3)))
    assert_close(rotate(x, -90.0), torch.rot90(x, -1, dims=(2, 3)))
    assert_close(rotate(x, 180.0), x.flip(2).flip(3))


def test_rotation_keeps_aspect_on_non_square_images():
    # A 180 degree turn of a non-square image is a double flip; a wrong aspect correction would stretch it.
    x = images(H=6, W=10)
    assert_close(rotate(x, 180.0), x.flip(2).flip(3))


def test_random_rotation_angles_stay_in_range():
    # A centred single bright pixel column rotated by at most 10 degrees stays near vertical.
    x = torch.zeros(32, 1, 33, 33)
    x[:, :, :, 16] = 1.0
    out = random_rotate(x, 10.0, gen(7))
    top_row = out[:, 0, 0]  # (B, W): where the line crosses the top row
    centre_of_mass = (top_row * torch.arange(33.0)).sum(1) / top_row.sum(1)
    shift = (centre_of_mass - 16).abs()
    # tan(10 deg) * 16 px = 2.8 px
    assert shift.max() <= 3.0 and shift.max() > 0.3


# --- cutout --------------------------------------------------------------------------------------------

def test_cutout_zeroes_exactly_one_clipped_square():
    x = torch.rand(64, 3, 20, 20) + 0.5  # no zeros before cutout
    size = 6
    out = cutout(x, size, gen(2))
    inside_count = 0
    for b in range(64):
        zero = out[b] == 0  # (C, H, W)
        assert (zero == zero[:1]).all(), "the hole covers all channels"
        rows = zero[0].any(1).nonzero().flatten()
        cols = zero[0].any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert 1 <= h <= size and 1 <= w <= size
        assert int(zero[0].sum()) == h * w, "the hole is a rectangle"
        assert rows.max() - rows.min() + 1 == h and cols.max() - cols.min() + 1 == w
        touches = rows.min() == 0 or cols.min() == 0 or rows.max() == 19 or cols.max() == 19
        if not touches:
            assert h == w == size, "a hole that does not touch the border is exactly size x size"
            inside_count += 1
        assert torch.equal(out[b][~zero], x[b][~zero]), "pixels outside the hole are unchanged"
    assert inside_count > 10


def test_cutout_size_zero_is_identity():
    x = images()
    assert torch.equal(cutout(x, 0, gen()), x)


# --- mixup and CutMix ----------------------------------------------------------------------------------

def test_mixup_is_a_lam_mixture_of_inputs_and_targets():
    x = images(B=10)
    y = torch.arange(10) % 4
    mixed_x, mixed_y, lam, index = mixup(x, y, 0.4, gen(9), num_classes=4)
    assert 0.0 <= lam <= 1.0
    assert sorted(index.tolist()) == list(range(10))
    assert_close(mixed_x, lam * x + (1 - lam) * x[index])
    assert_close(mixed_y, lam * F.one_hot(y, 4).float() + (1 - lam) * F.one_hot(y[index], 4).float())
    assert_close(mixed_y.sum(1), torch.ones(10))


def test_cutmix_pastes_one_box_and_targets_match_its_area():
    x = images(B=10, H=16, W=16)
    y = torch.arange(10) % 3
    mixed_x, mixed_y, lam, index = cutmix(x, y, 1.0, gen(11), num_classes=3)
    from_other = (mixed_x != x).any(1)  # (B, H, W) pixels that changed
    box = torch.zeros(16, 16, dtype=torch.bool)
    for b in range(10):
        if index[b] != b:
            box |= from_other[b]
    # Inside the box every pixel comes from the partner, outside every pixel is its own.
    changed_area = int(box.sum())
    if changed_area:
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        assert changed_area == len(rows) * len(cols)
        for b in range(10):
            assert torch.equal(mixed_x[b][:, box], x[index[b]][:, box])
            assert torch.equal(mixed_x[b][:, ~box], x[b][:, ~box])
    assert lam == pytest.approx(1 - changed_area / 256)
    assert_close(mixed_y, lam * F.one_hot(y, 3).float() + (1 - lam) * F.one_hot(y[index], 3).float())
    assert_close(mixed_y.sum(1), torch.ones(10))


def test_beta_samples_are_reproducible_and_have_the_right_mean():
    draws = [sample_beta(0.5, gen(s)) for s in range(400)]
    assert draws[:5] == [sample_beta(0.5, gen(s)) for s in range(5)]
    assert all(0 <= d <= 1 for d in draws)
    assert abs(sum(draws) / len(draws) - 0.5) < 0.05  # Beta(a, a) has mean 1/2
    # Beta(0.5, 0.5) is U-shaped: most mass near 0 and 1.
    assert sum(d < 0.1 or d > 0.9 for d in draws) > 0.3 * len(draws)


def test_apply_mixing_always_returns_soft_targets_when_on():
    x, y = images(B=6), torch.tensor([0, 1, 2, 0, 1, 2])
    config = AugmentConfig(mixup_alpha=1.0, mix_prob=0.0)  # never mixed, still soft targets
    out_x, out_y = apply_mixing(x, y, config, gen(), num_classes=3)
    assert torch.equal(out_x, x) and torch.equal(out_y, one_hot(y, 3))
    config = AugmentConfig(mixup_alpha=1.0, cutmix_alpha=1.0)
    for seed in range(4):
        _, out_y = apply_mixing(x, y, config, gen(seed), num_classes=3)
        assert out_y.shape == (6, 3) and out_y.dtype == torch.float32
        assert_close(out_y.sum(1), torch.ones(6))
    assert apply_mixing(x, y, AugmentConfig(), gen(), num_classes=3)[1] is y


# --- config --------------------------------------------------------------------------------------------

def test_augment_config_checks_values_and_keys():
    config = from_dict(AugmentConfig, {"crop_padding": 4, "hflip": True, "mixup_alpha": 0.2})
    assert config.active and config.mixes
    assert not AugmentConfig().active
    with pytest.raises(ConfigError, match="crop_padding"):
        from_dict(AugmentConfig, {"crop_padding": -1})
    with pytest.raises(ConfigError, match="mix_prob"):
        from_dict(AugmentConfig, {"mix_prob": 1.5})
    with pytest.raises(ConfigError, match="rotate_degrees"):
        from_dict(AugmentConfig, {"rotate_degrees": 270})
    with pytest.raises(ConfigError, match="hflip"):
        from_dict(AugmentConfig, {"hflp": True})
    with pytest.raises(ConfigError, match="crop_padding_mode"):
        from_dict(AugmentConfig, {"crop_padding_mode": "edge"})

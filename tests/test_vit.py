"""Vision Transformers, Swin and MLP-Mixer: published parameter counts, window attention against a dense
reference, the role of position embeddings, attention maps."""

from __future__ import annotations

import pytest
import torch

from dltricks import create_model
from dltricks.layers.position import relative_position_index
from dltricks.models.swin import (PatchMerging, SwinTransformerBlock, shifted_window_mask, window_partition,
                                  window_reverse)


def count(name: str, **kwargs) -> int:
    with torch.device("meta"):  # no memory, no initialisation: instant even for 86 M parameters
        model = create_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,expected", [
    ("vit_tiny_patch16_224", 5_717_416),
    ("vit_small_patch16_224", 22_050_664),
    ("vit_base_patch16_224", 86_567_656),
    ("swin_tiny_patch4_window7_224", 28_288_354),
    ("mixer_b16_224", 59_880_472),
])
def test_published_parameter_counts(name, expected):
    assert count(name, num_classes=1000) == expected


def test_vit_position_table_is_resampled_for_other_sizes():
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", num_classes=5).eval()
    assert model(torch.randn(2, 3, 224, 224)).shape == (2, 5)
    assert model(torch.randn(1, 3, 48, 80)).shape == (1, 5)  # 3x5 grid, non-square
    with pytest.raises(ValueError, match="multiples of the patch size 16"):
        model(torch.randn(1, 3, 50, 64))


def test_vit_class_token_ignores_patch_order_without_positions():
    """Without position embeddings, shuffling the image's patches leaves the class-token output unchanged;
    with them it changes. (Attention is permutation-equivariant; positions are what make order matter.)"""
    torch.manual_seed(0)
    model = create_model("vit_cifar_patch4_32", num_classes=3, drop_path_rate=0.0).eval()
    x = torch.randn(1, 3, 32, 32)
    # Shuffle the 8x8 grid of 4x4 patches: (1, 3, 8, 4, 8, 4) -> permute grid cells -> image
    patches = x.view(1, 3, 8, 4, 8, 4).permute(0, 2, 4, 1, 3, 5).reshape(1, 64, 3, 4, 4)
    perm = torch.randperm(64)
    shuffled = patches[:, perm].view(1, 8, 8, 3, 4, 4).permute(0, 3, 1, 4, 2, 5).reshape(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(x), model(shuffled), atol=1e-4)
        model.pos_embed.zero_()
        torch.testing.assert_close(model(x), model(shuffled), rtol=1e-4, atol=1e-5)


def test_vit_attention_maps():
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224").eval()
    maps = model.get_attention_maps(torch.randn(2, 3, 64, 64))
    assert len(maps) == 12 and maps[0].shape == (2, 3, 17, 17)
    torch.testing.assert_close(maps[-1].sum(-1), torch.ones(2, 3, 17))


def test_hybrid_vit_uses_conv_stem():
    model = create_model("vit_hybrid_cifar", num_classes=10).eval()
    assert model.stride == 4 and model.pos_embed.shape == (1, 64, 256)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model(torch.randn(1, 3, 40, 24)).shape == (1, 10)


# --- Swin ---------------------------------------------------------------------------------------------

def dense_swin_reference(block: SwinTransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """The block computed without windows: full attention over all H*W tokens with a mask that allows a pair
    only if both tokens fall in the same window of the shifted partition, i.e. the same
    floor((y - s) / M) and floor((x - s) / M) with y, x in the original (unrolled, unpadded) coordinates,
    and a bias read from the table at their true offset."""
    B, H, W, C = x.shape
    M, s = block._window_and_shift(H, W)
    attn = block.attn
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()  # (N,)
    gy, gx = torch.div(ys - s, M, rounding_mode="floor"), torch.div(xs - s, M, rounding_mode="floor")
    same = (gy[:, None] == gy[None, :]) & (gx[:, None] == gx[None, :])  # (N, N)
    Mt = attn.rel_pos.window_size[0]
    index = (ys[:, None] - ys[None, :] + Mt - 1) * (2 * Mt - 1) + (xs[:, None] - xs[None, :] + Mt - 1)
    index = index.clamp(0, (2 * Mt - 1) ** 2 - 1)  # pairs outside a window are masked anyway
    bias = attn.rel_pos.relative_position_bias_table[index].permute(2, 0, 1)  # (heads, N, N)
    h = block.norm1(x).reshape(B, H * W, C)
    q, k, v = attn.qkv(h).view(B, H * W, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / attn.head_dim ** 0.5 + bias
    out = torch.softmax(scores.masked_fill(~same, float("-inf")), -1) @ v  # (B, heads, N, d)
    out = attn.proj(out.transpose(1, 2).reshape(B, H * W, C)).view(B, H, W, C)
    x = x + out
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("H,W,window,shift", [(8, 8, 4, 2), (8, 8, 4, 0), (7, 10, 3, 1), (12, 12, 4, 2), (3, 5, 4, 2)])
def test_swin_block_matches_dense_attention_reference(H, W, window, shift):
    torch.manual_seed(0)
    block = SwinTransformerBlock(16, 2, window_size=window, shift_size=shift).eval()
    with torch.no_grad():
        block.attn.rel_pos.relative_position_bias_table.normal_()  # make the bias matter
        x = torch.randn(2, H, W, 16)
        torch.testing.assert_close(block(x), dense_swin_reference(block, x), rtol=1e-4, atol=1e-5)


def test_shifted_window_mask_separates_regions():
    mask = shifted_window_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window holds one region only
    # The bottom-right window mixes 4 regions of 4 tokens: each token may attend to 4 of the 16.
    assert ((mask[3] == 0).sum(-1) == 4).all()
    assert shifted_window_mask(8, 8, 4, 0) is None


def test_window_partition_round_trip():
    x = torch.randn(2, 8, 12, 5)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 6, 16, 5)
    torch.testing.assert_close(windows[1].view(4, 4, 5), x[0, :4, 4:8])
    torch.testing.assert_close(window_reverse(windows, 4, 8, 12), x)


def test_patch_merging_concatenates_2x2_neighbours():
    torch.manual_seed(0)
    merge = PatchMerging(3)
    x = torch.randn(1, 4, 4, 3)
    expected = merge.reduction(merge.norm(torch.cat([x[0, 0, 0], x[0, 1, 0], x[0, 0, 1], x[0, 1, 1]])))
    torch.testing.assert_close(merge(x)[0, 0, 0], expected)
    assert merge(torch.randn(1, 5, 7, 3)).shape == (1, 3, 4, 6)  # odd sizes are padded


def test_relative_position_bias_of_swin_window():
    index = relative_position_index((7, 7))
    assert index.shape == (49, 49) and int(index.max()) == 168


def test_swin_runs_at_any_size_and_returns_attention_maps():
    torch.manual_seed(0)
    model = create_model("swin_cifar_patch2_window4_32", num_classes=4).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    assert model(torch.randn(1, 3, 27, 41)).shape == (1, 4)
    maps = model.get_attention_maps(torch.randn(1, 3, 32, 32))
    assert len(maps) == 10 and maps[0].shape == (16, 3, 16, 16)  # 16 windows of 4x4 tokens at stage 1


# --- MLP-Mixer ----------------------------------------------------------------------------------------

def test_mixer_token_mixing_is_shared_across_channels():
    torch.manual_seed(0)
    model = create_model("mixer_cifar_patch4_32", num_classes=3).eval()
    block = model.blocks[0]
    x = torch.randn(2, 64, 256)
    y = block.norm1(x)
    manual = torch.stack([block.mlp_tokens(y[:, :, c]) for c in range(3)], dim=-1)  # one MLP per channel, same weights
    torch.testing.assert_close(block.mlp_tokens(y.transpose(1, 2)).transpose(1, 2)[..., :3], manual)
    with pytest.raises(ValueError, match="32x32"):
        model(torch.randn(1, 3, 64, 64))


def test_mixer_b16_token_mlp_spans_196_patches():
    with torch.device("meta"):
        model = create_model("mixer_b16_224", num_classes=2)
    assert model.stem.num_patches == 196 and model.blocks[0].mlp_tokens.fc1.in_features == 196
    assert model.blocks[0].mlp_tokens.fc1.out_features == 384 and model.blocks[0].mlp_channels.fc1.out_features == 3072

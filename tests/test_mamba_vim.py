"""Vision Mamba: sizes against the paper, middle class token, position-table resampling, and the
flip equivariance of its blocks when both scan directions share their weights."""

from __future__ import annotations

import torch

from dltricks import create_model


def _params(name: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in create_model(name, num_classes=1000).parameters())


def test_parameter_counts_match_the_paper() -> None:
    """Vim-Ti 7 M and Vim-S 26 M (paper Table 1, rounded to the million)."""
    assert abs(_params("vim_tiny") - 7e6) < 0.5e6
    assert abs(_params("vim_small") - 26e6) < 0.5e6


def test_structure() -> None:
    with torch.device("meta"):
        model = create_model("vim_tiny")
    assert len(model.blocks) == 24 and model.num_features == 192 and model.patch_size == 16
    mixer = model.blocks[0].mixer
    assert mixer.d_inner == 384 and isinstance(model.blocks[0].norm, torch.nn.RMSNorm)
    assert model.pos_embed.shape == (1, 197, 192)


def test_middle_class_token_is_classified() -> None:
    """The head reads the token inserted at position M // 2: changing the class token changes the output,
    and with only one block it is the output at that position."""
    torch.manual_seed(0)
    model = create_model("vim_tiny_cifar", depth=1, embed_dim=32).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        model.cls_token.add_(1.0)
        assert not torch.allclose(model(x), y)


def test_other_resolutions_resample_positions() -> None:
    torch.manual_seed(1)
    model = create_model("vim_tiny_cifar", depth=2, embed_dim=32).eval()
    with torch.no_grad():
        for size in (16, 32, 48):
            assert model(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_tied_blocks_flip_the_output_when_the_sequence_is_flipped() -> None:
    torch.manual_seed(2)
    model = create_model("vim_tiny_cifar", depth=3, embed_dim=32).eval()
    for block in model.blocks:
        block.mixer.tie_directions()
    tokens = torch.randn(2, 65, 32)
    with torch.no_grad():
        out = tokens
        out_flipped = tokens.flip(1)
        for block in model.blocks:
            out, out_flipped = block(out), block(out_flipped)
    torch.testing.assert_close(out_flipped, out.flip(1), rtol=1e-5, atol=1e-6)

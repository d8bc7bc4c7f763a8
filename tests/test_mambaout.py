"""MambaOut: exact published parameter counts, forward MACs at 224 within 1 %, and the Gated CNN block."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dltricks import create_model
from dltricks.layers.ssm.gated_cnn import GatedCNNBlock

# name: (parameters at 1000 classes, forward GMACs at 224x224), from the MambaOut paper / official code.
PUBLISHED = {
    "mambaout_femto": (7_304_536, 1.15),
    "mambaout_kobe": (9_141_208, 1.51),
    "mambaout_tiny": (26_545_096, 4.47),
    "mambaout_small": (48_488_072, 8.94),
    "mambaout_base": (84_813_092, 15.79),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameters_and_macs_match_the_paper(name: str) -> None:
    params, gmacs = PUBLISHED[name]
    with torch.device("meta"):  # no memory, no initialisation cost
        model = create_model(name, num_classes=1000)
        x = torch.empty(1, 3, 224, 224)
    assert sum(p.numel() for p in model.parameters()) == params
    with FlopCounterMode(display=False) as counter:
        model(x)
    macs = counter.get_total_flops() / 2 / 1e9
    assert abs(macs / gmacs - 1) < 0.01, f"{name}: {macs:.3f} G MACs vs published {gmacs} G"


def test_gated_cnn_block_structure() -> None:
    block = GatedCNNBlock(48)
    hidden = int(8 / 3 * 48)  # 128
    assert block.fc1.out_features == 2 * hidden
    assert block.split_sizes == (hidden, hidden - 48, 48)
    assert block.conv.kernel_size == (7, 7) and block.conv.groups == 48
    assert block.fc2.in_features == hidden


def test_gated_cnn_block_equation() -> None:
    """out = x + fc2(GELU(g) * [i, DWConv(c)]) with [g, i, c] = fc1(LN(x))."""
    torch.manual_seed(0)
    block = GatedCNNBlock(12, kernel_size=3).eval()
    x = torch.randn(2, 5, 6, 12)  # (B, H, W, C)
    h = block.fc1(block.norm(x))
    g, i, c = h[..., :32], h[..., 32:32 + 20], h[..., 52:]
    conv = torch.nn.functional.conv2d(c.permute(0, 3, 1, 2), block.conv.weight, block.conv.bias, padding=1, groups=12)
    ref = x + block.fc2(torch.nn.functional.gelu(g) * torch.cat([i, conv.permute(0, 2, 3, 1)], dim=-1))
    torch.testing.assert_close(block(x), ref)


def test_cifar_variant_keeps_resolution_longer() -> None:
    model = create_model("mambaout_femto_cifar")
    x = torch.randn(2, 3, 32, 32)
    assert model.stem(x).shape == (2, 16, 16, 48)  # stride 2 instead of 4
    assert model(x).shape == (2, 10)

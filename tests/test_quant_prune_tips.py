"""The measuring helpers of the quantization and pruning tips (dltricks.experiments.compression_tips): the MACs
left when zero weights are skipped, against a brute-force count, and the interleaved latency timer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dltricks.compress import prune_unstructured
from dltricks.experiments.compression_tips import interleaved_latency, nonzero_macs
from dltricks.measure import count_macs


def _brute_force_macs(model: nn.Sequential, x: torch.Tensor) -> int:
    """Every output position of a conv multiplies each non-zero weight once; a linear layer each non-zero weight
    once per sample (no padding in these layers, batch 1)."""
    total = 0
    for layer in model:
        y = layer(x)
        if isinstance(layer, nn.Conv2d):
            total += y.shape[-2] * y.shape[-1] * int(torch.count_nonzero(layer.weight))
        elif isinstance(layer, nn.Linear):
            total += int(torch.count_nonzero(layer.weight))
        x = y
    return total


@pytest.mark.parametrize("amount", [0.0, 0.5, 0.8])
def test_nonzero_macs_match_a_brute_force_count(amount):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 10)).eval()
    x = torch.randn(1, 3, 14, 14)
    pruned = prune_unstructured(model, amount) if amount else model
    with torch.no_grad():
        assert nonzero_macs(pruned, x) == _brute_force_macs(pruned, x)
    if amount == 0.0:
        assert nonzero_macs(model, x) == count_macs(model, x)


def test_interleaved_latency_times_every_variant_and_orders_them():
    small, large = torch.randn(64, 64), torch.randn(256, 256)
    ms = interleaved_latency({"small": lambda x: small @ small, "large": lambda x: large @ large}, torch.zeros(1),
                             rounds=3, min_time=0.01)
    assert set(ms) == {"small", "large"} and all(v > 0 for v in ms.values())
    # 64x more multiply-adds: in CPU time on one thread the larger product is clearly slower.
    assert ms["large"] > 4 * ms["small"]

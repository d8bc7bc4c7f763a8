"""Breakdowns that must add up to their totals: parameters per module, FLOPs per operator and per module,
the per-layer table at every depth, and the known parts of a memory baseline.

The models here are built to hit the hard cases: a container that holds its own parameters (a class token)
and runs its own counted operators (an attention product in its ``forward``), a module called twice, and a
weight shared by two modules.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dltricks.measure import count_flops, count_params, layer_table, params_by_module, peak_memory
from dltricks.models import create_model


class _Attention(nn.Module):
    """A container with children (the projections) and its own counted ops (two batched matmuls)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B, T, D) each
        attn = (q @ k.transpose(1, 2)).softmax(-1)  # (B, T, T): bmm counted here, not in a child
        return self.proj(attn @ v)  # (B, T, D)


class _Net(nn.Module):
    """Class token (root parameter), a stage called twice, a weight shared by two linears."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.embed = nn.Linear(4, dim)
        self.stage = nn.Sequential(_Attention(dim), nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)))
        self.head = nn.Linear(dim, 3)
        self.tied = nn.Linear(dim, 3)
        self.tied.weight = self.head.weight  # shared: counted once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), self.embed(x)], 1)  # (B, 1 + T, D)
        x = self.stage(self.stage(x))  # the same stage twice
        return self.head(x[:, 0]) + self.tied(x[:, 1])  # (B, 3)


def _net_input() -> torch.Tensor:
    return torch.randn(2, 5, 4)


def test_params_by_module_adds_up_with_own_and_shared_parameters() -> None:
    model = _Net()
    total = count_params(model).total
    own = params_by_module(model)
    assert sum(own.values()) == total
    assert own[""] == 8  # the class token, held by the root itself
    assert own["stage"] == 0 and own["stage.0"] == 0  # containers without parameters of their own
    assert own["head"] == 3 * 8 + 3 and own["tied"] == 3  # the shared weight is counted at its first owner only
    whole = params_by_module(model, recurse=True)
    assert whole[""] == total
    assert whole["stage"] == sum(p.numel() for p in model.stage.parameters())
    assert whole["stage.1"] == whole["stage.1.0"] + whole["stage.1.1"]


def test_flops_by_operator_and_by_module_add_up() -> None:
    model = _Net().eval()
    x = _net_input()
    f = count_flops(model, x)
    assert sum(f.by_op.values()) == f.flops
    assert f.by_module[""] == f.flops
    # Every module's count includes its children's; the root's children (and its own zero) make the total.
    top = ["embed", "stage", "head", "tied"]
    assert sum(f.by_module.get(k, 0) for k in top) == f.flops
    assert f.by_module["stage.0"] > f.by_module["stage.0.qkv"] + f.by_module["stage.0.proj"]  # its own bmm
    # The stage ran twice on (B, 6, 8): twice the FLOPs of one call.
    once = count_flops(model.stage, torch.randn(2, 6, 8)).flops
    assert f.by_module["stage"] == 2 * once
    assert f.macs == f.flops // 2


@pytest.mark.parametrize("depth", [None, 0, 1, 2, 3])
def test_layer_table_adds_up_at_every_depth(depth) -> None:
    model = _Net().eval()
    x = _net_input()
    rows = layer_table(model, (x,), depth=depth)
    assert sum(r.macs for r in rows) == count_flops(model, x).macs
    assert sum(r.params for r in rows) == count_params(model).total
    names = [r.name for r in rows]
    assert len(names) == len(set(names))  # no module twice
    if depth is None:
        attention = next(r for r in rows if r.name == "stage.0")
        qk = 2 * 2 * (2 * 6 * 6 * 8)  # 2 calls x (q @ k.T and attn @ v), B x T x T x D multiply-adds each
        assert attention.macs == qk and attention.calls == 2 and attention.params == 0
        # Each row holds its own parameters, as params_by_module counts them (the root's row is the class token).
        own = {name or "(model)": n for name, n in params_by_module(model).items() if n}
        assert {r.name: r.params for r in rows if r.params} == own


def test_layer_table_adds_up_on_registered_families() -> None:
    """A transformer with a class token and position table (ViT), a CNN with a container-level residual add."""
    for name, size in (("vit_cifar_patch4_32", (3, 32, 32)), ("resnet18_cifar", (3, 32, 32))):
        model = create_model(name, num_classes=10).eval()
        x = torch.randn(1, *size)
        total_macs, total_params = count_flops(model, x).macs, count_params(model).total
        for depth in (None, 1, 2):
            rows = layer_table(model, (x,), depth=depth)
            assert sum(r.macs for r in rows) == total_macs, (name, depth)
            assert sum(r.params for r in rows) == total_params, (name, depth)


@pytest.mark.parametrize("optimizer,states", [("sgd", 1), ("adam", 2)])
def test_memory_baseline_is_the_sum_of_its_parts(optimizer, states) -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(8, 16)
    p = count_params(model)
    for mode in ("inference", "train"):
        m = peak_memory(model, (x,), mode=mode, optimizer=optimizer)
        assert m.baseline_bytes == sum(m.parts.values())
        assert m.parts["params"] == p.param_bytes and m.parts["buffers"] == p.buffer_bytes
        assert m.parts["inputs"] == x.numel() * 4
        assert m.peak_bytes == m.baseline_bytes + m.extra_bytes and m.extra_bytes > 0
        if mode == "train":
            # Momentum: one buffer per parameter; Adam: two moments plus a one-element step count each.
            n_tensors = len(list(model.parameters()))
            step_bytes = n_tensors * 4 if optimizer == "adam" else 0
            assert m.parts["optimizer_state"] == states * p.param_bytes + step_bytes

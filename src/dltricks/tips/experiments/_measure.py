"""Measurement helpers the tip experiments share: weight counts, MACs, gradient-support receptive
fields, latency and saved-activation memory.

* MACs come from :class:`torch.utils.flop_counter.FlopCounterMode` (FLOPs / 2; convolutions and
  matrix products only, as PyTorch counts them).
* The receptive field of one output unit is the *support* of its input gradient: with every weight
  made positive and the input all ones, no path can cancel, so an input pixel has a non-zero gradient
  exactly when it lies in the receptive field. Max pooling would keep only one path per window, so it
  is swapped for average pooling of the same geometry first.
* Training memory on CPU is counted as the bytes of the tensors autograd saves for the backward pass
  (``torch.autograd.graph.saved_tensors_hooks``), plus parameters and their gradients.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_weights", "count_params", "count_macs", "support_receptive_field", "median_latency",
           "saved_activation_bytes"]


def count_weights(module: nn.Module) -> int:
    """Parameters with more than one dimension (conv/linear weights; biases and norm scales excluded)."""
    return sum(p.numel() for p in module.parameters() if p.dim() > 1)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops() // 2


def _swap_max_pool(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.MaxPool2d):
            setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, ceil_mode=child.ceil_mode))
        else:
            _swap_max_pool(child)
    return module


def support_receptive_field(module: nn.Module, *, in_chans: int, size: int) -> tuple[int, int, torch.Tensor]:
    """(height, width, support mask) of the input region that reaches the centre output unit."""
    net = _swap_max_pool(copy.deepcopy(module)).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(p.abs() + 0.01)  # positive weights: no cancellation along any path
    x = torch.ones(1, in_chans, size, size, dtype=torch.float64, requires_grad=True)
    y = net(x)  # (1, C, H', W')
    y[0, 0, y.shape[-2] // 2, y.shape[-1] // 2].backward()
    mask = x.grad[0].abs().sum(0) > 0  # (H, W)
    rows = mask.any(1).nonzero().flatten()
    cols = mask.any(0).nonzero().flatten()
    height = int(rows.max() - rows.min() + 1) if len(rows) else 0
    width = int(cols.max() - cols.min() + 1) if len(cols) else 0
    return height, width, mask


def median_latency(fn: Callable[[], object], *, repeats: int = 7, min_time: float = 0.05, stat: str = "median",
                   clock: str = "wall") -> float:
    """Seconds per call over ``repeats`` timed blocks (each at least ``min_time`` s), after warm-up.

    ``stat``: "median" (the usual summary) or "min". ``clock="cpu"`` runs ``fn`` on one intra-op thread
    and counts the process's CPU time instead of wall time: on a machine shared with other jobs, wall
    time mostly measures the other jobs, while the CPU time of a single-threaded computation barely
    changes. It measures compute cost, not multi-core speed.
    """
    timer = time.process_time if clock == "cpu" else time.perf_counter
    threads = torch.get_num_threads()
    if clock == "cpu":
        torch.set_num_threads(1)
    try:
        fn()
        fn()
        number = 1
        while True:  # calibrate calls per block
            start = timer()
            for _ in range(number):
                fn()
            if timer() - start >= min_time or number >= 1 << 16:
                break
            number *= 2
        blocks = []
        for _ in range(repeats):
            start = timer()
            for _ in range(number):
                fn()
            blocks.append((timer() - start) / number)
    finally:
        torch.set_num_threads(threads)
    return min(blocks) if stat == "min" else statistics.median(blocks)


def saved_activation_bytes(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Bytes of tensors saved for backward in one training forward pass (parameters not counted)."""
    param_ptrs = {p.data_ptr() for p in module.parameters()}
    seen: set[tuple[int, int]] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = (t.data_ptr(), t.numel())
        if t.data_ptr() not in param_ptrs and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(*inputs).sum()
    return total

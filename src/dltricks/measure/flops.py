"""FLOPs and MACs with PyTorch's own counter, :class:`torch.utils.flop_counter.FlopCounterMode`.

What is counted (the operators FlopCounterMode has formulas for):

* convolutions, including transposed and grouped/depthwise ones: ``2 * C_in/groups * k_h * k_w`` FLOPs
  per output element (the full kernel at every output position, padding included; the bias is
  not counted);
* matrix products: ``mm``, ``addmm``, ``bmm``, ``baddbmm`` - so ``nn.Linear``, ``torch.matmul`` and
  ``einsum`` - at ``2 * M * N * K``;
* scaled-dot-product attention (``F.scaled_dot_product_attention``): the two batched products
  ``QK^T`` and ``AV``. PyTorch 2.13 has no formula for the CPU kernel
  ``aten._scaled_dot_product_flash_attention_for_cpu`` (it would count 0); we register the same
  formula for it, forward and backward.

Not counted: elementwise operations (activations, normalisation, residual additions, softmax,
scaling), pooling and interpolation. They are cheap in FLOPs but not in time - one of the reasons
FLOPs are not latency (see :mod:`dltricks.experiments.measure`).

MACs (multiply-accumulates) are FLOPs / 2, the unit architecture papers quote as "FLOPs":
ResNet-50 at 224x224 is 4.09 G MACs (8.18 G FLOPs). Measured here: resnet50 4.09 G, convnext_tiny
4.46 G, mobilenet_v2 0.30 G MACs (tests/test_measure_flops.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["FlopCount", "count_flops", "count_macs", "COUNTED_OPS"]

aten = torch.ops.aten


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _custom_mapping() -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flop
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward_flop
    return mapping


COUNTED_OPS = ("convolution", "convolution_backward", "mm", "addmm", "bmm", "baddbmm",
               "scaled_dot_product_attention (flash/efficient/cudnn/CPU kernels, forward and backward)")


@dataclass
class FlopCount:
    """FLOPs of one call, total and broken down.

    Attributes:
        flops: total floating-point operations (a multiply-add is 2).
        by_op: FLOPs per ATen operator (``convolution``, ``addmm``...).
        by_module: FLOPs per module name (``""`` = the whole model), each module including its children.
    """

    flops: int
    by_op: dict[str, int] = field(default_factory=dict)
    by_module: dict[str, int] = field(default_factory=dict)

    @property
    def macs(self) -> int:
        return self.flops // 2

    def to_dict(self) -> dict[str, Any]:
        return {"flops": self.flops, "macs": self.macs, "by_op": dict(self.by_op)}


def _module_names(model: nn.Module, counts: dict[str, dict[Any, int]]) -> dict[str, int]:
    """FlopCounterMode names modules ``<RootClass>.<path>``; map back to ``named_modules`` names."""
    root = type(model).__name__
    out: dict[str, int] = {}
    for key, per_op in counts.items():
        if key == "Global":
            continue
        if key == root:
            name = ""
        elif key.startswith(root + "."):
            name = key[len(root) + 1:]
        else:
            continue
        out[name] = out.get(name, 0) + sum(per_op.values())
    return out


def count_flops(model: nn.Module | Any, *inputs: Any, backward: bool = False, **kwargs: Any) -> FlopCount:
    """Count the FLOPs of ``model(*inputs, **kwargs)`` (and of its backward pass with ``backward=True``).

    The forward runs under ``torch.no_grad()`` unless ``backward`` is set; the model's train/eval mode is
    left as it is (it does not change the count of the ops above).
    """
    counter = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
    if backward:
        with counter:
            out = model(*inputs, **kwargs)
            loss = _reduce(out)
            loss.backward()
    else:
        with torch.no_grad(), counter:
            model(*inputs, **kwargs)
    counts = counter.get_flop_counts()
    by_op: dict[str, int] = defaultdict(int)
    for op, value in counts.get("Global", {}).items():
        by_op[getattr(op, "__name__", str(op))] += value
    by_module = _module_names(model, counts) if isinstance(model, nn.Module) else {}
    return FlopCount(flops=counter.get_total_flops(), by_op=dict(by_op), by_module=by_module)


def _reduce(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.float().sum()
    if isinstance(out, (tuple, list)):
        return sum(_reduce(o) for o in out if isinstance(o, (torch.Tensor, tuple, list, dict)))
    if isinstance(out, dict):
        return sum(_reduce(o) for o in out.values())
    raise TypeError(f"cannot reduce a model output of type {type(out).__name__}")


def count_macs(model: nn.Module, *inputs: Any) -> int:
    """Forward multiply-accumulates (FLOPs / 2) of ``model(*inputs)``."""
    return count_flops(model, *inputs).macs


def image_input(input_size: Sequence[int], batch: int = 1, *, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """A random image batch ``(batch, C, H, W)`` from ``input_size = (C, H, W)``."""
    return torch.randn(batch, *input_size, dtype=dtype, device=device)

"""A per-layer table: name, type, output shape, parameters and MACs of every layer.

Output shapes come from forward hooks; MACs from one pass under
:class:`~torch.utils.flop_counter.FlopCounterMode`, which attributes every counted operator to the
modules on the call stack (see :mod:`dltricks.measure.flops` for what is counted). A row is a leaf
module, or a container that itself holds parameters or runs counted operators in its own
``forward`` (e.g. an attention module computing ``q @ k.T``); its ``params`` and ``macs`` are its
*own* (children excluded), so the column sums equal the model totals. With ``depth=d`` the rows are
the modules ``d`` levels down (``layer1``, ``layer2``... for ``depth=1``), each with its whole subtree,
plus the shallower leaves and the shallower containers' own parameters and MACs (a class token, a
position table), so the sums still equal the totals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dltricks.measure.flops import _custom_mapping, _module_names

__all__ = ["LayerRow", "layer_table", "format_shape"]


@dataclass(frozen=True)
class LayerRow:
    name: str
    type: str
    output_shape: tuple[int, ...] | None
    params: int
    macs: int
    calls: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type,
                "output_shape": list(self.output_shape) if self.output_shape is not None else None,
                "params": self.params, "macs": self.macs, "calls": self.calls}


def format_shape(shape: Sequence[int] | None) -> str:
    return "-" if shape is None else "x".join(str(s) for s in shape)


def _shape_of(out: Any) -> tuple[int, ...] | None:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)) and out:
        return _shape_of(out[0])
    if isinstance(out, dict) and out:
        return _shape_of(next(iter(out.values())))
    return None


@dataclass
class _ForwardRecord:
    """What one forward pass saw: each module's last output shape and call count, the order of first calls,
    and the FLOPs :class:`FlopCounterMode` attributed to each called module (children included)."""

    shapes: dict[str, tuple[int, ...] | None]
    calls: dict[str, int]
    order: list[str]
    flops: dict[str, int]


def _child_names(name: str, module: nn.Module) -> list[str]:
    return [f"{name}.{c}" if name else c for c, _ in module.named_children()]


def _record_forward(model: nn.Module, modules: dict[str, nn.Module], inputs: Sequence[torch.Tensor]) -> _ForwardRecord:
    """Run ``model(*inputs)`` once under ``torch.no_grad()`` with a forward hook on every submodule."""
    shapes: dict[str, tuple[int, ...] | None] = {}
    calls: dict[str, int] = {}
    order: list[str] = []
    handles = []
    for name, module in modules.items():
        if name == "":
            continue

        def hook(mod, args, out, name=name):
            if name not in calls:
                order.append(name)
            calls[name] = calls.get(name, 0) + 1
            shapes[name] = _shape_of(out)

        handles.append(module.register_forward_hook(hook))
    counter = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
    try:
        with torch.no_grad(), counter:
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return _ForwardRecord(shapes, calls, order, _module_names(model, counter.get_flop_counts()))


def _subtree_flops(modules: dict[str, nn.Module], tracked: dict[str, int]) -> dict[str, int]:
    """FLOPs of every module with its whole subtree."""
    total_flops: dict[str, int] = {}

    def visit(name: str) -> int:
        # A container never called itself (blocks iterated in a loop) gets the sum of its children.
        if name not in total_flops:
            if name in tracked:
                total_flops[name] = tracked[name]
            else:
                total_flops[name] = sum(visit(k) for k in _child_names(name, modules[name]))
        return total_flops[name]

    for name in modules:
        visit(name)
    return total_flops


def _execution_order(modules: dict[str, nn.Module], order: list[str]) -> list[str]:
    """Submodule names in execution order; a container never called itself sits where its first descendant
    ran, and modules never called come last."""
    first: dict[str, int] = {}
    for index, name in enumerate(order):
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            first.setdefault(".".join(parts[:k]), index)
    return sorted((n for n in modules if n), key=lambda n: first.get(n, len(order)))


def _unseen_params(params: Iterable[nn.Parameter], seen: set[int]) -> int:
    """Elements of the parameters not counted in an earlier row (a shared tensor counts once); marks them seen."""
    total = 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _rows(modules: dict[str, nn.Module], names: list[str], record: _ForwardRecord, total_flops: dict[str, int],
          depth: int | None) -> list[LayerRow]:
    """One row per module at ``depth`` (whole subtree) or, above it, per module with its own params or MACs."""
    rows: list[LayerRow] = []
    seen: set[int] = set()
    for name in [""] + names:
        module = modules[name]
        level = 0 if name == "" else name.count(".") + 1
        shape = record.shapes.get(name) if name else None
        count = record.calls.get(name, 1 if name == "" else 0)
        if depth is not None and level == depth:
            rows.append(LayerRow(name, type(module).__name__, shape, _unseen_params(module.parameters(), seen),
                                 total_flops.get(name, 0) // 2, count))
        elif depth is None or level < depth:
            # Leaves, and containers that hold parameters or run counted ops in their own forward.
            children = _child_names(name, module)
            flops = max(total_flops.get(name, 0) - sum(total_flops.get(c, 0) for c in children), 0)
            params = _unseen_params(module.parameters(recurse=False), seen)
            if (not children and name) or params or flops:
                rows.append(LayerRow(name or "(model)", type(module).__name__, shape, params, flops // 2, count))
    return rows


def layer_table(model: nn.Module, inputs: Sequence[torch.Tensor], *, depth: int | None = None) -> list[LayerRow]:
    """Rows in execution order (modules never called come last, with no shape).

    Args:
        model: the model (run once in its current train/eval mode under ``torch.no_grad()``).
        inputs: the positional inputs of ``model``.
        depth: ``None``: leaf modules and containers with their own parameters or MACs; an integer: the
            modules that many levels below the root, with their whole subtree.
    """
    modules = dict(model.named_modules())
    record = _record_forward(model, modules, inputs)
    total_flops = _subtree_flops(modules, record.flops)
    names = _execution_order(modules, record.order)
    return _rows(modules, names, record, total_flops, depth)

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

from collections.abc import Sequence
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


def layer_table(model: nn.Module, inputs: Sequence[torch.Tensor], *, depth: int | None = None) -> list[LayerRow]:
    """Rows in execution order (modules never called come last, with no shape).

    Args:
        model: the model (run once in its current train/eval mode under ``torch.no_grad()``).
        inputs: the positional inputs of ``model``.
        depth: ``None``: leaf modules and containers with their own parameters or MACs; an integer: the
            modules that many levels below the root, with their whole subtree.
    """
    modules = dict(model.named_modules())
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
    tracked = _module_names(model, counter.get_flop_counts())  # each called module, incl. children
    total_flops: dict[str, int] = {}

    def subtree_flops(name: str) -> int:
        # A container never called itself (blocks iterated in a loop) gets the sum of its children.
        if name not in total_flops:
            if name in tracked:
                total_flops[name] = tracked[name]
            else:
                kids = [f"{name}.{c}" if name else c for c, _ in modules[name].named_children()]
                total_flops[name] = sum(subtree_flops(k) for k in kids)
        return total_flops[name]

    for name in modules:
        subtree_flops(name)

    def subtree_params(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    # Execution order; a container never called itself sits where its first descendant ran.
    first: dict[str, int] = {}
    for index, name in enumerate(order):
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            first.setdefault(".".join(parts[:k]), index)
    names = sorted((n for n in modules if n), key=lambda n: first.get(n, len(order)))
    rows: list[LayerRow] = []
    seen: set[int] = set()

    def own(name: str) -> tuple[int, int, bool]:
        """Own parameters (each shared tensor once), own FLOPs, and whether the module is a leaf."""
        module = modules[name]
        children = [f"{name}.{c}" if name else c for c, _ in module.named_children()]
        flops = total_flops.get(name, 0) - sum(total_flops.get(c, 0) for c in children)
        params = 0
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                params += p.numel()
        return params, max(flops, 0), not children

    def subtree(name: str) -> int:
        total = 0
        for p in modules[name].parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total

    for name in [""] + names:
        level = 0 if name == "" else name.count(".") + 1
        label = name or "(model)"
        shape = shapes.get(name) if name else None
        count = calls.get(name, 1 if name == "" else 0)
        if depth is not None and level == depth:
            rows.append(LayerRow(name, type(modules[name]).__name__, shape, subtree(name),
                                 total_flops.get(name, 0) // 2, count))
        elif depth is None or level < depth:
            # Leaves, and containers that hold parameters or run counted ops in their own forward.
            params, flops, is_leaf = own(name)
            if (is_leaf and name) or params or flops:
                rows.append(LayerRow(label, type(modules[name]).__name__, shape, params, flops // 2, count))
    return rows

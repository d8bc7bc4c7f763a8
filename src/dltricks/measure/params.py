"""Parameter counts: total, trainable, bytes, and per module.

Shared parameters (tied embeddings, a module used twice) are counted once, as ``model.parameters()``
yields each tensor once. Buffers (batch-norm running statistics, fixed position tables) are reported
separately: they take memory but are not learned.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["ParamCount", "count_params", "params_by_module", "format_count"]


@dataclass(frozen=True)
class ParamCount:
    """Parameter statistics of a model.

    Attributes:
        total: number of parameter elements.
        trainable: those with ``requires_grad``.
        param_bytes: bytes held by parameters (dtype-aware).
        buffers: number of buffer elements (running statistics...).
        buffer_bytes: bytes held by buffers.
    """

    total: int
    trainable: int
    param_bytes: int
    buffers: int
    buffer_bytes: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    def to_dict(self) -> dict[str, int]:
        return {"total": self.total, "trainable": self.trainable, "frozen": self.frozen,
                "param_bytes": self.param_bytes, "buffers": self.buffers, "buffer_bytes": self.buffer_bytes}


def count_params(model: nn.Module) -> ParamCount:
    """Total and trainable parameters of ``model`` (each shared tensor once) plus buffer sizes."""
    params = list(model.parameters())
    buffers = list(model.buffers())
    return ParamCount(
        total=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in params if p.requires_grad),
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        buffers=sum(b.numel() for b in buffers),
        buffer_bytes=sum(b.numel() * b.element_size() for b in buffers),
    )


def params_by_module(model: nn.Module, *, recurse: bool = False) -> dict[str, int]:
    """Parameters per module name (``""`` is the root).

    ``recurse=False`` counts only the parameters a module holds itself (so the values add up to the
    total); ``recurse=True`` counts each module's whole subtree.
    """
    seen: set[int] = set()
    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        total = 0
        for p in module.parameters(recurse=recurse):
            if not recurse and id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
        counts[name] = total
    return counts


def format_count(n: float, unit: str = "") -> str:
    """``25557032 -> '25.56 M'``; ``4.09e9 -> '4.09 G'``."""
    for threshold, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= threshold:
            return f"{n / threshold:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip() if float(n).is_integer() else f"{n:.3g} {unit}".rstrip()

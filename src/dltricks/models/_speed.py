"""``optimize_for_speed``: put a model in the fastest setting we measured, keeping its outputs.

Measured with ``benchmarks/models_throughput.py`` (training step, batch 16, 128x128, 2-core x86 CPU,
torch 2.13; numbers in ``docs/benchmarks.md``):

* **channels_last** (NHWC) memory format: the convolutions of oneDNN (CPU) and cuDNN (GPU) run natively
  in NHWC, so converting the weights once saves a layout conversion around every conv. Converting the
  model is enough: a conv with NHWC weights returns NHWC outputs, and the following layers keep the
  format, so inputs may stay NCHW. Outputs agree with the default to float32 rounding (relative 1e-6,
  checked by the benchmark and by the shared model suite).
* **torch.compile** fuses the element-wise work (BN, activations, residual additions) into the kernels
  around it. It pays only for long runs: compiling one CNN's training step takes minutes on a 2-core
  CPU, so it is opt-in (``compile=True``).

Why not make channels_last the default of ``create_model``? A model is usually created once and moved
(``.to(device)``), wrapped (DDP, EMA copies) and saved many times; the format survives ``.to(device)``,
and our checkpoints store contiguous copies, but third-party code that calls ``.view`` on weights or
saves them with ``safetensors`` directly expects contiguous tensors. The trainer and the CLI call
:func:`optimize_for_speed`, so their users get the fast setting without surprises elsewhere.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["optimize_for_speed", "has_convolutions"]


def has_convolutions(model: nn.Module) -> bool:
    """True when the model contains 2-D convolutions (the layers channels_last speeds up)."""
    return any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())


def optimize_for_speed(model: nn.Module, *, channels_last: bool | None = None, compile: bool = False,
                       compile_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Return ``model`` in the fastest measured setting (in place for the memory format).

    Args:
        model: any module; models without 2-D convolutions are returned unchanged unless asked.
        channels_last: ``None`` (default) converts models with 2-D convolutions to NHWC; ``True`` /
            ``False`` force it on / off.
        compile: wrap the result in ``torch.compile`` (minutes of compilation on a small CPU; worth it
            for long trainings only).
        compile_kwargs: forwarded to ``torch.compile`` (``mode=``, ``dynamic=``...).
    """
    if channels_last is None:
        channels_last = has_convolutions(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        return torch.compile(model, **(compile_kwargs or {}))  # type: ignore[return-value]
    return model

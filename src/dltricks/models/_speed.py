"""``optimize_for_speed``: put a model in the fastest setting we measured, keeping its outputs.

Measured with ``benchmarks/models_throughput.py`` (one training step, batch 16, 128x128, 2-core x86 CPU,
torch 2.13; the table and the conditions are in ``docs/benchmarks.md``). Training throughput relative to
the default (NCHW, eager):

==================  =============  =========  ==================
model               channels_last  compile    compile + chan.last
==================  =============  =========  ==================
resnet50            x1.10          x1.50      x1.62
densenet121         x1.27          see docs   see docs
mobilenet_v2        x0.81          x1.31      x1.38
efficientnet_b0     x0.63          x1.10      x1.17
convnext_tiny       x0.92          x0.24      x1.18
==================  =============  =========  ==================

So:

* **Eager mode**: channels_last (NHWC) helps nets of dense convolutions (oneDNN runs them natively in
  NHWC) and hurts nets whose spatial filtering is depthwise (MobileNet, EfficientNet, ConvNeXt). The
  automatic rule converts a model when it has 2-D convolutions and none of them is depthwise.
* **Compiled** (``torch.compile``, inductor): channels_last is faster for every net measured, and
  compiled NCHW ConvNeXt is 4x *slower* than eager, so compiling always goes with channels_last.
  Compiled + channels_last is the fastest setting for all five nets (x1.17 to x1.62), but compiling a
  training step costs 2 to 6 minutes on this CPU, which the faster steps repay after roughly 15
  (ResNet-50) to 250 (EfficientNet-B0) steps. ``expected_steps`` turns compilation on past 500 steps.

Converting the model is enough: a conv with NHWC weights returns NHWC outputs and the following layers
keep the format, so inputs may stay NCHW. Outputs agree with the default to float32 rounding (relative
difference of the logits <= 1e-6 in the benchmark; the shared model suite checks channels_last for
every model). On CUDA, channels_last helps depthwise nets too (cuDNN, mixed precision): pass
``channels_last=True`` there.

``create_model`` itself returns plain NCHW, uncompiled models: a model is created once, then moved,
wrapped (DDP, EMA copies) and saved, and code outside dltricks that calls ``.view`` on a weight or saves it
with ``safetensors.torch.save_file`` expects contiguous tensors. Call :func:`optimize_for_speed` where the
model is about to be trained or evaluated.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["optimize_for_speed", "has_convolutions", "has_depthwise_convolutions", "COMPILE_MIN_STEPS"]

# Compilation pays back after ~15-250 training steps on the measured CPU (see the module docstring).
COMPILE_MIN_STEPS = 500


def has_convolutions(model: nn.Module) -> bool:
    """True when the model contains 2-D (transposed) convolutions."""
    return any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())


def has_depthwise_convolutions(model: nn.Module) -> bool:
    """True when some 2-D conv has one group per input channel (and more than one channel)."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in model.modules())


def optimize_for_speed(model: nn.Module, *, channels_last: bool | None = None, compile: bool | None = None,
                       expected_steps: int | None = None, compile_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Return ``model`` in the fastest measured setting (the memory format is changed in place).

    Args:
        model: any module; models without 2-D convolutions keep their format unless asked.
        channels_last: ``None`` (default) decides by the measurements: NHWC for conv nets when compiling,
            and in eager mode only when no conv is depthwise. ``True`` / ``False`` force it.
        compile: wrap the result in ``torch.compile``. ``None`` (default): compile when
            ``expected_steps`` is at least ``COMPILE_MIN_STEPS`` (the compilation then pays for itself).
        expected_steps: how many training steps the model is about to run, if known.
        compile_kwargs: forwarded to ``torch.compile`` (``mode=``, ``dynamic=``...).
    """
    if compile is None:
        compile = expected_steps is not None and expected_steps >= COMPILE_MIN_STEPS
    if channels_last is None:
        channels_last = has_convolutions(model) and (compile or not has_depthwise_convolutions(model))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        return torch.compile(model, **(compile_kwargs or {}))  # type: ignore[return-value]
    return model

"""``optimize_for_speed``: put a model in the fastest setting we measured, keeping its outputs.

Measured with ``benchmarks/models_throughput.py`` (one training step, batch 16, 128x128, 2-core x86 CPU,
torch 2.13; the table is in ``docs/benchmarks.md``):

* **channels_last** (NHWC) memory format. oneDNN's dense convolutions run natively in NHWC, and
  converting the weights once saves a layout change around every conv: ResNet-50 trains faster in NHWC.
  Depthwise convolutions are the exception on CPU: EfficientNet-B0, MobileNetV2 and ConvNeXt-T (whose
  spatial mixing is all depthwise) train *slower* in NHWC. So the automatic rule converts a model only
  when it has 2-D convolutions and none of them is depthwise. Converting the model is enough: a conv
  with NHWC weights returns NHWC outputs and the following layers keep the format, so inputs may stay
  NCHW. Outputs agree with the default to float32 rounding (checked by the benchmark and by the shared
  model suite). On CUDA, channels_last helps depthwise nets too (cuDNN, mixed precision); pass
  ``channels_last=True`` there.
* **torch.compile** fuses element-wise work (BN, activations, residual additions) into the surrounding
  kernels. Compiling a CNN's training step takes minutes on a 2-core CPU, so it is opt-in
  (``compile=True``) and worth it only for long runs.

``create_model`` itself returns plain NCHW models: a model is created once, then moved, wrapped (DDP,
EMA copies) and saved many times, and code outside dltricks that calls ``.view`` on a weight or saves it
with ``safetensors.torch.save_file`` expects contiguous tensors. Call :func:`optimize_for_speed` where the
model is about to be trained or evaluated.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["optimize_for_speed", "has_convolutions", "has_depthwise_convolutions"]


def has_convolutions(model: nn.Module) -> bool:
    """True when the model contains 2-D (transposed) convolutions."""
    return any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())


def has_depthwise_convolutions(model: nn.Module) -> bool:
    """True when some 2-D conv has one group per input channel (and more than one channel)."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in model.modules())


def optimize_for_speed(model: nn.Module, *, channels_last: bool | None = None, compile: bool = False,
                       compile_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Return ``model`` in the fastest measured setting (the memory format is changed in place).

    Args:
        model: any module; models without 2-D convolutions are returned unchanged unless asked.
        channels_last: ``None`` (default): NHWC when the model has 2-D convolutions and no depthwise ones
            (the CPU measurements above); ``True`` / ``False`` force it on / off.
        compile: wrap the result in ``torch.compile``.
        compile_kwargs: forwarded to ``torch.compile`` (``mode=``, ``dynamic=``...).
    """
    if channels_last is None:
        channels_last = has_convolutions(model) and not has_depthwise_convolutions(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        return torch.compile(model, **(compile_kwargs or {}))  # type: ignore[return-value]
    return model

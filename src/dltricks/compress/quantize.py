"""Post-training int8 quantization through PyTorch's own stack (no hand-written int8 kernels).

Affine int8 quantization stores a real tensor ``r`` as 8-bit integers ``q`` with a scale ``s`` and a zero
point ``z``::

    r ~= s * (q - z),    q = clamp(round(r / s) + z, -128, 127)   (activations: uint8, 0..255)

* **Static** (:func:`quantize_static`, for CNNs): weights per output channel, activations per tensor with
  scales fixed ahead of time from a few calibration batches (histogram observers). Conv-BN-ReLU are folded
  into one int8 kernel, and the whole graph between the first quantize and the last dequantize runs in
  int8 (x86/fbgemm kernels). Torch 2.13 moved the PT2E flow (``prepare_pt2e``/``convert_pt2e``) out of
  ``torch.ao`` into the separate ``torchao`` package, so we use FX graph mode (``prepare_fx``/``convert_fx``
  with the x86 backend), which torch still ships and marks as deprecated.
* **Dynamic** (:func:`quantize_dynamic`, for Linear/LSTM/GRU models): int8 weights, activation scales
  computed on the fly per batch; no calibration, gains where matrix multiplies dominate.

* **Quantization-aware training** (:func:`quantize_aware`; Jacob et al., CVPR 2018) is an option of the
  training loop, the recipe's ``compress.qat`` (:mod:`dltricks.train.compression`, where :func:`prepare_qat`,
  :func:`convert_qat` and the graph tracing shared with static int8 live); :func:`quantize_aware` is that
  option called as a function.

A model the quantizer cannot handle stops with a :class:`~dltricks.errors.ModelError` naming the module
(FX cannot trace data-dependent control flow) or the node and op (an op without an int8 kernel).
What it buys on this CPU is measured in ``docs/compression.md``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dltricks.errors import ModelError
from dltricks.train.compression import (_model_name, _run_checked, _traced_float_copy, convert_qat, prepare_qat,
                                        trace)

if TYPE_CHECKING:
    from dltricks.tasks import Task
    from dltricks.train.recipe import Recipe

__all__ = ["quantize_static", "quantize_dynamic", "prepare_qat", "convert_qat", "quantize_aware", "DYNAMIC_TYPES",
           "trace"]

DYNAMIC_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.LSTM, nn.GRU)
def quantize_static(model: nn.Module, calibration: Iterable[torch.Tensor], *, backend: str = "x86") -> nn.Module:
    """An int8 copy of ``model`` (FX graph mode, x86 backend), activation ranges observed on the batches of
    ``calibration`` (e.g. a few training batches). ``model`` is not changed."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    batches = [x for x in calibration]
    if not batches:
        raise ModelError("static quantization needs at least one calibration batch")
    graph = _traced_float_copy(model, backend, train=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FX graph mode's deprecation notice (see the module docstring)
        prepared = prepare_fx(graph, get_default_qconfig_mapping(backend), example_inputs=(batches[0],))
        with torch.no_grad():
            for x in batches:
                prepared(x)
        quantized = convert_fx(prepared)
    _run_checked(quantized, batches[0])
    quantized.model_name = _model_name(model)
    return quantized


def quantize_dynamic(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose Linear, LSTM and GRU layers hold int8 weights (activations quantized per batch
    at run time); a model without such layers is a :class:`ModelError`."""
    float_model = copy.deepcopy(model).float().eval()
    found = [name for name, m in float_model.named_modules() if isinstance(m, DYNAMIC_TYPES)]
    if not found:
        raise ModelError(f"cannot quantize {_model_name(model)} dynamically: it has no Linear, LSTM or GRU layer "
                         "(use static int8 for convolutions)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(float_model, set(DYNAMIC_TYPES), dtype=torch.qint8)
    quantized.model_name = _model_name(model)
    return quantized


def quantize_aware(model: nn.Module, task: Task, recipe: Recipe | Mapping[str, Any] | str | None, *,
                   backend: str = "x86", log: Callable[[str], None] | None = None) -> tuple[nn.Module, nn.Module]:
    """Quantization-aware fine-tuning of ``model`` on ``task``: ``fit(model, task, recipe)`` with ``compress.qat``
    on (and ``compress.qat_backend=backend``). Returns ``(int8 model, trained fake-quantized model)``; ``model``
    is not changed."""
    from dltricks.train import fit, load_recipe

    recipe = load_recipe(recipe, [("compress.qat", True), ("compress.qat_backend", backend)])
    result = fit(model, task, recipe, progress=False, log=log)
    return result.model, result.float_model

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

* **Quantization-aware training** (:func:`prepare_qat`, :func:`convert_qat`, :func:`quantize_aware`; Jacob et
  al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR
  2018): fake-quantization modules round weights and activations to the int8 grid in the forward pass
  (``fq(r) = s * (clamp(round(r / s) + z) - z)``) and pass gradients straight through (Bengio et al. 2013),
  conv and BN stay separate but BN is folded into the weights the fake-quant sees; the model is trained
  with :func:`dltricks.train.fit` (the one loop), then converted to the same int8 kernels as static
  quantization. The converted model computes what the fake-quantized one simulated (tested).

A model the quantizer cannot handle stops with a :class:`~dltricks.errors.ModelError` naming the module
(FX cannot trace data-dependent control flow) or the node and op (an op without an int8 kernel).
What it buys on this CPU is measured in ``docs/compression.md``.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from dltricks.errors import ModelError
from dltricks.layers.checks import check_image_input

if TYPE_CHECKING:
    from dltricks.tasks import Task
    from dltricks.train.recipe import Recipe

__all__ = ["quantize_static", "quantize_dynamic", "prepare_qat", "convert_qat", "quantize_aware", "DYNAMIC_TYPES",
           "trace"]

DYNAMIC_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.LSTM, nn.GRU)
# Functions that only check their inputs and return nothing: kept out of the traced graph.
_CHECKS = (check_image_input,)


class _NamingTracer(fx.Tracer):
    """A tracer that remembers the path of the module being traced, so a failure can name it."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=_CHECKS)
        self.stack: list[str] = []
        self.failed_in: str | None = None  # the innermost module whose forward raised

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        self.stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            self.failed_in = self.failed_in or self.stack[-1]
            raise
        finally:
            self.stack.pop()


def _model_name(model: nn.Module) -> str:
    return getattr(model, "model_name", type(model).__name__)


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as an FX graph, the input checks of :mod:`dltricks.layers.checks` dropped; a model FX cannot
    trace is a :class:`ModelError` that names the innermost module being traced."""
    tracer = _NamingTracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:  # FX raises TraceError, TypeError, RuntimeError... on untraceable code
        where = tracer.failed_in
        culprit = (f"module {where!r} ({type(model.get_submodule(where)).__name__})" if where
                   else "the top-level forward")
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot quantize {_model_name(model)}: graph tracing failed in {culprit}: {first} "
                         "(data-dependent control flow or shapes; static int8 needs a traceable forward)") from err
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in _CHECKS and not node.users:
            graph.erase_node(node)
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


class _NodeNamer(fx.Interpreter):
    def run_node(self, n: fx.Node) -> Any:
        try:
            return super().run_node(n)
        except Exception as err:
            op = re.search(r"Could not run '([^']+)'", str(err))
            what = op.group(1) if op else (str(err).strip().splitlines() or [type(err).__name__])[0]
            target = n.target if n.op != "call_function" else getattr(n.target, "__name__", str(n.target))
            raise ModelError(f"the int8 model fails at node {n.name!r} ({n.op} {target}): op {what} has no int8 "
                             "kernel on this backend; keep that module in float or change the model") from err


def _traced_float_copy(model: nn.Module, backend: str, *, train: bool) -> fx.GraphModule:
    """A float32 copy of ``model`` (train or eval mode) traced for FX quantization, with ``backend`` selected;
    a model without a Conv or Linear layer is refused (nothing of it would run in int8)."""
    float_model = copy.deepcopy(model).float().train(train)
    if not any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) for m in float_model.modules()):
        raise ModelError(f"cannot quantize {_model_name(model)}: it has no Conv or Linear layer to run in int8")
    graph = trace(float_model)
    torch.backends.quantized.engine = backend
    return graph


def _run_checked(model: fx.GraphModule, x: torch.Tensor) -> None:
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # find the node that fails, and name it
        with torch.no_grad():
            _NodeNamer(model).run(x)
        raise


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


def prepare_qat(model: nn.Module, example: torch.Tensor, *, backend: str = "x86") -> fx.GraphModule:
    """A copy of ``model`` with fake quantization on weights and activations (FX ``prepare_qat_fx``, the
    backend's default QAT qconfig: per-channel weights, moving-average activation ranges), in training mode,
    ready for :func:`dltricks.train.fit`."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    graph = _traced_float_copy(model, backend, train=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_qat_fx(graph, get_default_qat_qconfig_mapping(backend), example_inputs=(example,))
    prepared.model_name = _model_name(model)
    return prepared


def convert_qat(prepared: fx.GraphModule, example: torch.Tensor) -> nn.Module:
    """The int8 model of a model prepared by :func:`prepare_qat` (and trained); ``prepared`` is not changed."""
    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = convert_fx(copy.deepcopy(prepared).eval())
    _run_checked(quantized, example)
    quantized.model_name = getattr(prepared, "model_name", type(prepared).__name__)
    return quantized


def quantize_aware(model: nn.Module, task: Task, recipe: Recipe | Mapping[str, Any] | str | None, *,
                   log: Callable[[str], None] | None = None) -> tuple[nn.Module, nn.Module]:
    """Quantization-aware fine-tuning of ``model`` on ``task`` with ``fit(..., recipe)``; returns ``(int8 model,
    trained fake-quantized model)``. ``model`` is not changed."""
    from dltricks.train import fit

    example = next(iter(task.train_loader.iter_epoch(0)))[0]
    prepared = prepare_qat(model, example)
    fit(prepared, task, recipe, progress=False, log=log)
    return convert_qat(prepared.cpu(), example.cpu()), prepared

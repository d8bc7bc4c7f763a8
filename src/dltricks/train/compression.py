"""Compression while training: the recipe's ``compress`` section, options of :func:`dltricks.train.fit`.

* **Quantization-aware training** (``compress.qat``; Jacob et al., "Quantization and Training of Neural Networks
  for Efficient Integer-Arithmetic-Only Inference", CVPR 2018). Before the first step ``fit`` replaces the model
  by a copy with fake quantization on weights and activations (FX ``prepare_qat_fx``, the backend's default QAT
  qconfig: per-channel weights, moving-average activation ranges)::

      fq(r) = s * (clamp(round(r / s) + z, q_min, q_max) - z)

  whose gradient is passed straight through (Bengio et al. 2013); conv and BN stay separate but BN is folded into
  the weights the fake-quant sees. After the last epoch the trained copy is converted (``convert_fx``) to the
  int8 kernels of static quantization, and that int8 model is what ``fit`` returns. The converted model computes
  what the fake-quantized one simulated (``tests/test_compress_fit.py``).
* **Iterative prune -> fine-tune** (``compress.prune_amounts``; Han et al., "Learning both Weights and
  Connections for Efficient Neural Networks", 2015, Sec. 3.3): the sparsity of the Conv/Linear weights is
  raised in steps ``s_1 < s_2 < ...`` at epoch boundaries, one step every ``compress.prune_epochs`` epochs from
  the first, the last step's epochs running to the end of the run. Step k prunes, among the weights still alive,
  exactly ``round(s_k * N) - round(s_{k-1} * N)`` more (``N``: all Conv/Linear weights), the smallest in
  magnitude, so the sparsity after step k is ``s_k`` to the weight. The masks stay on while the model trains
  (``weight = weight_orig * mask``: a pruned weight gets no gradient and stays zero) and are made permanent
  after the last epoch.

:func:`dltricks.compress.quantize_aware` and :func:`dltricks.compress.prune_finetune` are these options called
as functions; ``dltricks compress RUN --methods qat,prune-finetune:F`` runs them from a trained run.

Measured (``docs/compression.md``, one run, n = 1): from a 2-epoch ``small_cnn`` on 2,000 MNIST images, one
epoch of QAT gives an int8 model of the size and speed of post-training static int8 (291.9 kB, 4.55 against
4.47 ms at batch 32 on one CPU thread, 3.4x below float32), and one epoch of fine-tuning after pruning 80 % of the
weights takes the accuracy from 13.7 % (pruned, not fine-tuned) to 68.1 %; both had one more epoch than the
float model (36.2 %), so the accuracies do not compare the methods.
"""

from __future__ import annotations

import copy
import re
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn
from torch.nn.utils import prune

from dltricks.errors import ConfigError, ModelError
from dltricks.layers.checks import check_image_input

if TYPE_CHECKING:
    from dltricks.train.recipe import CompressConfig

__all__ = ["prepare_qat", "convert_qat", "trace", "PRUNABLE", "PruneSchedule", "check_amount", "prune_count"]

PRUNABLE: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
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


# --- iterative magnitude pruning ------------------------------------------------------------------------------

def check_amount(amount: float) -> None:
    if not 0.0 <= amount < 1.0:
        raise ConfigError(f"pruning amount: got {amount}, expected a fraction in [0, 1)")


def prune_count(params: list[tuple[nn.Module, str]], count: int, scope: str) -> None:
    """Prune ``count`` more of the live weights of ``params`` (all of them at once, or the same fraction of the
    live weights of each layer), the smallest ``|w|`` first; masks compose with earlier ones."""
    if count <= 0:
        return
    if scope == "global":
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=count)
        return
    live = [int(torch.count_nonzero(getattr(m, name + "_mask"))) if hasattr(m, name + "_mask")
            else getattr(m, name).numel() for m, name in params]
    total = sum(live)
    for (m, name), n in zip(params, live):
        prune.l1_unstructured(m, name, amount=round(count * n / total))


class PruneSchedule:
    """``compress.prune_amounts`` of a run of ``num_epochs`` epochs: :meth:`before_epoch` prunes at the epoch
    boundaries the schedule names (module docstring), :meth:`finish` makes the masks permanent."""

    def __init__(self, model: nn.Module, cfg: CompressConfig, num_epochs: int) -> None:
        needed = len(cfg.prune_amounts) * cfg.prune_epochs
        if num_epochs < needed:
            raise ConfigError(f"compress.prune_epochs: {len(cfg.prune_amounts)} pruning step(s), each followed by "
                              f"{cfg.prune_epochs} fine-tuning epoch(s), need at least {needed} epochs; the run "
                              f"has {num_epochs} (raise train.epochs or lower compress.prune_epochs)")
        self.model, self.cfg = model, cfg
        self.params = [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]
        if not self.params:
            raise ModelError(f"compress.prune_amounts: cannot prune {_model_name(model)}: it has no Conv or Linear "
                             "layer")
        self.total = sum(m.weight.numel() for m, _ in self.params)
        self.pruned = 0  # weights masked so far

    def amount_at(self, epoch: int) -> float | None:
        """The sparsity to prune to before ``epoch`` (0-based), or ``None``."""
        step, offset = divmod(epoch, self.cfg.prune_epochs)
        return self.cfg.prune_amounts[step] if offset == 0 and step < len(self.cfg.prune_amounts) else None

    def prune_to(self, amount: float) -> float:
        """Mask the smallest live weights until a fraction ``amount`` of all is masked; returns the sparsity."""
        # fit may leave conv weights channels-last, and prune flattens them with view(): make them contiguous,
        # the masked weight (a plain attribute, recomputed before each forward) included.
        for m, name in self.params:
            m.to(memory_format=torch.contiguous_format)
            if hasattr(m, name + "_mask"):
                setattr(m, name, getattr(m, name + "_orig") * getattr(m, name + "_mask"))
        prune_count(self.params, round(amount * self.total) - self.pruned, self.cfg.prune_scope)
        self.pruned = sum(int((getattr(m, name + "_mask") == 0).sum()) for m, name in self.params
                          if hasattr(m, name + "_mask"))
        return self.pruned / self.total

    def finish(self) -> None:
        """Make the masks permanent: plain ``weight`` parameters holding the zeros."""
        for m, name in self.params:
            if hasattr(m, name + "_mask"):
                prune.remove(m, name)

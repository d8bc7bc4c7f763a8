"""Receptive fields: analytic (traced through the graph), exact (gradient support) and effective.

**Analytic.** The receptive field of a unit is the region of input pixels that can influence it. For
a chain of layers with kernel ``k_l``, stride ``s_l``, padding ``p_l`` and dilation ``d_l`` the
textbook recursion (Araujo, Norris & Sim, "Computing receptive fields of convolutional neural
networks", Distill 2019) is::

    jump_l  = jump_{l-1} * s_l                               (distance in input pixels between units)
    size_l  = size_{l-1} + (k_l - 1) * d_l * jump_{l-1}      (receptive-field side)
    start_l = start_{l-1} - p_l * jump_{l-1}                 (first pixel seen by unit 0)

so ``n`` stacked 3x3 convs see ``2n + 1`` pixels and one 3x3 conv with dilation ``d`` sees ``2d + 1``.
Real networks are graphs, not chains: residual additions, concatenations (Inception, DenseNet,
U-Net skips), upsampling, attention. :func:`trace_receptive_fields` therefore runs the model under a
dispatch mode (:mod:`dltricks.measure._rf_trace`) that carries, for every element of every tensor,
the bounding box of the input pixels it depends on; when two paths meet (``x + f(x)``, ``cat``) the
box is the union over paths. The result is exact at the given input size: boxes are clipped at the
image border where padding reads nothing, just as the gradient is. The unclipped textbook numbers
(size, jump, centre of unit 0) come from :func:`theoretical_receptive_field`, which traces on a
canvas big enough that the border does not clip.

**Exact support.** :func:`gradient_support` is the ground truth the analytic tracer is tested
against: with every weight and every input pixel made positive, max-pooling swapped for average
pooling and the piecewise-flat activations (ReLU family, clamps, hard-sigmoid...) swapped for the
identity, no path can be cut or cancel, so an input pixel has a non-zero gradient exactly when some
path connects it to the unit.

**Effective.** Luo, Li, Urtasun & Zemel, "Understanding the effective receptive field in deep
convolutional neural networks", NeurIPS 2016: the gradient magnitude ``|dy_centre / dx|`` averaged
over random inputs is roughly Gaussian and its width grows like ``sqrt(n)`` with depth ``n`` while
the analytic size grows like ``n``. Measured here (:func:`erf_growth`, random-init stacks of 3x3
conv + ReLU, 16 channels): the fitted exponent of the ERF standard deviation versus depth for
n = 2..32 is about 0.5 (see ``docs/measure.md``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from dltricks.errors import ConfigError
from dltricks.measure._rf_trace import (NCOMP, DataDependentError, GeometryTracer, TooLargeError,
                                        UntraceableError, input_geometry)
from dltricks.utils.figures import save_figure

__all__ = ["ReceptiveField", "RFTrace", "TheoreticalRF", "UntraceableError", "DataDependentError",
           "TooLargeError", "trace_receptive_fields", "receptive_field", "theoretical_receptive_field",
           "gradient_support", "support_box", "effective_receptive_field", "ERFResult", "erf_growth", "conv_stack",
           "plot_erf", "plot_erf_growth", "path_preserving"]


# ----------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of one unit, at one input size.

    Attributes:
        layer: module name (``""`` for the model output).
        module_type: class name of the module.
        output_shape: shape of the layer's output (batch 1).
        unit: which elements form "the unit": ``{dim: index}`` fixed for the spatial dims (the centre
            position); every other dim of sample 0 is included (all channels at that position). Empty
            when the output has no spatial layout (logits, tokens after a flatten): then the unit is
            the whole output of sample 0.
        box: ``(top, left, bottom, right)`` inclusive, in input pixels, clipped to the image; ``None``
            if the unit does not depend on the input at all.
        global_axes: ``(h, w)``: whether an op that mixes all positions (global pooling, attention,
            squeeze-excitation, a linear layer on flattened features, group norm...) makes the unit see
            the whole input along that axis.
        jump: ``(h, w)`` distance in input pixels between neighbouring units (``None`` when not
            regular or not spatial).
        input_size: ``(H, W)`` of the traced input.
    """

    layer: str
    module_type: str
    output_shape: tuple[int, ...]
    unit: dict[int, int]
    box: tuple[int, int, int, int] | None
    global_axes: tuple[bool, bool]
    jump: tuple[float | None, float | None]
    input_size: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        """Height and width of the (clipped) box."""
        if self.box is None:
            return (0, 0)
        top, left, bottom, right = self.box
        return (bottom - top + 1, right - left + 1)

    @property
    def is_global(self) -> bool:
        return all(self.global_axes)

    @property
    def clipped(self) -> bool:
        """True when the box touches the image border (the unclipped field may be larger)."""
        if self.box is None:
            return False
        top, left, bottom, right = self.box
        return top == 0 or left == 0 or bottom == self.input_size[0] - 1 or right == self.input_size[1] - 1

    @property
    def centre(self) -> tuple[float, float] | None:
        if self.box is None:
            return None
        top, left, bottom, right = self.box
        return ((top + bottom) / 2, (left + right) / 2)

    def describe(self) -> str:
        if self.box is None:
            return "none"
        if self.is_global:
            return "global"
        h, w = self.size
        text = f"{h}x{w}" if h != w else f"{h}"
        return text + (" (clipped)" if self.clipped else "")

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "type": self.module_type, "output_shape": list(self.output_shape),
                "box": list(self.box) if self.box else None, "size": list(self.size),
                "global": list(self.global_axes), "jump": list(self.jump), "clipped": self.clipped}


@dataclass
class RFTrace:
    """Receptive fields of the model output and of every module output, at one input size."""

    input_size: tuple[int, int]
    output: ReceptiveField
    layers: dict[str, ReceptiveField] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    device: str = "cpu"

    def feature_layer(self) -> ReceptiveField:
        """The deepest spatial feature map that is still local: the output itself for dense
        prediction, otherwise the last module output (in execution order) with a spatial layout larger
        than 1x1 and no global mixing (``layer4`` of a ResNet, the patch embedding of a ViT)."""
        def spatial(rf: ReceptiveField) -> bool:
            # Adaptive pooling belongs to the head: its window depends on the input size.
            return bool(rf.unit) and not any(rf.global_axes) and rf.box is not None and \
                any(rf.output_shape[d] > 1 for d in rf.unit) and not rf.module_type.startswith("Adaptive")

        if spatial(self.output):
            return self.output
        best = None
        for name in self.order:
            if spatial(self.layers[name]):
                best = self.layers[name]
        return best or self.output


@dataclass(frozen=True)
class TheoreticalRF:
    """Unclipped (textbook) receptive field of a layer: size, jump and centre of unit 0.

    ``size`` is ``None`` along an axis that is global; ``lower_bound`` is set when even the largest
    canvas tried clipped the field (the true size is at least ``size``).
    """

    layer: str
    size: tuple[int | None, int | None]
    jump: tuple[float | None, float | None]
    start: tuple[float | None, float | None]
    canvas: int
    lower_bound: bool = False

    @property
    def is_global(self) -> bool:
        return self.size == (None, None)

    def describe(self) -> str:
        if self.is_global:
            return "global"
        h, w = self.size
        text = f"{h}" if h == w else f"{h}x{w}"
        return (">=" if self.lower_bound else "") + text


# ----------------------------------------------------------------------------------------------
# Tracing


def _spatial_dims(g: torch.Tensor) -> tuple[int | None, int | None]:
    """Data dims that carry the image rows (h) and columns (w).

    A spatial dim is one along which the centre of the boxes moves across the image; the dim with the
    largest displacement wins (channels of concatenated branches change the box size, not its centre;
    a flattened token dim moves both centres, so it can be only one of them).
    """
    found: list[int | None] = []
    for comps in ((0, 1), (2, 3)):  # (top, -bottom) for h, (left, -right) for w
        centre = (g[comps[0]] - g[comps[1]]) / 2  # (top + bottom) / 2, NaN where empty
        spans = []
        for d in range(1, centre.dim()):
            if centre.shape[d] < 2 or d in found:
                spans.append(0.0)
                continue
            first = centre.narrow(d, 0, 1).nanmean()
            last = centre.narrow(d, centre.shape[d] - 1, 1).nanmean()
            span = float((last - first).abs()) if torch.isfinite(last - first) else 0.0
            spans.append(span)
        best = max(range(len(spans)), key=lambda i: spans[i]) if spans else None
        found.append(best + 1 if best is not None and spans[best] > 0 else None)
    return found[0], found[1]


def _unit_of(g: torch.Tensor | None, shape: Sequence[int]) -> dict[int, int]:
    """The centre position of a feature map, as ``{dim: index}`` for its two spatial dims.

    The spatial dims are the ones along which the boxes move. When every element has the same box (a
    map whose units all see the whole image, or a 1x1 map) a 4-D tensor is read as ``(B, C, H, W)``;
    the choice cannot change the box then. Tensors without a spatial layout give ``{}``.
    """
    if g is None or len(shape) < 2:
        return {}
    dh, dw = _spatial_dims(g.expand(NCOMP, *shape) if g.dim() - 1 == len(shape) else g)
    if dh is not None and dw is not None:
        return {dh: shape[dh] // 2, dw: shape[dw] // 2}
    flat = g.flatten(1)
    if len(shape) == 4 and torch.equal(flat, flat[:, :1].expand_as(flat)):
        return {2: shape[2] // 2, 3: shape[3] // 2}
    return {}


def _select_unit(x: torch.Tensor, unit: dict[int, int]) -> torch.Tensor:
    """Elements of sample 0 at the unit's position (all other dims kept)."""
    index: list[Any] = [slice(None)] * x.dim()
    if x.dim() > 0:
        index[0] = slice(0, 1)
    for d, i in unit.items():
        index[d] = slice(i, i + 1)
    return x[tuple(index)]


def _rf_from_geometry(layer: str, module_type: str, g: torch.Tensor | None, shape: Sequence[int],
                      input_size: tuple[int, int]) -> ReceptiveField:
    H, W = input_size
    unit = _unit_of(g, shape)
    if g is None:
        return ReceptiveField(layer, module_type, tuple(shape), unit, None, (False, False), (None, None), input_size)
    full = g.expand(NCOMP, *shape) if g.dim() - 1 == len(shape) else g
    sel = _select_unit(full.movedim(0, -1), unit).reshape(-1, NCOMP).amin(0)  # (6,)
    top, nbottom, left, nright, nglob_h, nglob_w = sel.tolist()
    if math.isinf(top) and top > 0:
        box = None
    else:
        box = (max(int(top), 0), max(int(left), 0), min(int(-nbottom), H - 1), min(int(-nright), W - 1))
    jump: list[float | None] = [None, None]
    if unit:
        # Jump: mean step of the top (left) bound between neighbouring units that both have the full
        # (largest) extent, i.e. are not cut by the border.
        for axis, (comp, d) in enumerate(zip((0, 2), unit)):
            lows = full[comp].movedim(d, 0).reshape(shape[d], -1).amin(1)  # (N,) top/left per position
            highs = -full[comp + 1].movedim(d, 0).reshape(shape[d], -1).amin(1)  # (N,) bottom/right
            extent = highs - lows
            whole = torch.isfinite(extent) & (extent == extent[torch.isfinite(extent)].max()) \
                if torch.isfinite(extent).any() else torch.zeros_like(extent, dtype=torch.bool)
            ok = whole[1:] & whole[:-1]
            if ok.any():
                step = float((lows[1:] - lows[:-1])[ok].double().mean())
                jump[axis] = step if step > 0 else None  # <= 0: every such unit is cut by the border
    return ReceptiveField(layer, module_type, tuple(shape), unit, box, (nglob_h < 0, nglob_w < 0), tuple(jump),
                          input_size)


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(out, dict):
        for o in out.values():
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _trace_once(model: nn.Module, input_size: Sequence[int], device: str, layers: Sequence[str] | None) -> RFTrace:
    C, H, W = input_size
    captured: dict[str, tuple[str, torch.Tensor]] = {}
    order: list[str] = []
    handles = []
    wanted = None if layers is None else set(layers)
    for name, module in model.named_modules():
        if name == "" or (wanted is not None and name not in wanted):
            continue

        def hook(mod, inputs, output, name=name):
            t = _first_tensor(output)
            if t is not None and t.is_floating_point():
                if name not in captured:
                    order.append(name)
                captured[name] = (type(mod).__name__, t)  # last call wins (shared modules)

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    tracer = GeometryTracer()
    try:
        if device == "meta":
            params = {k: torch.empty_like(v, device="meta") for k, v in model.named_parameters()}
            buffers = {k: torch.empty_like(v, device="meta") if v.is_floating_point() else v.to("meta")
                       for k, v in model.named_buffers()}
            x = torch.empty(1, C, H, W, device="meta")
            with torch.no_grad(), tracer:
                tracer.set(x, input_geometry(H, W))
                out = torch.func.functional_call(model, {**params, **buffers}, (x,), strict=False)
        else:
            dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
            dev = next((p.device for p in model.parameters()), torch.device("cpu"))
            x = torch.zeros(1, C, H, W, dtype=dtype, device=dev)
            with torch.no_grad(), tracer:
                tracer.set(x, input_geometry(H, W))
                out = model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    y = _first_tensor(out)
    size = (H, W)
    output_rf = _rf_from_geometry("", type(model).__name__, tracer.geom.get(y) if y is not None else None,
                                  tuple(y.shape) if y is not None else (), size)
    result = RFTrace(input_size=size, output=output_rf, device=device)
    for name in order:
        module_type, t = captured[name]
        result.layers[name] = _rf_from_geometry(name, module_type, tracer.geom.get(t), tuple(t.shape), size)
    result.order = order
    return result


def trace_receptive_fields(model: nn.Module, input_size: Sequence[int], *, layers: Sequence[str] | None = None,
                           device: str = "auto") -> RFTrace:
    """Receptive field of the centre unit of the model output and of every module output.

    Args:
        model: any ``nn.Module`` taking one image tensor ``(B, C, H, W)``.
        input_size: ``(C, H, W)``.
        layers: module names to record (default: all).
        device: ``"meta"`` runs the model on PyTorch's meta device (shapes only, no arithmetic: fast
            at any size), ``"cpu"`` runs it for real on zeros, ``"auto"`` tries meta and falls back to
            a real run when the model's forward needs values (``.item()``, index tensors).

    Raises:
        UntraceableError: an operator without a receptive-field rule (its name is in the message).
    """
    if len(input_size) != 3:
        raise ConfigError(f"input_size must be (C, H, W), got {tuple(input_size)}")
    if device == "auto":
        try:
            return _trace_once(model, input_size, "meta", layers)
        except (DataDependentError, TooLargeError):
            raise
        except UntraceableError:
            pass  # e.g. index tensors on the meta device hold no values: run for real
        except (RuntimeError, NotImplementedError, TypeError, ValueError, IndexError, AttributeError):
            pass
        device = "cpu"
    return _trace_once(model, input_size, device, layers)


def receptive_field(model: nn.Module, input_size: Sequence[int], *, layer: str | None = None,
                    device: str = "auto") -> ReceptiveField:
    """The receptive field of one layer's centre unit (default: :meth:`RFTrace.feature_layer`)."""
    trace = trace_receptive_fields(model, input_size, layers=None, device=device)
    if layer is None:
        return trace.feature_layer()
    if layer == "":
        return trace.output
    if layer not in trace.layers:
        from dltricks.errors import did_you_mean

        raise ConfigError(f"no module output named {layer!r}.{did_you_mean(layer, trace.layers)}")
    return trace.layers[layer]


def _margin_ok(rf: ReceptiveField) -> bool:
    """The box is at least two jumps away from every border: no padding can have cut it."""
    if rf.box is None or None in rf.jump:
        return False
    top, left, bottom, right = rf.box
    H, W = rf.input_size
    jh, jw = rf.jump
    return min(top, H - 1 - bottom) >= 2 * jh and min(left, W - 1 - right) >= 2 * jw


def _trace_or_stop(model: nn.Module, shape: tuple[int, int, int], chosen: str | None, *,
                   have_result: bool) -> RFTrace | None:
    """Trace at ``shape``; ``None`` when a larger canvas fails after an earlier size succeeded (keep that result)."""
    try:
        return trace_receptive_fields(model, shape, layers=None if chosen in (None, "") else [chosen])
    except TooLargeError:
        if not have_result:
            raise
        return None
    except UntraceableError:
        raise
    except Exception:  # noqa: BLE001 - the model refuses this canvas size: keep the last result
        if not have_result:
            raise
        return None


def _pick_layer(trace: RFTrace, chosen: str | None) -> ReceptiveField | None:
    """The feature layer when none is chosen, the model output for ``""``, else the named layer (if traced)."""
    if chosen is None:
        return trace.feature_layer()
    return trace.output if chosen == "" else trace.layers.get(chosen)


def _settled(rf: ReceptiveField, previous: ReceptiveField | None) -> bool:
    """No larger canvas can change the answer: no box, a global field, or an unclipped one."""
    if rf.box is None or rf.is_global:
        return True
    # Unclipped once the box is off the border and a larger canvas no longer changes its size (a field
    # can be cut by padding without touching the last pixel).
    return not rf.clipped and ((previous is not None and previous.size == rf.size) or _margin_ok(rf))


def _to_theoretical(rf: ReceptiveField, previous: ReceptiveField | None) -> TheoreticalRF:
    """Size, jump and centre of unit 0 from the last trace; a lower bound when the border may still clip."""
    lower = not rf.is_global and rf.box is not None and (
        rf.clipped or (previous is not None and previous.size != rf.size and not _margin_ok(rf)))
    if rf.is_global:
        return TheoreticalRF(rf.layer, (None, None), rf.jump, (None, None), rf.input_size[0], lower_bound=False)
    starts: list[float | None] = [None, None]
    if rf.box is not None and rf.unit and not lower:
        centre = rf.centre
        for axis, d in enumerate(rf.unit):
            j = rf.jump[axis]
            if j is not None:
                starts[axis] = centre[axis] - rf.unit[d] * j
    sizes = tuple(None if g else s for s, g in zip(rf.size, rf.global_axes))
    return TheoreticalRF(rf.layer, sizes, rf.jump, tuple(starts), rf.input_size[0], lower_bound=lower)


def theoretical_receptive_field(model: nn.Module, input_size: Sequence[int], *, layer: str | None = None,
                                max_size: int = 1024) -> TheoreticalRF:
    """Unclipped receptive field (size, jump, centre of unit 0) of ``layer``.

    Traces at ``input_size`` and then on canvases twice as large (on the meta device: no arithmetic)
    until the centre unit's box stays off the border and its size stops changing, up to ``max_size``
    pixels. Models that only accept one input size stop there and report a lower bound.
    """
    C, H, W = input_size
    chosen = layer
    size = max(H, W)
    rf: ReceptiveField | None = None
    previous: ReceptiveField | None = None
    canvas = size
    while True:
        shape = (C, canvas, canvas) if canvas != size else (C, H, W)
        trace = _trace_or_stop(model, shape, chosen, have_result=rf is not None)
        if trace is None:
            break
        current = _pick_layer(trace, chosen)
        if current is None:
            break
        chosen = current.layer if chosen is None else chosen
        previous, rf = rf, current
        if _settled(rf, previous) or canvas * 2 > max_size:
            break
        canvas *= 2
    if rf is None:
        raise UntraceableError(f"could not trace layer {layer!r}")
    return _to_theoretical(rf, previous)


# ----------------------------------------------------------------------------------------------
# Ground truth: support of the input gradient


_IDENTITY_ACTIVATIONS = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu", "elu_",
                         "selu", "celu", "gelu", "silu", "mish", "hardswish", "hardsigmoid", "threshold", "threshold_",
                         "clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_max", "softplus", "rrelu", "prelu"}
_MAX_POOLS = {"max_pool1d": F.avg_pool1d, "max_pool2d": F.avg_pool2d, "max_pool3d": F.avg_pool3d,
              "_max_pool1d": F.avg_pool1d, "_max_pool2d": F.avg_pool2d, "_max_pool3d": F.avg_pool3d,
              "max_pool1d_with_indices": F.avg_pool1d, "max_pool2d_with_indices": F.avg_pool2d,
              "max_pool3d_with_indices": F.avg_pool3d}
_ADAPTIVE_MAX = {"adaptive_max_pool1d": F.adaptive_avg_pool1d, "adaptive_max_pool2d": F.adaptive_avg_pool2d,
                 "adaptive_max_pool3d": F.adaptive_avg_pool3d,
                 "adaptive_max_pool1d_with_indices": F.adaptive_avg_pool1d,
                 "adaptive_max_pool2d_with_indices": F.adaptive_avg_pool2d,
                 "adaptive_max_pool3d_with_indices": F.adaptive_avg_pool3d}


class path_preserving(TorchFunctionMode):  # noqa: N801 - used as a context manager
    """Swap every op that can cut a path for one with the same connectivity that cannot.

    Max-pooling -> average pooling with the same window; adaptive max -> adaptive average; max/min
    reductions -> mean; ``maximum(a, b)`` -> ``(a + b) / 2``; piecewise-flat or non-monotone
    activations (ReLU family, clamps, hard-sigmoid/swish, GELU, SiLU...) -> identity.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _IDENTITY_ACTIVATIONS and args and isinstance(args[0], torch.Tensor):
            return args[0]
        if name in _MAX_POOLS:
            return self._pool(_MAX_POOLS[name], args, kwargs)
        if name in _ADAPTIVE_MAX:
            out = _ADAPTIVE_MAX[name](args[0], kwargs.get("output_size", args[1] if len(args) > 1 else None))
            want = kwargs.get("return_indices", args[2] if len(args) > 2 else name.endswith("with_indices"))
            return (out, torch.zeros(out.shape, dtype=torch.long)) if want else out
        if name in ("amax", "amin"):
            dim = kwargs.get("dim", args[1] if len(args) > 1 else ())
            keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
            return args[0].mean(dim=dim if dim not in ((), None) else None, keepdim=keep) if dim not in ((), None) \
                else args[0].mean()
        if name in ("max", "min"):
            other = kwargs.get("other", args[1] if len(args) > 1 else None)
            if isinstance(other, torch.Tensor):
                return (args[0] + other) / 2
            if other is None and "dim" not in kwargs:
                return args[0].mean()
            dim = kwargs.get("dim", other)
            keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
            values = args[0].mean(dim=dim, keepdim=keep)
            indices = torch.zeros(values.shape, dtype=torch.long, device=values.device)
            result_type = torch.return_types.max if name == "max" else torch.return_types.min
            return result_type((values, indices))
        if name in ("maximum", "minimum", "fmax", "fmin"):
            return (args[0] + args[1]) / 2
        return func(*args, **kwargs)

    @staticmethod
    def _pool(avg: Callable, args: tuple, kwargs: dict) -> Any:
        names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
        values = dict(zip(names, args))
        values.update(kwargs)
        dilation = values.get("dilation", 1)
        if any(d != 1 for d in (dilation if isinstance(dilation, (list, tuple)) else [dilation])):
            raise UntraceableError("dilated max-pooling has no average-pooling counterpart")
        stride = values.get("stride") or None
        out = avg(values["input"], values["kernel_size"], stride, values.get("padding", 0),
                  values.get("ceil_mode", False), True)
        if values.get("return_indices", False):
            return out, torch.zeros(out.shape, dtype=torch.long)
        return out


def _positive_copy(model: nn.Module, *, seed: int, in_chans: int, size: tuple[int, int]) -> nn.Module:
    """Copy of ``model`` in float64 with positive weights and batch-norm statistics calibrated so that
    activations stay of order one (no overflow, no saturated sigmoid or softmax)."""
    net = copy.deepcopy(model).double().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            values = torch.rand(p.shape, generator=gen, dtype=torch.float64) + 0.5  # U(0.5, 1.5)
            if p.dim() > 1:
                fan_in = p[0].numel() if p.shape[0] else 1
                values /= max(fan_in, 1)
            p.copy_(values)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one forward sets the batch statistics
            m.train()
        calib = torch.rand(2, in_chans, *size, generator=gen, dtype=torch.float64) + 0.5
        with torch.no_grad(), path_preserving():
            net(calib)
        for m in norms:
            m.eval()
    return net


def gradient_support(model: nn.Module, input_size: Sequence[int], *, layers: Sequence[str] = ("",),
                     units: dict[str, dict[int, int]] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Exact receptive field: the input pixels with a non-zero gradient for one unit.

    Runs a positive float64 copy of the model (see :func:`_positive_copy` and :class:`path_preserving`)
    on a positive random input and differentiates a positive combination of the unit's elements.

    Args:
        layers: module names (``""`` = model output).
        units: per layer, the unit's position (``ReceptiveField.unit``); default: the whole output of
            sample 0.

    Returns:
        ``{layer: bool mask (H, W)}``.
    """
    C, H, W = input_size
    units = units or {}
    net = _positive_copy(model, seed=seed, in_chans=C, size=(H, W))
    captured: dict[str, torch.Tensor] = {}
    handles = []
    modules = dict(net.named_modules())
    for name in layers:
        if name == "":
            continue
        if name not in modules:
            raise ConfigError(f"no module named {name!r}")
        handles.append(modules[name].register_forward_hook(
            lambda m, i, o, name=name: captured.__setitem__(name, _first_tensor(o))))
    gen = torch.Generator().manual_seed(seed + 1)
    x = (torch.rand(1, C, H, W, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True)
    try:
        with path_preserving():
            out = _first_tensor(net(x))
    finally:
        for h in handles:
            h.remove()
    captured[""] = out
    masks = {}
    for name in layers:
        y = captured[name]
        sel = _select_unit(y, units.get(name, {}))
        weights = torch.rand(sel.shape, generator=gen, dtype=torch.float64) + 0.5
        (grad,) = torch.autograd.grad((sel * weights).sum(), x, retain_graph=True, allow_unused=True)
        masks[name] = torch.zeros(H, W, dtype=torch.bool) if grad is None else grad[0].abs().sum(0) > 0
    return masks


def support_box(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """Bounding box ``(top, left, bottom, right)`` of a boolean mask, ``None`` if empty."""
    rows = mask.any(1).nonzero().flatten()
    cols = mask.any(0).nonzero().flatten()
    if len(rows) == 0:
        return None
    return (int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max()))


# ----------------------------------------------------------------------------------------------
# Effective receptive field (Luo et al. 2016)


@dataclass
class ERFResult:
    """Effective receptive field of the centre unit.

    Attributes:
        grad: ``(H, W)`` mean ``|d y_centre / d x|`` over samples and input channels.
        std: ``(h, w)`` standard deviation (pixels) of ``grad`` read as a distribution over positions.
        width95: side (pixels) of the smallest centred square holding 95 % of the gradient mass.
        analytic: the analytic receptive field of the same unit (for the overlay).
    """

    grad: np.ndarray
    std: tuple[float, float]
    width95: int
    analytic: ReceptiveField | None


def _grad_std(grad: np.ndarray) -> tuple[float, float]:
    mass = grad / grad.sum()
    stds = []
    for axis in (1, 0):  # marginal over h (sum over w), then over w
        marginal = mass.sum(axis=axis)
        pos = np.arange(marginal.shape[0])
        mean = (marginal * pos).sum()
        stds.append(float(math.sqrt((marginal * (pos - mean) ** 2).sum())))
    return stds[0], stds[1]


def _width95(grad: np.ndarray) -> int:
    H, W = grad.shape
    total = grad.sum()
    cy, cx = np.unravel_index(np.argmax(grad), grad.shape)
    for r in range(max(H, W)):
        window = grad[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1]
        if window.sum() >= 0.95 * total:
            return 2 * r + 1
    return max(H, W)


def effective_receptive_field(model: nn.Module, input_size: Sequence[int], *, layer: str = "",
                              samples: int = 8, seed: int = 0, inputs: torch.Tensor | None = None) -> ERFResult:
    """Luo et al. 2016: mean ``|d y / d x|`` for the centre unit of ``layer`` over random inputs.

    The model is used as it is (its current weights and activations; train a model first to see the
    trained ERF). ``inputs`` (``(N, C, H, W)``) replaces the standard-normal random inputs.
    """
    C, H, W = input_size
    modules = dict(model.named_modules())
    if layer and layer not in modules:
        raise ConfigError(f"no module named {layer!r}")
    rf = trace_receptive_fields(model, input_size).output if layer == "" else \
        trace_receptive_fields(model, input_size, layers=[layer]).layers.get(layer)
    unit = rf.unit if rf is not None else {}
    gen = torch.Generator().manual_seed(seed)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    total = torch.zeros(H, W, dtype=torch.float64)
    captured: dict[str, torch.Tensor] = {}
    handle = modules[layer].register_forward_hook(lambda m, i, o: captured.__setitem__("y", _first_tensor(o))) \
        if layer else None
    try:
        batch = inputs if inputs is not None else torch.randn(samples, C, H, W, generator=gen)
        for x in batch:
            x = x.unsqueeze(0).to(device=device, dtype=dtype).requires_grad_(True)
            out = _first_tensor(model(x))
            y = captured["y"] if layer else out
            target = _select_unit(y, unit).sum()
            (grad,) = torch.autograd.grad(target, x)
            total += grad[0].abs().sum(0).double().cpu()
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)
    grad = (total / len(batch)).numpy()
    if grad.sum() == 0:
        return ERFResult(grad, (0.0, 0.0), 0, rf)
    return ERFResult(grad, _grad_std(grad), _width95(grad), rf)


def conv_stack(depth: int, *, kernel_size: int = 3, dilation: int = 1, stride: int = 1, channels: int = 16,
               in_chans: int = 1, act_layer: Callable[[], nn.Module] | None = nn.ReLU, padding: bool = True,
               seed: int | None = None) -> nn.Sequential:
    """``depth`` conv layers (+ activation), Kaiming-initialised: the networks of Luo et al.'s study."""
    if depth < 1:
        raise ConfigError(f"depth must be >= 1, got {depth}")
    if seed is not None:
        torch.manual_seed(seed)
    layers: list[nn.Module] = []
    c = in_chans
    for _ in range(depth):
        pad = dilation * (kernel_size - 1) // 2 if padding else 0
        conv = nn.Conv2d(c, channels, kernel_size, stride=stride, padding=pad, dilation=dilation)
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers.append(conv)
        if act_layer is not None:
            layers.append(act_layer())
        c = channels
    return nn.Sequential(*layers)


def erf_growth(depths: Sequence[int] = (4, 8, 16, 32), *, channels: int = 16, inits: int = 3, samples: int = 4,
               act_layer: Callable[[], nn.Module] | None = nn.ReLU, margin: int = 16, seed: int = 0) -> dict[str, Any]:
    """Effective vs analytic receptive field of random-init stacks of ``n`` 3x3 convs.

    Returns ``depths``, ``std`` (mean over ``inits`` random initialisations of the ERF standard
    deviation, pixels), ``analytic`` (2n + 1), and ``exponent``: the slope of ``log std`` against
    ``log n`` (Luo et al. predict 0.5; shallow stacks sit a little above it - from n = 2 the fit gives
    about 0.6 - so the default depths start at 4).
    """
    stds, analytic = [], []
    for n in depths:
        size = 2 * n + 1 + 2 * margin  # the analytic field plus a margin so the border does not clip it
        values = []
        for i in range(inits):
            net = conv_stack(n, channels=channels, act_layer=act_layer, seed=seed + 1000 * n + i)
            erf = effective_receptive_field(net, (1, size, size), samples=samples, seed=seed + i)
            values.append(0.5 * (erf.std[0] + erf.std[1]))
            if i == 0:
                analytic.append(erf.analytic.size[0] if erf.analytic else None)
        stds.append(float(np.mean(values)))
    slope = float(np.polyfit(np.log(depths), np.log(stds), 1)[0])
    return {"depths": list(depths), "std": stds, "analytic": analytic, "exponent": slope}


# ----------------------------------------------------------------------------------------------
# Plots


def plot_erf(erf: ERFResult, path: str | Path, *, title: str = "effective receptive field") -> Path:
    """Heat-map PNG of the ERF with the analytic receptive field drawn as a box."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    grad = erf.grad / max(float(erf.grad.max()), 1e-30)
    im = ax.imshow(grad, cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, label="|dy/dx| (normalised)")
    rf = erf.analytic
    if rf is not None and rf.box is not None:
        top, left, bottom, right = rf.box
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left + 1, bottom - top + 1, fill=False,
                               edgecolor="cyan", linewidth=1.5, label=f"analytic RF {rf.describe()}"))
        ax.legend(loc="lower right", fontsize=7)
    ax.set_title(f"{title}\nERF std {erf.std[0]:.1f} px, 95% mass in {erf.width95} px", fontsize=9)
    return save_figure(fig, path)


def plot_erf_growth(result: dict[str, Any], path: str | Path) -> Path:
    """Log-log plot of ERF std and analytic size versus depth, with the fitted exponent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    depths = np.array(result["depths"], dtype=float)
    stds = np.array(result["std"], dtype=float)
    fig, ax = plt.subplots(figsize=(5, 3.8))
    ax.loglog(depths, stds, "o-", label=f"ERF std (fitted exponent {result['exponent']:.2f})")
    analytic = [a for a in result["analytic"] if a is not None]
    if len(analytic) == len(depths):
        ax.loglog(depths, analytic, "s--", label="analytic RF 2n+1")
    ref = stds[0] * np.sqrt(depths / depths[0])
    ax.loglog(depths, ref, ":", color="gray", label="sqrt(n) reference")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xticks(depths)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("depth n (3x3 convs)")
    ax.set_ylabel("pixels")
    ax.set_title("Effective vs analytic receptive field (Luo et al. 2016)", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)

"""Receptive-field propagation through any PyTorch forward pass.

A :class:`torch.utils._python_dispatch.TorchDispatchMode` sees every ATen operator the model runs.
For each floating-point tensor it keeps a *geometry*: for every element, the bounding box of the
input pixels it depends on. Operator rules turn the geometry of the inputs into the geometry of the
outputs:

* pointwise ops (ReLU, add, mul, BN in eval mode, ``where``...): the union (hull) of the arguments'
  boxes, with broadcasting - this is how residual and concatenated paths merge (the multi-path case);
* convolutions and pooling (kernel ``k``, stride ``s``, padding ``p``, dilation ``d``; also transposed
  convolutions and ceil-mode windows): output index ``o`` reads input indices ``o*s - p + j*d``,
  ``j = 0..k-1``; taps that fall in the padding read nothing, so the box is clipped at the image
  border exactly as the gradient is;
* interpolation (nearest, bilinear, bicubic, ``align_corners`` either way) and adaptive pooling: the
  taps of each output index are read off the operator itself, applied once to one-hot probes;
* data movement (view, permute, slicing, cat, pad, roll, indexing): the same op applied to the
  geometry tensors;
* mixing ops (reductions, softmax, matrix products, attention, layer/group/instance norm, BN in
  training mode): the union over the mixed dimension. When that union merges different positions
  and reaches the whole extent of the op's input, the axis is flagged *global*.

The geometry of a tensor is a float32 tensor ``g`` (integer pixel coordinates are exact below 2**24)
of shape ``(6, *s)`` where ``s`` is broadcastable to the data's shape (size-1 dimensions where the
geometry is constant keep it small). The six
components are all "min-type" so that a union is one ``torch.minimum``:
``(top, -bottom, left, -right, -global_h, -global_w)``. An element with no dependency on the input
(a constant, padding) has ``+inf`` everywhere.

Operators the tracer does not know raise :class:`UntraceableError` naming the op, rather than
guessing. Ops whose support depends on the data (max-unpooling with indices, ``nonzero``,
``grid_sample``) raise :class:`DataDependentError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakTensorKeyDictionary

from dltricks.errors import DltricksError

__all__ = ["UntraceableError", "DataDependentError", "TooLargeError", "GeometryTracer", "input_geometry", "INF",
           "NCOMP"]

aten = torch.ops.aten
INF = math.inf
NCOMP = 6  # top, -bottom, left, -right, -global_h, -global_w
_DTYPE = torch.float32
MAX_ELEMENTS = 1 << 25  # 128 MiB of float32 per traced tensor


class UntraceableError(DltricksError):
    """The receptive-field tracer met an operator it has no rule for."""


class TooLargeError(UntraceableError):
    """The geometry tensors would exceed :data:`MAX_ELEMENTS` values (a huge input)."""


class DataDependentError(UntraceableError):
    """The operator's input support depends on the data (e.g. max-unpooling with indices)."""


def input_geometry(height: int, width: int, ndim: int = 4) -> torch.Tensor:
    """Geometry of an image tensor ``(..., H, W)``: element ``(i, j)`` depends on pixel ``(i, j)`` only."""
    h = torch.arange(height, dtype=_DTYPE).view(height, 1).expand(height, width)
    w = torch.arange(width, dtype=_DTYPE).view(1, width).expand(height, width)
    zero = torch.zeros(height, width, dtype=_DTYPE)
    g = torch.stack([h, -h, w, -w, zero, zero])  # (6, H, W)
    return g.view(NCOMP, *([1] * (ndim - 2)), height, width)


# ----------------------------------------------------------------------------------------------
# Helpers on geometry tensors


def _empty(shape: Sequence[int]) -> torch.Tensor:
    return torch.full((NCOMP, *shape), INF, dtype=_DTYPE)


def _align(g: torch.Tensor, ndim: int) -> torch.Tensor:
    """Right-align a geometry to ``ndim`` data dims (broadcasting semantics)."""
    extra = ndim - (g.dim() - 1)
    if extra < 0:
        raise UntraceableError("geometry has more dims than its tensor")
    if extra == 0:
        return g
    return g.view(g.shape[0], *([1] * extra), *g.shape[1:])


def _union(gs: Sequence[torch.Tensor | None], ndim: int) -> torch.Tensor | None:
    out = None
    for g in gs:
        if g is None:
            continue
        g = _align(g, ndim)
        out = g if out is None else torch.minimum(out, g)
    return out


def _full(g: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    return _align(g, len(shape)).expand(NCOMP, *shape).contiguous()


def _compress(g: torch.Tensor) -> torch.Tensor:
    """Shrink to size 1 every dimension along which the geometry is constant."""
    for d in range(1, g.dim()):
        if g.shape[d] > 1:
            first = g.narrow(d, 0, 1)
            if torch.equal(g, first.expand_as(g)):
                g = first
    return g


def _norm_dims(dims: Any, ndim: int) -> list[int]:
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return list(range(ndim))
    if isinstance(dims, int):
        dims = [dims]
    return sorted({d % ndim if ndim else 0 for d in dims})


def _mix(g: torch.Tensor, dims: Sequence[int], ndim: int) -> torch.Tensor:
    """Union over data ``dims`` (kept as size 1), flagging axes that became global.

    An axis is global for an element when the positions merged differ along that axis and their union
    reaches the full extent the op's input covers.
    """
    g = _align(g, ndim)
    gdims = [d + 1 for d in dims if g.shape[d + 1] > 1]
    if not gdims:
        return g
    low = g.amin(dim=gdims, keepdim=True)
    high = g.amax(dim=gdims, keepdim=True)
    extent = g.flatten(1).amin(dim=1)  # (6,)
    out = low.clone()
    for axis in range(2):
        lo, nhi, flag = 2 * axis, 2 * axis + 1, 4 + axis
        varies = (low[lo] != high[lo]) | (low[nhi] != high[nhi])
        whole = (low[lo] <= extent[lo]) & (low[nhi] <= extent[nhi]) & torch.isfinite(low[lo])
        flagged = torch.minimum(out[flag], torch.tensor(-1.0, dtype=out.dtype))
        out[flag] = torch.where(varies & whole, flagged, out[flag])
    return out


def _window_min(g: torch.Tensor, dim: int, taps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Min over the taps of each output index along data ``dim``.

    ``taps``: ``(N_out, K)`` input indices; ``valid``: which taps exist (not in padding).
    """
    d = dim + 1
    n_out, k = taps.shape
    any_valid = valid.any(1)
    if g.shape[d] == 1:
        if bool(any_valid.all()):
            return g
        shape = [1] * g.dim()
        shape[d] = n_out
        return torch.where(any_valid.view(shape), g, torch.tensor(INF, dtype=g.dtype))
    idx = taps.clamp(0, g.shape[d] - 1).flatten()
    gathered = g.index_select(d, idx).unflatten(d, (n_out, k))  # (..., N_out, K, ...)
    shape = [1] * gathered.dim()
    shape[d], shape[d + 1] = n_out, k
    gathered = gathered.masked_fill(~valid.view(shape), INF)
    return gathered.amin(d + 1)


def _conv_taps(n_in: int, n_out: int, k: int, s: int, p: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    o = torch.arange(n_out).view(-1, 1)
    j = torch.arange(k).view(1, -1)
    i = o * s - p + j * d  # (N_out, K): input index read by tap j of output o
    return i, (i >= 0) & (i < n_in)


def _transposed_taps(n_in: int, n_out: int, k: int, s: int, p: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    # A transposed conv writes input i to outputs i*s - p + j*d; output o reads i = (o + p - j*d) / s.
    o = torch.arange(n_out).view(-1, 1)
    j = torch.arange(k).view(1, -1)
    num = o + p - j * d
    i = torch.div(num, s, rounding_mode="floor")
    valid = (num % s == 0) & (i >= 0) & (i < n_in)
    return i, valid


def _adaptive_taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    o = torch.arange(n_out)
    start = (o * n_in) // n_out
    end = ((o + 1) * n_in + n_out - 1) // n_out
    k = int((end - start).max())
    i = start.view(-1, 1) + torch.arange(k).view(1, -1)
    return i, i < end.view(-1, 1)


def _taps_from_matrix(support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``support``: bool ``(N_out, N_in)`` -> taps ``(N_out, K)`` and their validity."""
    counts = support.sum(1)
    k = max(int(counts.max()), 1)
    order = torch.argsort((~support).to(torch.int8), dim=1, stable=True)[:, :k]  # supported indices first
    valid = torch.arange(k).view(1, -1) < counts.view(-1, 1)
    return order, valid


def _listify(x: Any, n: int) -> list[int]:
    if isinstance(x, (list, tuple)):
        x = list(x)
        return x * n if len(x) == 1 else x
    return [int(x)] * n


# ----------------------------------------------------------------------------------------------
# The tracer


_NO_DEP_OPS = {
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like",
    "arange", "rand", "rand_like", "randn", "randn_like", "randint", "randint_like", "randperm", "scalar_tensor",
    "eye", "linspace", "logspace", "new_zeros", "new_ones", "new_empty", "new_full", "new_empty_strided",
    "bernoulli", "normal", "uniform", "tril_indices", "triu_indices", "lift_fresh_copy",
}
_IDENTITY_OPS = {"clone", "alias", "detach", "_to_copy", "lift_fresh", "contiguous", "_conj", "resolve_conj",
                 "resolve_neg", "to", "_copy_from_and_resize", "_unsafe_view_copy", "positive"}
_EXTRA_POINTWISE = {"relu", "relu_", "hardtanh", "hardtanh_", "gelu", "silu", "silu_", "mish", "mish_", "hardswish",
                    "hardswish_", "hardsigmoid", "hardsigmoid_", "leaky_relu", "leaky_relu_", "elu", "elu_", "softplus",
                    "threshold", "clamp", "clamp_", "clamp_min", "clamp_max", "where", "masked_fill", "masked_fill_",
                    "lerp", "addcmul", "addcdiv", "native_dropout", "_prelu_kernel", "sigmoid", "tanh", "relu6",
                    "celu", "selu", "rrelu_with_noise", "log_sigmoid_forward", "_native_batch_norm_legit_no_training",
                    "erf", "exp", "log", "pow", "sqrt", "rsqrt", "abs", "neg", "reciprocal", "sign", "nan_to_num",
                    "logit", "fill"}
_REPLAY_OPS = {"view", "_unsafe_view", "reshape", "_reshape_alias", "repeat", "index", "index_select", "gather",
               "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle", "roll", "flip",
               "unfold", "diagonal", "tril", "triu", "take_along_dim", "view_as_real", "view_as_complex",
               "index_put", "_unsafe_index", "repeat_interleave", "narrow", "movedim", "swapaxes"}
_DATA_DEPENDENT = {"max_unpool2d", "max_unpool3d", "nonzero", "grid_sampler_2d", "grid_sampler_3d", "topk", "sort",
                   "masked_select", "unique_dim", "_unique2", "kthvalue", "median", "nanmedian", "mode", "cummax",
                   "cummin", "searchsorted", "bucketize"}
_UPSAMPLE = {"upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d",
             "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
             "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa"}
_LINEAR_UPSAMPLE = {"upsample_linear1d", "upsample_bilinear2d", "upsample_trilinear3d", "upsample_bicubic2d",
                    "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa"}
_REDUCTIONS = {"sum", "mean", "amax", "amin", "max", "min", "var", "std", "var_mean", "std_mean", "logsumexp", "norm",
               "linalg_vector_norm", "prod", "nansum", "nanmean", "aminmax", "argmax", "argmin", "any", "all",
               "count_nonzero"}


_OVERWRITE_OPS = {"fill", "zero", "normal", "uniform", "bernoulli", "random", "exponential", "geometric",
                  "cauchy", "log_normal"}


def _writes_first_arg(func) -> bool:
    alias = func._schema.arguments[0].alias_info
    return alias is not None and alias.is_write


def _values(func, args, kwargs) -> dict[str, Any]:
    """Arguments by their schema names."""
    values = dict(zip((a.name for a in func._schema.arguments), args))
    values.update(kwargs)
    return values


def _is_float(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())


class GeometryTracer(TorchDispatchMode):
    """Dispatch mode that propagates receptive-field geometry. See the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.geom: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.dirty: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        # In-place writes: a base tensor's version goes up with each write; a view whose recorded version
        # is older re-reads its geometry from the base.
        self.versions: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.view_versions: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.ops_seen: dict[str, int] = {}

    # -- bookkeeping ----------------------------------------------------------------------------
    def set(self, t: torch.Tensor, g: torch.Tensor | None) -> None:
        if g is None:
            if t in self.geom:
                del self.geom[t]
            return
        g = _align(g, t.dim())
        if g.numel() > MAX_ELEMENTS:
            raise TooLargeError(f"receptive-field geometry of a {tuple(t.shape)} tensor would hold {g.numel():,} "
                                   f"values (limit {MAX_ELEMENTS:,}); trace at a smaller input size")
        if any(a != 1 and a != b for a, b in zip(g.shape[1:], t.shape)):
            raise UntraceableError(f"internal: geometry {tuple(g.shape)} does not broadcast to {tuple(t.shape)}")
        self.geom[t] = g

    def get(self, t: Any) -> torch.Tensor | None:
        if not isinstance(t, torch.Tensor) or not _is_float(t):
            return None
        if t in self.dirty or (t._base is not None and t._base in self.dirty):
            raise UntraceableError("a tensor written in place through a non-strided view is read again; use "
                                   "torch.cat / F.pad instead so the receptive field can be traced")
        base = t._base
        if base is not None and self.versions.get(base, 0) > self.view_versions.get(t, 0):
            # The base was written after this view got its geometry: read the view's part of the base.
            g = self._view_of_base(t, base)
            self.set(t, g)
            self.view_versions[t] = self.versions.get(base, 0)
            return g
        return self.geom.get(t)

    def _base_full(self, base: torch.Tensor) -> torch.Tensor:
        """The base's geometry materialised with the base's own strides, component by component."""
        g = self.geom.get(base)
        strided = torch.empty_strided((NCOMP, *base.shape), (base.numel(), *base.stride()), dtype=_DTYPE)
        full = strided.copy_(_empty(base.shape) if g is None else _align(g, base.dim()).expand(NCOMP, *base.shape))
        return full

    def _view_of_base(self, t: torch.Tensor, base: torch.Tensor) -> torch.Tensor | None:
        if self.geom.get(base) is None:
            return None
        full = self._base_full(base)
        offset = t.storage_offset() - base.storage_offset()
        comps = [full[c].as_strided(t.shape, t.stride(), full[c].storage_offset() + offset) for c in range(NCOMP)]
        return _compress(torch.stack(comps))

    # -- dispatch -------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: C901
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        base = name[:-1] if name.endswith("_") and not name.endswith("__") else name
        self.ops_seen[name] = self.ops_seen.get(name, 0) + 1
        writes_self = bool(func._schema.arguments) and _writes_first_arg(func)
        flat_out, _ = tree_flatten(out)
        if not writes_self and not any(_is_float(o) for o in flat_out):
            return out  # sizes, scalars, masks, indices: no geometry to carry
        flat_in, _ = tree_flatten((args, kwargs))
        in_geoms = [self.get(t) for t in flat_in if isinstance(t, torch.Tensor)]
        has_geom = any(g is not None for g in in_geoms)

        if writes_self and base in _OVERWRITE_OPS:
            self._write(args[0], None)  # fill_, zero_, normal_...: what was there is gone
            return out
        if base in _NO_DEP_OPS or not has_geom:
            if writes_self and isinstance(args[0], torch.Tensor):
                self._write(args[0], None)
            return out
        if base in _DATA_DEPENDENT:
            raise DataDependentError(f"aten.{name}: which inputs an output reads depends on the data")

        rule = _RULES.get(name) or _RULES.get(base)
        if rule is not None:
            result = rule(self, func, args, kwargs, out)
        elif base in _UPSAMPLE:
            result = _upsample_rule(self, func, args, kwargs, out)
        elif base in _IDENTITY_OPS:
            result = self.get(args[0])
        elif base in _REPLAY_OPS:
            result = _replay(self, func, args, kwargs, out)
        elif torch.Tag.pointwise in func.tags or base in _EXTRA_POINTWISE:
            target = out if isinstance(out, torch.Tensor) else args[0]
            result = _union([self.get(t) for t in flat_in if isinstance(t, torch.Tensor)], target.dim())
            if isinstance(out, (tuple, list)):  # native_dropout -> (out, mask)
                result = [result] + [None] * (len(out) - 1)
        else:
            raise UntraceableError(f"no receptive-field rule for aten.{name} ({func})")

        if writes_self:
            g = result[0] if isinstance(result, list) else result
            self._write(args[0], g)
            return out
        self._assign(out, result)
        return out

    def _write(self, t: torch.Tensor, g: torch.Tensor | None) -> None:
        """``t`` was written in place and now carries ``g``; through a view, so does that part of its base."""
        old = self.geom.get(t)
        same = (old is None and g is None) or (
            old is not None and g is not None and old.shape == _align(g, t.dim()).shape
            and torch.equal(old, _align(g, t.dim())))
        base = t._base
        self.set(t, g)
        if same:
            return
        if base is None:
            self.versions[t] = self.versions.get(t, 0) + 1  # its views must re-read
            self.view_versions[t] = self.versions[t]
            return
        try:
            full = self._base_full(base)
        except RuntimeError:  # overlapping or exotic layout
            self.dirty[base] = True
            return
        offset = t.storage_offset() - base.storage_offset()
        value = _empty(t.shape) if g is None else _align(g, t.dim()).expand(NCOMP, *t.shape)
        for c in range(NCOMP):
            full[c].as_strided(t.shape, t.stride(), full[c].storage_offset() + offset).copy_(value[c])
        self.set(base, _compress(full.contiguous()))
        self.versions[base] = self.versions.get(base, 0) + 1
        self.view_versions[t] = self.versions[base]

    def _assign(self, out: Any, result: Any) -> None:
        if isinstance(out, torch.Tensor):
            if _is_float(out):
                self.set(out, result if not isinstance(result, list) else result[0])
                if out._base is not None:
                    self.view_versions[out] = self.versions.get(out._base, 0)
            return
        if isinstance(out, (tuple, list)):
            results = result if isinstance(result, list) else [result] * len(out)
            for o, r in zip(out, results):
                if isinstance(o, torch.Tensor) and _is_float(o) and r is not None:
                    self.set(o, r)


# ----------------------------------------------------------------------------------------------
# Rules. Each takes (tracer, func, args, kwargs, out) and returns a geometry (or a list for
# multi-output ops).


def _arg(args, kwargs, i, key, default=None):
    if len(args) > i:
        return args[i]
    return kwargs.get(key, default)


def _conv_rule(tr, func, args, kwargs, out):
    x, weight, bias = args[0], args[1], args[2]
    stride, padding, dilation, transposed, output_padding, groups = args[3:9]
    if tr.get(weight) is not None:
        raise UntraceableError("convolution with input-dependent weights")
    g = tr.get(x)
    if g is None:
        return _union([tr.get(bias)], out.dim()) if bias is not None else None
    n_sp = x.dim() - 2
    g = _align(g, x.dim())
    # Channels: every output channel of group k reads every input channel of group k.
    c_in, c_out = x.shape[1], out.shape[1]
    if g.shape[2] > 1:
        if groups == 1:
            g = g.amin(2, keepdim=True)
        else:
            g = g.unflatten(2, (groups, c_in // groups)).amin(3)  # (6, B, groups, *sp)
            g = g.repeat_interleave(c_out // groups, dim=2)
    stride, padding, dilation = _listify(stride, n_sp), _listify(padding, n_sp), _listify(dilation, n_sp)
    kernel = weight.shape[2:]
    for a in range(n_sp):
        dim = 2 + a
        n_in, n_out = x.shape[dim], out.shape[dim]
        if transposed:
            taps, valid = _transposed_taps(n_in, n_out, kernel[a], stride[a], padding[a], dilation[a])
        else:
            taps, valid = _conv_taps(n_in, n_out, kernel[a], stride[a], padding[a], dilation[a])
        g = _window_min(g, dim, taps, valid)
    if bias is not None and tr.get(bias) is not None:
        g = _union([g, _align(tr.get(bias), 1).view(NCOMP, 1, -1, *([1] * n_sp))], out.dim())
    return g


def _pool_rule(n_sp: int, kind: str):
    def rule(tr, func, args, kwargs, out):
        x = args[0]
        g = _align(tr.get(x), x.dim())
        kernel = _listify(_arg(args, kwargs, 1, "kernel_size"), n_sp)
        stride = _arg(args, kwargs, 2, "stride", [])
        stride = kernel if stride in (None, []) else _listify(stride, n_sp)
        padding = _listify(_arg(args, kwargs, 3, "padding", 0), n_sp)
        dilation = _listify(_arg(args, kwargs, 4, "dilation", 1), n_sp) if kind == "max" else [1] * n_sp
        value = out[0] if isinstance(out, (tuple, list)) else out
        for a in range(n_sp):
            dim = x.dim() - n_sp + a
            taps, valid = _conv_taps(x.shape[dim], value.shape[dim], kernel[a], stride[a], padding[a], dilation[a])
            g = _window_min(g, dim, taps, valid)
        return [g, None] if isinstance(out, (tuple, list)) else g
    return rule


def _adaptive_rule(n_sp: int):
    def rule(tr, func, args, kwargs, out):
        x = args[0]
        g = _align(tr.get(x), x.dim())
        value = out[0] if isinstance(out, (tuple, list)) else out
        for a in range(n_sp):
            dim = x.dim() - n_sp + a
            n_in, n_out = x.shape[dim], value.shape[dim]
            if n_out == 1:
                g = _mix(g, [dim], x.dim())
            else:
                taps, valid = _adaptive_taps(n_in, n_out)
                g = _window_min(g, dim, taps, valid)
        return [g, None] if isinstance(out, (tuple, list)) else g
    return rule


def _reduction_rule(tr, func, args, kwargs, out):
    x = args[0]
    values = _values(func, args, kwargs)
    if "other" in values:  # max.other / min.other: elementwise
        return _union([tr.get(x), tr.get(values["other"])], out.dim())
    g = tr.get(x)
    dims = values.get("dim")
    keepdim = bool(values.get("keepdim", False))
    if x.dim() == 0:
        return g
    dims = _norm_dims(dims, x.dim())
    red = _mix(g, dims, x.dim())
    if not keepdim:
        red = red.squeeze([d + 1 for d in dims]) if dims else red
    outs = out if isinstance(out, (tuple, list)) else [out]
    results = [red if _is_float(o) else None for o in outs]
    return results if isinstance(out, (tuple, list)) else results[0]


def _cumulative_rule(tr, func, args, kwargs, out):
    x, dim = args[0], args[1] % max(args[0].dim(), 1)
    g = _full(tr.get(x), x.shape)
    return torch.cummin(g, dim=dim + 1).values


def _softmax_rule(tr, func, args, kwargs, out):
    x, dim = args[0], args[1]
    return _mix(tr.get(x), [dim % x.dim()], x.dim())


def _glu_rule(tr, func, args, kwargs, out):
    x = args[0]
    dim = _arg(args, kwargs, 1, "dim", -1) % x.dim()
    g = _full(tr.get(x), x.shape)
    a, b = g.chunk(2, dim=dim + 1)
    return torch.minimum(a, b)


def _layer_norm_rule(tr, func, args, kwargs, out):
    x, normalized_shape = args[0], args[1]
    n = len(normalized_shape)
    dims = list(range(x.dim() - n, x.dim()))
    g = _mix(tr.get(x), dims, x.dim())
    weights = [tr.get(w) for w in args[2:4]]
    if any(w is not None for w in weights):
        raise UntraceableError("layer norm with input-dependent affine parameters")
    return [g, g, g]


def _group_norm_rule(tr, func, args, kwargs, out):
    x = args[0]
    n, c, groups = args[3], args[4], args[6]
    g = _full(tr.get(x), x.shape).reshape(NCOMP, n, groups, -1)  # (6, N, G, C/G * HW)
    g = _mix(g, [2], 3)  # union inside each group: (6, N, G, 1)
    stats = g.squeeze(-1)  # (6, N, G)
    per_channel = g.squeeze(-1).repeat_interleave(c // groups, dim=2)  # (6, N, C)
    full = per_channel.view(NCOMP, n, c, *([1] * (x.dim() - 2)))
    return [full, stats, stats]


def _batch_norm_rule(tr, func, args, kwargs, out):
    x = args[0]
    name = func.overloadpacket.__name__
    if func._overloadname == "no_stats":  # (input, weight, bias, training, momentum, eps)
        training = args[3]
    else:
        training = args[5] if name in ("native_batch_norm", "_native_batch_norm_legit",
                                       "_native_batch_norm_legit_functional") else False
    g = tr.get(x)
    if training:
        dims = [d for d in range(x.dim()) if d != 1]
        g = _mix(g, dims, x.dim())
    return [g, None, None] if isinstance(out, (tuple, list)) else g


def _mm_rule(tr, func, args, kwargs, out):
    name = func.overloadpacket.__name__
    if name in ("addmm", "baddbmm", "addbmm", "addmv"):
        bias, a, b = args[0], args[1], args[2]
    else:
        bias, a, b = None, args[0], args[1]
    nd = out.dim()
    parts = []
    ga, gb = tr.get(a), tr.get(b)
    if name in ("mv", "addmv"):
        if ga is not None:
            parts.append(_mix(ga, [1], 2).squeeze(-1))  # (6, N)
        if gb is not None:
            parts.append(_mix(gb, [0], 1))  # (6, 1)
    elif name == "dot":
        parts = [_mix(g, [0], 1) for g in (ga, gb) if g is not None]
        parts = [p.squeeze(1) for p in parts]
    else:
        if ga is not None:
            parts.append(_mix(ga, [a.dim() - 1], a.dim()))  # (..., n, 1)
        if gb is not None:
            parts.append(_mix(gb, [b.dim() - 2], b.dim()))  # (..., 1, m)
        if name == "addbmm":
            parts = [_mix(p, [0], p.dim() - 1).squeeze(1) for p in parts]
    if bias is not None and tr.get(bias) is not None:
        parts.append(tr.get(bias))
    return _union(parts, nd)


def _sdpa_rule(tr, func, args, kwargs, out):
    q, k, v = args[0], args[1], args[2]
    name = func.overloadpacket.__name__
    values = _values(func, args, kwargs)
    is_causal = bool(values.get("is_causal", False))
    mask = values.get("attn_mask", values.get("attn_bias"))
    nd = q.dim()
    gq, gk, gv = tr.get(q), tr.get(k), tr.get(v)
    # One key/value token = all of its features: (6, ..., Lk, 1).
    kv = _union([None if g is None else _mix(g, [nd - 1], nd) for g in (gk, gv)], nd)
    parts = []
    if gq is not None:
        parts.append(_mix(gq, [nd - 1], nd))  # (6, ..., Lq, 1)
    if kv is not None:
        if is_causal:
            kv = _full(kv, (*k.shape[:-1], 1))
            prefix = torch.cummin(kv, dim=nd - 1).values  # token i sees keys 0..i
            lq = q.shape[-2]
            idx = torch.arange(lq).clamp(max=k.shape[-2] - 1)
            parts.append(prefix.index_select(nd - 1, idx))
        else:
            parts.append(_mix(kv, [nd - 2], nd))
    if isinstance(mask, torch.Tensor) and tr.get(mask) is not None:
        parts.append(_mix(tr.get(mask), [mask.dim() - 1], mask.dim()))
    g = _union(parts, nd)
    outs = out if isinstance(out, (tuple, list)) else [out]
    results = [g if i == 0 else None for i in range(len(outs))]
    if name == "_scaled_dot_product_attention_math" and len(outs) > 1:
        results[1] = None  # attention weights: left untracked
    return results if isinstance(out, (tuple, list)) else g


def _cat_rule(tr, func, args, kwargs, out):
    tensors = [t for t in args[0] if not (t.dim() == 1 and t.shape[0] == 0)]
    dim = _arg(args, kwargs, 1, "dim", 0) % out.dim()
    nd = out.dim()
    gs = [tr.get(t) for t in tensors]
    target = []
    for d in range(nd):
        if d == dim:
            target.append(None)
        else:
            big = any(g is not None and _align(g, nd).shape[d + 1] > 1 for g in gs)
            target.append(out.shape[d] if big else 1)
    pieces = []
    for t, g in zip(tensors, gs):
        shape = [t.shape[d] if d == dim else target[d] for d in range(nd)]
        pieces.append(_empty(shape) if g is None else _align(g, nd).expand(NCOMP, *shape))
    return _compress(torch.cat(pieces, dim=dim + 1))


def _stack_rule(tr, func, args, kwargs, out):
    tensors = args[0]
    dim = _arg(args, kwargs, 1, "dim", 0) % out.dim()
    pieces = [(_empty(t.shape) if tr.get(t) is None else _full(tr.get(t), t.shape)) for t in tensors]
    return _compress(torch.stack(pieces, dim=dim + 1))


def _permute_rule(tr, func, args, kwargs, out):
    x, dims = args[0], args[1]
    g = _align(tr.get(x), x.dim())
    return g.permute(0, *[d % x.dim() + 1 for d in dims])


def _transpose_rule(tr, func, args, kwargs, out):
    x = args[0]
    g = _align(tr.get(x), x.dim())
    if func.overloadpacket.__name__ in ("t", "t_"):
        return g.transpose(1, 2) if x.dim() == 2 else g
    d0, d1 = args[1] % x.dim(), args[2] % x.dim()
    return g.transpose(d0 + 1, d1 + 1)


def _expand_rule(tr, func, args, kwargs, out):
    return _align(tr.get(args[0]), out.dim())


def _unsqueeze_rule(tr, func, args, kwargs, out):
    x = args[0]
    return _align(tr.get(x), x.dim()).unsqueeze(args[1] % out.dim() + 1)


def _squeeze_rule(tr, func, args, kwargs, out):
    x = args[0]
    g = _align(tr.get(x), x.dim())
    if len(args) == 1:
        dims = [d for d in range(x.dim()) if x.shape[d] == 1]
    else:
        dims = _norm_dims(args[1], x.dim())
        dims = [d for d in dims if x.shape[d] == 1]
    return g.squeeze([d + 1 for d in dims]) if dims else g


def _slice_rule(tr, func, args, kwargs, out):
    x = args[0]
    dim = _arg(args, kwargs, 1, "dim", 0) % x.dim()
    g = _align(tr.get(x), x.dim())
    if g.shape[dim + 1] == 1:
        if out.shape[dim] == 1 or x.shape[dim] == 1:
            return g
        return g  # constant along dim: any slice keeps it
    start = _arg(args, kwargs, 2, "start", None)
    end = _arg(args, kwargs, 3, "end", None)
    step = _arg(args, kwargs, 4, "step", 1)
    return aten.slice.Tensor(g, dim + 1, start, end, step)


def _select_rule(tr, func, args, kwargs, out):
    x, dim, index = args[0], args[1] % args[0].dim(), args[2]
    g = _align(tr.get(x), x.dim())
    return g.select(dim + 1, 0 if g.shape[dim + 1] == 1 else index)


def _split_rule(tr, func, args, kwargs, out):
    x = args[0]
    name = func.overloadpacket.__name__
    if name == "unbind":
        dim = _arg(args, kwargs, 1, "dim", 0) % x.dim()
        g = _full(tr.get(x), x.shape)
        return [_compress(p) for p in g.unbind(dim + 1)]
    dim = _arg(args, kwargs, 2, "dim", 0) % x.dim()
    g = _align(tr.get(x), x.dim())
    results = []
    start = 0
    for piece in out:
        size = piece.shape[dim]
        results.append(g if g.shape[dim + 1] == 1 else g.narrow(dim + 1, start, size))
        start += size
    return results


def _pad_rule(tr, func, args, kwargs, out):
    x = args[0]
    pad = list(args[1])
    name = func.overloadpacket.__name__
    g = _align(tr.get(x), x.dim())
    n = len(pad) // 2
    dims = list(range(x.dim() - n, x.dim()))
    shape = list(g.shape)
    for d in dims:
        shape[d + 1] = x.shape[d]
    g = g.expand(shape)
    if name == "constant_pad_nd":
        return torch.nn.functional.pad(g, pad, mode="constant", value=INF)
    # reflection / replication: the same op on the geometry, leading dims folded into the batch.
    flat = g.reshape(-1, *g.shape[-n:]).contiguous()
    padded = func(flat, pad)
    return padded.view(*g.shape[:-n], *padded.shape[-n:])


def _copy_rule(tr, func, args, kwargs, out):
    dst, src = args[0], args[1]
    return _union([tr.get(src)], dst.dim())


def _replay(tr, func, args, kwargs, out):
    """Apply a data-movement op to the geometry itself, one component at a time."""
    full: dict[int, torch.Tensor] = {}

    def collect(t):
        if _is_float(t) and id(t) not in full:
            g = tr.get(t)
            full[id(t)] = _empty(t.shape) if g is None else _full(g, t.shape)
        return t

    tree_map(collect, (args, kwargs))
    comps = []
    for c in range(NCOMP):
        pick = lambda t: full[id(t)][c] if _is_float(t) else t  # noqa: E731
        comps.append(func(*tree_map(pick, args), **tree_map(pick, kwargs)))
    if isinstance(out, (tuple, list)):
        return [_compress(torch.stack([c[i] for c in comps])) for i in range(len(out))]
    return _compress(torch.stack(comps))


def _upsample_rule(tr, func, args, kwargs, out):
    x = args[0]
    name = func.overloadpacket.__name__
    n_sp = int(name[-2])
    linear = name in _LINEAR_UPSAMPLE
    values = _values(func, args, kwargs)
    align = values.get("align_corners") if linear else None
    if func._overloadname == "vec":
        factors = values.get("scale_factors")
        scales = list(factors) if factors is not None else [None] * n_sp
    else:
        keys = {1: ["scales"], 2: ["scales_h", "scales_w"], 3: ["scales_d", "scales_h", "scales_w"]}[n_sp]
        scales = [values.get(k) for k in keys]
    g = _align(tr.get(x), x.dim())
    default = func.overloadpacket.default
    for a in range(n_sp):
        dim = x.dim() - n_sp + a
        n_in, n_out = x.shape[dim], out.shape[dim]
        # Probe: a batch of one-hot vectors along this axis, size 1 along the others.
        probe_shape = [n_in, 1] + [1] * n_sp
        probe_shape[2 + a] = n_in
        probe = torch.eye(n_in, dtype=torch.float64).reshape(probe_shape)
        size = [1] * n_sp
        size[a] = n_out
        axis_scales = [None] * n_sp
        axis_scales[a] = scales[a]
        response = default(probe, size, align, *axis_scales) if linear else default(probe, size, *axis_scales)
        support = response.reshape(n_in, n_out).t() != 0  # (N_out, N_in)
        taps, valid = _taps_from_matrix(support)
        g = _window_min(g, dim, taps, valid)
    return g


def _im2col_rule(tr, func, args, kwargs, out):
    raise UntraceableError("aten.im2col (F.unfold) is not supported by the receptive-field tracer")


_RULES: dict[str, Callable] = {
    "convolution": _conv_rule, "_convolution": _conv_rule,
    "max_pool1d_with_indices": _pool_rule(1, "max"), "max_pool2d_with_indices": _pool_rule(2, "max"),
    "max_pool3d_with_indices": _pool_rule(3, "max"), "max_pool1d": _pool_rule(1, "max"),
    "max_pool2d": _pool_rule(2, "max"), "max_pool3d": _pool_rule(3, "max"),
    "avg_pool1d": _pool_rule(1, "avg"), "avg_pool2d": _pool_rule(2, "avg"), "avg_pool3d": _pool_rule(3, "avg"),
    "_adaptive_avg_pool2d": _adaptive_rule(2), "adaptive_avg_pool2d": _adaptive_rule(2),
    "_adaptive_avg_pool3d": _adaptive_rule(3), "adaptive_avg_pool1d": _adaptive_rule(1),
    "adaptive_max_pool2d": _adaptive_rule(2), "adaptive_max_pool1d": _adaptive_rule(1),
    "adaptive_max_pool3d": _adaptive_rule(3),
    "_softmax": _softmax_rule, "_safe_softmax": _softmax_rule, "_log_softmax": _softmax_rule,
    "softmax": _softmax_rule, "log_softmax": _softmax_rule,
    "cumsum": _cumulative_rule, "cumprod": _cumulative_rule, "logcumsumexp": _cumulative_rule,
    "glu": _glu_rule,
    "native_layer_norm": _layer_norm_rule, "native_group_norm": _group_norm_rule,
    "native_batch_norm": _batch_norm_rule, "_native_batch_norm_legit": _batch_norm_rule,
    "_native_batch_norm_legit_functional": _batch_norm_rule,
    "mm": _mm_rule, "bmm": _mm_rule, "addmm": _mm_rule, "baddbmm": _mm_rule, "addbmm": _mm_rule, "mv": _mm_rule,
    "addmv": _mm_rule, "dot": _mm_rule,
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa_rule, "_scaled_dot_product_flash_attention": _sdpa_rule,
    "_scaled_dot_product_efficient_attention": _sdpa_rule, "_scaled_dot_product_cudnn_attention": _sdpa_rule,
    "_scaled_dot_product_attention_math": _sdpa_rule, "_scaled_dot_product_fused_attention_overrideable": _sdpa_rule,
    "cat": _cat_rule, "stack": _stack_rule,
    "permute": _permute_rule, "transpose": _transpose_rule, "t": _transpose_rule, "transpose_": _transpose_rule,
    "expand": _expand_rule, "unsqueeze": _unsqueeze_rule, "squeeze": _squeeze_rule,
    "slice": _slice_rule, "select": _select_rule,
    "split": _split_rule, "split_with_sizes": _split_rule, "unbind": _split_rule, "unsafe_split": _split_rule,
    "constant_pad_nd": _pad_rule, "reflection_pad1d": _pad_rule, "reflection_pad2d": _pad_rule,
    "reflection_pad3d": _pad_rule, "replication_pad1d": _pad_rule, "replication_pad2d": _pad_rule,
    "replication_pad3d": _pad_rule,
    "copy": _copy_rule,
    "im2col": _im2col_rule,
}
for _name in _REDUCTIONS:
    _RULES[_name] = _reduction_rule

"""Int8 models in safetensors files: no pickle written, none read.

A quantized model's ``state_dict`` holds things safetensors cannot store: quantized tensors (``qint8``,
``quint8``, with a scale and zero point per tensor or per output channel), packed parameters (a tuple
``(weight, bias)`` of a quantized Linear) and a ``torch.dtype``. ``torch.save`` would pickle them, and
dltricks never unpickles a file (:mod:`dltricks.train.checkpoint`), so a ``.pt`` int8 variant could not be
loaded back by our own rules. Here each entry is written as plain tensors plus a JSON description:

* a quantized tensor ``k`` -> ``k`` (its integers, ``int8``/``uint8``) and, per channel, ``k#scales``
  (float64) and ``k#zero_points`` (int64); the per-tensor scale and zero point, the dtype, the scheme and the
  channel axis go to the JSON under ``quantized/k``;
* a tuple ``k`` -> ``k#0``, ``k#1``... (each encoded the same way; ``None`` recorded in the JSON);
* a ``torch.dtype`` -> its name in the JSON.

:func:`load_quantized` rebuilds the int8 *structure* the way it was made (the float model by name, then
:func:`~dltricks.compress.quantize_static` with one calibration batch,
:func:`~dltricks.compress.quantize_dynamic`, or for a model of quantization-aware training (``method: qat``)
:func:`~dltricks.compress.prepare_qat` then :func:`~dltricks.compress.convert_qat`) and then loads the stored
integers, scales and zero points into it, so the result computes exactly what the saved model computed
whatever batch the structure was calibrated on (tested: bit-identical outputs). The file is read with the checks of
:func:`dltricks.train.checkpoint.read_tensors` and every entry must have the dtype and shape of the rebuilt
model's (nothing is cast).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dltricks.errors import CheckpointError
from dltricks.train.checkpoint import read_tensors, write_tensors

__all__ = ["INT8_FORMAT", "encode_state", "decode_state", "save_quantized", "load_quantized"]

INT8_FORMAT = "dltricks-int8-v1"
_QDTYPES = {"qint8": torch.qint8, "quint8": torch.quint8, "qint32": torch.qint32}
_SCHEMES = ("per_tensor_affine", "per_channel_affine")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _encode(key: str, value: Any, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Put the tensors of entry ``key`` in ``tensors``; return its JSON description."""
    if isinstance(value, torch.Tensor) and value.is_quantized:
        scheme = str(value.qscheme()).replace("torch.", "")
        if scheme not in _SCHEMES:
            raise CheckpointError(f"cannot store {key}: quantization scheme {scheme} is not supported")
        tensors[key] = value.int_repr()
        desc: dict[str, Any] = {"kind": "quantized", "dtype": _dtype_name(value.dtype), "scheme": scheme}
        if scheme == "per_tensor_affine":
            desc.update(scale=float(value.q_scale()), zero_point=int(value.q_zero_point()))
        else:
            tensors[f"{key}#scales"] = value.q_per_channel_scales().to(torch.float64)
            tensors[f"{key}#zero_points"] = value.q_per_channel_zero_points().to(torch.int64)
            desc["axis"] = int(value.q_per_channel_axis())
        return desc
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach()
        return {"kind": "tensor"}
    if isinstance(value, tuple):
        return {"kind": "tuple", "items": [None if v is None else _encode(f"{key}#{i}", v, tensors)
                                           for i, v in enumerate(value)]}
    if isinstance(value, torch.dtype):
        return {"kind": "dtype", "dtype": _dtype_name(value)}
    raise CheckpointError(f"cannot store {key}: {type(value).__name__} is not a tensor, tuple or dtype")


def encode_state(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(plain tensors, JSON description)`` of a (quantized) model's ``state_dict``."""
    tensors: dict[str, torch.Tensor] = {}
    entries = {key: _encode(key, value, tensors) for key, value in state.items()}
    return tensors, entries


def _get(tensors: Mapping[str, torch.Tensor], key: str, path: Path) -> torch.Tensor:
    if key not in tensors:
        raise CheckpointError(f"{path}: tensor {key!r} is missing (truncated or tampered file)")
    return tensors[key]


def _decode(key: str, desc: Any, tensors: Mapping[str, torch.Tensor], path: Path) -> Any:
    kind = desc.get("kind") if isinstance(desc, dict) else None
    if kind == "tensor":
        return _get(tensors, key, path)
    if kind == "dtype" and desc.get("dtype") in _QDTYPES:
        return _QDTYPES[desc["dtype"]]
    if kind == "tuple" and isinstance(desc.get("items"), list):
        return tuple(None if d is None else _decode(f"{key}#{i}", d, tensors, path)
                     for i, d in enumerate(desc["items"]))
    if kind == "quantized" and desc.get("dtype") in _QDTYPES and desc.get("scheme") in _SCHEMES:
        ints = _get(tensors, key, path)
        qdtype = _QDTYPES[desc["dtype"]]
        expected = {torch.qint8: torch.int8, torch.quint8: torch.uint8, torch.qint32: torch.int32}[qdtype]
        if ints.dtype != expected:
            raise CheckpointError(f"{path}: {key} is stored as {_dtype_name(ints.dtype)}, expected "
                                  f"{_dtype_name(expected)} for {desc['dtype']}")
        if desc["scheme"] == "per_tensor_affine":
            scale, zero = desc.get("scale"), desc.get("zero_point")
            if not (isinstance(scale, float) and scale > 0 and isinstance(zero, int)):
                raise CheckpointError(f"{path}: {key} has an invalid scale or zero point")
            return torch._make_per_tensor_quantized_tensor(ints, scale, zero)
        scales, zeros = _get(tensors, f"{key}#scales", path), _get(tensors, f"{key}#zero_points", path)
        axis = desc.get("axis")
        if not (isinstance(axis, int) and 0 <= axis < ints.dim() and scales.shape == zeros.shape == (ints.shape[axis],)
                and scales.dtype == torch.float64 and zeros.dtype == torch.int64):
            raise CheckpointError(f"{path}: {key} has per-channel scales that do not fit its shape")
        return torch._make_per_channel_quantized_tensor(ints, scales, zeros, axis)
    raise CheckpointError(f"{path}: entry {key!r} has an invalid description (tampered file)")


def decode_state(tensors: Mapping[str, torch.Tensor], entries: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """The inverse of :func:`encode_state`."""
    return {key: _decode(key, desc, tensors, Path(path)) for key, desc in entries.items()}


def save_quantized(path: str | Path, model: nn.Module, meta: Mapping[str, Any] | None = None) -> Path:
    """Write the int8 ``model``'s state as one safetensors file (atomic), ``meta`` (JSON) beside it."""
    tensors, entries = encode_state(model.state_dict())
    write_tensors(path, tensors, {"format": INT8_FORMAT, **(meta or {}), "entries": entries})
    return Path(path)


def _same(a: Any, b: Any) -> bool:
    """Same kind, dtype and shape (and, for quantized tensors, scheme)."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        return (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b)))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return (a.dtype == b.dtype and a.shape == b.shape
                and (not a.is_quantized or a.qscheme() == b.qscheme()))
    return type(a) is type(b) and (not isinstance(a, torch.dtype) or a == b)


def load_quantized(path: str | Path, float_model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The int8 model stored at ``path`` by :func:`save_quantized`: the structure rebuilt from ``float_model``
    (static int8 calibrated on ``example``, or dynamic int8, as the file's ``method`` says), then the stored
    state loaded into it. Never unpickles."""
    from dltricks.compress.quantize import convert_qat, prepare_qat, quantize_dynamic, quantize_static

    path = Path(path)
    tensors, meta = read_tensors(path)
    if meta.get("format") != INT8_FORMAT or not isinstance(meta.get("entries"), dict):
        raise CheckpointError(f"{path}: not a dltricks int8 file (format {str(meta.get('format'))[:40]!r})")
    method = meta.get("method")
    if method == "static-int8":
        model = quantize_static(float_model, [example])
    elif method == "dynamic-int8":
        model = quantize_dynamic(float_model)
    elif method == "qat":  # the structure of compress.qat: fake-quant copy, ranges seen on example, converted
        backend = meta.get("backend", "x86")
        if backend not in ("x86", "fbgemm", "qnnpack", "onednn"):
            raise CheckpointError(f"{path}: unknown int8 backend {str(backend)[:40]!r}")
        prepared = prepare_qat(float_model, example, backend=backend).eval()
        with torch.no_grad():
            prepared(example)
        model = convert_qat(prepared, example)
    else:
        raise CheckpointError(f"{path}: unknown int8 method {str(method)[:40]!r}; expected static-int8, "
                              "dynamic-int8 or qat")
    state = decode_state(tensors, meta["entries"], path)
    reference = model.state_dict()
    if set(state) != set(reference):
        extra = sorted(set(state) ^ set(reference))[:3]
        raise CheckpointError(f"{path}: int8 weights do not fit this model ({', '.join(extra)})")
    for key, value in state.items():
        if not _same(value, reference[key]):
            raise CheckpointError(f"{path}: int8 entry {key} does not have the model's type, dtype or shape")
    # The rebuilt model's per-module format versions: without them quantized Linear reads the old layout.
    ordered = OrderedDict(state)
    ordered._metadata = getattr(reference, "_metadata", None)  # type: ignore[attr-defined]
    model.load_state_dict(ordered)
    return model

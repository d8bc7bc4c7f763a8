"""ONNX export, checked in onnxruntime.

:func:`export_onnx` writes a model with ``torch.onnx.export`` (the dynamo exporter: ``torch.export``, then
onnxscript's translation), the batch dimension dynamic, and then runs the file in onnxruntime on a batch of a
different size than the one exported with: the outputs must match PyTorch's to ``atol + rtol * |y|``
(:data:`ATOL`, :data:`RTOL`) or the export fails. :func:`quantize_onnx` is onnxruntime's own dynamic int8
quantization of the exported graph (int8 weights of MatMul/Gemm/Conv, activation scales per batch).

Files are written to a temporary name and renamed, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dltricks.errors import CheckpointError, ModelError

__all__ = ["export_onnx", "onnx_session", "run_onnx", "check_onnx", "quantize_onnx", "ATOL", "RTOL"]

# Float32 kernels of onnxruntime and PyTorch sum in different orders: a few ulps per op, more in deep nets.
ATOL, RTOL = 1e-4, 1e-3


def onnx_session(path: str | Path, *, threads: int = 1) -> Any:
    """An onnxruntime CPU session for ``path`` (``threads`` intra-op threads); a file that is not a valid ONNX
    model is a :class:`CheckpointError`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a valid ONNX model ({first[:200]})") from err


def run_onnx(session: Any, x: torch.Tensor) -> torch.Tensor:
    """The first output of ``session`` on ``x`` as a tensor."""
    name = session.get_inputs()[0].name
    return torch.from_numpy(np.asarray(session.run(None, {name: x.detach().float().cpu().numpy()})[0]))


def check_onnx(path: str | Path, model: nn.Module, x: torch.Tensor, *, atol: float = ATOL,
               rtol: float = RTOL) -> float:
    """Run ``path`` in onnxruntime and ``model`` in PyTorch on ``x``; returns the largest absolute difference,
    raises :class:`ModelError` when it exceeds ``atol + rtol * |y|``."""
    with torch.no_grad():
        expected = model.eval()(x).float()
    got = run_onnx(onnx_session(path), x)
    if got.shape != expected.shape:
        raise ModelError(f"ONNX output of shape {tuple(got.shape)} for input {tuple(x.shape)}; PyTorch gives "
                         f"{tuple(expected.shape)}")
    diff = (got - expected).abs()
    if not bool((diff <= atol + rtol * expected.abs()).all()):
        raise ModelError(f"ONNX outputs differ from PyTorch's by up to {float(diff.max()):.3g} (tolerance "
                         f"atol {atol:g} + rtol {rtol:g})")
    return float(diff.max())


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress lines and warnings (missing torchvision ops...): keep them off the console."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    loggers.append(logging.getLogger())  # onnxruntime.quantization warns on the root logger
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, *, check: bool = True) -> Path:
    """Write ``model`` (eval mode, float32) to ``path`` as ONNX with a dynamic batch dimension; with ``check``,
    the file is run in onnxruntime on a batch of another size and must match PyTorch (:func:`check_onnx`)."""
    path = Path(path)
    model = model.eval()
    tmp = _tmp(path)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with _quiet():
            torch.onnx.export(model, (example,), str(tmp), dynamo=True, external_data=False,
                              input_names=["x"], output_names=["logits"], dynamic_shapes=({0: batch},),
                              verbose=False)
        if check:
            other = torch.cat([example, example[:1]]) if example.shape[0] > 0 else example
            check_onnx(tmp, model, other)
        tmp.replace(path)
    except ModelError:
        raise
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot export {getattr(model, 'model_name', type(model).__name__)} to ONNX: "
                         f"{first[:300]}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def quantize_onnx(source: str | Path, path: str | Path) -> Path:
    """onnxruntime's dynamic int8 quantization of ONNX file ``source``, written to ``path``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    tmp = _tmp(path)
    try:
        with _quiet():
            quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8)
        onnx_session(tmp)  # loads
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

"""ONNX export, checked in onnxruntime.

:func:`export_onnx` writes a model with ``torch.onnx.export`` (the dynamo exporter: ``torch.export``, then
onnxscript's translation), the batch dimension dynamic, and then runs the file in onnxruntime on a batch of a
different size than the one exported with: every output (a model may return a tuple or dict of tensors, e.g.
a detector's maps) must match PyTorch's to ``atol + rtol * |y|`` (:data:`ATOL`, :data:`RTOL`) or the export
fails. The input is one tensor or a tuple of the model's positional inputs (token ids stay integers; a seq2seq
model takes source and target). ``tests/test_onnx_zoo.py`` runs it on every model family of the zoo.
:func:`quantize_onnx` is onnxruntime's own dynamic int8 quantization of the exported graph (int8 weights of
MatMul/Gemm/Conv, activation scales per batch).

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

__all__ = ["export_onnx", "onnx_session", "run_onnx", "run_onnx_all", "torch_outputs", "check_onnx", "quantize_onnx",
           "ATOL", "RTOL"]

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


Inputs = torch.Tensor | tuple[torch.Tensor, ...]


def _inputs(x: Inputs) -> tuple[torch.Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def _feed(session: Any, x: Inputs) -> dict[str, np.ndarray]:
    """Inputs by name: float tensors as float32, token ids and other integers as they are."""
    arrays = [t.detach().cpu().float().numpy() if t.is_floating_point() else t.detach().cpu().numpy()
              for t in _inputs(x)]
    return {i.name: a for i, a in zip(session.get_inputs(), arrays)}


def run_onnx_all(session: Any, x: Inputs) -> list[torch.Tensor]:
    """Every output of ``session`` on ``x`` (one tensor or a tuple of the model's positional inputs)."""
    return [torch.from_numpy(np.asarray(out)) for out in session.run(None, _feed(session, x))]


def run_onnx(session: Any, x: Inputs) -> torch.Tensor:
    """The first output of ``session`` on ``x`` as a tensor."""
    return run_onnx_all(session, x)[0]


def torch_outputs(model: nn.Module, x: Inputs) -> list[torch.Tensor]:
    """The tensors of ``model``'s output (a tensor, or a tuple/list/dict of them) in the order the exporter
    flattens them (:mod:`torch.utils._pytree`), as float32."""
    from torch.utils._pytree import tree_leaves

    with torch.no_grad():
        out = model.eval()(*_inputs(x))
    return [t.float() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def check_onnx(path: str | Path, model: nn.Module, x: Inputs, *, atol: float = ATOL, rtol: float = RTOL) -> float:
    """Run ``path`` in onnxruntime and ``model`` in PyTorch on ``x``; returns the largest absolute difference
    over every output, raises :class:`ModelError` when one exceeds ``atol + rtol * |y|``."""
    expected = torch_outputs(model, x)
    got = run_onnx_all(onnx_session(path), x)
    if len(got) != len(expected):
        raise ModelError(f"the ONNX model has {len(got)} outputs; PyTorch gives {len(expected)}")
    worst = 0.0
    for i, (g, e) in enumerate(zip(got, expected)):
        if g.shape != e.shape:
            raise ModelError(f"ONNX output {i} has shape {tuple(g.shape)}; PyTorch gives {tuple(e.shape)}")
        diff = (g.float() - e).abs()
        if not bool((diff <= atol + rtol * e.abs()).all()):
            raise ModelError(f"ONNX output {i} differs from PyTorch's by up to {float(diff.max()):.3g} (tolerance "
                             f"atol {atol:g} + rtol {rtol:g})")
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
    return worst


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


def export_onnx(model: nn.Module, example: Inputs, path: str | Path, *, check: bool = True,
                optimize: bool = True) -> Path:
    """Write ``model`` (eval mode, float32) to ``path`` as ONNX with a dynamic batch dimension; ``example`` is one
    input tensor or a tuple of the model's positional inputs (e.g. source and target tokens). With ``check``,
    the file is run in onnxruntime on a batch of another size and must match PyTorch (:func:`check_onnx`).
    ``optimize``: run onnxscript's graph optimizer on the result (constant folding, fusions; the default, for
    files meant to be served); the zoo-wide test turns it off to save a quarter of the export time."""
    path = Path(path)
    model = model.eval()
    inputs = _inputs(example)
    tmp = _tmp(path)
    batch = torch.export.Dim("batch", min=1, max=4096)
    names = ["x"] if len(inputs) == 1 else [f"x{i}" for i in range(len(inputs))]
    try:
        single = len(torch_outputs(model, inputs)) == 1
        with _quiet():
            torch.onnx.export(model, inputs, str(tmp), dynamo=True, external_data=False, optimize=optimize,
                              input_names=names,
                              output_names=["logits"] if single else None,
                              dynamic_shapes=tuple({0: batch} for _ in inputs), verbose=False)
        if check:
            # One more sample than exported with: a batch size the exporter did not see.
            other = tuple(torch.cat([t, t[:1]]) if t.shape[0] > 0 else t for t in inputs)
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

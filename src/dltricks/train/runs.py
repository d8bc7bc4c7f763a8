"""A trained model back from disk: the weights of a run directory (or a weights file) in the model they
were trained as, rebuilt by name from the file's metadata (nothing is unpickled).

``dltricks eval`` does the same for evaluation; distillation (the teacher) and compression (the model to
compress) call :func:`load_model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from dltricks.errors import CheckpointError, DltricksError
from dltricks.train.checkpoint import CHECKPOINT_FORMAT, load_weights, read_metadata

__all__ = ["resolve_run", "run_meta", "load_model"]


def resolve_run(path: str | Path) -> Path:
    """The weights file of ``path``: a run directory's ``model.safetensors`` (else its
    ``checkpoints/last.safetensors``) or ``path`` itself when it is a file."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "model.safetensors", path / "checkpoints" / "last.safetensors"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path}: not a run directory (no model.safetensors or checkpoints/last.safetensors); "
                              "expected a directory written by `dltricks train`")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such run directory or weights file")
    return path


def run_meta(path: str | Path) -> dict[str, Any]:
    """The run's metadata (model name, ``model_kwargs``, data, metrics) from its weights file."""
    file = resolve_run(path)
    meta = read_metadata(file)  # refuses pickles and files that are not safetensors
    return dict(meta.get("run", meta)) if meta.get("format") == CHECKPOINT_FORMAT else dict(meta)


def structure_for_weights(model: nn.Module, meta: dict[str, Any], file: str | Path) -> nn.Module:
    """The module whose state the weights file holds: ``model`` itself, or for a run trained with
    ``compress.qat`` (metadata ``qat_backend``) its fake-quantized copy (:func:`dltricks.train.compression.
    prepare_qat`); that run's int8 conversion is ``model-int8.safetensors`` beside it."""
    if not meta.get("qat_backend"):
        return model
    import torch

    from dltricks.train.compression import prepare_qat

    shape = [int(d) for d in meta.get("input_shape") or ()]
    if not shape:
        raise CheckpointError(f"{file}: a quantization-aware run without its input shape in the metadata")
    example = torch.zeros(2, *shape)
    prepared = prepare_qat(model, example, backend=str(meta["qat_backend"])).eval()
    with torch.no_grad():
        prepared(example)  # sizes the observers' range buffers (empty until a first batch), then loaded over
    return prepared


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, meta)``: the model of run ``path`` rebuilt with its recorded name and options, its weights
    loaded (the EMA weights when the run kept them), in eval mode on the CPU."""
    from dltricks.models import create_model

    file = resolve_run(path)
    meta = run_meta(file)
    name = meta.get("model")
    if not name:
        raise CheckpointError(f"{file}: no model name in its metadata; expected a file written by `dltricks train`")
    try:
        model = create_model(name, **dict(meta.get("model_kwargs") or {}))
    except (DltricksError, ValueError, TypeError) as err:
        raise CheckpointError(f"{file}: cannot rebuild model {name!r} from its metadata ({err})") from err
    model = structure_for_weights(model, meta, file)
    load_weights(model, file)
    return model.eval(), meta

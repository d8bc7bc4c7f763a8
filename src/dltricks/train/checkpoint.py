"""Checkpoints that are exact, atomic and safe to load.

**Safe.** ``torch.load`` unpickles, and unpickling runs whatever code the file names (a ``__reduce__``
returning ``(os.system, ("...",))`` is enough), so a checkpoint downloaded from the internet is a
program. Our checkpoints are single `safetensors <https://github.com/huggingface/safetensors>`_ files:
a JSON header describing raw tensor buffers, plus a string metadata field in which we keep every
non-tensor value (epoch, step, optimizer hyperparameters, RNG states of Python and NumPy, history...)
as JSON. Loading parses JSON and copies bytes; nothing is ever unpickled, and a file that is a pickle or
a ``torch.save`` zip is refused with a :class:`~dltricks.errors.CheckpointError` before anything in it
is looked at.

**Atomic.** Every file is written to a temporary file in the same folder, ``fsync``-ed and renamed over
the old one (:func:`dltricks.utils.io.atomic_write_with`), so a process killed at any moment leaves
either the previous checkpoint or the new one, never a partial file (at most a stray ``.tmp`` file).

**Exact.** A full checkpoint holds the model weights and buffers, the optimizer state, the GradScaler
state, the EMA weights, the RNG states of torch (CPU and CUDA, every rank), NumPy and Python, and the
loop position (epoch, next batch, optimizer step, the running sums of the current epoch, the history,
early-stopping state). The data order needs no state: the loaders make batch ``b`` of epoch ``e`` a pure
function of ``(seed, e, b)``. The learning rate needs none either (:mod:`dltricks.train.schedule`).
So ``fit(..., resume=True)`` continues bit-for-bit where the checkpoint was taken (on CPU; see
``tests/test_checkpoint.py``).

Layout of a run directory written by :func:`dltricks.train.fit`::

    run_dir/
      config.json                 model name and options, data set, recipe, versions (CLI)
      recipe.yaml                 the resolved recipe
      metrics.jsonl, metrics.csv  one line per epoch
      result.json                 final metrics
      model.safetensors           final weights (EMA weights when EMA is on) + metadata, for ``dltricks eval``
      checkpoints/last.safetensors  full trainer state for ``--resume``
      checkpoints/best.safetensors  weights with the best validation metric (``checkpoint.keep_best``)

Tensor names inside a full checkpoint: ``model/<param>``, ``ema/<param>``, ``optim/<param index>/<key>``,
``rng/torch/<rank>``, ``rng/cuda/<rank>``, ``rng/numpy``; the JSON metadata sits under the
``dltricks`` key of the safetensors header.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dltricks.errors import CheckpointError
from dltricks.utils.io import atomic_write_with

__all__ = ["CHECKPOINT_FORMAT", "WEIGHTS_FORMAT", "write_tensors", "read_tensors", "read_metadata",
           "optimizer_to_flat", "optimizer_from_flat", "rng_state_to_flat", "restore_rng_state",
           "save_weights", "load_weights", "unwrap"]

CHECKPOINT_FORMAT = "dltricks-checkpoint-v1"
WEIGHTS_FORMAT = "dltricks-weights-v1"
_META_KEY = "dltricks"
# safetensors refuses headers above 100 MB; ours hold a few KB of JSON.
_MAX_HEADER = 100 * 1024 * 1024


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        else:
            return model


# --------------------------------------------------------------------------------------------------
# Raw files


def write_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Atomically write ``tensors`` and JSON ``meta`` as one safetensors file."""
    # safetensors wants contiguous CPU tensors that share no memory (tied weights do): copy each.
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    header = {_META_KEY: json.dumps(meta, allow_nan=True)}
    atomic_write_with(path, lambda tmp: save_file(cpu, str(tmp), metadata=header))


def _sniff(path: Path) -> None:
    """Refuse anything that is not a safetensors file before a parser sees it, with a clear reason."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a directory; "
                              "expected a .safetensors file or a run directory")
    with open(path, "rb") as handle:
        head = handle.read(16)
    size = path.stat().st_size
    header_len = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else -1
    if 0 < header_len <= _MAX_HEADER and 8 + header_len <= size and head[8:9] == b"{":
        return  # looks like safetensors; the parser checks the rest
    if head[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{path}: this is a torch.save (zip/pickle) file, not a dltricks safetensors checkpoint; "
                              "refused because unpickling can run arbitrary code (nothing in it was executed)")
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]", b"c"):
        raise CheckpointError(f"{path}: this is a Python pickle, not a dltricks safetensors checkpoint; refused "
                              "because unpickling can run arbitrary code (nothing in it was executed)")
    if size < 9:
        raise CheckpointError(f"{path}: truncated or empty file ({size} bytes); expected a safetensors checkpoint")
    raise CheckpointError(f"{path}: not a safetensors file or truncated (header of {header_len} bytes in a file "
                          f"of {size} bytes); expected a checkpoint written by dltricks")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a dltricks safetensors file (``{}`` for a plain safetensors file)."""
    path = Path(path)
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
    except Exception as err:  # safetensors raises its own SafetensorError / OSError on bad files
        raise CheckpointError(f"{path}: unreadable safetensors file ({err})") from err
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: corrupted dltricks metadata ({err})") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupted dltricks metadata (expected a JSON object)")
    return meta


def read_tensors(path: str | Path, *, prefix: str | None = None,
                 device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of a safetensors file; with ``prefix`` only the tensors under it (prefix removed)."""
    path = Path(path)
    meta = read_metadata(path)
    tensors = {}
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for key in f.keys():
                if prefix is None:
                    tensors[key] = f.get_tensor(key)
                elif key.startswith(prefix):
                    tensors[key[len(prefix):]] = f.get_tensor(key)
    except Exception as err:
        raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({err})") from err
    return tensors, meta


# --------------------------------------------------------------------------------------------------
# Optimizer, RNG


def _jsonable(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, where) for k, v in value.items()}
    raise CheckpointError(f"cannot store {type(value).__name__} in {where} as JSON")


def optimizer_to_flat(optimizer: torch.optim.Optimizer,
                      prefix: str = "optim/") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and a JSON-able remainder."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for index, state in sd["state"].items():
        plain_state[str(index)] = {}
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{index}/{key}"] = value
            else:
                plain_state[str(index)][key] = _jsonable(value, f"optimizer state {key!r}")
    groups = [_jsonable(dict(g), "optimizer param_groups") for g in sd["param_groups"]]
    return tensors, {"state": plain_state, "param_groups": groups}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                        meta: Mapping[str, Any]) -> None:
    """Inverse of :func:`optimizer_to_flat` (``tensors`` without the prefix)."""
    state: dict[int, dict[str, Any]] = {int(i): dict(s) for i, s in meta["state"].items()}
    for key, value in tensors.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    current = optimizer.state_dict()["param_groups"]
    if len(current) != len(meta["param_groups"]):
        raise CheckpointError(f"the checkpoint's optimizer has {len(meta['param_groups'])} parameter groups, this one "
                              f"{len(current)}; was it saved with other optimizer options?")
    groups = []
    for saved, now in zip(meta["param_groups"], current):
        group = dict(saved)
        for k, v in now.items():  # JSON turned tuples (betas) into lists
            if isinstance(v, tuple) and isinstance(group.get(k), list):
                group[k] = tuple(group[k])
        groups.append(group)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"optimizer state does not fit this model/optimizer: {err}") from err


def rng_state_to_flat(device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """RNG states as tensors + JSON: torch's CPU generator of every rank (``rng/torch/<rank>``), the CUDA
    generator of each rank's device when training on CUDA (``rng/cuda/<rank>``), and this process's NumPy
    and Python generators. Under DDP every rank must call it (it gathers across ranks)."""
    from dltricks.train.distributed import all_gather_tensors

    tensors = {}
    for rank, state in enumerate(all_gather_tensors(torch.get_rng_state())):
        tensors[f"rng/torch/{rank}"] = state
    device = torch.device(device)
    if device.type == "cuda":
        for rank, state in enumerate(all_gather_tensors(torch.cuda.get_rng_state(device))):
            tensors[f"rng/cuda/{rank}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss_next]}
    return tensors, meta


def restore_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], *, rank: int = 0,
                      device: torch.device | str = "cpu") -> None:
    """Inverse of :func:`rng_state_to_flat` for this ``rank`` (``tensors`` with their full names)."""
    if f"rng/torch/{rank}" not in tensors:
        raise CheckpointError(f"the checkpoint has no RNG state for rank {rank}; was it written with fewer processes?")
    torch.set_rng_state(tensors[f"rng/torch/{rank}"].to(torch.uint8))
    device = torch.device(device)
    if device.type == "cuda" and f"rng/cuda/{rank}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng/cuda/{rank}"].to(torch.uint8), device)
    if "rng/numpy" in tensors and "numpy" in meta:
        kind, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((kind, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    if "python" in meta:
        version, internal, gauss_next = meta["python"]
        random.setstate((version, tuple(internal), gauss_next))


# --------------------------------------------------------------------------------------------------
# Weights only


def save_weights(path: str | Path, model: nn.Module | Mapping[str, torch.Tensor],
                 meta: Mapping[str, Any] | None = None) -> None:
    """Write a model's ``state_dict`` (or a given one) as safetensors, with JSON ``meta`` (model name and
    options, classes, metrics...) so ``dltricks eval`` can rebuild the model."""
    state = unwrap(model).state_dict() if isinstance(model, nn.Module) else dict(model)
    write_tensors(path, state, {"format": WEIGHTS_FORMAT, **(meta or {})})


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True, use_ema: bool = True) -> dict[str, Any]:
    """Load weights into ``model`` from a weights file, a full checkpoint (its EMA weights when it has
    them and ``use_ema``) or a plain safetensors ``state_dict``; returns the file's metadata.

    Never unpickles: a pickle or ``torch.save`` file raises :class:`CheckpointError`.
    """
    path = Path(path)
    tensors, meta = read_tensors(path)
    if meta.get("format") == CHECKPOINT_FORMAT:
        prefix = "ema/" if use_ema and any(k.startswith("ema/") for k in tensors) else "model/"
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    target = unwrap(model)
    try:
        missing, unexpected = target.load_state_dict(tensors, strict=strict)
    except RuntimeError as err:
        first = str(err).splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) or first[0]
        raise CheckpointError(f"{path}: weights do not fit model {getattr(target, 'model_name', type(target).__name__)}"
                              f" ({detail})") from err
    return meta

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

**Hostile files.** A checkpoint may come from anywhere, so nothing in it is trusted before it is checked
(:func:`read_header`, :func:`check_checkpoint_meta`, :func:`check_tensors`): only regular files are opened
(a FIFO would block the reader forever); the header is at most :data:`MAX_HEADER_BYTES` and its JSON (and
the metadata JSON inside it) at most :data:`MAX_JSON_DEPTH` levels deep; every tensor entry has a known
dtype, a shape and byte offsets that agree with each other and lie inside the file; the loop state, the
RNG states and the optimizer sections have the types and ranges the trainer writes; and every tensor has
exactly the dtype and shape of the model's own (a file with ``int8`` weights is refused, never cast).
Model options stored in the metadata are checked against the model's declared bounds before the model
is built (:func:`dltricks.models.check_model_options`).
"""

from __future__ import annotations

import json
import os
import random
import re
import stat
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

__all__ = ["CHECKPOINT_FORMAT", "WEIGHTS_FORMAT", "write_tensors", "read_tensors", "read_metadata", "read_header",
           "check_checkpoint_meta", "check_run_meta", "check_tensors", "optimizer_to_flat", "optimizer_from_flat",
           "rng_state_to_flat", "restore_rng_state", "save_weights", "load_weights", "unwrap"]

CHECKPOINT_FORMAT = "dltricks-checkpoint-v1"
WEIGHTS_FORMAT = "dltricks-weights-v1"
_META_KEY = "dltricks"
# Ours hold a few KB of JSON (the per-epoch history grows by ~300 bytes an epoch); safetensors allows 100 MB.
MAX_HEADER_BYTES = 16 * 1024 * 1024
# Our metadata nests 5 levels (history records, optimizer groups); Python's json recursion ends near 1000.
MAX_JSON_DEPTH = 32
# The dtypes safetensors stores, with their sizes in bytes.
_DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
_MAX_COUNT = 10**15  # steps, epochs, batches: far above any real run, far below float precision trouble


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


def _save_file(tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file``, with its I/O failures (a full disk...) raised as ``OSError``."""
    try:
        save_file(dict(tensors), str(path), metadata=metadata)
    except Exception as err:  # safetensors wraps I/O errors in its own type: "... (os error 28) ..."
        code = re.search(r"os error (\d+)", str(err))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), str(path.parent)) from err


def write_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Atomically write ``tensors`` and JSON ``meta`` as one safetensors file."""
    # safetensors wants contiguous CPU tensors that share no memory (tied weights do): copy each.
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    header = {_META_KEY: json.dumps(meta, allow_nan=True)}
    atomic_write_with(path, lambda tmp: _save_file(cpu, tmp, header))


def _sniff(path: Path) -> os.stat_result:
    """Refuse anything that is not a safetensors file before a parser sees it, with a clear reason."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except OSError as err:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({err.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise CheckpointError(f"checkpoint {str(path)!r} is a directory; "
                              "expected a .safetensors file or a run directory")
    if not stat.S_ISREG(info.st_mode):  # opening a FIFO would wait for a writer forever
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "not a regular file"
        raise CheckpointError(f"checkpoint {str(path)!r} is {kind}; expected a .safetensors file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            size = os.fstat(handle.fileno()).st_size  # of the file opened (see read_header)
    except OSError as err:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({err.strerror})") from None
    header_len = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else -1
    if 0 < header_len <= MAX_HEADER_BYTES and 8 + header_len <= size and head[8:9] == b"{":
        return info  # looks like safetensors; read_header checks the rest
    if 0 < header_len < 2**40 and head[8:9] == b"{" and header_len > MAX_HEADER_BYTES:
        raise CheckpointError(f"{path}: safetensors header of {header_len:,} bytes, more than the "
                              f"{MAX_HEADER_BYTES:,} a dltricks file can have; refused")
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


def _json_depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON (at most ``limit + 1``: deeper is not walked), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _parse_json(text: str | bytes, path: Path, what: str) -> Any:
    try:
        value = json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{path}: {what} is nested more than {MAX_JSON_DEPTH} levels deep; refused") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: corrupted {what} ({err})") from None
    if _json_depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{path}: {what} is nested more than {MAX_JSON_DEPTH} levels deep; refused")
    return value


def _check_entry(name: str, entry: Any, data_size: int, path: Path) -> None:
    """One tensor entry of a safetensors header: known dtype, a shape, offsets inside the data that match."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise CheckpointError(f"{path}: header entry {name[:80]!r} is not a tensor description "
                              "(dtype, shape, data_offsets)")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _DTYPE_SIZES:
        raise CheckpointError(f"{path}: tensor {name[:80]!r} has unknown dtype {str(dtype)[:20]!r}")
    if not (isinstance(shape, list) and len(shape) <= 8 and all(_is_int(d, 0, 2**40) for d in shape)):
        raise CheckpointError(f"{path}: tensor {name[:80]!r} has an invalid shape {str(shape)[:60]}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o, 0, data_size) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise CheckpointError(f"{path}: tensor {name[:80]!r} has byte offsets {str(offsets)[:60]} outside the "
                              f"file's {data_size:,} data bytes (truncated or tampered file)")
    numel = 1
    for d in shape:
        numel *= d
    if numel * _DTYPE_SIZES[dtype] != offsets[1] - offsets[0]:
        raise CheckpointError(f"{path}: tensor {name[:80]!r} of shape {shape} ({dtype}) does not match its "
                              f"{offsets[1] - offsets[0]:,} bytes (tampered file)")


def read_header(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tensor entries, dltricks metadata)`` of a safetensors file, every field checked (see the module
    docstring) before any tensor is read; the metadata is ``{}`` for a plain safetensors file."""
    path = Path(path)
    _sniff(path)
    try:
        with open(path, "rb") as handle:
            # The size of the file opened, not of the path's earlier stat: a writer may have renamed a new
            # checkpoint over the path in between (a reader polling a live run).
            size = os.fstat(handle.fileno()).st_size
            header_len = struct.unpack("<Q", handle.read(8))[0]
            raw = handle.read(header_len)
    except OSError as err:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({err.strerror})") from None
    header = _parse_json(raw, path, "safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupted safetensors header (expected a JSON object)")
    extra = header.pop("__metadata__", None) or {}
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise CheckpointError(f"{path}: corrupted safetensors metadata (expected a mapping of strings)")
    data_size = size - 8 - header_len
    for name, entry in header.items():
        _check_entry(name, entry, data_size, path)
    raw_meta = extra.get(_META_KEY)
    if raw_meta is None:
        return header, {}
    meta = _parse_json(raw_meta, path, "dltricks metadata")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupted dltricks metadata (expected a JSON object)")
    return header, meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a dltricks safetensors file (``{}`` for a plain safetensors file), after the
    header checks of :func:`read_header`."""
    return read_header(path)[1]


# --------------------------------------------------------------------------------------------------
# Checks of what a file says


def _is_int(value: Any, low: int = 0, high: int = _MAX_COUNT) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(ok: bool, path: Path, what: str) -> None:
    if not ok:
        raise CheckpointError(f"cannot use {path}: {what}; the file is damaged or was not written by dltricks")


def _check_state(state: Any, path: Path) -> None:
    """The loop position and bookkeeping of ``meta["state"]`` (see ``_Trainer._state_meta``)."""
    _require(isinstance(state, dict), path, "its loop state (\"state\") is missing or not a mapping")
    for key in ("epoch", "batch", "step", "best_epoch", "bad_epochs"):
        _require(_is_int(state.get(key)), path, f"state.{key} is {str(state.get(key))[:40]!r}, expected an "
                                               "integer >= 0")
    for key in ("ema_updates",):
        _require(key not in state or _is_int(state[key]), path, f"state.{key} is not an integer >= 0")
    _require(state.get("elapsed") is None or (_is_number(state["elapsed"]) and state["elapsed"] >= 0), path,
             "state.elapsed is not a number of seconds >= 0")
    _require(state.get("best") is None or _is_number(state["best"]), path, "state.best is not a number or null")
    sums = state.get("sums")
    _require(isinstance(sums, dict) and all(_is_number(v) for v in sums.values()), path,
             "state.sums is not a mapping of numbers")
    history = state.get("history")
    _require(isinstance(history, list) and all(isinstance(r, dict) for r in history), path,
             "state.history is not a list of records")


def _check_rng(rng: Any, path: Path) -> None:
    """The NumPy and Python generator states (the shapes ``rng_state_to_flat`` writes)."""
    _require(isinstance(rng, dict), path, "its RNG state (\"rng\") is not a mapping")
    numpy_state = rng.get("numpy")
    if numpy_state is not None:
        _require(isinstance(numpy_state, list) and len(numpy_state) == 4 and numpy_state[0] == "MT19937"
                 and _is_int(numpy_state[1], 0, 624) and numpy_state[2] in (0, 1) and _is_number(numpy_state[3]),
                 path, "rng.numpy is not a NumPy MT19937 state")
    python_state = rng.get("python")
    if python_state is not None:
        ok = isinstance(python_state, list) and len(python_state) == 3 and _is_int(python_state[0], 0, 10)
        internal = python_state[1] if ok else None
        ok = ok and isinstance(internal, list) and len(internal) == 625
        ok = ok and all(_is_int(v, 0, 2**32 - 1) for v in internal) and internal[-1] <= 624
        ok = ok and (python_state[2] is None or _is_number(python_state[2]))
        _require(ok, path, "rng.python is not a Python Mersenne Twister state")


def _check_optimizer(optimizer: Any, path: Path) -> None:
    _require(isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
             and isinstance(optimizer.get("param_groups"), list), path,
             "its optimizer section is not {state: {...}, param_groups: [...]}")
    _require(all(str(k).isdigit() and len(str(k)) <= 9 and isinstance(v, dict)
                 for k, v in optimizer["state"].items()), path, "optimizer.state is not indexed by parameter")
    for group in optimizer["param_groups"]:
        _require(isinstance(group, dict) and isinstance(group.get("params"), list)
                 and all(_is_int(i) for i in group["params"]), path,
                 "optimizer.param_groups holds a group without its parameter indices")


def check_checkpoint_meta(meta: Mapping[str, Any], path: str | Path) -> None:
    """Refuse the metadata of a full checkpoint whose sections lack the types and ranges the trainer writes
    (loop state, RNG states, optimizer, scaler, world size) with one :class:`CheckpointError` line."""
    path = Path(path)
    for key in ("run", "recipe"):
        _require(isinstance(meta.get(key, {}), dict), path, f"its {key!r} section is not a mapping")
    _require(_is_int(meta.get("world_size", 1), 1, 2**20), path, "world_size is not a positive integer")
    _check_state(meta.get("state"), path)
    _check_optimizer(meta.get("optimizer"), path)
    _check_rng(meta.get("rng", {}), path)
    scaler = meta.get("scaler")
    _require(scaler is None or (isinstance(scaler, dict) and all(_is_number(v) for v in scaler.values())), path,
             "its GradScaler state is not a mapping of numbers")


def check_run_meta(run_meta: Any, path: str | Path) -> None:
    """The model record of a weights file or checkpoint (``model``, ``model_kwargs``) has the types
    ``dltricks eval`` rebuilds the model from; the option values are checked by the model registry."""
    path = Path(path)
    _require(isinstance(run_meta, dict), path, "its run record is not a mapping")
    name = run_meta.get("model")
    _require(name is None or (isinstance(name, str) and 0 < len(name) <= 200), path,
             "its model name is not a short string")
    kwargs = run_meta.get("model_kwargs")
    _require(kwargs is None or (isinstance(kwargs, dict) and len(kwargs) <= 200), path,
             "its model options are not a mapping of names to values")


def check_tensors(tensors: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], path: str | Path,
                  what: str, *, strict: bool = True) -> None:
    """Every tensor of ``tensors`` has exactly the dtype and shape of the same name in ``reference`` (a
    model's ``state_dict``); with ``strict`` the names must be the same too. Nothing is cast: weights
    stored in another dtype are refused."""
    missing = [k for k in reference if k not in tensors]
    unexpected = [k for k in tensors if k not in reference]
    if strict and (missing or unexpected):
        detail = (f"missing {', '.join(missing[:3])}" if missing else "") + ("; " if missing and unexpected else "") \
            + (f"unexpected {', '.join(unexpected[:3])}" if unexpected else "")
        raise CheckpointError(f"{path}: {what} do not fit this model ({detail})")
    for key, value in tensors.items():
        expected = reference.get(key)
        if expected is None:
            continue
        if value.dtype != expected.dtype:
            raise CheckpointError(f"{path}: {what}: {key} is stored as {str(value.dtype).replace('torch.', '')}, "
                                  f"the model's is {str(expected.dtype).replace('torch.', '')}; refused (weights are "
                                  "never cast: the file was changed or belongs to another model)")
        if value.shape != expected.shape:
            raise CheckpointError(f"{path}: {what}: {key} has shape {list(value.shape)}, the model's is "
                                  f"{list(expected.shape)}; the file belongs to another model or other options")


def read_tensors(path: str | Path, *, prefix: str | None = None,
                 device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of a safetensors file; with ``prefix`` only the tensors under it (prefix removed)."""
    path = Path(path)
    _, meta = read_header(path)
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
    name = getattr(target, "model_name", type(target).__name__)
    check_tensors(tensors, target.state_dict(), path, f"its weights for model {name}", strict=strict)
    try:
        missing, unexpected = target.load_state_dict(tensors, strict=strict)
    except RuntimeError as err:
        first = str(err).splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) or first[0]
        raise CheckpointError(f"{path}: weights do not fit model {getattr(target, 'model_name', type(target).__name__)}"
                              f" ({detail})") from err
    return meta

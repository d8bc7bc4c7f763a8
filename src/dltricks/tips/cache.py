"""Result cache keyed by a hash of the tip's code and configuration.

The key of one tip run hashes

* the tip's code, :func:`dltricks.evidence.code_files`: the source file of the module that holds the
  experiment function (helpers it calls live there too) and the source files of every object the tip
  *exercises* (a module's file, every ``.py`` file below a package, the defining module's file of a
  function or class), so editing the trainer or a layer re-runs exactly the tips that use it,
* the settings of the mode, the seed list, the verdict rule's ``repr``, the arms allowed to fail and the torch
  version.

A cached entry is a folder ``<root>/<tip id>/<key>/`` with ``result.json`` and the plot files; it is
moved into place with one ``os.replace`` of a complete temporary folder, so an interrupted run never
leaves a half-written entry that a later run would trust. An entry is checked when it is read (a JSON
object for this tip and key, every field of the type :class:`~dltricks.tips.engine.TipResult` declares, plot
names that are files of the entry); a malformed one (edited, damaged, written by another version) is deleted
and the tip runs again, instead of breaking every later ``verify``. The root is ``$DLTRICKS_CACHE/tips`` when
that variable is set, else ``<report folder>/.cache``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from dltricks.evidence import Tip, code_files
from dltricks.utils.io import atomic_write_json

__all__ = ["ENGINE_VERSION", "cache_root", "file_digest", "code_fingerprint", "cache_key", "load", "store"]

T = TypeVar("T")

# Bump when the meaning of stored results changes (rules, evidence format).
ENGINE_VERSION = "2"  # 2: t intervals, setup check (issue 14)


def cache_root(out: Path) -> Path:
    env = os.environ.get("DLTRICKS_CACHE")
    return Path(env) / "tips" if env else Path(out) / ".cache"


def file_digest(path: Path) -> str:
    """sha256 of the bytes of ``path`` ("missing" when it cannot be read)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "missing"


def code_fingerprint(tip: Tip) -> str:
    """sha256 over the tip's code files: each file's label (``dltricks/layers/conv.py``) and content digest."""
    digest = hashlib.sha256()
    for label, path in code_files(tip).items():
        digest.update(f"{label}\0{file_digest(path)}\n".encode())
    return digest.hexdigest()


def cache_key(tip: Tip, mode: str, settings: dict[str, Any], seeds: list[int], device: str = "cpu") -> str:
    config = {
        "engine": ENGINE_VERSION,
        "tip": tip.id,
        "mode": mode,
        "settings": settings,
        "seeds": seeds,
        "rule": repr(tip.rule),
        "may_fail": list(tip.may_fail),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),  # timings (and float summation order) depend on it
        "code": code_fingerprint(tip),
    }
    if device != "cpu":  # CPU keys stay what they were before devices were a choice
        config["device"] = device
    blob = json.dumps(config, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def entry_dir(root: Path, tip_id: str, key: str) -> Path:
    return Path(root) / tip_id / key


def _entry_problem(data: Any, entry: Path, tip_id: str, key: str) -> str | None:
    """Why a cached ``result.json`` cannot be trusted (``None`` when it can): not an object, another tip's or
    key's result, or plot names that are not plain files of the entry."""
    if not isinstance(data, dict):
        return "not a JSON object"
    if data.get("id") != tip_id or data.get("key") not in (key, ""):
        return "the result of another tip or key"
    plots = data.get("plots", [])
    if not isinstance(plots, list) or not all(isinstance(p, str) for p in plots):
        return "plots is not a list of file names"
    for name in plots:
        if Path(name).is_absolute() or ".." in Path(name).parts or not (entry / name).is_file():
            return f"plot {name[:80]!r} is not a file of the entry"
    return None


def load(root: Path, tip_id: str, key: str, *, parse: Callable[[dict[str, Any]], T] | None = None) -> Any:
    """The cached result (``parse(data)`` when given), or ``None`` when absent. An entry that is unreadable,
    malformed or that ``parse`` refuses (``ValueError``, ``TypeError``, ``KeyError``) is deleted, so the tip is
    run again and its new result replaces it."""
    entry = entry_dir(root, tip_id, key)
    path = entry / "result.json"
    if not entry.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if _entry_problem(data, entry, tip_id, key) is not None:
            raise ValueError(_entry_problem(data, entry, tip_id, key))
        return parse(data) if parse is not None else data
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        discard(root, tip_id, key)
        return None


def discard(root: Path, tip_id: str, key: str) -> None:
    """Delete a cache entry (a malformed one: the tip runs again)."""
    shutil.rmtree(entry_dir(root, tip_id, key), ignore_errors=True)


def new_workdir(root: Path, tip_id: str) -> Path:
    folder = Path(root) / tip_id
    folder.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".work-", dir=folder))


def store(root: Path, tip_id: str, key: str, workdir: Path, result: dict[str, Any]) -> Path:
    """Write ``result.json`` into ``workdir`` and move the whole folder into place as the entry."""
    atomic_write_json(workdir / "result.json", result)
    target = entry_dir(root, tip_id, key)
    if target.exists():
        shutil.rmtree(target)
    os.replace(workdir, target)
    return target

"""Run directories below a root folder: find them, summarise them, compare their recipes.

A run directory is a folder written by :func:`dltricks.train.fit` (it holds ``config.json``). Runs are named by
their path relative to the root, with ``/`` separators (``mnist/a``); :func:`resolve_run` turns such a name
back into a folder and refuses anything that would leave the root: absolute paths, ``..`` parts, and
symbolic links that point outside (the check is made on the resolved path).

Only JSON, YAML (``yaml.safe_load``) and CSV-free text files are read here; weights are never opened.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from dltricks.errors import ConfigError
from dltricks.train.tracking import flatten, read_status

__all__ = ["RunInfo", "ForbiddenPath", "NotFound", "find_runs", "resolve_run", "read_run", "read_history",
           "recipe_diff", "run_recipe", "MAX_DEPTH"]

# Run directories are looked for this many folders below the root (runs/<group>/<name>/ is depth 2).
MAX_DEPTH = 3
# Folders of a run that hold no runs themselves (not searched).
_RUN_SUBFOLDERS = {"checkpoints", "tensorboard", "plots", "masks", ".cache"}


class ForbiddenPath(ConfigError):
    """A path that would leave the folder the server may read (absolute, ``..``, a link pointing outside)."""


class NotFound(ConfigError):
    """A run (or a plot) that does not exist."""


@dataclass
class RunInfo:
    """One line of ``dltricks runs`` / the Runs table."""

    name: str
    model: str | None
    data: str | None
    status: str
    detail: str | None
    epochs: int | None
    best: dict[str, float] = field(default_factory=dict)
    recipe: str | None = None  # the recipe's name when it came from a file or a shipped recipe
    log: str = "none"
    task_kind: str | None = None
    modified: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_run(path: Path) -> bool:
    return (path / "config.json").is_file()


def _walk(folder: Path, depth: int) -> Iterator[Path]:
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return
    for child in children:
        if _is_run(child):
            yield child
        elif depth > 1 and child.name not in _RUN_SUBFOLDERS and not child.name.startswith("."):
            yield from _walk(child, depth - 1)


def find_runs(root: str | Path) -> list[RunInfo]:
    """Every run directory below ``root`` (``root`` itself when it is one), newest first."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"runs folder {str(root)!r} does not exist; expected the folder holding run directories "
                          "(`dltricks train --out`; default runs/)")
    found = [root] if _is_run(root) else list(_walk(root, MAX_DEPTH))
    infos = [read_run(root, path) for path in found]
    return sorted(infos, key=lambda info: info.modified, reverse=True)


def _name(root: Path, path: Path) -> str:
    relative = path.resolve().relative_to(root.resolve())
    return relative.as_posix() if relative.parts else "."


def resolve_run(root: str | Path, name: str) -> Path:
    """The run directory called ``name`` below ``root``; a :class:`ConfigError` for anything else."""
    root = Path(root).resolve()
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise ForbiddenPath(f"run {name!r}: not a run name")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or (len(name) > 1 and name[1] == ":"):
        raise ForbiddenPath(f"run {name!r}: only run folders below the runs folder can be opened")
    path = (root / pure).resolve()
    if not path.is_relative_to(root):
        raise ForbiddenPath(f"run {name!r}: only run folders below the runs folder can be opened")
    if not _is_run(path):
        raise NotFound(f"run {name!r}: no such run (a run folder holds config.json)")
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch records of ``metrics.jsonl`` (unreadable lines are skipped)."""
    records = []
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _best(history: list[dict[str, Any]]) -> dict[str, float]:
    """Best value of each validation metric (lowest for losses and errors, highest otherwise)."""
    best: dict[str, float] = {}
    for record in history:
        for key, value in record.items():
            if not key.startswith("val_") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            lower = "loss" in key or "error" in key
            if key not in best or (value < best[key] if lower else value > best[key]):
                best[key] = float(value)
    return best


def read_run(root: Path, path: Path) -> RunInfo:
    """The summary of one run directory (nothing but small JSON files is read)."""
    config = _read_json(path / "config.json") or {}
    meta = config.get("meta", {}) if isinstance(config, dict) else {}
    recipe = config.get("recipe", {}) if isinstance(config, dict) else {}
    data = meta.get("data")
    data_name = data.get("name") if isinstance(data, Mapping) else data
    history = read_history(path)
    status, detail = read_status(path)
    stamps = [p.stat().st_mtime for p in (path / "metrics.jsonl", path / "config.json") if p.exists()]
    result = _read_json(path / "result.json") or {}
    return RunInfo(name=_name(root, path), model=meta.get("model"), data=data_name, status=status, detail=detail,
                   epochs=int(history[-1]["epoch"]) if history and "epoch" in history[-1] else result.get("epochs"),
                   best=_best(history), recipe=_recipe_name(meta.get("command") or ""),
                   log=str(recipe.get("train", {}).get("log", "none")) if isinstance(recipe, dict) else "none",
                   task_kind=_task_kind(path), modified=max(stamps, default=0.0))


def _recipe_name(command: str) -> str | None:
    """The ``--recipe`` of the command line that started the run (``None``: the built-in defaults)."""
    words = command.split()
    for i, word in enumerate(words):
        if word.startswith("--recipe="):
            return word.split("=", 1)[1]
        if word == "--recipe" and i + 1 < len(words):
            return words[i + 1]
    return None


def _task_kind(path: Path) -> str | None:
    """The kind of model in ``model.safetensors`` (from its JSON header only, without loading tensors)."""
    weights = path / "model.safetensors"
    if not weights.is_file():
        return None
    from dltricks.train.checkpoint import read_metadata

    try:
        return read_metadata(weights).get("task_kind")
    except Exception:  # a broken or hostile file: the run is listed, the playground will refuse it
        return None


def recipe_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The recipe keys whose values differ: ``[{"key": "optim.lr", "a": 0.1, "b": 0.05}, ...]``."""
    fa, fb = flatten(a), flatten(b)
    return [{"key": k, "a": fa.get(k), "b": fb.get(k)} for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def run_recipe(run_dir: Path) -> dict[str, Any]:
    config = _read_json(run_dir / "config.json")
    recipe = config.get("recipe") if isinstance(config, dict) else None
    return recipe if isinstance(recipe, dict) else {}

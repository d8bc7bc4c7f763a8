"""What the commands share: argparse helpers, reading the command line into library calls, output.

A command module (``train``, ``eval``, ``run``, ``compare``...) is an argparse adapter: it declares its
options, turns them into the arguments of library functions with the helpers here, and prints. No
command imports another; what two of them need lives in this module.

* options: :func:`own_formatter`, :func:`add_common_data_args`;
* reading them: :func:`recipe_from_args` (recipe file < ``--set`` < ``--data-opt`` < the dedicated
  flags), :func:`parse_options` (``--model-opt``), :func:`data_overrides` (``--data-opt`` as the recipe's
  ``data.KEY``), :func:`data_args` (the data keywords of :func:`dltricks.train.prepare`),
  :func:`run_dir_for` (a new or resumable run directory);
* output: :func:`print_history`, :func:`json_text` (strict JSON: NaN -> null), :func:`log`.

Every ``KEY=VALUE`` item is read once, by :func:`dltricks.config.parse_assignment`; the dedicated flags
(``--epochs``, ``--seed``...) reach the recipe as typed values, never as text to be parsed again.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dltricks.config import parse_assignment
from dltricks.errors import CheckpointError, ConfigError, DataError
from dltricks.train.recipe import Recipe, load_recipe
from dltricks.utils.io import check_writable_dir, is_temp_file
from dltricks.utils.lock import LOCK_NAME, check_not_in_use, run_dir_lock


def own_formatter(formatter: type) -> type:
    """The CLI's formatter, minus the automatic "(default: ...)" where the help text already states the
    default in words (e.g. "default: all" instead of "(default: None)")."""

    class Formatter(formatter):
        def _get_help_string(self, action: argparse.Action) -> str:
            text = action.help or ""
            # One of several flags writing the same dest (--quick / --full): its default is the group's, not its own.
            shared = isinstance(action, argparse._StoreConstAction) and not isinstance(action.const, bool)
            if "default" in text or "required" in text or shared:
                return text
            return super()._get_help_string(action)

    return Formatter


def add_common_data_args(p: argparse.ArgumentParser, *, data_required: bool = True,
                         subset_help: str = "train on N training samples drawn at random, every class keeping its "
                                            "share (quick runs); default: all",
                         data_help: str = "") -> None:
    p.add_argument("--data", required=data_required, metavar="NAME",
                   help=data_help or "data set: mnist, mnist-embedded (shipped, offline), cifar10, imagefolder, "
                        "isbi2012-membrane, or a sequence task (induction_heads, selective_copying, smnist, listops, "
                        "dates) (required)")
    p.add_argument("--data-opt", dest="data_opts", action="append", default=[], metavar="KEY=VALUE",
                   help="data set option, e.g. --data-opt elastic=true --data-opt fold=2 for isbi2012-membrane "
                        "(repeatable; values are YAML; the fields of the data set's options, docs/segmentation.md); "
                        "default: none")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder (or file) holding the data set files; default: $DLTRICKS_DATA, then the standard "
                        "locations listed in docs/data.md")
    p.add_argument("--subset", type=int, default=None, metavar="N", help=subset_help)
    p.add_argument("--subset-seed", type=int, default=None, metavar="S",
                   help="seed of the random draw of --subset (saved with the run); default: 0")
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="auto, cpu, cuda, cuda:N or mps; default: the recipe's train.device "
                        "(auto: cuda, then mps, then cpu)")


def add_old_name(p: argparse.ArgumentParser, old: str, *, dest: str, **kwargs: Any) -> None:
    """Accept ``old``, the earlier name of an option, for one more release without showing it in ``--help``
    (one name per idea across the commands: ``--out``, ``--batch-size``...)."""
    p.add_argument(old, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def parse_options(items: list[str], flag: str) -> dict[str, Any]:
    """``["drop_rate=5e-4", "widths=[4, 8]"]`` -> ``{"drop_rate": 0.0005, "widths": [4, 8]}``; a later
    item wins over an earlier one with the same key."""
    return dict(parse_assignment(item, flag) for item in items)


def data_overrides(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """``--data-opt KEY=VALUE`` as the recipe override ``("data.KEY", value)``: the data set's options are
    part of the recipe, so that ``fit`` trains on what the recipe says."""
    return [(f"data.{key}", value) for key, value in parse_options(getattr(args, "data_opts", None) or [],
                                                                     "--data-opt").items()]


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe of a command line: file < ``--set`` < ``--data-opt`` < the dedicated flags."""
    overrides = [parse_assignment(item, "--set") for item in getattr(args, "overrides", None) or []]
    overrides += data_overrides(args)
    flags = {"train.epochs": getattr(args, "epochs", None), "train.seed": getattr(args, "seed", None),
             "train.device": getattr(args, "device", None), "train.log": getattr(args, "log", None)}
    overrides += [(key, value) for key, value in flags.items() if value is not None]
    if getattr(args, "overfit_batch", False):
        overrides.append(("train.overfit_batch", True))
    return load_recipe(getattr(args, "recipe", None), overrides)


def data_args(args: argparse.Namespace, *, split: str = "train") -> dict[str, Any]:
    """``data_dir`` and the sample count of ``--subset`` (on ``split``) as keywords of
    :func:`dltricks.train.prepare` and :func:`~dltricks.train.prepare.task_for_recipe` (``--data-opt`` is
    in the recipe: :func:`data_overrides`)."""
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None and not Path(data_dir).exists():
        raise DataError(f"--data-dir {data_dir}: no such file or folder; expected the folder (or file) holding "
                        f"the {args.data} data")
    subset = getattr(args, "subset", None)
    if subset is not None and subset < 1:
        raise ConfigError(f"--subset: got {subset}, expected a positive number of samples")
    found = {"data_dir": data_dir, "val_subset" if split == "val" else "subset": subset}
    val_subset = getattr(args, "val_subset", None)  # `dltricks train --val-subset M`
    if split == "train" and val_subset is not None:
        if val_subset < 1:
            raise ConfigError(f"--val-subset: got {val_subset}, expected a positive number of samples")
        found["val_subset"] = val_subset
    if getattr(args, "subset_seed", None) is not None:
        found["subset_seed"] = args.subset_seed
    return found


def data_record(args: argparse.Namespace, task: Any, recipe: Recipe) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What a run remembers of its data, for ``config.json`` and the weight files: ``(data, source)``.

    ``data`` says how to build it again (``dltricks eval RUN`` does, without being told): the data set name,
    ``data_dir`` (absolute), the data options (the recipe's ``data`` section), ``subset`` and the seed of its
    draw. ``source`` identifies the files read (resolved path, and size + mtime of the file or of every file of
    the folder: :func:`~dltricks.data.files.source_fingerprint`), or ``None`` for data without files.
    """
    from dltricks.data.files import source_fingerprint

    data_dir = getattr(args, "data_dir", None)
    drawn = task.extra.get("subset") if isinstance(task.extra.get("subset"), dict) else {}
    data = {"name": args.data, "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else None,
            "options": dict(recipe.data), "subset": getattr(args, "subset", None),
            "subset_seed": drawn.get("seed", getattr(args, "subset_seed", None))}
    source = task.extra.get("source")
    found = source_fingerprint(source) if isinstance(source, str) and os.sep in source and Path(source).exists() \
        else None
    return data, found


def _holds_files(path: Path) -> bool:
    """Whether folder ``path`` holds anything besides a lock file and temporary files of unfinished writes."""
    return path.is_dir() and any(p.name != LOCK_NAME and not is_temp_file(p.name) for p in path.iterdir())


def run_dir_for(out: str | None, *, resume: bool, model: str, data: str, early: bool = True) -> Path:
    """The run directory (not created yet, but checked to be creatable and writable, and, with ``early``, not in
    use by a live run; :func:`claimed_run_dir` checks again with ``early=False`` while holding its lock).

    With ``--resume`` it must hold a checkpoint, or a run that stopped before writing its first one (killed,
    or a NaN loss, in its first epoch: ``config.json`` but no checkpoint), which then starts again in place.
    Without ``--resume`` it must be new or empty, or hold such a run (nothing would be lost).
    """
    if out is None:
        if resume:
            raise ConfigError("--resume needs --out DIR, the run directory to continue")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("under torchrun pass --out DIR so that every process uses the same run directory")
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{model}-{data}-{stamp}"
        check_writable_dir(path)
        return path
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    check_writable_dir(path)
    if early:
        check_not_in_use(path)  # a live run: say so now, not after the data is read
    checkpoint = path / "checkpoints" / "last.safetensors"
    # A run that wrote its configuration but neither a checkpoint nor final weights has nothing to keep.
    restartable = (path / "config.json").is_file() and not checkpoint.is_file() \
        and not (path / "model.safetensors").is_file()
    if resume and not checkpoint.is_file() and not restartable:
        raise ConfigError(f"--resume: {checkpoint} does not exist; nothing to resume (expected the --out of an "
                          "earlier `dltricks train`)")
    if not resume and _holds_files(path) and not restartable:
        raise ConfigError(f"--out {out}: already holds files; pass --resume to continue that run (or to extend a "
                          "finished one with --epochs N) or choose a new directory")
    if restartable and not resume and early:  # (with --resume, fit says it starts from scratch)
        log(f"{path} holds a run stopped before its first checkpoint; starting it again in place")
    return path


def resolve_checkpoint(path_text: str) -> Path:
    """The weights of a run: ``path_text`` itself (a ``.safetensors`` file), or in a run directory its
    ``model.safetensors`` (final weights), else ``checkpoints/last.safetensors`` (a run still going)."""
    path = Path(path_text)
    if path.is_dir():
        for candidate in (path / "model.safetensors", path / "checkpoints" / "last.safetensors"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path}: no model.safetensors or checkpoints/last.safetensors in this directory; "
                              "expected a run directory written by `dltricks train`")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path_text!r} does not exist; "
                              "expected a run directory or a .safetensors file")
    return path


def print_history(history: list[dict[str, Any]], *, title: str) -> None:
    """The per-epoch records of a run as a table on stdout."""
    from dltricks.utils.tables import Column, print_table

    # (key, header, format, rank: the highest is left out first when the terminal is narrow)
    columns = [("epoch", "epoch", "{:d}", 0), ("train_loss", "train loss", "{:.4f}", 0),
               ("train_accuracy", "train acc", "{:.2%}", 2), ("val_loss", "val loss", "{:.4f}", 0),
               ("val_accuracy", "val acc", "{:.2%}", 0), ("val_dice", "val Dice", "{:.4f}", 0),
               ("val_boundary_f1", "val boundary F1", "{:.4f}", 3), ("lr", "lr", "{:.3g}", 1),
               ("images_per_s", "img/s", "{:,.0f}", 4), ("epoch_time_s", "time (s)", "{:.1f}", 5)]
    columns = [c for c in columns if any(c[0] in r for r in history)]
    rows = [[fmt.format(record[key]) if key in record else "" for key, _, fmt, _ in columns] for record in history]
    print_table([Column(header, rank=rank) for _, header, _, rank in columns], rows, title=title)


def print_final_metrics(final: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """The validation metrics of the last evaluation that the history table has no column for (a task's own:
    ``val_exact_match``, ``val_isbi_pixel_error``, ``val_final_dice``, ``val_accuracy_<L>``...), as one table."""
    shown = {"val_loss", "val_accuracy", "val_dice", "val_boundary_f1"}
    print_metrics({k: v for k, v in (history[-1] if history else {}).items() if k not in shown},
                  title="last evaluation")


def print_metrics(metrics: dict[str, Any], *, title: str) -> None:
    """The ``val_*`` numbers of ``metrics`` as a two-column table (nothing when there are none)."""
    from dltricks.utils.tables import table_console
    from rich.table import Table

    values = {k: v for k, v in metrics.items() if k.startswith("val_") and isinstance(v, (int, float))
              and not isinstance(v, bool)}
    if not values:
        return
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in values.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    table_console().print(table)


def _json_safe(value: Any) -> Any:
    """``value`` with every NaN/Inf float replaced by ``None`` and tensors, paths and other objects made plain."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # tensors and NumPy arrays / scalars
        return _json_safe(value.tolist())
    return str(value)


def json_text(value: Any) -> str:
    """``value`` as strict JSON (what every ``--json`` option prints): NaN and infinities become ``null``, which
    ``json.loads`` and every other JSON reader accept (``NaN`` is not JSON)."""
    return json.dumps(_json_safe(value), indent=2, allow_nan=False)


@contextlib.contextmanager
def claimed_run_dir(path: Path, *, resume: bool, model: str, data: str, enabled: bool = True) -> Iterator[None]:
    """Hold the lock of run directory ``path`` (:mod:`dltricks.utils.lock`) from here to the end of the block,
    and check again under it what :func:`run_dir_for` checked: another command may have used the folder
    since. ``enabled=False`` (ranks other than 0 under torchrun) holds nothing."""
    if not enabled:
        yield
        return
    with run_dir_lock(path):
        run_dir_for(str(path), resume=resume, model=model, data=data, early=False)
        yield


def log(text: str) -> None:
    """A progress line on stderr (stdout holds the results). A closed stderr (``2>&1 | head -1``) silences the
    lines that follow instead of stopping the work."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - replaces the closed stream for the rest of the run

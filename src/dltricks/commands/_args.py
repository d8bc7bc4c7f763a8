"""What the commands share: argparse helpers, reading the command line into library calls, output.

A command module (``train``, ``eval``, ``run``, ``compare``...) is an argparse adapter: it declares its
options, turns them into the arguments of library functions with the helpers here, and prints. No
command imports another; what two of them need lives in this module.

* options: :func:`own_formatter`, :func:`add_common_data_args`;
* reading them: :func:`recipe_from_args` (recipe file < ``--set`` < ``--data-opt`` < the dedicated
  flags), :func:`parse_options` (``--model-opt``), :func:`data_overrides` (``--data-opt`` as the recipe's
  ``data.KEY``), :func:`data_args` (the data keywords of :func:`dltricks.train.prepare`),
  :func:`run_dir_for` (a new or resumable run directory);
* output: :func:`print_history`, :func:`log`.

Every ``KEY=VALUE`` item is read once, by :func:`dltricks.config.parse_assignment`; the dedicated flags
(``--epochs``, ``--seed``...) reach the recipe as typed values, never as text to be parsed again.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Any

from dltricks.config import parse_assignment
from dltricks.errors import ConfigError, DataError
from dltricks.train.recipe import Recipe, load_recipe


def own_formatter(formatter: type) -> type:
    """The CLI's formatter, minus the automatic "(default: ...)" where the help text already states the
    default in words (e.g. "default: all" instead of "(default: None)")."""

    class Formatter(formatter):
        def _get_help_string(self, action: argparse.Action) -> str:
            text = action.help or ""
            if "default" in text or "required" in text:
                return text
            return super()._get_help_string(action)

    return Formatter


def add_common_data_args(p: argparse.ArgumentParser, *, data_required: bool = True,
                         subset_help: str = "use only the first N training samples (quick runs); default: all") -> None:
    p.add_argument("--data", required=data_required, metavar="NAME",
                   help="data set: mnist, mnist-embedded (shipped, offline), cifar10, imagefolder, isbi2012-membrane, "
                        "or a sequence task (induction_heads, selective_copying, smnist, listops, dates) (required)")
    p.add_argument("--data-opt", dest="data_opts", action="append", default=[], metavar="KEY=VALUE",
                   help="data set option, e.g. --data-opt elastic=true --data-opt fold=2 for isbi2012-membrane "
                        "(repeatable; values are YAML; the fields of the data set's options, docs/segmentation.md); "
                        "default: none")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder (or file) holding the data set files; default: $DLTRICKS_DATA, then the standard "
                        "locations listed in docs/data.md")
    p.add_argument("--subset", type=int, default=None, metavar="N", help=subset_help)
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="auto, cpu, cuda, cuda:N or mps; default: the recipe's train.device "
                        "(auto: cuda, then mps, then cpu)")


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
             "train.device": getattr(args, "device", None)}
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
    return {"data_dir": data_dir, "val_subset" if split == "val" else "subset": subset}


def run_dir_for(out: str | None, *, resume: bool, model: str, data: str) -> Path:
    """The run directory (not created yet): must hold a checkpoint with ``--resume``, must not hold a run
    without it."""
    if out is None:
        if resume:
            raise ConfigError("--resume needs --out DIR, the run directory to continue")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("under torchrun pass --out DIR so that every process uses the same run directory")
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return Path("runs") / f"{model}-{data}-{stamp}"
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    checkpoint = path / "checkpoints" / "last.safetensors"
    if resume and not checkpoint.is_file():
        raise ConfigError(f"--resume: {checkpoint} does not exist; nothing to resume (expected the --out of an "
                          "earlier `dltricks train`)")
    if not resume and path.is_dir() and any(path.iterdir()):
        raise ConfigError(f"--out {out}: already holds files; pass --resume to continue that run or choose a new "
                          "directory")
    return path


def print_history(history: list[dict[str, Any]], *, title: str) -> None:
    """The per-epoch records of a run as a table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    columns = [("epoch", "epoch", "{:d}"), ("train_loss", "train loss", "{:.4f}"),
               ("train_accuracy", "train acc", "{:.2%}"), ("val_loss", "val loss", "{:.4f}"),
               ("val_accuracy", "val acc", "{:.2%}"), ("val_dice", "val Dice", "{:.4f}"),
               ("val_boundary_f1", "val boundary F1", "{:.4f}"), ("lr", "lr", "{:.3g}"),
               ("images_per_s", "img/s", "{:,.0f}"), ("epoch_time_s", "time (s)", "{:.1f}")]
    columns = [c for c in columns if any(c[0] in r for r in history)]
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    for record in history:
        table.add_row(*(fmt.format(record[key]) if key in record else "" for key, _, fmt in columns))
    Console().print(table)


def print_final_metrics(final: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """The validation metrics of the last evaluation that the history table has no column for (a task's own:
    ``val_exact_match``, ``val_isbi_pixel_error``, ``val_final_dice``, ``val_accuracy_<L>``...), as one table."""
    from rich.console import Console
    from rich.table import Table

    shown = {"val_loss", "val_accuracy", "val_dice", "val_boundary_f1"}
    extra = {k: v for k, v in (history[-1] if history else {}).items()
             if k.startswith("val_") and k not in shown and isinstance(v, (int, float))}
    if not extra:
        return
    table = Table(title="last evaluation")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in extra.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


def log(text: str) -> None:
    """A progress line on stderr (stdout holds the results)."""
    print(text, file=sys.stderr, flush=True)

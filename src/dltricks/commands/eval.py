"""``dltricks eval CHECKPOINT --data NAME``: loss, accuracy, per-class accuracy and confusion matrix.

``CHECKPOINT`` is a run directory (its ``model.safetensors``, else ``checkpoints/last.safetensors``), a
weights file or a full checkpoint written by ``dltricks train``. The model is rebuilt from the name and
options stored in the file's metadata; nothing is unpickled.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from dltricks.commands._args import add_common_data_args, data_args, data_overrides, own_formatter
from dltricks.errors import CheckpointError, ConfigError, DataError, ModelError


def add_parser(subparsers: argparse._SubParsersAction, formatter: type) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a trained model on a data set", formatter_class=own_formatter(formatter),
        description="Evaluate the weights of a dltricks run on a data set: loss, accuracy, per-class accuracy "
                    "and the confusion matrix; for segmentation data sets (isbi2012-membrane) Dice, IoU, boundary "
                    "F1 and the ISBI pixel error, with optional sliding windows, flips and PNG masks.",
        epilog="examples:\n  dltricks eval runs/small_cnn-mnist-embedded-20250101-120000 --data mnist-embedded\n"
               "  dltricks eval runs/a/checkpoints/best.safetensors --data mnist --data-dir ../shared/data --json\n"
               "  dltricks eval runs/unet --data isbi2012-membrane --window 256 --tta --save-masks masks/")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="run directory, weights file (model.safetensors, best.safetensors) or full checkpoint "
                        "(checkpoints/last.safetensors); required")
    add_common_data_args(p, subset_help="evaluate only the first N samples of the split; default: all")
    p.add_argument("--split", choices=("val", "train"), default="val",
                   help="which split to evaluate: the validation/test split or the training split (no augmentation)")
    p.add_argument("--batch-size", type=int, default=500, help="evaluation batch size")
    p.add_argument("--raw", action="store_true",
                   help="for a full checkpoint trained with EMA, evaluate the raw weights instead of the EMA weights "
                        "(default: the EMA weights)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of tables")
    _add_segmentation_args(p)
    p.set_defaults(func=run)


def resolve_checkpoint(path_text: str) -> Path:
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


def run(args: argparse.Namespace) -> int:
    from dltricks.train import evaluate, load_weights, prepare, read_metadata
    from dltricks.train.checkpoint import CHECKPOINT_FORMAT
    from dltricks.train.prepare import task_for_recipe
    from dltricks.train.recipe import load_recipe
    from dltricks.train.runtime import resolve_device

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: got {args.batch_size}, expected a positive integer")
    path = resolve_checkpoint(args.checkpoint)
    meta = read_metadata(path)  # refuses pickles and non-safetensors files
    run_meta = meta.get("run", meta) if meta.get("format") == CHECKPOINT_FORMAT else meta
    name = run_meta.get("model")
    if not name:
        raise CheckpointError(f"{path}: no model name in its metadata; expected a file written by `dltricks train`")
    model_kwargs = dict(run_meta.get("model_kwargs") or {})
    device = resolve_device(args.device or "auto")
    recipe = load_recipe(None, [("train.batch_size", args.batch_size), *data_overrides(args)])
    task = task_for_recipe(args.data, recipe, device=device, for_training=False, **data_args(args, split=args.split))
    num_classes = model_kwargs.get("num_classes")
    if num_classes is not None and num_classes != task.num_classes:
        raise DataError(f"the model in {path} predicts {num_classes} classes but data set {task.name} has "
                        f"{task.num_classes}; evaluate it on the data it was trained for")
    try:
        model, task = prepare(name, task, recipe, model_kwargs=model_kwargs, device=device)
    except ModelError as err:
        raise CheckpointError(f"{path}: cannot rebuild model {name!r} from its metadata for data set {task.name} "
                              f"({err})") from err
    load_weights(model, path, use_ema=not args.raw)
    model.to(device)
    from dltricks.tasks.segmentation.evaluate import is_segmentation_task

    if is_segmentation_task(task):  # per-pixel metrics, sliding windows, saved masks
        return _run_segmentation_eval(args, model, task, checkpoint=path, model_name=name)
    loader = task.val_loader if args.split == "val" else task.train_loader
    if loader is None:
        raise DataError(f"data set {task.name} has no validation split; use --split train")
    metrics = evaluate(model, loader, task, device=device, confusion=True)
    classes = list(task.classes) or [str(i) for i in range(task.num_classes)]
    report: dict[str, Any] = {"checkpoint": str(path), "model": name, "data": task.name, "split": args.split,
                              "samples": metrics["count"], "loss": metrics["loss"], "accuracy": metrics.get("accuracy"),
                              "per_class_accuracy": dict(zip(classes, metrics["per_class_accuracy"])),
                              "confusion": metrics["confusion"].tolist()}
    if args.json:
        print(json.dumps(report, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
        return 0
    print_report(report, classes)
    return 0


def print_report(report: dict[str, Any], classes: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{report['model']}[/bold] on {report['data']} "
                  f"({report['split']}, {report['samples']:,} samples): "
                  f"loss {report['loss']:.4f}, accuracy {report['accuracy']:.2%}")
    per_class = Table(title="per-class accuracy")
    per_class.add_column("class")
    per_class.add_column("accuracy", justify="right")
    per_class.add_column("samples", justify="right")
    for i, c in enumerate(classes):
        acc = report["per_class_accuracy"][c]
        per_class.add_row(c, "-" if math.isnan(acc) else f"{acc:.2%}", f"{sum(report['confusion'][i]):,}")
    console.print(per_class)
    matrix = Table(title="confusion matrix (rows: true class, columns: predicted)")
    matrix.add_column("true \\ pred")
    for c in classes:
        matrix.add_column(c, justify="right")
    for i, c in enumerate(classes):
        matrix.add_row(c, *(str(v) if v else "." for v in report["confusion"][i]))
    console.print(matrix)


# --- segmentation data sets: per-pixel metrics, sliding windows, flips, PNG masks ----------------------------

def _add_segmentation_args(p: argparse.ArgumentParser) -> None:
    """The options of a segmentation evaluation (for ``dltricks eval``'s parser)."""
    g = p.add_argument_group("segmentation")
    g.add_argument("--window", type=int, default=None, metavar="PX",
                   help="sliding-window inference with PX x PX tiles; default: whole images")
    g.add_argument("--overlap", type=float, default=0.5, help="overlap of neighbouring tiles, in [0, 1)")
    g.add_argument("--tta", action="store_true", help="average the 8 flips / 90-degree rotations; default: off")
    g.add_argument("--save-masks", default=None, metavar="DIR",
                   help="write the predicted masks as PNG files to DIR; default: none")


def _run_segmentation_eval(args: argparse.Namespace, model: Any, task: Any, *, checkpoint: str | Path,
                          model_name: str) -> int:
    """The segmentation branch of ``dltricks eval`` (reads ``--window/--overlap/--tta/--save-masks/--json``)."""
    from dltricks.tasks.segmentation.evaluate import save_predicted_masks, segmentation_report

    window = getattr(args, "window", None)
    overlap = getattr(args, "overlap", 0.5)
    tta = bool(getattr(args, "tta", False))
    report = {"checkpoint": str(checkpoint), "model": model_name,
              **segmentation_report(model, task, split=getattr(args, "split", "val"), window=window, overlap=overlap,
                                    tta=tta)}
    if getattr(args, "save_masks", None):
        paths = save_predicted_masks(model, task, args.save_masks, window=window, overlap=overlap, tta=tta,
                                     split=getattr(args, "split", "val"))
        report["masks"] = [str(p) for p in paths]
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2))
    else:
        _print_segmentation_report(report)
    return 0


def _print_segmentation_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    how = "whole images" if not report.get("window") else f"{report['window']} px windows, overlap {report['overlap']}"
    how += ", 8-fold flips" if report.get("tta") else ""
    console.print(f"[bold]{report['model']}[/bold] on {report['data']} ({report['split']}, {int(report['images'])} "
                  f"images, {how}); foreground: {report['foreground']}")
    table = Table(title="segmentation metrics (means over images)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("dice", "iou", "pixel_accuracy", "boundary_f1", "dice_background", "dice_pooled",
                "dice_tolerance1", "boundary_accuracy", "interior_accuracy", "isbi_pixel_error"):
        if key in report:
            table.add_row(key, f"{report[key]:.4f}")
    console.print(table)
    if report.get("masks"):
        console.print(f"wrote {len(report['masks'])} masks to {Path(report['masks'][0]).parent}")

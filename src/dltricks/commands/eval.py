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
    from dltricks.tasks.segmentation.evaluate import add_segmentation_eval_args

    add_segmentation_eval_args(p)
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
        raise CheckpointError(f"checkpoint {path_text!r} does not exist; expected a run directory or a .safetensors file")
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
    from dltricks.tasks.segmentation.evaluate import is_segmentation_task, run_segmentation_eval

    if is_segmentation_task(task):  # per-pixel metrics, sliding windows, saved masks
        return run_segmentation_eval(args, model, task, checkpoint=path, model_name=name)
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
    console.print(f"[bold]{report['model']}[/bold] on {report['data']} ({report['split']}, {report['samples']:,} samples): "
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

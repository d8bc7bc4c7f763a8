"""``dltricks eval CHECKPOINT [--data NAME]``: loss, accuracy, per-class accuracy and confusion matrix.

``CHECKPOINT`` is a run directory (its ``model.safetensors``, else ``checkpoints/last.safetensors``), a
weights file or a full checkpoint written by ``dltricks train``. The model is rebuilt from the name and
options stored in the file's metadata; nothing is unpickled.

The data default to what the run recorded (``meta.data`` of its ``config.json`` and weight files): the data
set, its folder, its data options (an ISBI ``fold``...) and, for ``--split train``, its training subset. An
override (``--data-opt``, ``--data-dir``) is applied on top of them, with a warning on stderr when the
evaluated samples include some the run was trained on, or when the files differ from those it read.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from dltricks.commands._args import (add_common_data_args, data_args, data_overrides, json_text, log, own_formatter,
                                     resolve_checkpoint)
from dltricks.commands._uncertainty import add_uncertainty_args, run_uncertainty
from dltricks.errors import CheckpointError, ConfigError, DataError, ModelError
from dltricks.utils.io import check_writable_dir


def add_parser(subparsers: argparse._SubParsersAction, formatter: type) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a trained model on a data set", formatter_class=own_formatter(formatter),
        description="Evaluate the weights of a dltricks run on a data set: loss, accuracy, per-class accuracy "
                    "and the confusion matrix; for segmentation data sets (isbi2012-membrane) Dice, IoU, boundary "
                    "F1 and the ISBI pixel error, with optional sliding windows, flips and PNG masks.",
        epilog="examples:\n  dltricks eval runs/a                    # on the data the run was trained on\n"
               "  dltricks eval runs/a/checkpoints/best.safetensors --split train --json\n"
               "  dltricks eval runs/unet --window 256 --tta --save-masks masks/\n"
               "  dltricks eval runs/a --data mnist --data-dir ../shared/data   # another data set\n"
               "  dltricks eval runs/a --uncertainty temperature --plots plots/   # NLL, ECE, Brier, OOD AUROC\n"
               "  dltricks eval runs/a --uncertainty ensemble --members runs/b runs/c\n")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="run directory, weights file (model.safetensors, best.safetensors) or full checkpoint "
                        "(checkpoints/last.safetensors); required")
    add_common_data_args(p, data_required=False,
                         subset_help="evaluate N samples of the split drawn at random, every class keeping its share; "
                                     "default: all (with --split train: the run's training subset)",
                         data_help="data set to evaluate on; default: the one the run was trained on, with its "
                                   "data options and folder (see `dltricks train --help` for the names)")
    p.add_argument("--split", choices=("val", "train"), default="val",
                   help="which split to evaluate: the validation/test split or the training split (no augmentation)")
    p.add_argument("--batch-size", type=int, default=500, help="evaluation batch size")
    p.add_argument("--raw", action="store_true",
                   help="for a full checkpoint trained with EMA, evaluate the raw weights instead of the EMA weights "
                        "(default: the EMA weights)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of tables")
    p.add_argument("--image", default=None, metavar="FILE",
                   help="classify one image file instead of evaluating a data set: the top-5 classes with their "
                        "probabilities, as the playground of `dltricks serve` shows them; default: none")
    _add_segmentation_args(p)
    g = p.add_argument_group("detection")
    g.add_argument("--draw", default=None, metavar="FILE",
                   help="draw the predictions (solid, by class, with scores) and ground-truth boxes (dashed green) "
                        "of the first --draw-images images of the split on them, into FILE (PNG); default: none")
    g.add_argument("--draw-images", type=int, default=8, metavar="N", help="images in the --draw figure (default 8)")
    g.add_argument("--draw-score", type=float, default=0.3, metavar="S",
                   help="draw predictions scoring at least S (default 0.3)")
    add_uncertainty_args(p)
    p.set_defaults(func=run)


def recorded_data(run_meta: dict[str, Any], path: Path | str = "the run") -> dict[str, Any]:
    """The run's data record (``meta.data``, see :func:`dltricks.commands._args.data_record`); runs written by
    ``fit`` without one record only the data set's name."""
    data = run_meta.get("data")
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict):
        return {}
    types = {"name": str, "data_dir": str, "options": dict, "subset": int, "subset_seed": int}
    for key, kind in types.items():  # a hand-edited or hostile record is refused, not half-used
        if data.get(key) is not None and (not isinstance(data[key], kind) or isinstance(data[key], bool)):
            raise CheckpointError(f"{path}: its data record has {key}={data[key]!r}; expected a {kind.__name__} or "
                                  "null")
    return {key: data.get(key) for key in types}


def _data_to_evaluate(args: argparse.Namespace, recorded: dict[str, Any],
                      path: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(data set, data options, keywords of task_for_recipe)``: the command line on top of what the run
    recorded, when it names the same data set (or none)."""
    data = args.data or recorded.get("name")
    if not data:
        raise ConfigError(f"--data NAME is required: {path} does not record the data set it was trained on")
    same = data == recorded.get("name")
    options = dict(recorded.get("options") or {}) if same else {}
    given = {key[len("data."):]: value for key, value in data_overrides(args)}
    options.update(given)
    data_kw = data_args(args, split=args.split)
    if same:
        saved_dir = recorded.get("data_dir")
        if data_kw["data_dir"] is None and saved_dir:
            if Path(saved_dir).exists():
                data_kw["data_dir"] = saved_dir
            else:
                log(f"warning: the run read its data from {saved_dir}, which does not exist here; looking in the "
                    "default places (pass --data-dir)")
        if args.split == "train" and args.subset is None and recorded.get("subset"):
            data_kw["subset"] = recorded["subset"]
            if args.subset_seed is None and recorded.get("subset_seed") is not None:
                data_kw["subset_seed"] = recorded["subset_seed"]
        if not args.data:
            shown = ", ".join(f"{k}={v}" for k, v in (recorded.get("options") or {}).items())
            log(f"evaluating on {data}{f' ({shown})' if shown else ''}, the data the run was trained on"
                + (f"; --data-opt: {', '.join(f'{k}={v}' for k, v in given.items())}" if given else ""))
    return data, options, data_kw


def _sample_ids(task: Any, split: str) -> list[Any] | None:
    """Identifiers of the samples of ``split``, for the tasks that expose them (ISBI: slice names)."""
    ids = task.extra.get(f"{split}_slices")
    return list(ids) if ids is not None else None


def _training_data_warnings(args: argparse.Namespace, task: Any, recorded: dict[str, Any], options: dict[str, Any],
                            data_kw: dict[str, Any], run_meta: dict[str, Any], device: Any) -> list[str]:
    """What could make this evaluation mean less than the user thinks: evaluated samples that the run trained
    on (data options other than the run's, e.g. another ``fold``) and data files other than those it read."""
    from dltricks.data.files import source_fingerprint
    from dltricks.train.prepare import task_for_recipe
    from dltricks.train.recipe import load_recipe

    warnings = []
    trained = dict(recorded.get("options") or {})
    if args.split == "val" and options != trained:
        changed = ", ".join(f"{k}={options.get(k)!r} (run: {trained.get(k)!r})"
                            for k in sorted(set(options) | set(trained)) if options.get(k) != trained.get(k))
        evaluated = _sample_ids(task, "val")
        overlap: list[Any] | None = None
        if evaluated is not None:
            recipe = load_recipe(None, [("train.batch_size", args.batch_size),
                                        *((f"data.{k}", v) for k, v in trained.items())])
            run_task = task_for_recipe(recorded["name"], recipe, device=device, for_training=False,
                                       data_dir=data_kw.get("data_dir"))
            trained_ids = set(_sample_ids(run_task, "train") or [])
            overlap = [i for i in evaluated if i in trained_ids]
        if overlap:
            warnings.append(f"evaluating on training data: {len(overlap)} of the {len(evaluated or [])} samples "
                            f"evaluated ({', '.join(map(str, overlap[:8]))}{'...' if len(overlap) > 8 else ''}) "
                            f"were in the run's training split; data options differ from the run's: {changed}")
        elif overlap is None:
            warnings.append(f"data options differ from the run's ({changed}); the evaluated split may hold "
                            "samples the run was trained on")
    source, saved = task.extra.get("source"), run_meta.get("data_source")
    if isinstance(saved, dict) and isinstance(source, str) and Path(source).exists():
        now = source_fingerprint(source)
        if now != saved:
            warnings.append(f"the data files differ from those the run was trained on ({saved.get('path')} then, "
                            f"{now.get('path')} now, or their sizes/dates changed)")
    return warnings


def _run_image(args: argparse.Namespace, path: Path) -> int:
    """``--image FILE``: the top-5 classes of one image (the same function as the serve playground)."""
    from dltricks.serve.predict import Limits, classify_image, decode_image, load_run_model

    try:
        data = Path(args.image).read_bytes()
    except OSError as err:
        raise DataError(f"--image {args.image}: cannot read it ({err.strerror or err})") from err
    loaded = load_run_model(path)
    top = classify_image(loaded, decode_image(data, Limits(max_bytes=max(len(data), 1))))
    if args.json:
        print(json_text({"checkpoint": str(path), "model": loaded.name, "image": args.image, "top": top}))
        return 0
    print(f"{loaded.name} on {args.image}:")
    for t in top:
        print(f"  {t['label']:>12s}  {t['probability']:7.2%}")
    return 0


def run(args: argparse.Namespace) -> int:
    from dltricks.train import evaluate, load_weights, prepare, read_metadata
    from dltricks.train.checkpoint import CHECKPOINT_FORMAT, check_run_meta
    from dltricks.train.prepare import task_for_recipe
    from dltricks.train.recipe import load_recipe
    from dltricks.train.runtime import resolve_device

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: got {args.batch_size}, expected a positive integer")
    if getattr(args, "save_masks", None):
        check_writable_dir(args.save_masks)  # before minutes of inference, not after
    path = resolve_checkpoint(args.checkpoint)
    if args.image:
        return _run_image(args, path)
    meta = read_metadata(path)  # refuses pickles and non-safetensors files
    run_meta = meta.get("run", meta) if meta.get("format") == CHECKPOINT_FORMAT else meta
    check_run_meta(run_meta, path)
    name = run_meta.get("model")
    if not name:
        raise CheckpointError(f"{path}: no model name in its metadata; expected a file written by `dltricks train`")
    model_kwargs = dict(run_meta.get("model_kwargs") or {})
    device = resolve_device(args.device or "auto")
    recorded = recorded_data(run_meta, path)
    data, options, data_kw = _data_to_evaluate(args, recorded, path)
    recipe = load_recipe(None, [("train.batch_size", args.batch_size),
                                *((f"data.{k}", v) for k, v in options.items())])
    task = task_for_recipe(data, recipe, device=device, for_training=False, **data_kw)
    if data == recorded.get("name"):
        for warning in _training_data_warnings(args, task, recorded, options, data_kw, run_meta, device):
            log(f"warning: {warning}")
    num_classes = model_kwargs.get("num_classes")
    if num_classes is not None and num_classes != task.num_classes:
        raise DataError(f"the model in {path} predicts {num_classes} classes but data set {task.name} has "
                        f"{task.num_classes}; evaluate it on the data it was trained for")
    try:
        model, task = prepare(name, task, recipe, model_kwargs=model_kwargs, device=device)
    except ModelError as err:
        raise CheckpointError(f"{path}: cannot rebuild model {name!r} from its metadata for data set {task.name} "
                              f"({err})") from err
    from dltricks.train.runs import structure_for_weights

    model = structure_for_weights(model, run_meta, path)
    load_weights(model, path, use_ema=not args.raw)
    model.to(device)
    from dltricks.tasks.segmentation.evaluate import is_segmentation_task

    if is_segmentation_task(task):  # per-pixel metrics, sliding windows, saved masks
        return _run_segmentation_eval(args, model, task, checkpoint=path, model_name=name, data_options=options)
    if task.extra.get("task_type") == "detection":  # COCO box AP (docs/detection.md)
        return _run_detection_eval(args, model, task, checkpoint=path, model_name=name, data_options=options)
    if args.uncertainty:  # NLL, ECE, Brier, selective prediction, OOD AUROC (docs/uncertainty.md)
        return run_uncertainty(args, model, task, checkpoint=path, name=name, num_classes=num_classes, device=device)
    if args.members:
        raise ConfigError("--members is for --uncertainty ensemble")
    loader = task.val_loader if args.split == "val" else task.train_loader
    if loader is None:
        raise DataError(f"data set {task.name} has no validation split; use --split train")
    metrics = evaluate(model, loader, task, device=device, confusion=True)
    classes = list(task.classes) or [str(i) for i in range(task.num_classes)]
    report: dict[str, Any] = {"checkpoint": str(path), "model": name, "data": task.name, "data_options": options,
                              "split": args.split,
                              "samples": metrics["count"], "loss": metrics["loss"], "accuracy": metrics.get("accuracy"),
                              "per_class_accuracy": dict(zip(classes, metrics["per_class_accuracy"])),
                              "confusion": metrics["confusion"].tolist()}
    if args.json:
        print(json_text(report))
        return 0
    print_report(report, classes)
    return 0


def print_report(report: dict[str, Any], classes: list[str]) -> None:
    from rich.table import Table

    from dltricks.utils.tables import Column, print_table, table_console

    console = table_console()
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
    # Columns headed by class index, so that ten classes fit 80 characters whatever their names.
    print_table([Column("true\\pred", justify="left"), *(Column(str(k)) for k in range(len(classes)))],
                [[c if c == str(i) else f"{i} {c}", *(str(v) if v else "." for v in report["confusion"][i])]
                 for i, c in enumerate(classes)],
                title="confusion matrix (rows: true class, columns: predicted class index)", console=console)


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


def _run_detection_eval(args: argparse.Namespace, model: Any, task: Any, *, checkpoint: str | Path, model_name: str,
                        data_options: dict[str, Any] | None = None) -> int:
    """The detection branch of ``dltricks eval``: COCO mAP, AP50, AP75, AP by size, VOC AP50 and the loss."""
    from dltricks.data.detection import DetectionLoader
    from dltricks.tasks.detection import evaluate_detection
    from dltricks.utils.tables import Column, print_table

    split = getattr(args, "split", "val")
    device = next(model.parameters()).device
    loader = task.val_loader
    if split == "train":  # every training image once, in order (the training loader shuffles and drops a remainder)
        train = task.train_loader
        loader = DetectionLoader(train.dataset, batch_size=train.batch_size, device=device)
    if loader is None:
        raise DataError(f"data set {task.name} has no validation split; use --split train")
    draw = getattr(args, "draw", None)
    if draw is not None and getattr(args, "draw_images", 8) < 1:
        raise DataError(f"--draw-images must be >= 1, got {args.draw_images}")
    metrics = evaluate_detection(model, loader, device=device, loss_fn=task.loss)
    report = {"checkpoint": str(checkpoint), "model": model_name, "data": task.name,
              "data_options": dict(data_options or {}), "split": split, **metrics}
    if draw is not None:
        report["drawing"] = str(_draw_detections(model, loader, task, draw, images=args.draw_images,
                                                 score_thresh=args.draw_score, device=device,
                                                 title=f"{model_name} on {task.name} ({split})"))
    if getattr(args, "json", False):
        print(json_text(report))
        return 0
    print(f"{model_name} on {task.name} ({split}, {int(metrics['images']):,} images): loss {metrics['loss']:.4f}")
    names = {"map": "COCO mAP@[.5:.95]", "ap50": "AP50", "ap75": "AP75", "ap_small": "AP small",
             "ap_medium": "AP medium", "ap_large": "AP large", "voc_ap50": "VOC AP50",
             "mask_map": "mask mAP@[.5:.95]", "mask_ap50": "mask AP50", "mask_ap75": "mask AP75"}
    print_table([Column("metric", number=False), Column("value")],
                [[label, f"{metrics[key]:.4f}"] for key, label in names.items() if key in metrics],
                title="detection, COCO protocol")
    if "drawing" in report:
        print(f"predictions drawn on {min(args.draw_images, int(metrics['images']))} images: {report['drawing']}")
    return 0


def _draw_detections(model: Any, loader: Any, task: Any, path: str, *, images: int, score_thresh: float,
                     device: Any, title: str) -> Path:
    """The first ``images`` images of ``loader`` with their predictions and ground truth, drawn into ``path``."""
    import torch

    from dltricks.data.detection import split_batch
    from dltricks.tasks.detection.draw import draw_detections
    from dltricks.tasks.detection.losses import split_targets

    model.eval()
    xs, predictions, truth = [], [], []
    with torch.no_grad():
        for x, y in loader.iter_epoch(0):
            x = x[:images - len(xs)]
            targets = split_batch(y)[0][:len(x)]
            predictions += [tuple(t.cpu() for t in det)
                            for det in model.predict(x.to(device), score_thresh=score_thresh)]
            truth += [(b.cpu(), lab.cpu()) for b, lab in split_targets(targets)]
            xs += list(x.cpu())
            if len(xs) >= images:
                break
    classes = tuple(task.classes) or None
    return draw_detections(torch.stack(xs), predictions, truth, path, classes=classes, score_thresh=score_thresh,
                           title=title)


def _run_segmentation_eval(args: argparse.Namespace, model: Any, task: Any, *, checkpoint: str | Path,
                          model_name: str, data_options: dict[str, Any] | None = None) -> int:
    """The segmentation branch of ``dltricks eval`` (reads ``--window/--overlap/--tta/--save-masks/--json``)."""
    from dltricks.tasks.segmentation.evaluate import save_predicted_masks, segmentation_report

    window = getattr(args, "window", None)
    overlap = getattr(args, "overlap", 0.5)
    tta = bool(getattr(args, "tta", False))
    split = getattr(args, "split", "val")
    report = {"checkpoint": str(checkpoint), "model": model_name,
              **segmentation_report(model, task, split=split, window=window, overlap=overlap, tta=tta),
              "data_options": dict(data_options or {}), "slices": _sample_ids(task, split)}
    if getattr(args, "save_masks", None):
        paths = save_predicted_masks(model, task, args.save_masks, window=window, overlap=overlap, tta=tta,
                                     split=getattr(args, "split", "val"))
        report["masks"] = [str(p) for p in paths]
    if getattr(args, "json", False):
        print(json_text(report))
    else:
        _print_segmentation_report(report)
    return 0


def _print_segmentation_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    from dltricks.utils.tables import table_console

    console = table_console()
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

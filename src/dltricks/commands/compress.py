"""``dltricks compress RUN --methods ...``: compress a trained run with several methods and measure every variant
side by side (accuracy, size on disk, parameters, non-zeros, MACs, latency at batch 1 and 32 on one thread),
with a Pareto plot of latency vs accuracy. The library function is :func:`dltricks.compress.compress_run`."""

from __future__ import annotations

import argparse

from dltricks.commands._args import log, own_formatter

EPILOG = """\
methods (comma-separated; NAME:AMOUNT for pruning):
  fp32           the trained model as is
  static-int8    post-training static int8 (FX graph mode, x86), calibrated on training batches
  dynamic-int8   dynamic int8 of Linear/LSTM/GRU layers
  prune:F        global unstructured L1 pruning of a fraction F of the Conv/Linear weights
  prune-layer:F  the same, F in every layer
  channels:F     structured channel pruning: a smaller dense model without a fraction F of the channels
  qat            quantization-aware fine-tuning from the run's weights (fit with compress.qat), then int8
  prune-finetune:F  global L1 pruning of a fraction F, fine-tuned with the masks on (fit with
                 compress.prune_amounts=[F])
  onnx           ONNX export (dynamic batch) run in onnxruntime, checked against PyTorch
  onnx-int8      onnxruntime's dynamic int8 quantization of the export

examples:
  dltricks compress runs/small_cnn-mnist-embedded-X --methods fp32,static-int8,channels:0.5,onnx
  dltricks compress runs/r20 --methods fp32,static-int8,prune:0.8,channels:0.5 --data-dir ../shared/data
  dltricks compress runs/sc --methods fp32,qat,prune-finetune:0.8 --finetune-epochs 2 --finetune-set optim.lr=0.01

qat and prune-finetune train through fit with the run's own recipe (RUN/config.json), --finetune-epochs epochs
(per pruning step), on the CPU; --finetune-set KEY=VALUE changes a key of that recipe.

Writes to --out (default RUN/compress): compress.md, compress.json, compress.csv, pareto.png and one folder
per variant with its file; all or nothing (an error leaves no partial output).
"""


def add_parser(subparsers: argparse._SubParsersAction, formatter: type) -> None:
    p = subparsers.add_parser(
        "compress", help="quantize, prune and export a trained run; one accuracy/size/latency table",
        formatter_class=own_formatter(formatter), epilog=EPILOG,
        description="Make each compressed variant of the model of RUN, evaluate it on the run's validation/test "
                    "data and measure size and latency side by side (CPU time per call on one thread, median and "
                    "IQR, torch.utils.benchmark).")
    p.add_argument("run", metavar="RUN", help="run directory written by `dltricks train` (or its weights file)")
    p.add_argument("--methods", default="fp32,static-int8,prune:0.8,channels:0.5,onnx", metavar="LIST",
                   help="comma-separated methods (see below)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder holding the data set; default: the one the run recorded")
    p.add_argument("--val-subset", type=int, default=None, metavar="N",
                   help="evaluate on the first N validation samples only; default: all")
    p.add_argument("--calibration-batches", type=int, default=8, metavar="N",
                   help="training batches (64 samples each) observed to calibrate static int8")
    p.add_argument("--min-time", type=float, default=0.3, metavar="S",
                   help="seconds of timed calls per latency measurement")
    p.add_argument("--finetune-epochs", type=int, default=1, metavar="N",
                   help="epochs of fine-tuning for qat and prune-finetune")
    p.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe key of the fine-tuning of qat and prune-finetune (repeatable), e.g. optim.lr=0.01")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder; default: RUN/compress")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dltricks.compress.report import compress_run, markdown_table
    from dltricks.errors import ConfigError

    if args.calibration_batches < 1:
        raise ConfigError(f"--calibration-batches: got {args.calibration_batches}, expected >= 1")
    if args.min_time <= 0:
        raise ConfigError(f"--min-time: got {args.min_time}, expected seconds > 0")
    if args.finetune_epochs < 1:
        raise ConfigError(f"--finetune-epochs: got {args.finetune_epochs}, expected >= 1")
    rows, out = compress_run(args.run, args.methods, out_dir=args.out, data_dir=args.data_dir,
                             val_subset=args.val_subset, calibration_batches=args.calibration_batches,
                             min_run_time=args.min_time, log=log, finetune_epochs=args.finetune_epochs,
                             finetune_overrides=args.finetune_set)
    print(markdown_table(rows))
    print(f"latency: median ± IQR/2 of CPU time per call, 1 thread; report and variants: {out}")
    return 0

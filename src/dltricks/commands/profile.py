"""``dltricks profile MODEL``: parameters, FLOPs/MACs, latency and throughput, peak memory and the
receptive field of one model, as a table or JSON."""

from __future__ import annotations

import argparse

from dltricks.commands._args import add_old_name, json_text, own_formatter

EPILOG = """\
examples:
  dltricks profile resnet50                          # at the model's design size (224x224), batch 8
  dltricks profile resnet50 --input 3x128x128 --batch-size 32
  dltricks profile convnext_tiny --layers            # plus the per-layer table
  dltricks profile vit_tiny_patch16_224 --json > vit.json
  dltricks profile small_cnn --quick                 # short timings (smoke test)

Methods (see docs/measure.md): MACs = FLOPs/2 from torch.utils.flop_counter (convolutions, matrix
products and attention; not elementwise ops); latency = median and IQR of torch.utils.benchmark
blocks after warm-up; throughput = N / median batch-N time; memory = CUDA allocator peak, or on CPU
the peak of PyTorch's allocation events recorded by torch.profiler.
"""


def add_parser(subparsers: argparse._SubParsersAction, formatter: type) -> None:
    p = subparsers.add_parser(
        "profile", help="measure a model: params, MACs, latency, throughput, memory, receptive field",
        formatter_class=own_formatter(formatter), epilog=EPILOG,
        description="Measure one registered model: parameters, FLOPs/MACs, latency at batch 1 and throughput at "
                    "batch N (median and inter-quartile range), peak memory of an inference pass and of a "
                    "training step, and its receptive field.")
    p.add_argument("model", metavar="MODEL", help="registered model name (see `dltricks models`)")
    p.add_argument("--input", default=None, metavar="CxHxW",
                   help="input size of one image, e.g. 3x224x224 (default: the model's design size)")
    p.add_argument("--batch-size", dest="batch", type=int, default=8, metavar="N",
                   help="batch size of the throughput and memory runs")
    add_old_name(p, "--batch", dest="batch", type=int, metavar="N")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the model's own)")
    p.add_argument("--quick", action="store_true", help="short timings and no unclipped receptive-field search")
    p.add_argument("--min-run-time", type=float, default=None, metavar="S",
                   help="seconds of timed calls per measurement (default: 0.5, or 0.01 with --quick)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--channels-last", action="store_true", help="run in channels_last memory format")
    p.add_argument("--layers", action="store_true", help="also print the per-layer table")
    p.add_argument("--no-latency", action="store_true", help="skip latency/throughput")
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurements")
    p.add_argument("--no-rf", action="store_true", help="skip the receptive field")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--wide", action="store_true",
                   help="tables at full width, however wide (default: fit the terminal, wrapping text, never numbers)")
    p.set_defaults(func=run)


def _device(text: str):
    import torch

    from dltricks.errors import ConfigError

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"--device {text!r}: expected cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {text!r}: expected cpu, cuda, cuda:N or auto")
    return device


def run(args: argparse.Namespace) -> int:
    import torch

    from dltricks.errors import ConfigError
    from dltricks.measure.profile import parse_input_size, profile_model
    from dltricks.models._registry import model_entrypoint

    model_entrypoint(args.model)  # unknown names fail first, with suggestions
    if args.batch < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch}")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.min_run_time is not None and args.min_run_time <= 0:
        raise ConfigError(f"--min-run-time must be > 0, got {args.min_run_time}")
    input_size = parse_input_size(args.input) if args.input else None
    timing = {"min_run_time": args.min_run_time} if args.min_run_time else None
    try:
        report = profile_model(args.model, input_size=input_size, batch=args.batch, device=_device(args.device),
                               quick=args.quick, timing=timing, latency=not args.no_latency,
                               memory=not args.no_memory, receptive_field=not args.no_rf, layers=args.layers,
                               num_classes=args.num_classes, channels_last=args.channels_last)
    except (ValueError, RuntimeError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{args.model} cannot run on input {args.input or 'of its design size'}: {message}") from err
    if args.json:
        print(json_text(report.to_dict()))
        return 0
    print_report(report, wide=args.wide)
    return 0


def _op_label(op: str) -> str:
    """Readable names for the counted ATen operators."""
    if "scaled_dot_product" in op:
        return "attention"
    return {"addmm": "linear", "mm": "matmul", "bmm": "batched matmul", "baddbmm": "batched matmul",
            "convolution": "conv", "convolution_backward": "conv backward"}.get(op, op)


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _ms(s: float) -> str:
    return f"{s * 1e3:,.3g} ms" if s < 1 else f"{s:,.3g} s"


class _Rows(list):
    """The rows of the summary table (``add_row`` as on a rich table)."""

    def add_row(self, *cells: str) -> None:
        self.append(list(cells))


def print_report(report, *, wide: bool = False) -> None:
    """The summary table and, when measured, the per-layer table; both fit the terminal
    (:mod:`dltricks.utils.tables`; ``wide``: every column at full width)."""
    from rich.console import Console

    from dltricks.measure.layer_table import format_shape
    from dltricks.measure.params import format_count
    from dltricks.utils.tables import Column, print_table

    console = Console()
    shape = "x".join(map(str, report.input_shape))
    table = _Rows()
    p = report.params
    table.add_row("parameters", f"{p.total:,}", f"{format_count(p.total)}, trainable {p.trainable:,}, "
                                                f"{_mb(p.param_bytes)}")
    f = report.flops
    ops = ", ".join(f"{_op_label(k)} {format_count(v / 2)}" for k, v in sorted(f.by_op.items(), key=lambda kv: -kv[1]))
    table.add_row("MACs (batch 1)", format_count(f.macs), f"= FLOPs/2; {ops or 'no counted ops'}")
    if report.speed is not None:
        lat, bt = report.speed.latency, report.speed.batch_timing
        table.add_row("latency (batch 1)", _ms(lat.median), f"median; IQR {_ms(lat.iqr)}; {lat.runs} runs x "
                                                            f"{lat.number_per_run}")
        lo, hi = bt.throughput_range
        table.add_row(f"throughput (batch {bt.batch})", f"{bt.throughput:,.1f} /s",
                      f"{bt.batch} / {_ms(bt.median)}; IQR range {lo:,.1f}-{hi:,.1f} /s")
    for mode, label in (("inference", "peak memory, inference"), ("train", "peak memory, train step")):
        m = report.memory.get(mode)
        if m is not None:
            table.add_row(f"{label} (batch {report.batch})", _mb(m.peak_bytes),
                          f"{_mb(m.extra_bytes)} above weights/inputs{'/optimizer' if mode == 'train' else ''}; "
                          f"{m.method}")
    if report.receptive_field is not None:
        rf = report.receptive_field
        note = f"layer {rf.layer or '(output)'}" + (f", jump {rf.jump[0]:g} px" if rf.jump[0] is not None else "")
        table.add_row(f"receptive field at {shape}", rf.describe(), note)
        if report.theoretical_rf is not None:
            t = report.theoretical_rf
            jump = f", jump {t.jump[0]:g} px" if t.jump[0] is not None else ""
            table.add_row("receptive field, unclipped", t.describe() + ("" if t.is_global else " px"),
                          f"traced on a {t.canvas} px canvas{jump}" + (" (lower bound)" if t.lower_bound else ""))
        if report.output_receptive_field is not None:
            table.add_row("receptive field of the output", report.output_receptive_field.describe(), "")
    elif report.rf_note:
        table.add_row("receptive field", "-", report.rf_note)
    print_table([Column("quantity", number=False, style="bold"), Column("value"),
                 Column("note", number=False, style="dim")], table,
                title=f"{report.model}  input {shape}  batch {report.batch}  {report.device}", wide=wide,
                console=console)
    if report.layers:
        rows = [[row.name, row.type, format_shape(row.output_shape), f"{row.params:,}", f"{row.macs:,}"]
                for row in report.layers]
        rows.append(["total", "", "", f"{sum(r.params for r in report.layers):,}",
                     f"{sum(r.macs for r in report.layers):,}"])
        print_table([Column("name", justify="left"), Column("type", number=False, rank=1), Column("output"),
                     Column("params"), Column("MACs")], rows, title=f"{report.model}: layers", wide=wide,
                    console=console)

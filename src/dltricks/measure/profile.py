"""One call that measures a model: :func:`profile_model` (what ``dltricks profile`` prints).

Parameters, FLOPs/MACs (batch 1), latency at batch 1 and throughput at batch N (median and IQR),
peak memory of an inference pass and of a training step at batch N, the receptive field, and
optionally the per-layer table. Each part documents its method in its own module:
:mod:`~dltricks.measure.params`, :mod:`~dltricks.measure.flops`, :mod:`~dltricks.measure.latency`,
:mod:`~dltricks.measure.memory`, :mod:`~dltricks.measure.receptive_field`,
:mod:`~dltricks.measure.layer_table`.
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dltricks.errors import ConfigError
from dltricks.measure.flops import FlopCount, count_flops
from dltricks.measure.latency import SpeedResult, measure_speed
from dltricks.measure.layer_table import LayerRow, layer_table
from dltricks.measure.memory import MemoryStats, peak_memory
from dltricks.measure.params import ParamCount, count_params
from dltricks.measure.receptive_field import (ReceptiveField, TheoreticalRF, UntraceableError,
                                              theoretical_receptive_field, trace_receptive_fields)

__all__ = ["ProfileReport", "profile_model", "environment", "parse_input_size", "QUICK_TIMING"]

# Latency settings of --quick (tests, smoke runs): a few short timed blocks, spread still reported (the block
# size estimate of torch.utils.benchmark already runs the model once, which serves as the warm-up).
QUICK_TIMING = {"min_run_time": 0.01, "warmup": 0, "min_runs": 3}
FULL_TIMING = {"min_run_time": 0.5, "warmup": 3, "min_runs": 7}


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Where a measurement was taken: torch version, threads, CPU/GPU name, date."""
    device = torch.device(device)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
           "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
           "date": _dt.datetime.now().isoformat(timespec="seconds"), "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def parse_input_size(text: str) -> tuple[int, ...]:
    """``"3x224x224" -> (3, 224, 224)``; ``"224"`` -> ``(224,)``."""
    try:
        size = tuple(int(part) for part in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise ConfigError(f"--input {text!r}: expected sizes separated by 'x', e.g. 3x224x224") from None
    if not size or any(s < 1 for s in size):
        raise ConfigError(f"--input {text!r}: every size must be a positive integer, e.g. 3x224x224")
    return size


@dataclass
class ProfileReport:
    """Everything :func:`profile_model` measured (``None`` for the parts that were skipped)."""

    model: str
    task: str
    input_shape: tuple[int, ...]
    batch: int
    device: str
    params: ParamCount
    flops: FlopCount
    speed: SpeedResult | None = None
    memory: dict[str, MemoryStats] = field(default_factory=dict)
    receptive_field: ReceptiveField | None = None
    output_receptive_field: ReceptiveField | None = None
    theoretical_rf: TheoreticalRF | None = None
    rf_note: str | None = None
    layers: list[LayerRow] | None = None
    env: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def throughput(self) -> float | None:
        return self.speed.throughput if self.speed else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model, "task": self.task, "input_shape": list(self.input_shape), "batch": self.batch,
            "device": self.device, "params": self.params.to_dict(), "flops": self.flops.to_dict(),
            "macs": self.flops.macs,
        }
        if self.speed is not None:
            out["latency"] = self.speed.latency.to_dict()
            out["batch_timing"] = self.speed.batch_timing.to_dict()
            out["throughput"] = self.speed.throughput
        out["memory"] = {k: v.to_dict() for k, v in self.memory.items()}
        rf: dict[str, Any] = {}
        if self.receptive_field is not None:
            rf["feature_layer"] = self.receptive_field.to_dict()
        if self.output_receptive_field is not None:
            rf["output"] = self.output_receptive_field.to_dict()
        if self.theoretical_rf is not None:
            t = self.theoretical_rf
            rf["theoretical"] = {"layer": t.layer, "size": list(t.size), "jump": list(t.jump), "start": list(t.start),
                                 "canvas": t.canvas, "lower_bound": t.lower_bound, "global": t.is_global}
        if self.rf_note:
            rf["note"] = self.rf_note
        out["receptive_field"] = rf
        if self.layers is not None:
            out["layers"] = [r.to_dict() for r in self.layers]
        out["env"] = self.env
        if self.errors:
            out["errors"] = dict(self.errors)
        return out


def _inputs_factory(name: str | None, model: nn.Module, input_size: Sequence[int] | None, device: torch.device
                    ) -> tuple[Callable[[int], tuple[torch.Tensor, ...]], tuple[int, ...], bool]:
    """``make(n)`` giving the inputs for batch n, the per-sample input shape, and whether it is an image."""
    info = None
    if name is not None:
        from dltricks.models._registry import model_info

        info = model_info(name)
    if info is not None and info.make_test_input is not None:
        if input_size is not None:
            raise ConfigError(f"--input does not apply to {name!r}: it takes {info.task} inputs built by the model "
                              "registry, not an image")
        make_test_input = info.make_test_input

        def make(n: int) -> tuple[torch.Tensor, ...]:
            return tuple(t.to(device) for t in make_test_input(model, n))

        sample = make(1)
        return make, tuple(sample[0].shape[1:]), False
    size = tuple(input_size) if input_size is not None else (tuple(info.input_size) if info else None)
    if size is None:
        raise ConfigError("input_size is required for a model that is not in the registry, e.g. (3, 224, 224)")
    if len(size) != 3:
        raise ConfigError(f"image input must be CxHxW (e.g. 3x224x224), got {'x'.join(map(str, size))}")
    generator = torch.Generator().manual_seed(0)

    def make(n: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn(n, *size, generator=generator).to(device),)

    return make, size, True


def profile_model(model: str | nn.Module, *, input_size: Sequence[int] | None = None, batch: int = 8,
                  device: str | torch.device = "cpu", quick: bool = False, timing: dict[str, Any] | None = None,
                  latency: bool = True, memory: bool = True, train_memory: bool = True, receptive_field: bool = True,
                  layers: bool = False, num_classes: int | None = None, channels_last: bool = False) -> ProfileReport:
    """Measure a model (a registry name or a module).

    Args:
        input_size: ``(C, H, W)`` of one image (default: the model's design size from the registry).
        batch: batch size N of the throughput and memory measurements (latency is at batch 1).
        quick: short timings (:data:`QUICK_TIMING`) and no unclipped receptive-field search; for tests.
        timing: overrides of ``min_run_time``, ``warmup``, ``min_runs`` (see :func:`time_function`).
        num_classes: classifier size when building by name (default: the model's own).
        channels_last: convert model and inputs to ``torch.channels_last``.
    """
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    device = torch.device(device)
    name = model if isinstance(model, str) else getattr(model, "model_name", None)
    if isinstance(model, str):
        from dltricks.models._registry import create_model

        torch.manual_seed(0)
        module = create_model(model, num_classes=num_classes)
    else:
        module = model
    from dltricks.models._registry import model_info

    task = model_info(name).task if name is not None and isinstance(model, str) else "classification"
    module = module.to(device)
    make, sample_shape, is_image = _inputs_factory(name if isinstance(model, str) else None, module, input_size,
                                                   device)
    if channels_last and is_image:
        module = module.to(memory_format=torch.channels_last)
        base_make = make

        def make(n: int) -> tuple[torch.Tensor, ...]:  # noqa: F811
            return tuple(t.contiguous(memory_format=torch.channels_last) for t in base_make(n))

    was_training = module.training
    module.eval()
    report = ProfileReport(model=name or type(module).__name__, task=task, input_shape=sample_shape, batch=batch,
                           device=str(device), params=count_params(module), flops=count_flops(module, *make(1)),
                           env=environment(device))
    settings = dict(QUICK_TIMING if quick else FULL_TIMING)
    settings.update(timing or {})
    if latency:
        report.speed = measure_speed(module, make, batch=batch, **settings)
    if memory:
        report.memory["inference"] = peak_memory(module, make(batch), mode="inference")
        if train_memory:
            report.memory["train"] = peak_memory(module, make(batch), mode="train", optimizer="sgd")
    if receptive_field and is_image:
        try:
            trace = trace_receptive_fields(module, sample_shape)
            report.receptive_field = trace.feature_layer()
            report.output_receptive_field = trace.output
            if not quick:
                report.theoretical_rf = theoretical_receptive_field(module, sample_shape,
                                                                    layer=report.receptive_field.layer,
                                                                    max_size=max(512, max(sample_shape[1:])))
        except UntraceableError as err:
            report.rf_note = f"not traced: {err}"
    elif receptive_field:
        report.rf_note = "not an image model"
    if layers:
        report.layers = layer_table(module, make(1))
    module.train(was_training)
    return report

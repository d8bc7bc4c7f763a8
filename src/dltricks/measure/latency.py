"""Latency and throughput with :mod:`torch.utils.benchmark`.

Method: ``warmup`` untimed calls (allocator, oneDNN/cuDNN algorithm selection, lazy init), then
:meth:`torch.utils.benchmark.Timer.blocked_autorange`: the call is repeated in blocks long enough
that timer overhead is negligible, for at least ``min_run_time`` seconds and ``min_runs`` blocks. On
an accelerator the timer synchronises the device around each block. We report the median time per
call and the inter-quartile range (IQR) over blocks - the median because timing noise is one-sided
(pre-emption, frequency changes only ever add time).

* *latency* = median seconds per call at batch 1 (what one request waits);
* *throughput* = ``N / median seconds per call`` at batch N (samples per second); its range comes
  from the quartiles of the same measurement, ``N / q75 .. N / q25``.

Timings are only comparable on the same machine, in the same process and thread settings; compare
models side by side in one run (``dltricks compare``) and never assert absolute times in tests.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

__all__ = ["Timing", "SpeedResult", "time_function", "measure_latency", "measure_speed"]


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one timed function.

    Attributes:
        batch: samples per call.
        median, q25, q75, mean: statistics over timed blocks of the time per call (seconds).
        runs: number of timed blocks; ``number_per_run``: calls per block.
    """

    batch: int
    median: float
    q25: float
    q75: float
    mean: float
    runs: int
    number_per_run: int

    @property
    def iqr(self) -> float:
        return self.q75 - self.q25

    @property
    def throughput(self) -> float:
        """Samples per second: ``batch / median``."""
        return self.batch / self.median

    @property
    def throughput_range(self) -> tuple[float, float]:
        """Throughput at the slow (q75) and fast (q25) quartile of the call time."""
        return (self.batch / self.q75, self.batch / self.q25)

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "median_ms": self.median * 1e3, "iqr_ms": self.iqr * 1e3,
                "q25_ms": self.q25 * 1e3, "q75_ms": self.q75 * 1e3, "mean_ms": self.mean * 1e3,
                "runs": self.runs, "number_per_run": self.number_per_run,
                "throughput": self.throughput, "throughput_range": list(self.throughput_range)}


def _quantiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def time_function(fn: Callable[[], Any], *, batch: int = 1, min_run_time: float = 0.5, warmup: int = 3,
                  min_runs: int = 5, adaptive: bool = False, threshold: float = 0.1,
                  max_run_time: float = 10.0, cpu_time: bool = False) -> Timing:
    """Time ``fn()`` with warm-up and :class:`torch.utils.benchmark.Timer`.

    Args:
        batch: samples processed per call (for the throughput).
        min_run_time: seconds of timed calls at least (``blocked_autorange``).
        warmup: untimed calls first.
        min_runs: at least this many timed blocks (more blocks are added if ``min_run_time`` gave fewer).
        adaptive: use ``adaptive_autorange`` instead: repeat until IQR / median < ``threshold`` or
            ``max_run_time`` seconds.
        cpu_time: count the process's CPU time (:func:`time.process_time`) on one intra-op thread instead
            of wall time. On a machine shared with other jobs wall time partly measures those jobs, while
            the CPU time of a single-threaded computation barely changes: it measures compute cost, not
            multi-core speed (CPU only; the evidence engine's timing tips use it).
    """
    threads = 1 if cpu_time else torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # the warm-up runs with the timed thread count too
    try:
        for _ in range(warmup):
            fn()
    finally:
        torch.set_num_threads(previous)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads,
                            **({"timer": time.process_time} if cpu_time else {}))
    if adaptive:
        m = timer.adaptive_autorange(threshold=threshold, min_run_time=min_run_time, max_run_time=max_run_time)
    else:
        m = timer.blocked_autorange(min_run_time=min_run_time)
    per_call = [t / m.number_per_run for t in m.raw_times]
    while len(per_call) < min_runs:
        extra = timer.timeit(m.number_per_run)
        per_call += [t / extra.number_per_run for t in extra.raw_times]
    q25, median, q75 = _quantiles(per_call)
    return Timing(batch=batch, median=median, q25=q25, q75=q75, mean=statistics.fmean(per_call),
                  runs=len(per_call), number_per_run=m.number_per_run)


def surrogate_loss(out: Any) -> torch.Tensor:
    """A scalar to back-propagate when timing or profiling a training step of any model: the mean square
    of the (first) output tensor, so every output element gets a gradient of the usual size."""
    if isinstance(out, torch.Tensor):
        return out.float().square().mean()
    if isinstance(out, (tuple, list)):
        return surrogate_loss(out[0])
    if isinstance(out, dict):
        return surrogate_loss(next(iter(out.values())))
    raise TypeError(f"cannot make a loss from a model output of type {type(out).__name__}")


def measure_latency(model: nn.Module, inputs: Sequence[torch.Tensor], *, mode: str = "inference",
                    min_run_time: float = 0.5, warmup: int = 3, min_runs: int = 5) -> Timing:
    """Seconds per call of ``model(*inputs)``.

    ``mode="inference"``: eval mode under ``torch.inference_mode()``; ``mode="train"``: train mode,
    forward + backward of a mean-square loss (gradients reset to ``None`` each call; no optimizer step).
    The model's train/eval mode is restored afterwards.
    """
    if mode not in ("inference", "train"):
        raise ValueError(f"mode must be 'inference' or 'train', got {mode!r}")
    batch = int(inputs[0].shape[0]) if inputs and inputs[0].dim() > 0 else 1
    was_training = model.training
    if mode == "inference":
        model.eval()

        def fn() -> None:
            with torch.inference_mode():
                model(*inputs)
    else:
        model.train()

        def fn() -> None:
            for p in model.parameters():
                p.grad = None
            surrogate_loss(model(*inputs)).backward()
    try:
        return time_function(fn, batch=batch, min_run_time=min_run_time, warmup=warmup, min_runs=min_runs)
    finally:
        model.train(was_training)
        if mode == "train":
            for p in model.parameters():
                p.grad = None


@dataclass(frozen=True)
class SpeedResult:
    """Latency at batch 1 and throughput at batch N (both with spread)."""

    latency: Timing
    batch_timing: Timing

    @property
    def throughput(self) -> float:
        """Samples per second at batch N, ``N / batch-N median time per call``."""
        return self.batch_timing.throughput

    def to_dict(self) -> dict[str, Any]:
        return {"latency": self.latency.to_dict(), "batch": self.batch_timing.to_dict(),
                "throughput": self.throughput}


def measure_speed(model: nn.Module, make_inputs: Callable[[int], Sequence[torch.Tensor]], *, batch: int = 8,
                  min_run_time: float = 0.5, warmup: int = 3, min_runs: int = 5,
                  mode: str = "inference") -> SpeedResult:
    """Latency at batch 1 and throughput at batch ``batch``.

    ``make_inputs(n)`` returns the model inputs for a batch of ``n`` samples.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    latency = measure_latency(model, make_inputs(1), mode=mode, min_run_time=min_run_time, warmup=warmup,
                              min_runs=min_runs)
    timing = latency if batch == 1 else measure_latency(model, make_inputs(batch), mode=mode,
                                                        min_run_time=min_run_time, warmup=warmup,
                                                        min_runs=min_runs)
    return SpeedResult(latency=latency, batch_timing=timing)

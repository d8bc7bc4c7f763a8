"""Peak memory of an inference pass and of a training step.

**On CUDA** we use the caching allocator's own statistics: ``torch.cuda.reset_peak_memory_stats``,
run the pass, read ``torch.cuda.max_memory_allocated``. That is the peak of bytes held by live
tensors on the device (not the larger amount the allocator reserves from the driver, and not the
CUDA context).

**On CPU** PyTorch keeps no peak statistic, so we record the pass with
``torch.profiler.profile(profile_memory=True)``: every allocation and free made through PyTorch's
CPU allocator during the pass becomes an event carrying the allocator's running total, and the peak
is the largest total seen. The allocator only counts what was allocated while the profiler was on,
so what existed before the pass (parameters, buffers, the input, an optimizer's state) is added
from the tensors themselves (``baseline_bytes``).

Limits of the CPU method: it sees tensor storage allocated through ``c10`` (activations, autograd's
saved tensors, gradients, optimizer state, temporary buffers of ATen kernels), not memory that
third-party libraries allocate on their own (oneDNN scratch-pads are routed through PyTorch's
allocator, but MKL/OpenMP internals are not), nor Python objects or allocator fragmentation; it
measures what the program needs, not the resident set size the operating system reports.

Both methods run one warm-up pass first so that one-off caches do not count. A training step is
measured in the steady state: forward, loss, backward and ``optimizer.step()`` after one earlier
step has created the optimizer's state, with gradients reset to ``None`` before the step (so
gradients are allocated inside it, as with ``zero_grad(set_to_none=True)``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dltricks.measure.latency import surrogate_loss

__all__ = ["MemoryStats", "peak_memory", "profiled_peak_bytes", "tensor_bytes"]


@dataclass(frozen=True)
class MemoryStats:
    """Peak memory of one pass.

    Attributes:
        mode: ``inference`` or ``train``.
        peak_bytes: largest number of bytes held by live tensors during the pass, including
            ``baseline_bytes``.
        baseline_bytes: bytes live before the pass (on CPU: parameters, buffers, inputs and optimizer
            state; on CUDA: everything the allocator held on the device).
        method: ``cuda`` (allocator statistics) or ``profiler`` (CPU allocation events).
        parts: the known pieces of the baseline (``params``, ``buffers``, ``inputs``, ``optimizer_state``).
    """

    mode: str
    peak_bytes: int
    baseline_bytes: int
    method: str
    device: str
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def extra_bytes(self) -> int:
        """What the pass itself needed on top of the baseline: activations, saved tensors, gradients,
        temporaries."""
        return self.peak_bytes - self.baseline_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "peak_bytes": self.peak_bytes, "baseline_bytes": self.baseline_bytes,
                "extra_bytes": self.extra_bytes, "method": self.method, "device": self.device,
                "parts": dict(self.parts)}


def tensor_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages behind ``tensors`` (an iterable or nested structure)."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def visit(t: Any) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
            if key not in seen and storage.nbytes() > 0:
                seen.add(key)
                total += storage.nbytes()
        elif isinstance(t, dict):
            for v in t.values():
                visit(v)
        elif isinstance(t, (list, tuple, set)) or hasattr(t, "__iter__") and not isinstance(t, (str, bytes)):
            for v in t:
                visit(v)

    visit(tensors)
    return total


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C++ logging) for the duration of the block."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profiled_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated (net of frees) through PyTorch's CPU allocator while ``fn()`` runs."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False)
    with _quiet_stderr():  # the profiler backend prints a line to stderr when it starts and stops
        prof.__enter__()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.__exit__(None, None, None)
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            alloc = node.extra_fields
            events.append((node.start_time_ns, int(alloc.alloc_size), int(alloc.total_allocated)))
        stack.extend(node.children)
    if not events:
        return 0
    events.sort(key=lambda e: e[0])
    # The allocator's running total is process-wide and persists between profiling sessions (frees made
    # while the profiler is off are not subtracted), so measure from its value just before the first event.
    start = events[0][2] - events[0][1]
    return max(0, max(total for _, _, total in events) - start)


def _make_optimizer(name: str | None, params: list[nn.Parameter]) -> torch.optim.Optimizer | None:
    if name is None or name == "none":
        return None
    # lr = 0: the step allocates and updates the optimizer's state as usual but leaves the weights as they are.
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.0, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=0.0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=0.0, weight_decay=0.0)
    raise ValueError(f"optimizer must be 'sgd', 'adam', 'adamw' or None, got {name!r}")


def peak_memory(model: nn.Module, inputs: Sequence[torch.Tensor], *, mode: str = "inference",
                optimizer: str | None = "sgd") -> MemoryStats:
    """Peak memory of ``model(*inputs)`` (``mode="inference"``, eval mode under ``inference_mode``) or of
    one training step (``mode="train"``: forward, mean-square loss, backward and an ``optimizer`` step;
    ``"sgd"`` with momentum keeps one buffer per parameter, ``"adam"`` two, ``None`` skips the step).

    The model's weights and buffers are restored afterwards, and so is its train/eval mode.
    """
    if mode not in ("inference", "train"):
        raise ValueError(f"mode must be 'inference' or 'train', got {mode!r}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else (inputs[0].device if inputs else torch.device("cpu"))
    was_training = model.training
    params = [p for p in model.parameters() if p.requires_grad]
    opt = None
    saved = None
    if mode == "inference":
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                out = model(*inputs)
            del out
    else:
        model.train()
        # The optimizer runs with lr = 0 (weights do not move); batch norm still updates its running
        # statistics in train mode, so buffers are restored afterwards (copied to the CPU so that the copy
        # does not count on an accelerator).
        saved = {k: v.detach().to("cpu", copy=True) for k, v in model.named_buffers()}
        opt = _make_optimizer(optimizer, params)

        def step() -> None:
            for p in params:
                p.grad = None
            loss = surrogate_loss(model(*inputs))
            loss.backward()
            if opt is not None:
                opt.step()
            del loss

    try:
        step()  # warm-up (and the optimizer's state)
        if mode == "train":
            for p in params:
                p.grad = None
        parts = {"params": tensor_bytes(model.parameters()), "buffers": tensor_bytes(model.buffers()),
                 "inputs": tensor_bytes(list(inputs))}
        if opt is not None:
            parts["optimizer_state"] = tensor_bytes([s for s in opt.state.values()])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device)
            step()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            method = "cuda"
        else:
            baseline = sum(parts.values())
            peak = baseline + profiled_peak_bytes(step)
            method = "profiler"
    finally:
        if mode == "train":
            with torch.no_grad():
                for k, v in model.named_buffers():
                    if k in (saved or {}):
                        v.copy_(saved[k])
            for p in params:
                p.grad = None
        model.train(was_training)
    return MemoryStats(mode=mode, peak_bytes=int(peak), baseline_bytes=int(baseline), method=method,
                       device=str(device), parts=parts)

"""Where and how the training runs: device choice, seeding, deterministic kernels, mixed precision."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dltricks.errors import ConfigError

__all__ = ["resolve_device", "seed_everything", "deterministic_mode", "Precision", "resolve_precision"]


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | torch.device = "auto", *, local_rank: int | None = None) -> torch.device:
    """``auto`` -> ``cuda`` (``cuda:LOCAL_RANK`` under torchrun), else ``mps``, else ``cpu``; an explicit
    device that is not available is a :class:`ConfigError`."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank or 0)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {name!r} requested but CUDA is not available "
                              "(expected 'auto' or 'cpu' on this machine)")
        device = torch.device(name)
        if device.index is None:
            device = torch.device("cuda", local_rank or 0)
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device: {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
        return device
    if name == "mps" and not _mps_available():
        raise ConfigError("train.device: 'mps' requested but the MPS backend is not available")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"train.device: unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps") from err


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all CUDA devices included)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Deterministic kernels inside the block; the previous global settings come back afterwards.

    Sets ``torch.use_deterministic_algorithms(True)``, ``cudnn.deterministic = True``,
    ``cudnn.benchmark = False`` and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (required by cuBLAS for
    reproducible matrix products). On CPU our kernels are deterministic anyway for a fixed number of
    threads; the flag matters on GPUs, where atomics-based kernels (scatter-add, some convolution
    backward algorithms) otherwise reorder floating-point sums from run to run.
    """
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic = previous[2]
        torch.backends.cudnn.benchmark = previous[3]
        if previous[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@dataclass(frozen=True)
class Precision:
    """Resolved mixed-precision settings: ``autocast(device_type, dtype)`` when ``enabled``, and a
    GradScaler for float16 (whose small range underflows small gradients without loss scaling,
    Micikevicius et al. 2018)."""

    enabled: bool
    device_type: str
    dtype: torch.dtype = torch.float32

    @property
    def needs_scaler(self) -> bool:
        return self.enabled and self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)


def resolve_precision(amp: bool, amp_dtype: str, device: torch.device) -> Precision:
    device_type = device.type
    if not amp:
        return Precision(False, device_type)
    if amp_dtype == "auto":
        dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
    else:
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[amp_dtype]
    return Precision(True, device_type, dtype)


def resolve_channels_last(setting: bool | str, model: nn.Module) -> bool:
    """``True``/``False`` as given; ``"auto"``: on when ``model`` contains a 2-D convolution.

    NHWC lets oneDNN (CPU) and cuDNN (GPU) pick their fastest convolution kernels without layout
    conversions; ``benchmarks/models_throughput.py`` measured it 1.04-1.51x faster than NCHW for the five
    CNN families it times (resnet50 1.16x, efficientnet_b0 1.43x, convnext_tiny 1.04x on 2 idle CPU
    cores; docs/benchmarks.md), while ``torch.compile`` added nothing on top. Models without convolutions
    gain nothing from it.
    """
    if setting == "auto":
        return any(isinstance(m, nn.Conv2d) for m in model.modules())
    return bool(setting)

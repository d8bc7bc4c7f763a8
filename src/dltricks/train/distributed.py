"""Distributed data parallel (DDP) helpers: who am I, and sums across ranks.

The trainer is written for one process and becomes data parallel when ``torch.distributed`` is
initialised with more than one rank: every rank builds the same model, its loaders take this rank's
shard (``rank``/``world_size``), the model is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel` (gradients are averaged across ranks inside
``backward``), metric sums are added across ranks with one ``all_reduce`` per evaluation, and only
rank 0 writes logs, metrics and checkpoints.

Launch with ``torchrun --nproc_per_node 2 -m dltricks.cli train ...``: :func:`init_from_env` reads the
variables torchrun sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``)
and initialises the process group (``nccl`` on CUDA, ``gloo`` on CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_from_env", "shutdown", "all_reduce_sum", "all_gather_tensors", "barrier"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this rank writes files and logs (rank 0)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @staticmethod
    def current() -> DistInfo:
        """The initialised process group's rank and size, or a single process."""
        if dist.is_available() and dist.is_initialized():
            local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
            return DistInfo(dist.get_rank(), dist.get_world_size(), local)
        return DistInfo()


def init_from_env(device: str | None = None) -> DistInfo:
    """Initialise ``torch.distributed`` from torchrun's environment variables, once.

    Does nothing (and returns a single-process :class:`DistInfo`) when ``WORLD_SIZE`` is unset or 1.
    ``device`` picks the backend: ``nccl`` for CUDA devices, ``gloo`` otherwise; under CUDA the
    process is bound to ``cuda:LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or not dist.is_available():
        return DistInfo()
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and (device is None or device in ("auto",) or device.startswith("cuda"))
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo.current()


def shutdown() -> None:
    """Leave the process group cleanly once the work is done: wait for every rank, then destroy the group.

    Without it, gloo's worker threads can outlive the interpreter and abort a finished process with
    "terminate called without an active exception" (pytorch/pytorch#190489; seen once in our DDP test).
    Called on the success path only, as torchtitan does: destroying the group while another rank is
    still inside a collective after an error can deadlock. A no-op for a single process; safe to call twice.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: dict[str, float], *, device: torch.device | str = "cpu") -> dict[str, float]:
    """Add a dict of numbers across ranks (one collective); unchanged for a single process.

    Sums travel as float64 so integer counts up to 2**53 stay exact.
    """
    info = DistInfo.current()
    if not info.enabled or not values:
        return dict(values)
    keys = sorted(values)
    backend_device = torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=backend_device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def all_gather_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped tensor (a list of one for a single process)."""
    info = DistInfo.current()
    if not info.enabled:
        return [t]
    device = t.device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        t = t.cuda()
    gathered = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(gathered, t)
    return [g.to(device) for g in gathered]


def barrier() -> None:
    if DistInfo.current().enabled:
        dist.barrier()

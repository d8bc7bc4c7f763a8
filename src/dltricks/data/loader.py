"""An in-memory loader for data sets that fit in (GPU) memory, with no per-sample Python work.

A :class:`TensorLoader` keeps the whole ``uint8`` data set as one tensor on the target device and
builds each batch with one ``index_select``, one conversion to float, batched augmentation
(:mod:`dltricks.data.augment`) and normalisation. For MNIST and CIFAR-10 this is far faster than a
``torch.utils.data.DataLoader`` that decodes and transforms samples one by one in worker processes,
and it needs no workers, so results do not depend on their number.

Determinism contract (what ``--resume`` relies on):

* the sample order of epoch ``e`` is ``torch.randperm(N)`` from a generator seeded with a hash of
  ``(seed, e)`` (or ``0..N-1`` without shuffling), the same on every rank;
* with ``world_size > 1`` the order is padded, like ``torch.utils.data.DistributedSampler``, by repeating
  its first indices until its length is a multiple of ``world_size``, and rank ``r`` takes positions
  ``r, r + world_size, ...``; every rank then has the same number of batches (needed by DDP) and up to
  ``world_size - 1`` samples are seen twice per epoch (``pad=False`` gives each sample to exactly one
  rank instead, with shards that may differ in length by one);
* the random augmentation of batch ``b`` comes from a generator seeded with a hash of
  ``(seed, e, b, rank)``.

So ``iter_epoch(e, start_batch=k)`` yields exactly the batches ``k, k+1, ...`` of ``iter_epoch(e)``,
without computing the first ``k``.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from dltricks.config import from_dict
from dltricks.data.augment import AugmentConfig, apply_cutout, apply_geometric, apply_mixing
from dltricks.data.base import ArrayDataset
from dltricks.errors import ConfigError, DataError

__all__ = ["TensorLoader", "derive_seed"]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (BLAKE2b of their 64-bit encodings): stable across runs, Python
    versions and platforms, unlike ``hash()``, and nearby inputs give unrelated seeds."""
    data = struct.pack(f"<{len(parts)}q", *(int(p) for p in parts))
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def _as_augment(augment: AugmentConfig | Mapping[str, Any] | None) -> AugmentConfig | None:
    if augment is None or isinstance(augment, AugmentConfig):
        return augment
    if isinstance(augment, Mapping):
        return from_dict(AugmentConfig, augment, prefix="augment.")
    raise ConfigError(f"augment: expected an AugmentConfig or a mapping of its options, got {type(augment).__name__}")


class TensorLoader:
    """Batches of an :class:`ArrayDataset`, following the loader protocol of :mod:`dltricks.tasks.base`.

    Args:
        dataset: the images (``uint8 (N, C, H, W)``) and labels.
        batch_size: samples per batch on this rank.
        shuffle: a new random order every epoch (see the module docstring).
        drop_last: drop this rank's last batch when it is smaller than ``batch_size``.
        augment: random augmentation (:class:`AugmentConfig` or a mapping of its fields); ``None`` for none.
        normalize: subtract the data set's per-channel mean and divide by its std (after scaling to ``[0, 1]``).
        device: where the data set is kept and batches are made.
        seed: base seed of the order and of the augmentation.
        rank, world_size: this process's shard in distributed training.
        num_classes: width of soft targets under mixup/CutMix (default: the data set's).
        pad: under ``world_size > 1``, pad the order so all ranks have equal shards (default, as DDP training
            needs); ``False`` gives every sample to exactly one rank (for exact distributed evaluation).

    Yields ``(x, y)``: ``x`` float32 ``(B, C, H, W)`` on ``device``; ``y`` int64 ``(B,)``, or float32 soft
    targets ``(B, K)`` when mixup or CutMix is on.
    """

    def __init__(self, dataset: ArrayDataset, *, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                 augment: AugmentConfig | Mapping[str, Any] | None = None, normalize: bool = True,
                 device: str | torch.device = "cpu", seed: int = 0, rank: int = 0, world_size: int = 1,
                 num_classes: int | None = None, pad: bool = True) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size: got {batch_size!r}, expected an integer >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} / world_size {world_size}: expected world_size >= 1 and "
                              "0 <= rank < world_size")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = _as_augment(augment)
        self.normalize = normalize
        self.device = torch.device(device)
        self.seed = int(seed)
        self.rank, self.world_size = rank, world_size
        self.pad = pad
        self.num_classes = num_classes if num_classes is not None else dataset.num_classes
        if self.num_classes < dataset.num_classes:
            raise ConfigError(f"num_classes={self.num_classes} is smaller than the {dataset.num_classes} classes of "
                              f"{dataset.name}")
        self.epoch = 0

        # The whole data set lives on the device: one uint8 copy, batches are gathered from it.
        self._images = dataset.images.to(self.device)
        self._labels = dataset.labels.to(self.device)
        C = dataset.in_chans
        self._mean = torch.tensor(dataset.mean, dtype=torch.float32, device=self.device).view(1, C, 1, 1)
        self._std = torch.tensor(dataset.std, dtype=torch.float32, device=self.device).view(1, C, 1, 1)

        N = len(dataset)
        if world_size > 1 and pad:
            self._shard_size = math.ceil(N / world_size)
        else:
            self._shard_size = len(range(rank, N, world_size))
        if drop_last:
            self._num_batches = self._shard_size // batch_size
            if self._num_batches == 0:
                raise DataError(f"data set {dataset.name} has {self._shard_size} samples per rank, fewer than one "
                                f"batch of {batch_size} with drop_last; use a smaller batch size")
            self.num_samples = self._num_batches * batch_size
        else:
            self._num_batches = math.ceil(self._shard_size / batch_size)
            self.num_samples = self._shard_size

    def __len__(self) -> int:
        return self._num_batches

    def order(self, epoch: int) -> torch.Tensor:
        """Indices into the data set that this rank visits in ``epoch``, in order (before ``drop_last``)."""
        N = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(N, generator=generator)
        else:
            order = torch.arange(N)
        if self.world_size == 1:
            return order
        if self.pad:
            # Repeat the order's head until the length is a multiple of world_size (the data set may be
            # smaller than world_size, hence repeat rather than one concatenation).
            total = self._shard_size * self.world_size
            order = order.repeat(math.ceil(total / N))[:total]
        return order[self.rank::self.world_size]

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by plain iteration (``for x, y in loader``)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_epoch(self.epoch)

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start_batch, ..., len(self) - 1`` of ``epoch``."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} is outside [0, {len(self)}] for {self.dataset.name}")
        order = self.order(epoch).to(self.device)
        for b in range(start_batch, len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self._make_batch(index, epoch, b)

    def _make_batch(self, index: torch.Tensor, epoch: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._images.index_select(0, index).to(torch.float32).div_(255.0)  # (B, C, H, W) in [0, 1]
        y = self._labels.index_select(0, index)  # (B,)
        augment = self.augment
        generator = None
        if augment is not None and augment.active:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, batch, self.rank))
            x = apply_geometric(x, augment, generator)
        if self.normalize:
            x = x.sub_(self._mean).div_(self._std)
        if generator is not None:
            x = apply_cutout(x, augment, generator)
            x, y = apply_mixing(x, y, augment, generator, num_classes=self.num_classes)
        return x, y

    def __repr__(self) -> str:
        return (f"TensorLoader({self.dataset.name}, batch_size={self.batch_size}, batches={len(self)}, "
                f"shuffle={self.shuffle}, rank={self.rank}/{self.world_size}, augment={self.augment})")

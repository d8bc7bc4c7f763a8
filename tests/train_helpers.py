"""Tiny in-memory tasks, models and evidence for the tests (fast: 8x8 images, a few hundred samples)."""

from __future__ import annotations

from typing import Any

import torch

from dltricks.data.base import ArrayDataset
from dltricks.data.loader import TensorLoader
from dltricks.models import create_model
from dltricks.tasks.base import Task

TIME_KEYS = ("images_per_s", "train_time_s", "epoch_time_s", "time_s")


def toy_dataset(N: int = 256, size: int = 8, num_classes: int = 4, seed: int = 0, channels: int = 1) -> ArrayDataset:
    """Noisy images whose class is a brighter horizontal band: learnable in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (N,), generator=g)
    images = torch.randint(0, 160, (N, channels, size, size), generator=g, dtype=torch.uint8)
    band = size // num_classes
    for k in range(num_classes):
        rows = slice(k * band, (k + 1) * band)
        images[labels == k, :, rows, :] = images[labels == k, :, rows, :] // 2 + 120
    return ArrayDataset(images, labels, tuple(f"c{k}" for k in range(num_classes)), "toy", (0.4,) * channels,
                        (0.25,) * channels)


def toy_task(*, n_train: int = 192, n_val: int = 64, batch_size: int = 16, seed: int = 0,
             augment: Any = None, eval_batch_size: int = 64, channels: int = 1, drop_last: bool = True) -> Task:
    ds = toy_dataset(n_train + n_val, channels=channels)
    train = ds.subset(slice(0, n_train))
    val = ds.subset(slice(n_train, n_train + n_val))
    return Task("toy", TensorLoader(train, batch_size=batch_size, shuffle=True, seed=seed, augment=augment,
                                    drop_last=drop_last),
                TensorLoader(val, batch_size=eval_batch_size), num_classes=ds.num_classes, in_chans=channels,
                classes=ds.classes, input_shape=tuple(ds.images.shape[1:]),
                # What build_task would record: fit checks these against the recipe.
                options={"batch_size": batch_size, "seed": seed, "augment": augment})


# The recipe keys that match toy_task()'s defaults (fit refuses a task built with other settings).
TOY = ["train.batch_size=16"]


def tiny_cnn(seed: int = 0, *, drop_rate: float = 0.0, in_chans: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("small_cnn", num_classes=4, in_chans=in_chans, widths=(4, 8), drop_rate=drop_rate)


def tiny_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", num_classes=4, in_chans=1, img_size=8, hidden=(16,))


def strip_times(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in history]


def cifar10_available() -> bool:
    """Whether CIFAR-10 (the zip, image folder or tarball) is in the default data folders."""
    from dltricks.tasks.classification import find_cifar10

    try:
        find_cifar10(None)
    except Exception:
        return False
    return True


def paired_evidence(treatment: list[float], control: list[float], metric: str = "acc", *,
                    arms: tuple[str, str] = ("t", "c")) -> Any:
    """Evidence with one ``metric`` value per seed for a treatment and a control arm (named by ``arms``)."""
    from dltricks.evidence import Evidence

    ev = Evidence()
    for a, b in zip(treatment, control):
        ev.add(arms[0], **{metric: a})
        ev.add(arms[1], **{metric: b})
    return ev

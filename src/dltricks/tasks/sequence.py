"""Long-sequence tasks from the state-space-model papers as trainer tasks (``--data NAME``); the data
generators and loaders are in :mod:`dltricks.data.sequence_tasks`.

Token targets use ``IGNORE_INDEX`` (-100) at positions that are not scored; :func:`masked_token_loss`
and :func:`masked_token_metrics` score only the others (the task's ``loss`` and ``batch_metrics``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from dltricks.data.loader import derive_seed
from dltricks.data.sequence_tasks import (IGNORE_INDEX, ListOpsVocab, SequenceImageLoader, SyntheticLoader,
                                          TensorPairLoader, generate_listops, induction_heads_batch,
                                          psmnist_permutation, selective_copying_batch)
from dltricks.config import check_positive, field
from dltricks.errors import ConfigError
from dltricks.tasks.base import EvalContext, Task, register_task
from dltricks.tasks.classification import mnist_embedded_task, mnist_task

__all__ = ["masked_token_loss", "masked_token_metrics", "selective_copying_task", "induction_heads_task",
           "smnist_task", "psmnist_task", "listops_task", "InductionHeadsOptions", "SelectiveCopyingOptions",
           "ListOpsOptions", "SequentialMNISTOptions", "token_task", "token_evaluation"]


def _lengths_ok(value: Any) -> str | None:
    return None if all(isinstance(v, int) and v >= 4 for v in value) else "lengths >= 4 (tokens)"


@dataclass
class InductionHeadsOptions:
    """Options of ``induction_heads`` (``--data-opt`` or a recipe's ``data`` section)."""

    seq_len: int = field(256, help="training length in tokens", check=check_positive)
    vocab_size: int = field(16, help="tokens in the vocabulary (one is the trigger)", check=check_positive)
    train_batches: int = field(1000, help="fresh training batches per evaluation period (the run length is "
                                          "train.steps)", check=check_positive)
    val_batches: int = field(8, help="fixed validation batches at the training length", check=check_positive)
    eval_seq_len: int | None = field(None, help="length of the validation sequences (default: seq_len)",
                                     check=check_positive)
    eval_lengths: tuple[int, ...] = field((), help="test lengths measured on the trained model at the end of the "
                                                   "run (val_accuracy_<L>), e.g. [256, 1024, 4096, 16384]",
                                          check=_lengths_ok)
    length_batch_size: int = field(16, help="sequences per batch at the eval_lengths", check=check_positive)
    curriculum: tuple[int, ...] = field((), help="shorter training lengths shown first, in order (e.g. [32, 64, 128]), "
                                                 "curriculum_batches batches each; then seq_len",
                                        check=_lengths_ok)
    curriculum_batches: int = field(500, help="training batches at each curriculum length", check=check_positive)


@dataclass
class SelectiveCopyingOptions(InductionHeadsOptions):
    """Options of ``selective_copying``."""

    seq_len: int = field(4096, help="training length in tokens", check=check_positive)
    num_tokens: int = field(16, help="tokens to copy", check=check_positive)


@dataclass
class ListOpsOptions:
    """Options of ``listops``."""

    num_train: int = field(2000, help="generated training expressions", check=check_positive)
    num_val: int = field(500, help="generated validation expressions", check=check_positive)
    min_length: int = field(500, help="shortest expression in tokens", check=check_positive)
    max_length: int = field(2000, help="longest expression in tokens", check=check_positive)
    max_depth: int = field(10, help="deepest nesting", check=check_positive)
    max_args: int = field(10, help="most arguments of one operator", check=check_positive)


@dataclass
class SequentialMNISTOptions:
    """Options of ``smnist`` and ``psmnist``."""

    source: Literal["files", "embedded"] = field("files", help="the official IDX files (--data-dir) or the split "
                                                                "shipped in the package")


def _token_logits(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def masked_token_loss(output: Any, target: torch.Tensor, *, label_smoothing: float = 0.0, **_: Any) -> torch.Tensor:
    """Mean cross-entropy over the scored positions (target ≠ IGNORE_INDEX) of logits (B, L, V)."""
    logits = _token_logits(output)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                           ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)


def masked_token_metrics(output: Any, target: torch.Tensor) -> dict[str, float]:
    """Sums over the scored positions (target ≠ IGNORE_INDEX): ``loss``, ``correct`` tokens and ``count``
    (the trainer divides every sum by ``count``)."""
    logits = _token_logits(output).float()
    mask = target != IGNORE_INDEX  # (B, L)
    flat, labels = logits[mask], target[mask]  # (K, V), (K,)
    return {"loss": F.cross_entropy(flat, labels, reduction="sum").item(),
            "correct": float((flat.argmax(-1) == labels).sum().item()), "count": float(mask.sum().item())}


def _positive(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}: got {value!r}, expected a positive integer")
    return value


def _synthetic_task(name: str, generate: Callable[..., tuple[torch.Tensor, torch.Tensor]], *, batch_size: int,
                    eval_batch_size: int | None, seed: int, rank: int, device: str | torch.device, train_batches: int,
                    val_batches: int, num_classes: int, seq_len: int, eval_seq_len: int | None,
                    extra: dict[str, Any], eval_lengths: Sequence[int] = (), length_batch_size: int = 16,
                    curriculum: Sequence[int] = (), curriculum_batches: int = 500) -> Task:
    _positive("batch_size", batch_size)
    stages = tuple(int(L) for L in curriculum)
    if any(L >= seq_len for L in stages):
        raise ConfigError(f"curriculum: got {list(stages)}, expected lengths shorter than seq_len={seq_len}")

    def train_batch(g: torch.Generator, n: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        # A length curriculum changes only the order of the data: batch `index` of the run is drawn at the
        # length of its stage (Bengio et al. 2009), then at seq_len.
        stage = index // curriculum_batches
        return generate(n, seq_len=stages[stage] if stage < len(stages) else seq_len, generator=g)

    train = SyntheticLoader(train_batch, batch_size=batch_size, num_batches=_positive("train_batches", train_batches),
                            seed=seed, rank=rank, device=device, indexed=True)
    eval_len = eval_seq_len or seq_len
    val = SyntheticLoader(lambda g, n: generate(n, seq_len=eval_len, generator=g),
                          batch_size=eval_batch_size or batch_size, num_batches=_positive("val_batches", val_batches),
                          seed=derive_seed(seed, 1_000_003), rank=rank, device=device, fixed=True)
    lengths = tuple(int(L) for L in eval_lengths)

    def evaluate(model: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        metrics = token_evaluation(model, val.iter_epoch(0), ctx)
        if ctx.last:  # the trained model at every test length, on fixed batches of its own
            for L in lengths:
                batches = (generate(length_batch_size, seq_len=L,
                                    generator=torch.Generator().manual_seed(derive_seed(seed, 2_000_003, L, b)))
                           for b in range(val_batches))
                metrics[f"accuracy_{L}"] = token_evaluation(model, batches, ctx)["accuracy"]
        return metrics

    return Task(name=name, train_loader=train, val_loader=val, num_classes=num_classes, loss=masked_token_loss,
                batch_metrics=masked_token_metrics, input_shape=(seq_len,), evaluate=evaluate,
                extra={"seq_len": seq_len, "eval_seq_len": eval_len, "vocab_size": num_classes,
                       "eval_lengths": list(lengths), "curriculum": list(stages), **extra})


def token_task(name: str, generate: Callable[..., tuple[torch.Tensor, torch.Tensor]], *, num_classes: int,
               seq_len: int, batch_size: int, eval_batch_size: int | None = None, seed: int = 0, rank: int = 0,
               device: str | torch.device = "cpu", train_batches: int = 1000, val_batches: int = 8,
               eval_seq_len: int | None = None, eval_lengths: Sequence[int] = (), length_batch_size: int = 16,
               curriculum: Sequence[int] = (), curriculum_batches: int = 500,
               extra: dict[str, Any] | None = None) -> Task:
    """A token task from any generator ``generate(n, *, seq_len, generator) -> (x (n, L), y (n, L))`` whose
    targets are ``IGNORE_INDEX`` where not scored: a stream of fresh training batches (``train_batches`` per
    evaluation period), fixed validation batches, and the evaluation of :func:`token_evaluation` (token and
    whole-sequence accuracy; at the end of the run also ``accuracy_<L>`` for each of ``eval_lengths``)."""
    return _synthetic_task(name, generate, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed,
                           rank=rank, device=device, train_batches=train_batches, val_batches=val_batches,
                           num_classes=num_classes, seq_len=seq_len, eval_seq_len=eval_seq_len, extra=dict(extra or {}),
                           eval_lengths=eval_lengths, length_batch_size=length_batch_size, curriculum=curriculum,
                           curriculum_batches=curriculum_batches)


def token_evaluation(model: torch.nn.Module, batches: Any, ctx: EvalContext) -> dict[str, float]:
    """Token accuracy, whole-sequence accuracy and mean loss over the scored positions of ``batches``."""
    sums = {"loss": 0.0, "correct": 0.0, "count": 0.0, "seq_correct": 0.0, "seqs": 0.0}
    for x, y in batches:
        x, y = ctx.to_device(x), ctx.to_device(y)
        with ctx.autocast():
            logits = _token_logits(model(x))
        for key, value in masked_token_metrics(logits, y).items():
            sums[key] += value
        mask = y != IGNORE_INDEX  # (B, L)
        sums["seq_correct"] += float(((logits.argmax(-1) == y) | ~mask).all(1).sum())
        sums["seqs"] += float(y.shape[0])
    count = max(sums["count"], 1.0)
    return {"loss": sums["loss"] / count, "accuracy": sums["correct"] / count,
            "seq_accuracy": sums["seq_correct"] / max(sums["seqs"], 1.0)}


@register_task("selective_copying", help="Selective Copying (Mamba): recall 16 scattered tokens; seq_len=4096 default",
               options=SelectiveCopyingOptions)
def selective_copying_task(*, batch_size: int, eval_batch_size: int | None = None, seed: int = 0, rank: int = 0,
                           device: str | torch.device = "cpu", seq_len: int = 4096, num_tokens: int = 16,
                           vocab_size: int = 16, train_batches: int = 1000, val_batches: int = 8,
                           eval_seq_len: int | None = None, eval_lengths: Sequence[int] = (),
                           length_batch_size: int = 16, curriculum: Sequence[int] = (), curriculum_batches: int = 500,
                           **_: Any) -> Task:
    """Selective Copying (Mamba): recall 16 scattered tokens; seq_len=4096 default."""
    def generate(n: int, *, seq_len: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return selective_copying_batch(n, seq_len=seq_len, num_tokens=num_tokens, vocab_size=vocab_size,
                                       generator=generator)

    return _synthetic_task("selective_copying", generate, batch_size=batch_size, eval_batch_size=eval_batch_size,
                           seed=seed, rank=rank, device=device, train_batches=train_batches, val_batches=val_batches,
                           num_classes=vocab_size, seq_len=seq_len, eval_seq_len=eval_seq_len,
                           extra={"num_tokens": num_tokens}, eval_lengths=eval_lengths,
                           length_batch_size=length_batch_size, curriculum=curriculum,
                           curriculum_batches=curriculum_batches)


@register_task("induction_heads", help="Induction Heads (Mamba): recall the token after a trigger; train at 256",
               options=InductionHeadsOptions)
def induction_heads_task(*, batch_size: int, eval_batch_size: int | None = None, seed: int = 0, rank: int = 0,
                         device: str | torch.device = "cpu", seq_len: int = 256, vocab_size: int = 16,
                         train_batches: int = 1000, val_batches: int = 8, eval_seq_len: int | None = None,
                         eval_lengths: Sequence[int] = (), length_batch_size: int = 16, curriculum: Sequence[int] = (),
                         curriculum_batches: int = 500, **_: Any) -> Task:
    """Induction Heads (Mamba): recall the token after a trigger; train at 256."""
    def generate(n: int, *, seq_len: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return induction_heads_batch(n, seq_len=seq_len, vocab_size=vocab_size, generator=generator)

    return _synthetic_task("induction_heads", generate, batch_size=batch_size, eval_batch_size=eval_batch_size,
                           seed=seed, rank=rank, device=device, train_batches=train_batches, val_batches=val_batches,
                           num_classes=vocab_size, seq_len=seq_len, eval_seq_len=eval_seq_len, extra={},
                           eval_lengths=eval_lengths, length_batch_size=length_batch_size, curriculum=curriculum,
                           curriculum_batches=curriculum_batches)


def _smnist(name: str, permuted: bool, data_dir: Any, source: str, options: dict[str, Any]) -> Task:
    options = dict(options)
    options.pop("augment", None)  # pixel sequences: no image augmentation
    if source == "embedded":
        image_task = mnist_embedded_task(**options)
    elif source == "files":
        image_task = mnist_task(data_dir=data_dir, **options)
    else:
        raise ConfigError(f"{name}: source must be 'files' or 'embedded', got {source!r}")
    perm = psmnist_permutation(784) if permuted else None
    return Task(name=name, train_loader=SequenceImageLoader(image_task.train_loader, perm),
                val_loader=None if image_task.val_loader is None else SequenceImageLoader(image_task.val_loader, perm),
                num_classes=10, in_chans=None, classes=image_task.classes, input_shape=(784, 1),
                extra={**image_task.extra, "permuted": permuted, "source": source})


@register_task("smnist", help="sequential MNIST: 784 pixels one at a time (source=files|embedded)",
               options=SequentialMNISTOptions)
def smnist_task(*, data_dir: Any = None, source: str = "files", **options: Any) -> Task:
    """Sequential MNIST: 784 pixels one at a time (source=files|embedded)."""
    return _smnist("smnist", False, data_dir, source, options)


@register_task("psmnist", help="permuted sequential MNIST: one fixed permutation of the 784 pixels",
               options=SequentialMNISTOptions)
def psmnist_task(*, data_dir: Any = None, source: str = "files", **options: Any) -> Task:
    """Permuted sequential MNIST: one fixed permutation of the 784 pixels."""
    return _smnist("psmnist", True, data_dir, source, options)


@register_task("listops", help="ListOps (LRA generator): nested MAX/MIN/MED/SM expressions, 10 classes",
               options=ListOpsOptions)
def listops_task(*, batch_size: int, eval_batch_size: int | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1, device: str | torch.device = "cpu", num_train: int = 2000, num_val: int = 500,
                 min_length: int = 500, max_length: int = 2000, max_depth: int = 10, max_args: int = 10,
                 **_: Any) -> Task:
    """ListOps (LRA generator): nested MAX/MIN/MED/SM expressions, 10 classes."""
    x, y = generate_listops(_positive("num_train", num_train) + _positive("num_val", num_val), seed=seed,
                            min_length=min_length, max_length=max_length, max_depth=max_depth, max_args=max_args)
    train = TensorPairLoader(x[:num_train], y[:num_train], batch_size=_positive("batch_size", batch_size), shuffle=True,
                             seed=seed, rank=rank, world_size=world_size, device=device)
    val = TensorPairLoader(x[num_train:], y[num_train:], batch_size=eval_batch_size or batch_size, shuffle=False,
                           seed=seed, rank=rank, world_size=world_size, device=device)
    return Task(name="listops", train_loader=train, val_loader=val, num_classes=10, input_shape=(max_length - 1,),
                classes=tuple(str(d) for d in range(10)),
                extra={"vocab_size": ListOpsVocab.SIZE, "min_length": min_length, "max_length": max_length})
